"""1x1 (pointwise) convolution on NHWC as a GEMM, delegating to :func:`~jaxsched.pallas.matmul`.

An NHWC tensor is already a row-major ``[n*h*w, c_in]`` matrix, so a 1x1 conv is the GEMM
``x.reshape(-1, c_in) @ w`` with no im2col: the reshape is free. Tunables, dtypes, padding,
accumulation (f32, result in the input dtype) and gradients (the matmul kernel on transposed
operands) are those of :func:`~jaxsched.pallas.matmul`; the config is a
:class:`~jaxsched.pallas.MatmulConfig` for the ``[n*h*w, c_in] @ [c_in, c_out]`` problem.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxsched.pallas import config as _config
from jaxsched.pallas import targets as _targets
from jaxsched.pallas.matmul import MatmulConfig, matmul
from jaxsched.pallas.matmul import _block_dims as _mm_block_dims
from jaxsched.pallas.matmul import _check as _mm_check
from jaxsched.pallas.matmul import _validate as _mm_validate

__all__ = ["pointwise_conv", "pointwise_conv_reference"]


def _gemm_shapes(shapes: _config.Shapes) -> _config.Shapes:
  x_shape, w_shape = shapes
  return ((math.prod(x_shape[:-1]), x_shape[-1]), tuple(w_shape))


def _validate(shapes: _config.Shapes, dtype: str, **params: Any) -> dict[str, Any]:
  if params:
    raise ValueError(f"pointwise_conv takes no op params, got {sorted(params)}")
  if len(shapes) != 2 or len(shapes[0]) != 4 or len(shapes[1]) != 2:
    raise ValueError(
      f"pointwise_conv needs x [n, h, w, c_in] and w [c_in, c_out], got {shapes=}"
    )
  x_shape, w_shape = shapes
  if x_shape[3] != w_shape[0]:
    raise ValueError(
      f"pointwise_conv channel mismatch: x.shape={x_shape} has c_in={x_shape[3]}, "
      f"w.shape={w_shape} expects c_in={w_shape[0]}"
    )
  return _mm_validate(_gemm_shapes(shapes), dtype)


def _check(cfg, shapes, dtype, target, *, hard_only):
  return _mm_check(cfg, _gemm_shapes(shapes), dtype, target, hard_only=hard_only)


def _block_dims(shapes: _config.Shapes) -> dict[str, int]:
  return _mm_block_dims(_gemm_shapes(shapes))


_config.register_op(
  _config.OpSpec(
    name="pointwise_conv",
    config_cls=MatmulConfig,
    validate=_validate,
    check=_check,
    block_dims=_block_dims,
  )
)


def pointwise_conv(
  x: jax.Array,
  w: jax.Array,
  *,
  config: MatmulConfig | None = None,
  interpret: Any = False,
  target: str | _targets.Target | None = None,
) -> jax.Array:
  """1x1 convolution ``out[n, h, w, :] = x[n, h, w, :] @ w`` with the Pallas matmul.

  Args:
    x: ``[n, h, w, c_in]`` float32 or bfloat16.
    w: ``[c_in, c_out]`` of the same dtype.
    config: matmul blocks for the ``[n*h*w, c_in] @ [c_in, c_out]`` GEMM; None looks one up
      under the op name ``"pointwise_conv"``.
    interpret: run in Pallas interpret mode: ``True`` or a ``pltpu.InterpretParams()``.
    target: target name or Target; None uses the active ``compile_for`` target, else the local
      backend (CPU requires ``interpret``).

  Returns:
    ``[n, h, w, c_out]`` in ``x``'s dtype.

  Raises:
    ValueError: bad shapes or dtypes, a config breaking the target's rules, CPU without
      interpret mode.
  """
  x_dtype, w_dtype = jnp.dtype(x.dtype), jnp.dtype(w.dtype)
  if x_dtype != w_dtype:
    raise ValueError(
      f"pointwise_conv operands must share a dtype, got x.dtype={x_dtype}, w.dtype={w_dtype}"
    )
  shapes = (tuple(x.shape), tuple(w.shape))
  _validate(shapes, x_dtype.name)
  tgt = _config.kernel_target(target, interpret)
  cfg = _config.resolve_config("pointwise_conv", config, shapes, x_dtype, tgt)
  out = matmul(
    x.reshape(-1, x.shape[-1]), w, config=cfg, interpret=interpret, target=tgt
  )
  return out.reshape(*x.shape[:-1], w.shape[1])


def pointwise_conv_reference(x: jax.Array, w: jax.Array) -> jax.Array:
  """1x1 conv in jnp (``einsum``) with f32 accumulation, result in ``x``'s dtype."""
  out = jnp.einsum("nhwc,cd->nhwd", x, w, preferred_element_type=jnp.float32)
  return out.astype(x.dtype)
