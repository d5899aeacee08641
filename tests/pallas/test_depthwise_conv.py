"""jaxsched.pallas.depthwise_conv2d: interpret mode vs numpy float64, grads, errors, compile."""

import os

# Several processes may load libtpu at once here (parallel test runs): allow it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.pallas import tpu as pltpu  # noqa: E402

from jaxsched.pallas import (  # noqa: E402
  DepthwiseConvConfig,
  depthwise_conv2d,
  depthwise_conv2d_reference,
  targets,
)

TOL = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2}


def np_depthwise(x, w, stride, padding):
  """Independent float64 depthwise conv: explicit TF-style padding and a loop over taps."""
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64).reshape(w.shape[0], w.shape[1], -1)
  n, h, wd, c = x.shape
  k = w.shape[0]
  if padding == "SAME":
    ho, wo = -(-h // stride), -(-wd // stride)
    ph = max((ho - 1) * stride + k - h, 0)
    pw = max((wo - 1) * stride + k - wd, 0)
    x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  else:
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
  out = np.zeros((n, ho, wo, c))
  for dy in range(k):
    for dx in range(k):
      win = x[:, dy : dy + (ho - 1) * stride + 1 : stride, dx : dx + (wo - 1) * stride + 1 : stride]
      out += win * w[dy, dx]
  return out


def _operands(shape, k, dtype, seed=0, w4=False):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), dtype)
  w_shape = (k, k, 1, shape[3]) if w4 else (k, k, shape[3])
  return x, jnp.asarray(rng.standard_normal(w_shape), dtype)


def _assert_close(out, x, w, stride, padding, dtype):
  want = np_depthwise(x, w, stride, padding)
  scale = np_depthwise(np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64)),
                       stride, padding)
  assert out.shape == want.shape and out.dtype == dtype
  err = np.abs(np.asarray(out, np.float64) - want)
  assert np.all(err <= TOL[dtype] * scale + 1e-30), float(np.max(err / (scale + 1e-30)))


CASES = [
  # shape, k, stride, padding, config
  ((2, 13, 11, 5), 3, 1, "SAME", DepthwiseConvConfig(tile_h=4, tile_w=8, tile_c=8)),
  ((1, 13, 11, 5), 3, 2, "SAME", DepthwiseConvConfig(tile_h=2, tile_w=8, tile_c=8)),
  ((1, 12, 10, 20), 5, 2, "VALID", DepthwiseConvConfig(tile_h=1, tile_w=8, tile_c=32)),
  ((1, 5, 6, 200), 3, 1, "SAME", DepthwiseConvConfig(tile_h=4, tile_w=8, tile_c=128)),
  ((1, 9, 17, 6), 4, 2, "SAME", None),
  ((1, 8, 8, 3), 3, 1, "VALID", None),
]


@pytest.mark.parametrize("shape,k,stride,padding,config", CASES)
@pytest.mark.parametrize("target", [None, "tpu-v5e"])
def test_interpret_matches_numpy(shape, k, stride, padding, config, target):
  # target=None runs the GPU kernel (shifted window loads); "tpu-v5e" the Element-window one.
  x, w = _operands(shape, k, jnp.float32)
  out = depthwise_conv2d(x, w, stride=stride, padding=padding, config=config, interpret=True,
                         target=target)
  _assert_close(out, x, w, stride, padding, jnp.float32)


@pytest.mark.parametrize("target", [None, "tpu-v5e"])
def test_bf16_and_hwio_weights(target):
  x, w = _operands((1, 10, 9, 16), 3, jnp.bfloat16, seed=1, w4=True)
  out = depthwise_conv2d(x, w, stride=2, interpret=True, target=target)
  _assert_close(out, x, w, 2, "SAME", jnp.bfloat16)


def test_tpu_interpret_params():
  # The TPU-faithful interpreter runs the Element-window kernel (2 x 1 x 1 grid).
  x, w = _operands((1, 9, 7, 5), 3, jnp.float32, seed=5)
  out = depthwise_conv2d(x, w, stride=2, config=DepthwiseConvConfig(tile_h=4, tile_c=8),
                         interpret=pltpu.InterpretParams())
  _assert_close(out, x, w, 2, "SAME", jnp.float32)


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "VALID")])
def test_reference_matches_numpy(stride, padding):
  x, w = _operands((2, 9, 8, 4), 3, jnp.float32, seed=2)
  out = depthwise_conv2d_reference(x, w, stride=stride, padding=padding)
  _assert_close(out, x, w, stride, padding, jnp.float32)


