"""ViterbiConv: an im2col convolution whose kernel is Viterbi-compressed."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxsched import sparse
from jaxsched.models.layers import ViterbiConv


def _conv_np(x, w, stride, padding):
  """float64 NHWC cross-correlation with TF-style SAME padding."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  n, h, wd, c = x.shape
  kh, kw, _, co = w.shape
  if padding == "SAME":
    ho, wo = -(-h // stride), -(-wd // stride)
    ph = max((ho - 1) * stride + kh - h, 0)
    pw = max((wo - 1) * stride + kw - wd, 0)
    x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  else:
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, ho, wo, co))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out += patch @ w[i, j]
  return out


def _conv_grad_np(x, w, stride, padding):
  """float64 gradient of sum(_conv_np(x, w)^2) with respect to w, by the chain rule per tap."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  n, h, wd, c = x.shape
  kh, kw, _, co = w.shape
  g_out = 2 * _conv_np(x, w, stride, padding)  # [n, ho, wo, co]
  ho, wo = g_out.shape[1:3]
  if padding == "SAME":
    ph = max((ho - 1) * stride + kh - h, 0)
    pw = max((wo - 1) * stride + kw - wd, 0)
    x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  grad = np.zeros_like(w)
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      grad[i, j] = np.einsum("nhwc,nhwo->co", patch, g_out)
  return grad


@pytest.mark.parametrize("ks,stride,padding", [(3, 1, "SAME"), (3, 2, "VALID"), (1, 1, "SAME")])
def test_dense_and_compressed_match_numpy_conv(ks, stride, padding):
  x = np.random.default_rng(1).normal(size=(2, 9, 11, 16)).astype(np.float32)
  layer = ViterbiConv(16, 32, ks, strides=stride, padding=padding, use_bias=False,
                      rngs=nnx.Rngs(0))
  w = np.asarray(layer.kernel_hwio)
  np.testing.assert_allclose(layer(x), _conv_np(x, w, stride, padding), rtol=1e-4, atol=1e-4)

  vd = sparse.ViterbiDecompressor(5, 4, seed=3, comparator=sparse.Comparator.for_density(0.25))
  stats = layer.compress(vd, 0.75)
  assert abs(stats["sparsity"] - 0.75) <= 0.01
  masked = np.asarray(layer.kernel_hwio)
  # The compressed kernel keeps original weights only (zeros elsewhere), at the target sparsity.
  kept = masked != 0
  np.testing.assert_array_equal(masked[kept], w[kept])
  np.testing.assert_allclose(layer(x), _conv_np(x, masked, stride, padding), rtol=1e-4,
                             atol=1e-4)
  # Retraining reaches only the kept values.
  grads = nnx.grad(lambda m: (m(x) ** 2).sum())(layer)
  got = np.asarray(grads["dense"]["values"][...])
  assert got.shape == (int(kept.sum()),)
  # float64 d/dW of sum(conv(x, W)^2) = sum over taps of patch^T @ (2 * out), read at kept weights.
  # The storage order of the values is the compressor's business: compare them as a multiset.
  want = _conv_grad_np(x, masked, stride, padding)[kept]
  scale = np.abs(want).max()
  np.testing.assert_allclose(np.sort(got), np.sort(want), rtol=1e-4, atol=1e-4 * scale)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="kernel_size=0"):
    ViterbiConv(4, 4, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding='FULL'"):
    ViterbiConv(4, 4, 3, padding="FULL", rngs=nnx.Rngs(0))
  layer = ViterbiConv(4, 4, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="4 channels"):
    layer(np.zeros((1, 5, 5, 3), np.float32))
