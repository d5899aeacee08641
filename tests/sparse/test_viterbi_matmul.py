"""viterbi_matmul: Pallas kernel (interpret mode) and XLA path vs a float64 numpy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxsched import sparse
from jaxsched.pallas import targets
from jaxsched.sparse import ViterbiMatmulConfig, viterbi_matmul


@functools.cache  # pruning compiles per shape: share matrices between tests
def _matrix(k, n, *, vd, sparsity=0.8, tile_k=64, tile_n=128, seed=0, dtype=np.float32):
  w = np.random.default_rng(seed).standard_normal((k, n)).astype(dtype)
  m = sparse.viterbi_prune(w, vd=vd, sparsity=sparsity, tile_k=tile_k, tile_n=tile_n,
                           tolerance=0.05)
  return w, m


def _masked(w, m):
  return np.where(np.asarray(m.mask), w.astype(np.float64), 0.0)


def _decode_order(mask, tile_k, tile_n):
  """(row, col) of every kept weight in decode order, by explicit loops."""
  k, n = mask.shape
  out = []
  for tk in range(0, k, tile_k):
    for tn in range(0, n, tile_n):
      for j in range(tn, min(tn + tile_n, n)):
        for i in range(tk, min(tk + tile_k, k)):
          if mask[i, j]:
            out.append((i, j))
  return tuple(np.array(out).T)


VD_CMP = sparse.ViterbiDecompressor(5, 4, seed=1, comparator=sparse.Comparator(3, 2))
VD_XOR = sparse.ViterbiDecompressor(4, 3, seed=2)

CASES = [  # (m, k, n, vd, tile_k, tile_n, block_m)
    (19, 200, 150, VD_CMP, 64, 128, 32),
    (5, 96, 40, VD_XOR, 32, 64, 8),
]


@pytest.mark.parametrize("m_,k,n,vd,tile_k,tile_n,block_m", CASES)
def test_kernel_matches_dense_masked_matmul(m_, k, n, vd, tile_k, tile_n, block_m):
  w, mat = _matrix(k, n, vd=vd, tile_k=tile_k, tile_n=tile_n)
  x = np.random.default_rng(1).standard_normal((m_, k)).astype(np.float32)
  want = x.astype(np.float64) @ _masked(w, mat)
  cfg = ViterbiMatmulConfig(block_m=block_m)
  got = viterbi_matmul(x, mat, config=cfg, interpret=True)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
  xla = viterbi_matmul(x, mat, backend="xla")
  np.testing.assert_allclose(np.asarray(xla), want, rtol=1e-5, atol=1e-4)


def test_tpu_variant_in_tpu_interpreter():
  w, mat = _matrix(96, 40, vd=VD_XOR, tile_k=32, tile_n=128)
  x = np.random.default_rng(2).standard_normal((3, 8, 96)).astype(np.float32)  # batch dims
  got = viterbi_matmul(x, mat, config=ViterbiMatmulConfig(block_m=8),
                       interpret=pltpu.InterpretParams())
  want = x.astype(np.float64) @ _masked(w, mat)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_bfloat16():
  w, mat = _matrix(200, 150, vd=VD_CMP, dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((16, 200)), jnp.bfloat16)
  got = viterbi_matmul(x, mat, config=ViterbiMatmulConfig(block_m=16), interpret=True)
  want = np.asarray(x, np.float64) @ _masked(np.asarray(w, np.float64), mat)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("backend", ["pallas", "xla"])
def test_grads_match_dense_masked_grads(backend):
  w, mat = _matrix(200, 150, vd=VD_CMP)
  rng = np.random.default_rng(4)
  x = rng.standard_normal((19, 200)).astype(np.float32)
  c = rng.standard_normal((19, 150)).astype(np.float32)

  def loss(x, values):
    y = viterbi_matmul(x, mat.replace(values=values), backend=backend, interpret=True,
                       config=ViterbiMatmulConfig(block_m=32))
    return jnp.sum(y * c)

  dx, dv = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), mat.values)
  wm = _masked(w, mat)
  np.testing.assert_allclose(np.asarray(dx), c @ wm.T, rtol=1e-5, atol=1e-4)
  dw = x.T.astype(np.float64) @ c
  rows, cols = _decode_order(np.asarray(mat.mask), 64, 128)
  np.testing.assert_allclose(np.asarray(dv), dw[rows, cols], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("target", ["h100", "tpu-v5e"])
def test_deviceless_compile(target):
  if target not in targets.available_targets():
    pytest.fail(f"compiler plugin for {target} missing: install jaxsched[test]")
  _, mat = _matrix(256, 256, vd=VD_CMP, tile_k=128, tile_n=128)
  x = jax.ShapeDtypeStruct((64, 256), jnp.float32)
  fn = lambda x, m: viterbi_matmul(x, m, config=ViterbiMatmulConfig(block_m=64))
  exe = targets.compile_for(fn, x, mat, target=target)
  text = exe.as_text()
  # The kernel really went through the target's Pallas compiler (not an XLA fallback).
  assert "jaxsched_viterbi_matmul" in text
  assert ("triton" in text.lower()) if target == "h100" else ("tpu_custom_call" in text)


def test_bad_inputs():
  _, mat = _matrix(200, 150, vd=VD_CMP)
  x = np.ones((4, 200), np.float32)
  with pytest.raises(ValueError, match="must end in K=200"):
    viterbi_matmul(np.ones((4, 63), np.float32), mat, interpret=True)
  with pytest.raises(ValueError, match="dtype"):
    viterbi_matmul(x.astype(np.float16), mat, interpret=True)
  with pytest.raises(ValueError, match="interpret"):
    viterbi_matmul(x, mat)  # CPU needs interpret mode
  with pytest.raises(ValueError, match="valid backends"):
    viterbi_matmul(x, mat, backend="cuda")
  with pytest.raises(ValueError, match="not an allowed choice"):
    ViterbiMatmulConfig(block_m=24)
  _, narrow = _matrix(200, 150, vd=VD_CMP, tile_n=64)
  with pytest.raises(ValueError, match="tile_n=64 must be a multiple of 128"):
    viterbi_matmul(x, narrow, config=ViterbiMatmulConfig(block_m=8), target="tpu-v5e")
