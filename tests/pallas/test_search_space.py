"""jaxsched.pallas.config: declared choices, search spaces obeying target rules, lookups."""

import json
import os
from importlib import resources

# Several processes may load libtpu at once here (parallel test runs): allow it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jaxsched.pallas import (  # noqa: E402
  DepthwiseConvConfig,
  MatmulConfig,
  config,
  default_config,
  lookup_config,
  search_space,
  targets,
)

H100_SMEM = 232448  # opt-in shared memory per block (../shared/targets/h100.pbtxt)
TPU_SCOPED_VMEM = 16 * 2**20


def _covering(extent, options):
  return min((c for c in options if c >= extent), default=None)


def _not_oversized(block, extent, options):
  return block < extent or block == _covering(extent, options)


def _assert_matmul_rules(cfgs, m, k, n, dtype, target):
  itemsize = jnp.dtype(dtype).itemsize
  assert cfgs, f"empty search space for {(m, k, n)=} on {target}"
  assert len(set(cfgs)) == len(cfgs)
  for c in cfgs:
    for blk, ext, opts in ((c.block_m, m, (16, 32, 64, 128, 256)),
                           (c.block_n, n, (16, 32, 64, 128, 256, 512)),
                           (c.block_k, k, (16, 32, 64, 128, 256, 512))):
      assert _not_oversized(blk, ext, opts), (c, ext)
    if target == "h100":
      for blk in (c.block_m, c.block_n, c.block_k):
        assert blk & (blk - 1) == 0
      smem = (c.block_m * c.block_k + c.block_k * c.block_n) * itemsize * c.num_stages
      assert smem <= H100_SMEM, c
      # The epilogue's layout conversion: num_warps/16 of the output tile (see matmul.py).
      assert c.block_m * c.block_n * itemsize * c.num_warps // 16 <= H100_SMEM, c
    else:
      sub = 8 * (4 // itemsize)
      assert c.block_m % sub == 0 or c.block_m >= m
      assert c.block_n % 128 == 0 or c.block_n >= n
      assert c.block_k % 128 == 0 or c.block_k >= k
      vmem = 2 * (c.block_m * c.block_k + c.block_k * c.block_n + c.block_m * c.block_n) * itemsize
      assert vmem + 4 * c.block_m * c.block_n <= TPU_SCOPED_VMEM
      # GPU-only fields are not enumerated on TPU.
      assert (c.num_warps, c.num_stages) == (MatmulConfig().num_warps, MatmulConfig().num_stages)


@given(
  m=st.integers(1, 3000),
  k=st.integers(1, 3000),
  n=st.integers(1, 3000),
  dtype=st.sampled_from(["float32", "bfloat16"]),
  target=st.sampled_from(["h100", "tpu-v5e"]),
)
def test_matmul_space_obeys_rules(m, k, n, dtype, target):
  cfgs = search_space("matmul", ((m, k), (k, n)), dtype, target)
  _assert_matmul_rules(cfgs, m, k, n, dtype, target)
  assert default_config("matmul", ((m, k), (k, n)), dtype, target) in cfgs


def test_matmul_space_prunes_known_cases():
  big = search_space("matmul", ((4096, 4096), (4096, 4096)), "float32", "h100")
  # (256*256 + 256*512) f32 x 4 stages is far over 227 KiB; 128x128x32 x 3 stages fits.
  assert MatmulConfig(256, 512, 256, 4, 4) not in big
  assert MatmulConfig(128, 128, 32, 4, 3) in big
  # Triton asked for 262144 B (> 232448) for this f32 tile with 8 warps (a deviceless compile in
  # bench/kernels.py); with 4 warps it compiles.
  assert MatmulConfig(256, 512, 64, 8, 1) not in big
  assert MatmulConfig(256, 512, 64, 4, 1) in big
  tpu = search_space("matmul", ((4096, 4096), (4096, 4096)), "bfloat16", "tpu-v5e")
  assert all(c.block_n % 128 == 0 and c.block_k % 128 == 0 for c in tpu)
  assert MatmulConfig(256, 512, 512) in tpu
  small = search_space("matmul", ((37, 70), (70, 45)), "float32", "cpu")
  assert {c.block_m for c in small} == {16, 32, 64}


@given(
  h=st.integers(3, 300),
  w=st.integers(3, 300),
  c=st.integers(1, 600),
  k=st.sampled_from([1, 3, 5]),
  stride=st.sampled_from([1, 2]),
  padding=st.sampled_from(["SAME", "VALID"]),
  target=st.sampled_from(["h100", "tpu-v5e"]),
)
def test_depthwise_space_obeys_rules(h, w, c, k, stride, padding, target):
  shapes = ((1, h, w, c), (k, k, c))
  cfgs = search_space("depthwise_conv2d", shapes, "float32", target, stride=stride,
                      padding=padding)
  assert cfgs and len(set(cfgs)) == len(cfgs)
  ho = -(-h // stride) if padding == "SAME" else (h - k) // stride + 1
  wo = -(-w // stride) if padding == "SAME" else (w - k) // stride + 1
  for cfg in cfgs:
    assert _not_oversized(cfg.tile_h, ho, (1, 2, 4, 8, 16, 32))
    assert _not_oversized(cfg.tile_c, c, (8, 16, 32, 64, 128, 256))
    if target == "h100":
      assert _not_oversized(cfg.tile_w, wo, (8, 16, 32, 64, 128, 256))
      assert cfg.tile_h * cfg.tile_w * cfg.tile_c * 2 <= cfg.num_warps * 32 * 128
    else:
      assert cfg.tile_c % 128 == 0 or cfg.tile_c >= c
      assert cfg.tile_w == DepthwiseConvConfig().tile_w  # unused on TPU: not enumerated
  assert default_config("depthwise_conv2d", shapes, "float32", target, stride=stride,
                        padding=padding) in cfgs


def test_pointwise_space_is_the_gemm_space():
  a = search_space("pointwise_conv", ((2, 7, 7, 96), (96, 40)), "bfloat16", "tpu-v5e")
  b = search_space("matmul", ((98, 96), (96, 40)), "bfloat16", "tpu-v5e")
  assert a == b and a


def test_declared_choices_are_the_source_of_truth():
  ch = config.choices(MatmulConfig)
  assert ch["block_m"] == (16, 32, 64, 128, 256)
  assert ch["num_stages"] == (1, 2, 3, 4)
  assert set(config.tunable_fields(MatmulConfig, "tpu")) == {"block_m", "block_n", "block_k"}
  assert set(config.tunable_fields(DepthwiseConvConfig, "tpu")) == {"tile_h", "tile_c"}
  # Every enumerated value is a declared choice.
  for cfg in search_space("matmul", ((512, 512), (512, 512)), "float32", "h100"):
    for name, options in ch.items():
      assert getattr(cfg, name) in options


def test_unknown_op_and_bad_problem_errors():
  # Other packages (jaxsched.sparse) may register more ops: check the built-in ones are listed.
  with pytest.raises(ValueError, match=r"unknown op 'conv3d'; valid ops: \[.*'depthwise_conv2d', "
                     r"'matmul', 'pointwise_conv'.*\]"):
    search_space("conv3d", ((1, 1), (1, 1)), "float32", "h100")
  with pytest.raises(ValueError, match=r"unknown target 'v100'"):
    search_space("matmul", ((8, 8), (8, 8)), "float32", "v100")
  with pytest.raises(ValueError, match=r"contraction dims differ"):
    search_space("matmul", ((8, 8), (9, 8)), "float32", "h100")
  with pytest.raises(ValueError, match=r"stride=4"):
    search_space("depthwise_conv2d", ((1, 8, 8, 4), (3, 3, 4)), "float32", "h100", stride=4)


def test_config_dataclasses_are_frozen_hashable_and_validated():
  cfg = MatmulConfig()
  with pytest.raises(AttributeError):
    cfg.block_m = 32  # frozen
  assert hash(cfg) == hash(MatmulConfig())
  assert not hasattr(cfg, "__dict__")  # slotted
  with pytest.raises(ValueError, match=r"MatmulConfig.block_k=100 .*valid choices"):
    MatmulConfig(block_k=100)
  with pytest.raises(ValueError, match=r"DepthwiseConvConfig.tile_c=3"):
    DepthwiseConvConfig(tile_c=3)


def _table_entries():
  text = resources.files("jaxsched.pallas").joinpath("tuned_configs.json").read_text()
  return json.loads(text)["entries"]


def test_tuned_table_entries_are_valid_and_found():
  kind_target = {"gpu": "h100", "tpu": "tpu-v5e"}
  entries = _table_entries()
  assert entries
  for e in entries:
    target = kind_target[e["kind"]]
    params = e.get("params", {})
    got = lookup_config(e["op"], e["shapes"], e["dtype"], target, **params)
    fields = {name: getattr(got, name) for name in e["config"]}
    assert fields == e["config"], e
    assert got in search_space(e["op"], e["shapes"], e["dtype"], target, **params)


def test_lookup_miss_falls_back_to_default_and_resolves_active_target():
  shapes = ((300, 100), (100, 200))
  assert lookup_config("matmul", shapes, "float32", "h100") == default_config(
    "matmul", shapes, "float32", "h100")
  assert lookup_config("matmul", shapes, "float32") == default_config(
    "matmul", shapes, "float32", "cpu")  # local backend is the CPU interpreter
  # Inside compile_for, target=None resolves to the target being compiled for.
  seen = []

  def fn(a, b):
    seen.append(lookup_config("matmul", (a.shape, b.shape), a.dtype))
    return a @ b

  spec_a = jax.ShapeDtypeStruct(shapes[0], jnp.float32)
  spec_b = jax.ShapeDtypeStruct(shapes[1], jnp.float32)
  targets.compile_for(fn, spec_a, spec_b, target="tpu-v5e")
  assert seen == [default_config("matmul", shapes, "float32", "tpu-v5e")]
  assert seen[0] != default_config("matmul", shapes, "float32", "h100")
