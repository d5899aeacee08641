"""jaxsched.pallas.pointwise_conv: interpret mode vs numpy float64, grads, errors, compile."""

import os

# Several processes may load libtpu at once here (parallel test runs): allow it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxsched.pallas import (  # noqa: E402
  MatmulConfig,
  lookup_config,
  pointwise_conv,
  pointwise_conv_reference,
  targets,
)

TOL = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2}


def _operands(shape, c_out, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), dtype)
  return x, jnp.asarray(rng.standard_normal((shape[-1], c_out)), dtype)


def _assert_close(out, x, w, dtype):
  x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
  want = np.einsum("nhwc,cd->nhwd", x64, w64)
  scale = np.einsum("nhwc,cd->nhwd", np.abs(x64), np.abs(w64))
  assert out.shape == want.shape and out.dtype == dtype
  err = np.abs(np.asarray(out, np.float64) - want)
  assert np.all(err <= TOL[dtype] * scale + 1e-30)


@pytest.mark.parametrize(
  "shape,c_out,config",
  [
    ((2, 5, 7, 12), 20, None),
    ((1, 6, 6, 48), 24, MatmulConfig(block_m=16, block_n=32, block_k=16)),
  ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_interpret_matches_numpy(shape, c_out, config, dtype):
  x, w = _operands(shape, c_out, dtype)
  _assert_close(pointwise_conv(x, w, config=config, interpret=True), x, w, dtype)


def test_reference_matches_numpy():
  x, w = _operands((1, 3, 4, 5), 6, jnp.float32, seed=1)
  _assert_close(pointwise_conv_reference(x, w), x, w, jnp.float32)


def test_grad_matches_numpy():
  x, w = _operands((2, 3, 5, 7), 9, jnp.float32, seed=2)
  g = np.random.default_rng(3).standard_normal((2, 3, 5, 9))
  dx, dw = jax.grad(lambda x, w: jnp.sum(pointwise_conv(x, w, interpret=True) * g),
                    argnums=(0, 1))(x, w)
  np.testing.assert_allclose(dx, g @ np.asarray(w, np.float64).T, rtol=1e-4, atol=1e-4)
  want_dw = np.einsum("nhwc,nhwd->cd", np.asarray(x, np.float64), g)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-4)


def test_config_lookup_uses_gemm_shape():
  # The op's default tiles the [n*h*w, c_in] @ [c_in, c_out] GEMM: 2*5*7 = 70 rows -> block 128.
  cfg = lookup_config("pointwise_conv", ((2, 5, 7, 12), (12, 20)), jnp.float32, "cpu")
  assert (cfg.block_m, cfg.block_n, cfg.block_k) == (128, 32, 16)


def test_bad_inputs_name_values():
  x, w = _operands((1, 4, 4, 8), 3, jnp.float32)
  with pytest.raises(ValueError, match=r"x.shape=\(1, 4, 4, 8\) has c_in=8.*w.shape=\(6, 3\)"):
    pointwise_conv(x, w[:6], interpret=True)
  with pytest.raises(ValueError, match=r"x.dtype=float32, w.dtype=bfloat16"):
    pointwise_conv(x, w.astype(jnp.bfloat16), interpret=True)
  with pytest.raises(ValueError, match=r"x \[n, h, w, c_in\]"):
    pointwise_conv(x[0], w, interpret=True)


@pytest.mark.parametrize(
  "target,config",
  [
    ("h100", MatmulConfig(block_m=64, block_n=32, block_k=32, num_warps=4, num_stages=2)),
    ("h100", MatmulConfig(block_m=128, block_n=64, block_k=64, num_warps=8, num_stages=3)),
    ("tpu-v5e", MatmulConfig(block_m=128, block_n=128, block_k=128)),
    ("tpu-v5e", MatmulConfig(block_m=256, block_n=128, block_k=64)),
  ],
)
def test_deviceless_compile(target, config):
  x = jax.ShapeDtypeStruct((2, 14, 14, 64), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((64, 128), jnp.bfloat16)
  exe = targets.compile_for(lambda x, w: pointwise_conv(x, w, config=config), x, w,
                            target=target)
  want = {"h100": "__gpu$xla.gpu.triton", "tpu-v5e": "tpu_custom_call"}[target]
  assert want in exe.as_text()
