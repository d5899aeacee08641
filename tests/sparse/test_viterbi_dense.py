"""ViterbiDense: dense phase, compression, fixed-mask retraining and serving."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxsched import sparse
from jaxsched.models.layers import ViterbiDense

# Same VD, tiles and shapes as a test_viterbi_matmul case, so the interpret kernel compiles once.
VD = sparse.ViterbiDecompressor(4, 3, seed=2)


def test_compress_retrain_and_serve():
  rng = np.random.default_rng(0)
  # Retrain on the XLA path (the kernel's VJP is tested in test_viterbi_matmul); serve on both.
  layer = ViterbiDense(96, 40, kernels="xla", interpret=True,
                       config=sparse.ViterbiMatmulConfig(block_m=8), rngs=nnx.Rngs(0))
  x = rng.standard_normal((5, 96)).astype(np.float32)
  layer.bias[...] = jnp.asarray(rng.standard_normal(40), jnp.float32)
  w = np.asarray(layer.kernel[...], np.float64)
  b = np.asarray(layer.bias[...], np.float64)
  np.testing.assert_allclose(np.asarray(layer(x)), x @ w + b, rtol=1e-5, atol=1e-5)

  stats = layer.compress(VD, 0.8, tile_k=32, tile_n=64, tolerance=0.05)
  assert abs(stats["sparsity"] - 0.8) <= 0.05 and layer.kernel is None
  mask = np.asarray(layer.matrix().mask)
  np.testing.assert_allclose(np.asarray(layer(x)), x @ np.where(mask, w, 0) + b,
                             rtol=1e-5, atol=1e-5)

  # Fixed-mask retraining: only the kept values (and the bias) are parameters.
  target = rng.standard_normal((5, 40)).astype(np.float32)
  opt = nnx.Optimizer(layer, optax.sgd(0.05), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(layer, opt)) for _ in range(3)]
  assert losses[-1] < losses[0]
  np.testing.assert_array_equal(np.asarray(layer.matrix().mask), mask)  # mask unchanged
  dense = np.asarray(layer.matrix().to_dense())
  assert np.all(dense[~mask] == 0) and not np.allclose(dense[mask], w[mask])
  b = np.asarray(layer.bias[...], np.float64)
  layer.kernels = "pallas"
  np.testing.assert_allclose(np.asarray(layer(x)), x @ dense.astype(np.float64) + b,
                             rtol=1e-5, atol=1e-5)


def test_bad_kernels_and_double_compress():
  with pytest.raises(ValueError, match="valid choices"):
    ViterbiDense(8, 8, kernels="cuda", rngs=nnx.Rngs(0))
  layer = ViterbiDense(8, 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="not compressed"):
    layer.matrix()
