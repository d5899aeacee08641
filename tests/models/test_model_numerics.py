"""Hypernetwork kernels and distillation loss against float64 numpy; one train step per model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jaxsched import models as M


def _np(x):
  return np.asarray(x, np.float64)


def _rngs(seed):
  # RBG keys: jitted initialisers compile much faster than with threefry on CPU.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _build_random(ctor, seed):
  """Builds a module under one jit, then replaces every Param (zero biases too) by random values."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: ctor(_rngs(seed))))
  state = jax.jit(lambda: nnx.state(ctor(_rngs(seed))))()
  params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
  rng = np.random.default_rng(seed)
  new = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype), params)
  module = nnx.merge(graphdef, state)
  nnx.update(module, new)
  return module


def np_generated_kernel(layer):
  g = layer.generator
  w_in, b_in, w_out, b_out = (_np(v[...]) for v in (g.w_in, g.b_in, g.w_out, g.b_out))
  emb = _np(layer.embedding[...])
  f, bi, bo = g.kernel_size, g.in_features, g.out_features
  nb_in, nb_out, _ = emb.shape
  kernel = np.zeros((f, f, nb_in * bi, nb_out * bo))
  for p in range(nb_in):
    for q in range(nb_out):
      for i in range(bi):
        a_i = w_in[i] @ emb[p, q] + b_in[i]  # a_i = W_i z + B_i
        k_i = (a_i @ w_out + b_out).reshape(f, f, bo)  # K_i = <W_out, a_i> + B_out
        kernel[:, :, p * bi + i, q * bo : (q + 1) * bo] = k_i
  return kernel


