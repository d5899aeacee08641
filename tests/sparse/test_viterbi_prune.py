"""Viterbi decompressor, pruning DP and format: checked against independent numpy references."""

import itertools

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

from jaxsched import sparse


def decode_ref(bits, vd):
  """Sequential shift-register simulation in numpy: bits [S] -> mask [S * R]."""
  reg = [0] * (vd.num_ff + 1)  # reg[d] = u[t - d]
  out = []
  for u in bits:
    reg = [int(u)] + reg[:-1]
    gates = [sum(reg[d] for d in range(vd.num_ff + 1) if (tap >> d) & 1) % 2 for tap in vd.taps]
    for r in range(vd.outputs_per_bit):
      group = gates[r * vd.group_bits:(r + 1) * vd.group_bits]
      if vd.comparator is None:
        out.append(bool(group[0]))
      else:
        value = sum(g << b for b, g in enumerate(group))
        out.append(value < vd.comparator.threshold)
  return np.array(out, bool)


def mask_from_bits_ref(m):
  """Numpy reference of the format: unpack words, simulate each stream, lay out, crop."""
  k, n = m.shape
  words = np.asarray(m.bits)
  kt, np_ = words.shape
  mask = np.zeros((kt * m.tile_k, np_), bool)
  for a in range(kt):
    for c in range(np_):
      bits = [(int(words[a, c]) >> t) & 1 for t in range(m.steps)]
      mask[a * m.tile_k:(a + 1) * m.tile_k, c] = decode_ref(bits, m.vd)[:m.tile_k]
  return mask[:k, :n]


vds = st.builds(
    sparse.ViterbiDecompressor,
    st.integers(3, 6),  # 2**num_ff >= the 6 gates of the widest case
    st.integers(1, 3),
    seed=st.integers(0, 100),
    comparator=st.one_of(st.none(), st.builds(sparse.Comparator, st.just(2), st.integers(1, 3))),
)


@given(vd=vds, data=st.data())
def test_decode_matches_shift_register(vd, data):
  steps = data.draw(st.integers(1, 12))
  rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
  bits = rng.integers(0, 2, (3, steps))
  got = np.asarray(vd.decode(jnp.asarray(bits)))
  want = np.stack([decode_ref(b, vd) for b in bits])
  np.testing.assert_array_equal(got, want)


def test_taps_are_deterministic_and_read_the_input_bit():
  a = sparse.ViterbiDecompressor(8, 5, seed=3, comparator=sparse.Comparator(4, 2))
  b = sparse.ViterbiDecompressor(8, 5, seed=3, comparator=sparse.Comparator(4, 2))
  c = sparse.ViterbiDecompressor(8, 5, seed=4, comparator=sparse.Comparator(4, 2))
  assert a.taps == b.taps and a.taps != c.taps
  assert len(set(a.taps)) == 20 and all(t & 1 for t in a.taps)
  # Random inputs give ones at the comparator's density.
  bits = np.random.default_rng(0).integers(0, 2, (64, 400))
  assert abs(float(np.asarray(a.decode(bits)).mean()) - 2 / 16) < 0.01


@pytest.mark.parametrize("comparator", [None, sparse.Comparator(3, 2)])
def test_encode_decode_roundtrip_and_values(comparator):
  rng = np.random.default_rng(1)
  w = rng.standard_normal((45, 70)).astype(np.float32)  # pads to tiles on both axes
  vd = sparse.ViterbiDecompressor(4, 3, seed=2, comparator=comparator)
  m = sparse.viterbi_prune(w, vd=vd, sparsity=0.7, tile_k=16, tile_n=32, tolerance=0.05)
  mask = mask_from_bits_ref(m)
  np.testing.assert_array_equal(np.asarray(m.mask), mask)
  np.testing.assert_array_equal(np.asarray(m.to_dense()), np.where(mask, w, 0))
  # Values in decode order: tiles row-major, column by column inside a tile.
  want = [w[i, j] for tk in range(0, 48, 16) for tn in range(0, 96, 32)
          for j in range(tn, min(tn + 32, 70)) for i in range(tk, min(tk + 16, 45)) if mask[i, j]]
  np.testing.assert_array_equal(np.asarray(m.values), np.array(want, np.float32))
  counts = [mask[tk:tk + 16, tn:tn + 32].sum() for tk in range(0, 48, 16)
            for tn in range(0, 96, 32)]
  np.testing.assert_array_equal(np.asarray(m.offsets).reshape(-1),
                                np.concatenate([[0], np.cumsum(counts)[:-1]]))


