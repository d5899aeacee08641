"""jaxsched.models.layers DepthwiseConv / PointwiseConv: Pallas path vs numpy and vs XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsched.models.layers import DepthwiseConv, PointwiseConv


def _np_depthwise_same(x, w, stride):
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64).reshape(w.shape[0], w.shape[1], -1)
  _, h, wd, _ = x.shape
  k = w.shape[0]
  ho, wo = -(-h // stride), -(-wd // stride)
  ph, pw = max((ho - 1) * stride + k - h, 0), max((wo - 1) * stride + k - wd, 0)
  x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  out = 0.0
  for dy in range(k):
    for dx in range(k):
      out = out + x[:, dy : dy + (ho - 1) * stride + 1 : stride,
                    dx : dx + (wo - 1) * stride + 1 : stride] * w[dy, dx]
  return out


class Block(nnx.Module):
  def __init__(self, kernels, *, rngs):
    self.dw = DepthwiseConv(6, 3, strides=2, kernels=kernels, interpret=True, rngs=rngs)
    self.pw = PointwiseConv(6, 5, kernels=kernels, interpret=True, rngs=rngs)

  def __call__(self, x):
    return self.pw(jax.nn.relu(self.dw(x)))


def _random_bias(model, seed):
  # Non-zero biases so the bias path is exercised.
  rng = np.random.default_rng(seed)
  for layer in (model.dw, model.pw):
    layer.bias[...] = jnp.asarray(rng.standard_normal(layer.bias.shape), jnp.float32)


def test_forward_matches_numpy():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 10, 6)), jnp.float32)
  model = Block("pallas", rngs=nnx.Rngs(0))
  _random_bias(model, 1)
  assert model.dw.kernel.shape == (3, 3, 1, 6) and model.pw.kernel.shape == (6, 5)
  h = _np_depthwise_same(x, model.dw.kernel[...], 2) + np.asarray(model.dw.bias[...])
  want = np.maximum(h, 0) @ np.asarray(model.pw.kernel[...], np.float64) + np.asarray(
    model.pw.bias[...])
  np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)


def test_pallas_and_xla_paths_agree_with_grads():
  # Same shapes as above, so the compiled kernels are reused.
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 10, 6)), jnp.float32)
  models = [Block(k, rngs=nnx.Rngs(0)) for k in ("pallas", "xla")]
  for m in models:
    _random_bias(m, 2)
  np.testing.assert_allclose(models[0](x), models[1](x), rtol=1e-5, atol=1e-5)
  grads = [nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m) for m in models]
  flat = [jax.tree.leaves(nnx.state(g)) for g in grads]
  assert len(flat[0]) == 4
  for a, b in zip(*flat, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_input_and_no_bias():
  layer = PointwiseConv(4, 3, use_bias=False, interpret=True, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 2, 3, 4)), jnp.bfloat16)
  y = layer(x)
  assert y.dtype == jnp.bfloat16 and layer.bias is None
  want = np.asarray(x, np.float64) @ np.asarray(layer.kernel[...].astype(jnp.bfloat16), np.float64)
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2e-2, atol=2e-2)


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"kernels='triton'.*valid choices: \('pallas', 'xla'\)"):
    DepthwiseConv(4, kernels="triton", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"kernels='cuda'"):
    PointwiseConv(4, 4, kernels="cuda", rngs=nnx.Rngs(0))
  layer = PointwiseConv(4, 3, interpret=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"expects 4 input channels, got x.shape=\(1, 2, 2, 5\)"):
    layer(jnp.ones((1, 2, 2, 5)))
