"""Deviceless AOT compilation harness: real Triton and Mosaic compilers, no device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from jaxsched.pallas import targets


def _params(target, grid_rank=1):
  if target.kind == "gpu":
    return plgpu.CompilerParams(num_warps=4, num_stages=2)
  return pltpu.CompilerParams(dimension_semantics=("parallel",) * grid_rank)


def _matmul_rows(a, b, *, block_m):
  """Row-blocked a @ b with the whole of b resident: its footprint is what we vary."""
  target = targets.active_target()

  def kernel(a_ref, b_ref, o_ref):
    o_ref[...] = jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

  m, k = a.shape
  n = b.shape[1]
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32),
      grid=(m // block_m,),
      in_specs=[
          pl.BlockSpec((block_m, k), lambda i: (i, 0)),
          pl.BlockSpec((k, n), lambda i: (0, 0)),
      ],
      out_specs=pl.BlockSpec((block_m, n), lambda i: (i, 0)),
      compiler_params=_params(target),
  )(a, b)


def test_available_targets_lists_h100_and_v5e():
  assert {"h100", "tpu-v5e"} <= set(targets.available_targets())


@pytest.mark.parametrize("target", ["h100", "tpu-v5e"])
def test_trivial_kernel_compiles(target):
  seen = []

  def add_one(x):
    seen.append(targets.active_target().name)

    def kernel(x_ref, o_ref):
      o_ref[...] = x_ref[...] + 1.0

    params = _params(targets.active_target(), grid_rank=0)
    return pl.pallas_call(kernel, out_shape=x, compiler_params=params)(x)

  exe = targets.compile_for(add_one, jax.ShapeDtypeStruct((8, 128), jnp.float32), target=target)
  assert seen == [target]
  assert targets.active_target() is None  # reset after compile_for
  assert exe.as_text()  # a real compiled module


@pytest.mark.parametrize("target", ["h100", "tpu-v5e"])
def test_matmul_block_compiles(target):
  spec = jax.ShapeDtypeStruct((256, 128), jnp.float32)
  fn = functools.partial(_matmul_rows, block_m=64)
  targets.compile_for(fn, spec, jax.ShapeDtypeStruct((128, 128), jnp.float32), target=target)


def test_h100_rejects_block_over_shared_memory_budget():
  # b alone is 512x512 f32 = 1 MiB: more than the H100's 227 KiB of opt-in shared memory.
  fn = functools.partial(_matmul_rows, block_m=256)
  a = jax.ShapeDtypeStruct((512, 512), jnp.float32)
  with pytest.raises(targets.CompileError) as info:
    targets.compile_for(fn, a, jax.ShapeDtypeStruct((512, 512), jnp.float32), target="h100")
  msg = info.value.compiler_message
  assert "Shared memory size limit exceeded" in msg
  assert str(targets.get_target("h100").smem_per_block_optin) in msg  # 232448, from h100.pbtxt
  assert "h100" in str(info.value)


def test_tpu_rejects_misaligned_block():
  # Mosaic needs the last two block dims divisible by (8, 128) or equal to the array dims.
  def fn(x):
    def kernel(x_ref, o_ref):
      o_ref[...] = x_ref[...] * 2.0

    return pl.pallas_call(
        kernel, out_shape=x, grid=(4,),
        in_specs=[pl.BlockSpec((16, 100), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((16, 100), lambda i: (i, 0)),
    )(x)

  with pytest.raises(targets.CompileError) as info:
    targets.compile_for(fn, jax.ShapeDtypeStruct((64, 200), jnp.float32), target="tpu-v5e")
  msg = str(info.value)
  # Mosaic's own rule, with the offending block width and the target named.
  assert "tpu-v5e" in msg and "divisible by 8 and 128" in msg and "100" in msg


def test_compile_for_accepts_arrays_and_unknown_target_lists_valid_ones():
  x = np.ones((8, 128), np.float32)
  targets.compile_for(lambda v: v * 2.0, x, target="h100")
  with pytest.raises(ValueError, match=r"unknown target 'a100'.*h100.*tpu-v5e"):
    targets.compile_for(lambda v: v, x, target="a100")
  with pytest.raises(ValueError, match="accelerator"):
    targets.compile_for(lambda v: v, x, target="cpu")


def test_resolve_target_order():
  assert targets.resolve_target().kind == "cpu"  # JAX_PLATFORMS=cpu in tests
  assert targets.resolve_target("tpu-v5e").block_rule == "tpu8x128"
  assert targets.get_target("h100").flops("bfloat16") > targets.get_target("h100").flops("float32")