@pytest.mark.parametrize(
    "shape,vd,tile_k,tile_n",
    [
        ((16, 3), sparse.ViterbiDecompressor(2, 4, seed=5), 16, 3),
        ((14, 3), sparse.ViterbiDecompressor(3, 4, comparator=sparse.Comparator(2, 1)), 16, 4),
        ((9, 2), sparse.ViterbiDecompressor(4, 2, seed=1), 12, 2),
    ],
)
def test_viterbi_is_optimal_against_brute_force(shape, vd, tile_k, tile_n):
  rng = np.random.default_rng(7)
  w = rng.standard_normal(shape).astype(np.float32)
  m = sparse.viterbi_prune(w, vd=vd, sparsity=0.6, tile_k=tile_k, tile_n=tile_n, tolerance=1.0)
  gains = np.asarray(m.metric(jnp.asarray(w)), np.float64)
  k, n = shape
  assert m.bits.shape[0] == 1  # one row of tiles; padded columns' streams do not matter
  p = n * m.steps
  assert p <= 14
  best = -np.inf
  for seq in itertools.product([0, 1], repeat=p):
    s = np.array(seq).reshape(-1, m.steps)
    cols = [decode_ref(b, vd)[:tile_k] for b in s]  # one column segment per stream
    mask = np.stack(cols, 1).reshape(tile_k, -1)[:k, :n]  # a single row of tiles here
    best = max(best, float(np.sum(gains * mask)))
  got = sparse.mask_score(w, m.mask, metric=m.metric)
  assert got == pytest.approx(best, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("target", [0.9, 0.95])  # bench/sparse.py also checks 80%
def test_realised_sparsity_within_one_percent(target):
  w = np.random.default_rng(3).standard_normal((256, 256)).astype(np.float32)
  vd = sparse.ViterbiDecompressor(
      6, 5, comparator=sparse.Comparator.for_density(1 - target, bits=4))
  m = sparse.viterbi_prune(w, vd=vd, sparsity=target)
  mask = np.asarray(m.mask)
  assert abs((1 - mask.mean()) - target) <= 0.01
  a = np.abs(w.astype(np.float64))
  kept = a[mask].sum() / a.sum()
  magnitude = np.sort(a.ravel())[::-1][:mask.sum()].sum() / a.sum()
  assert m.stats["kept_mass"] == pytest.approx(kept, rel=1e-6)
  assert m.stats["magnitude_kept_mass"] == pytest.approx(magnitude, rel=1e-6)
  # Better than a random mask of the same density, never better than magnitude pruning.
  assert (1 - target) * 1.5 < kept <= magnitude


def test_index_cost_report_counts():
  mask = np.zeros((2, 20), bool)
  mask[0, 0] = mask[1, 1] = mask[1, 19] = True  # flat positions 0, 21, 39 -> gaps 1, 21, 18
  rep = sparse.index_cost_report(mask)
  f = rep["formats"]
  assert rep["nnz"] == 3
  assert f["csr"]["index_bits"] == 32 * 3 + 32 * 3
  assert f["bcoo"]["index_bits"] == 64 * 3
  assert f["relative4"]["index_bits"] == 4 * (1 + 2 + 2)  # gaps > 16 need a filler
  assert f["relative5"]["index_bits"] == 5 * 3
  d = 3 / 40
  assert f["entropy"]["index_bits"] == pytest.approx(40 * -(d * np.log2(d) +
                                                              (1 - d) * np.log2(1 - d)))
  w = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
  vd = sparse.ViterbiDecompressor(5, 4, comparator=sparse.Comparator(3, 1))
  m = sparse.viterbi_prune(w, vd=vd, sparsity=0.9)
  v = sparse.index_cost_report(m)["formats"]["viterbi"]
  assert v["index_bits"] == 128 * 32 + 32  # 32 bits per 128-row stream + one tile offset
  assert v["bits_per_weight"] == pytest.approx(0.25 + 32 / (128 * 128))


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"2\^20 = 1,048,576 states"):
    sparse.ViterbiDecompressor(20, 4)
  with pytest.raises(ValueError, match="outputs_per_bit"):
    sparse.ViterbiDecompressor(4, 0)
  with pytest.raises(ValueError, match="threshold"):
    sparse.Comparator(3, 8)
  vd = sparse.ViterbiDecompressor(4, 2)
  with pytest.raises(TypeError, match="floating"):
    sparse.viterbi_prune(np.ones((8, 8), np.int32), vd=vd, sparsity=0.5)
  with pytest.raises(ValueError, match="tile_k=128 must be in"):
    sparse.viterbi_prune(np.ones((8, 8), np.float32), vd=vd, sparsity=0.5, tile_k=128)
  with pytest.raises(ValueError, match="sparsity"):
    sparse.viterbi_prune(np.ones((8, 8), np.float32), vd=vd, sparsity=1.0)
  with pytest.raises(ValueError, match="2-D"):
    sparse.viterbi_prune(np.ones((8,), np.float32), vd=vd, sparsity=0.5)


def test_prune_checkpoint_and_registered_search_space():
  rng = np.random.default_rng(5)
  kernel = rng.standard_normal((128, 128)).astype(np.float32)
  params = {"dense": {"kernel": kernel, "bias": rng.standard_normal(128).astype(np.float32)},
            "small": rng.standard_normal((8, 8)).astype(np.float32),
            "step": np.arange(4096, dtype=np.int32).reshape(64, 64)}
  vd = sparse.ViterbiDecompressor(5, 4, comparator=sparse.Comparator(3, 1))
  new, report = sparse.prune_checkpoint(params, vd=vd, sparsity=0.9)
  assert list(report) == ["['dense']['kernel']"]
  m = new["dense"]["kernel"]
  assert isinstance(m, sparse.ViterbiSparseMatrix)
  np.testing.assert_array_equal(np.asarray(m.to_dense()), np.where(np.asarray(m.mask), kernel, 0))
  assert new["small"] is params["small"] and new["step"] is params["step"]
  assert report["['dense']['kernel']"]["index_cost"]["formats"]["csr"]["index_bits"] == (
      32 * int(np.asarray(m.mask).sum()) + 32 * 129)
  from jaxsched.pallas import config
  space = config.search_space("viterbi_matmul", ((64, 128), (128, 128)), "float32", "tpu-v5e",
                              tile_k=128, tile_n=128)
  assert space and all(c.block_m % 8 == 0 for c in space)