def test_grad_matches_numpy_adjoint():
  # The op is bilinear, so <dL/dx, v> = <g, conv(v, w)> and <dL/dw, u> = <g, conv(x, u)> for
  # L = <g, conv(x, w)>; both right-hand sides come from the numpy forward.
  x, w = _operands((1, 9, 10, 6), 3, jnp.float32, seed=3)
  rng = np.random.default_rng(4)
  g = rng.standard_normal((1, 5, 5, 6))
  v = rng.standard_normal(x.shape)
  u = rng.standard_normal(w.shape)

  def loss(x, w):
    return jnp.sum(depthwise_conv2d(x, w, stride=2, interpret=True) * g)

  dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
  np.testing.assert_allclose(np.sum(np.asarray(dx) * v), np.sum(g * np_depthwise(v, w, 2, "SAME")),
                             rtol=1e-4)
  np.testing.assert_allclose(np.sum(np.asarray(dw) * u), np.sum(g * np_depthwise(x, u, 2, "SAME")),
                             rtol=1e-4)


def test_bad_inputs_name_values():
  x, w = _operands((1, 8, 8, 4), 3, jnp.float32)
  with pytest.raises(ValueError, match=r"with c=4, got w.shape=\(3, 3, 5\)"):
    depthwise_conv2d(x, jnp.ones((3, 3, 5)), interpret=True)
  with pytest.raises(ValueError, match=r"x.dtype=float32, w.dtype=bfloat16"):
    depthwise_conv2d(x, w.astype(jnp.bfloat16), interpret=True)
  with pytest.raises(ValueError, match=r"stride=3.*valid strides: \(1, 2\)"):
    depthwise_conv2d(x, w, stride=3, interpret=True)
  with pytest.raises(ValueError, match=r"padding='FULL'.*valid paddings"):
    depthwise_conv2d(x, w, padding="FULL", interpret=True)
  with pytest.raises(ValueError, match=r"NHWC.*x.shape=\(8, 8, 4\)"):
    depthwise_conv2d(x[0], w, interpret=True)
  with pytest.raises(ValueError, match=r"VALID needs h, w >= k"):
    depthwise_conv2d(x[:, :2], w, padding="VALID", interpret=True)
  with pytest.raises(ValueError, match=r"tile_h=3 .*valid choices"):
    DepthwiseConvConfig(tile_h=3)
  x2, w2 = _operands((1, 8, 8, 200), 3, jnp.float32)
  with pytest.raises(ValueError, match=r"tile_c=64 must be a multiple of 128 or cover c=200"):
    depthwise_conv2d(x2, w2, config=DepthwiseConvConfig(tile_c=64), interpret=True,
                     target="tpu-v5e")


CUSTOM_CALL = {"h100": "__gpu$xla.gpu.triton", "tpu-v5e": "tpu_custom_call"}


@pytest.mark.parametrize(
  "target,dtype,config",
  [
    ("h100", jnp.float32, DepthwiseConvConfig(tile_h=4, tile_w=8, tile_c=32, num_warps=2)),
    ("h100", jnp.bfloat16, DepthwiseConvConfig(tile_h=2, tile_w=16, tile_c=64, num_warps=4)),
    ("tpu-v5e", jnp.float32, DepthwiseConvConfig(tile_h=4, tile_c=128)),
    ("tpu-v5e", jnp.bfloat16, DepthwiseConvConfig(tile_h=8, tile_c=256)),
  ],
)
@pytest.mark.parametrize("stride", [1, 2])
def test_deviceless_compile(target, dtype, config, stride):
  x = jax.ShapeDtypeStruct((1, 20, 20, 256), dtype)
  w = jax.ShapeDtypeStruct((3, 3, 256), dtype)
  exe = targets.compile_for(
    lambda x, w: depthwise_conv2d(x, w, stride=stride, config=config), x, w, target=target
  )
  assert CUSTOM_CALL[target] in exe.as_text()
