"""SearchSpace: encodings, dataclass spaces, validity, neighbours, features."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxsched.tuning import SearchSpace


@dataclasses.dataclass(frozen=True, slots=True)
class _Blocks:
  block_m: int = dataclasses.field(default=128, metadata={"choices": (32, 64, 128, 256)})
  block_n: int = dataclasses.field(default=128, metadata={"choices": (64, 128)})
  swizzle: bool = dataclasses.field(default=False, metadata={"choices": (False, True)})
  num_warps: int = 4

  def __post_init__(self):
    if self.block_m * self.block_n > 256 * 64:
      raise ValueError(f"{self.block_m=} * {self.block_n=} too big")


_SPACE = SearchSpace({"a": (1, 2, 4, 8), "b": ("x", "y", "z"), "c": (True, False), "d": (3,)})


@given(st.integers(0, _SPACE.size - 1))
def test_index_knobs_config_roundtrip(index):
  knobs = _SPACE.index_to_knobs(index)
  config = _SPACE.index_to_config(index)
  # Independent mixed-radix decode (last knob fastest).
  digits, rest = [], index
  for n in reversed([4, 3, 2, 1]):
    digits.append(rest % n)
    rest //= n
  assert knobs.tolist() == digits[::-1]
  assert config == {
    n: c[k] for n, c, k in zip(_SPACE.names, _SPACE.choices, digits[::-1], strict=True)
  }
  assert _SPACE.config_to_index(config) == index
  assert int(_SPACE.knobs_to_index(knobs)) == index


def test_size_and_neighbours():
  assert _SPACE.size == 4 * 3 * 2 * 1 == len(_SPACE)
  k = np.array([2, 1, 0, 0])
  nb = _SPACE.neighbours(k)
  assert nb.shape == (3 + 2 + 1, 4)
  assert all(int((row != k).sum()) == 1 for row in nb)
  assert len({tuple(r) for r in nb}) == len(nb)


def test_from_dataclass_reads_choices_and_validity():
  space = SearchSpace.from_dataclass(_Blocks, valid=lambda c: c.block_m >= 64)
  assert space.names == ("block_m", "block_n", "swizzle", "num_warps")
  assert space.choices[3] == (4,)
  assert space.size == 4 * 2 * 2
  cfg = space.knobs_to_config(np.array([1, 0, 1, 0]))
  assert cfg == _Blocks(block_m=64, block_n=64, swizzle=True)
  # Predicate rejects block_m=32; __post_init__ rejects 256 x 128.
  assert not space.is_valid_knobs(np.array([0, 0, 0, 0]))
  assert not space.is_valid_knobs(np.array([3, 1, 0, 0]))
  valid = list(space.iter_valid())
  assert len(valid) == space.size - 4 - 2
  rng = np.random.default_rng(0)
  samples = space.sample(rng, 20)
  assert all(space.is_valid_knobs(s) for s in samples)


def test_knob_features_match_numpy():
  feats = _SPACE.knob_features(np.array([[3, 2, 1, 0], [0, 0, 0, 0]]))
  np.testing.assert_allclose(feats[0], [math.log2(8), 2, 0, math.log2(3)])
  np.testing.assert_allclose(feats[1], [0, 0, 1, math.log2(3)])
  fj = _SPACE.knob_features_jax()
  np.testing.assert_allclose(np.asarray(fj(np.array([3, 2, 1, 0]))), feats[0])


def test_bad_spaces_and_configs_get_clear_errors():
  with pytest.raises(ValueError, match="empty"):
    SearchSpace({})
  with pytest.raises(ValueError, match="'b' has no choices"):
    SearchSpace({"a": (1,), "b": ()})
  with pytest.raises(ValueError, match="duplicate"):
    SearchSpace({"a": (1, 1)})
  with pytest.raises(ValueError, match=r"a=3 is not a choice of knob 'a'"):
    _SPACE.config_to_knobs({"a": 3, "b": "x", "c": True, "d": 3})
  with pytest.raises(ValueError, match="outside"):
    _SPACE.index_to_knobs(_SPACE.size)
  with pytest.raises(ValueError, match="no valid config"):
    SearchSpace({"a": (1, 2)}, valid=lambda c: False).sample(np.random.default_rng(0), 1)
  with pytest.raises(TypeError, match="not a dataclass"):
    SearchSpace.from_dataclass(dict)


def test_from_configs_explicit_list_and_kernel_search_space():
  cfgs = [_Blocks(64, 64), _Blocks(64, 128), _Blocks(128, 64, True)]
  space = SearchSpace.from_configs(cfgs)
  assert space.names == ("block_m", "block_n", "swizzle", "num_warps")
  assert space.choices[:3] == ((64, 128), (64, 128), (False, True))
  assert [space.knobs_to_config(k) for k in space.iter_valid()] == sorted(
    cfgs, key=space.config_to_index)
  with pytest.raises(ValueError, match="empty"):
    SearchSpace.from_configs([])
  # The Pallas kernels' declared spaces plug in directly.
  from jaxsched.pallas.config import search_space

  kernel_cfgs = search_space("matmul", ((64, 64), (64, 64)), "float32", target="h100")
  ks = SearchSpace.from_configs(kernel_cfgs)
  assert {ks.config_to_index(c) for c in kernel_cfgs} == {
    int(ks.knobs_to_index(k)) for k in ks.iter_valid()}