def np_conv_same(x, k, stride):
  """Direct NHWC/HWIO convolution with SAME padding (TensorFlow convention)."""
  n, h, w, _ = x.shape
  f = k.shape[0]
  oh, ow = -(-h // stride), -(-w // stride)
  ph = max((oh - 1) * stride + f - h, 0)
  pw = max((ow - 1) * stride + f - w, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  out = np.zeros((n, oh, ow, k.shape[3]))
  for dy in range(f):
    for dx in range(f):
      win = xp[:, dy : dy + stride * oh : stride, dx : dx + stride * ow : stride, :]
      out += np.einsum("nhwc,co->nhwo", win, k[dy, dx])
  return out


@pytest.mark.parametrize(
  "nb_in,nb_out,f,z_dim,stride,seed", [(1, 1, 3, 4, 1, 0), (2, 1, 3, 2, 2, 1), (1, 2, 1, 5, 1, 2)]
)
def test_hyperconv_matches_numpy(nb_in, nb_out, f, z_dim, stride, seed):
  bi, bo = 4, 3

  def ctor(rngs):
    return M.HyperConv(
      nb_in * bi, nb_out * bo, f, z_dim=z_dim, block_in=bi, block_out=bo, strides=stride,
      rngs=rngs,
    )  # fmt: skip

  layer = _build_random(ctor, seed)
  x = np.random.default_rng(seed).normal(size=(2, 5, 6, nb_in * bi)).astype(np.float32)
  graphdef, state = nnx.split(layer)
  kernel, y = jax.jit(lambda s, x: (nnx.merge(graphdef, s).kernel, nnx.merge(graphdef, s)(x)))(
    state, x
  )
  want_k = np_generated_kernel(layer)
  np.testing.assert_allclose(_np(kernel), want_k, rtol=1e-5, atol=1e-5)
  want = np_conv_same(_np(x), want_k, stride) + _np(layer.bias[...])
  np.testing.assert_allclose(_np(y), want, rtol=1e-4, atol=1e-4)


def test_hyperwrn_shares_one_generator_and_starts_at_he_scale():
  model = nnx.eval_shape(lambda: M.HyperWRN(10, 2, rngs=nnx.Rngs(1)))
  convs = [b.conv1 for b in model.blocks] + [b.conv2 for b in model.blocks]
  assert all(c.generator is model.generator for c in convs)
  n_gen = M.hyper_generator_param_count(z_dim=64, in_features=16, out_features=16, kernel_size=3)
  assert M.count_params(model.generator) == n_gen == 16 * (64 * 64 + 64) + 9 * 16 * 65

  @jax.jit
  def ratios():
    m = M.HyperWRN(10, 2, rngs=_rngs(1))
    cs = [c for b in m.blocks for c in (b.conv1, b.conv2)]
    return [jnp.std(c.kernel) / (2.0 / (9 * c.in_features)) ** 0.5 for c in cs]

  for r in ratios():
    assert 0.6 < float(r) < 1.6


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_distill(s, t, y, temp, alpha):
  p_t = np.exp(np_log_softmax(t / temp))
  soft = -(p_t * np_log_softmax(s / temp)).sum(-1)
  hard = -np_log_softmax(s)[np.arange(len(y)), y]
  return np.mean(alpha * temp**2 * soft + (1 - alpha) * hard), soft.mean(), hard.mean()


@given(
  temp=st.floats(0.5, 30.0),
  alpha=st.floats(0.0, 1.0),
  seed=st.integers(0, 2**16),
)
def test_distillation_loss_matches_numpy(temp, alpha, seed):
  rng = np.random.default_rng(seed)
  s, t = rng.normal(size=(2, 6, 10)) * 3
  y = rng.integers(0, 10, size=6)
  got = M.distillation_loss(
    jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(y),
    temperature=temp, alpha=alpha,
  )  # fmt: skip
  want, soft, hard = np_distill(s, t, y, temp, alpha)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-5)
  for a, pure in ((0.0, hard), (1.0, temp**2 * soft)):
    got = M.distillation_loss(
      jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(y),
      temperature=temp, alpha=a,
    )  # fmt: skip
    np.testing.assert_allclose(float(got), pure, rtol=2e-5, atol=1e-5)


def test_soft_gradient_follows_t_squared_rule():
  rng = np.random.default_rng(0)
  b, c = 8, 10
  s = rng.normal(size=(b, c))
  t = rng.normal(size=(b, c))
  s -= s.mean(-1, keepdims=True)  # zero-mean logits, as in Hinton et al.'s high-T argument
  t -= t.mean(-1, keepdims=True)
  y = jnp.asarray(rng.integers(0, c, size=b))

  def grad(temp):
    f = lambda z: M.distillation_loss(z, jnp.asarray(t, jnp.float32), y, temperature=temp, alpha=1)
    return _np(jax.grad(f)(jnp.asarray(s, jnp.float32)))

  for temp in (1.0, 4.0, 20.0):
    p = lambda z, temp=temp: np.exp(np_log_softmax(z / temp))
    # d/ds [T^2 CE(p_t, q_s)] = T (q_s - p_t), per example; the mean divides by the batch.
    np.testing.assert_allclose(grad(temp), temp * (p(s) - p(t)) / b, rtol=1e-4, atol=1e-6)
  # At high T the scaled gradient tends to (s - t) / (C * batch): independent of T.
  limit = (s - t) / (c * b)
  for temp in (20.0, 100.0):
    np.testing.assert_allclose(grad(temp), limit, atol=0.1 * np.abs(limit).max() * 20 / temp)
  assert np.abs(grad(20.0)).max() > 0.5 * np.abs(limit).max()


def test_distillation_loss_rejects_bad_arguments():
  z = jnp.ones((2, 3))
  y = jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="temperature=0"):
    M.distillation_loss(z, z, y, temperature=0, alpha=0.5)
  with pytest.raises(ValueError, match="alpha=1.5"):
    M.distillation_loss(z, z, y, temperature=1, alpha=1.5)


# HyperWRN's step (BN path) is exercised by tests/train's one-epoch CIFAR run.
@pytest.mark.parametrize("ctor,shape", [(M.HyperMNIST, (8, 28, 28, 1))])
def test_one_train_step_lowers_the_loss(ctor, shape):
  x = jax.random.normal(jax.random.key(1), shape)
  y = jax.random.randint(jax.random.key(2), (shape[0],), 0, 10)

  @jax.jit  # one compilation for init + step keeps the test fast
  def run(x, y):
    model = ctor(rngs=_rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
      logits = nnx.merge(graphdef, p, rest, copy=True)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.sgd(1e-3)
    l0, g = jax.value_and_grad(loss)(params)
    upd, _ = tx.update(g, tx.init(params), params)
    return l0, loss(optax.apply_updates(params, upd))

  l0, l1 = run(x, y)
  assert float(l1) < float(l0)


@pytest.mark.parametrize("small_inputs,size,final", [(True, 32, 2), (False, 224, 7)])
def test_mobilenet_shapes(small_inputs, size, final):
  def features(x):
    m = M.MobileNetV1(0.25, num_classes=7, small_inputs=small_inputs, rngs=nnx.Rngs(0))
    y = nnx.relu(m.bn(m.stem(x)))
    for block in m.blocks:
      y = block(y)
    return y, m(x)

  feats, logits = jax.eval_shape(features, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert feats.shape == (2, final, final, 256) and logits.shape == (2, 7)
