"""jaxsched.pallas.matmul: interpret mode vs numpy float64, grads, errors, deviceless compile."""

import os

# Several processes may load libtpu at once here (parallel test runs): allow it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax.experimental.pallas import tpu as pltpu  # noqa: E402

from jaxsched.pallas import MatmulConfig, matmul, matmul_reference, targets  # noqa: E402

# Error bound relative to (|a| @ |b|): f32 accumulation; bf16 adds one output rounding.
TOL = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2}


def _operands(m, k, n, dtype, seed=0):
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.standard_normal((m, k)), dtype)
  b = jnp.asarray(rng.standard_normal((k, n)), dtype)
  return a, b


def _assert_matmul_close(out, a, b, dtype):
  a64 = np.asarray(a, np.float64)
  b64 = np.asarray(b, np.float64)
  want = a64 @ b64
  scale = np.abs(a64) @ np.abs(b64)
  err = np.abs(np.asarray(out, np.float64) - want)
  assert out.shape == want.shape
  assert out.dtype == dtype
  assert np.all(err <= TOL[dtype] * scale + 1e-30), float(np.max(err / scale))


@pytest.mark.parametrize(
  "m,k,n,config",
  [
    (37, 70, 45, MatmulConfig(block_m=16, block_n=16, block_k=32)),
    (37, 70, 45, None),
    (64, 128, 32, MatmulConfig(block_m=32, block_n=32, block_k=64)),
    (1, 19, 300, MatmulConfig(block_m=16, block_n=128, block_k=16)),
  ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_interpret_matches_numpy(m, k, n, config, dtype):
  a, b = _operands(m, k, n, dtype)
  out = matmul(a, b, config=config, interpret=True)
  _assert_matmul_close(out, a, b, dtype)


@settings(max_examples=8)  # each example re-traces the kernel (~0.3 s)
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 99))
def test_any_shape_is_padded_correctly(m, k, n, seed):
  a, b = _operands(m, k, n, jnp.float32, seed=seed)
  out = matmul(a, b, config=MatmulConfig(block_m=16, block_n=16, block_k=16), interpret=True)
  _assert_matmul_close(out, a, b, jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tpu_variant_interpret(dtype):
  # The TPU kernel (k grid axis + VMEM accumulator) in plain interpret mode.
  a, b = _operands(40, 300, 130, dtype, seed=1)
  cfg = MatmulConfig(block_m=16, block_n=128, block_k=128)
  out = matmul(a, b, config=cfg, interpret=True, target="tpu-v5e")
  _assert_matmul_close(out, a, b, dtype)


def test_tpu_interpret_params():
  # TPU-faithful interpreter: the grid variant with a 2 x 2 x 2 grid.
  a, b = _operands(32, 32, 20, jnp.float32, seed=2)
  cfg = MatmulConfig(block_m=16, block_n=16, block_k=16)
  out = matmul(a, b, config=cfg, interpret=pltpu.InterpretParams())
  _assert_matmul_close(out, a, b, jnp.float32)


def test_reference_matches_numpy():
  a, b = _operands(9, 13, 7, jnp.bfloat16, seed=3)
  _assert_matmul_close(matmul_reference(a, b), a, b, jnp.bfloat16)


@pytest.mark.parametrize("target", [None, "tpu-v5e"])
def test_grad_matches_numpy(target):
  a, b = _operands(21, 33, 18, jnp.float32, seed=4)
  g = np.random.default_rng(5).standard_normal((21, 18))

  def loss(a, b):
    return jnp.sum(matmul(a, b, interpret=True, target=target) * g)

  da, db = jax.grad(loss, argnums=(0, 1))(a, b)
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(da, g @ b64.T, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(db, a64.T @ g, rtol=1e-4, atol=1e-4)


def test_jit_and_vmap_compose():
  a, b = _operands(16, 24, 8, jnp.float32, seed=6)
  f = jax.jit(lambda a, b: matmul(a, b, interpret=True) * 2.0)
  _assert_matmul_close(f(a, b) / 2.0, a, b, jnp.float32)


def test_bad_inputs_name_values():
  a, b = _operands(8, 12, 4, jnp.float32)
  with pytest.raises(ValueError, match=r"a.shape=\(8, 12\), b.shape=\(10, 4\)"):
    matmul(a, b[:10], interpret=True)
  with pytest.raises(ValueError, match=r"a.dtype=float32, b.dtype=bfloat16"):
    matmul(a, b.astype(jnp.bfloat16), interpret=True)
  with pytest.raises(ValueError, match=r"dtype='float16'.*valid dtypes"):
    matmul(a.astype(jnp.float16), b.astype(jnp.float16), interpret=True)
  with pytest.raises(ValueError, match=r"two 2-D operands"):
    matmul(a[None], b, interpret=True)
  with pytest.raises(ValueError, match=r"interpret=True"):
    matmul(a, b, target="cpu")
  with pytest.raises(ValueError, match=r"unknown target 'a100'.*h100"):
    matmul(a, b, target="a100")
  with pytest.raises(TypeError, match=r"MatmulConfig"):
    matmul(a, b, config={"block_m": 16}, interpret=True)


def test_illegal_configs_rejected():
  with pytest.raises(ValueError, match=r"block_m=48 .*valid choices: \(16, 32"):
    MatmulConfig(block_m=48)
  with pytest.raises(ValueError, match=r"num_warps=3"):
    MatmulConfig(num_warps=3)
  # TPU lane rule: block_n=64 neither a multiple of 128 nor covering n=300.
  a, b = _operands(16, 128, 300, jnp.float32)
  with pytest.raises(ValueError, match=r"block_n=64 must be a multiple of 128 or cover n=300"):
    matmul(a, b, config=MatmulConfig(block_n=64, block_k=128), interpret=True, target="tpu-v5e")


CUSTOM_CALL = {"h100": "__gpu$xla.gpu.triton", "tpu-v5e": "tpu_custom_call"}


def _compile(target, m, k, n, dtype, config):
  spec_a = jax.ShapeDtypeStruct((m, k), dtype)
  spec_b = jax.ShapeDtypeStruct((k, n), dtype)
  return targets.compile_for(lambda a, b: matmul(a, b, config=config), spec_a, spec_b,
                             target=target)


@pytest.mark.parametrize(
  "target,config",
  [
    ("h100", MatmulConfig(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=2)),
    ("h100", MatmulConfig(block_m=16, block_n=32, block_k=16, num_warps=2, num_stages=1)),
    ("tpu-v5e", MatmulConfig(block_m=128, block_n=128, block_k=128)),
    ("tpu-v5e", MatmulConfig(block_m=64, block_n=256, block_k=256)),
  ],
)
def test_deviceless_compile(target, config):
  text = _compile(target, 200, 256, 256, jnp.bfloat16, config).as_text()
  # The kernel reached the target's real compiler as a custom call (Triton or Mosaic).
  assert CUSTOM_CALL[target] in text
  assert "jaxsched_matmul" in text


def test_deviceless_compile_default_config_odd_shape():
  for target in ("h100", "tpu-v5e"):
    assert CUSTOM_CALL[target] in _compile(target, 37, 70, 45, jnp.float32, None).as_text()


def test_h100_shared_memory_overflow_rejected_by_compiler():
  # (256*128 + 128*256) f32 * 4 stages = 1 MiB of shared memory > 227 KiB.
  cfg = MatmulConfig(block_m=256, block_n=256, block_k=128, num_warps=8, num_stages=4)
  with pytest.raises(targets.CompileError, match=r"Shared memory size limit exceeded") as info:
    _compile("h100", 256, 256, 256, jnp.float32, cfg)
  assert "232448" in info.value.compiler_message
