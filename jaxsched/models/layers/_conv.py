"""NNX depthwise and pointwise convolution layers on jaxsched's Pallas kernels.

Both layers take ``kernels="pallas"`` (the jaxsched kernels, custom VJPs included) or
``kernels="xla"`` (the ``*_reference`` jnp/lax ops, i.e. plain XLA), so a model can switch paths
without changing its parameters. Parameters are stored in ``param_dtype`` and cast to the input's
dtype for the op (the kernels need matching dtypes; they accumulate in float32).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsched.pallas import (
  DepthwiseConvConfig,
  MatmulConfig,
  depthwise_conv2d,
  depthwise_conv2d_reference,
  pointwise_conv,
  pointwise_conv_reference,
)

__all__ = ["DepthwiseConv", "PointwiseConv"]

_KERNELS = ("pallas", "xla")
_DEFAULT_INIT = nnx.initializers.lecun_normal()


def _check_kernels(kernels: str) -> str:
  if kernels not in _KERNELS:
    raise ValueError(f"{kernels=} is not a valid kernel choice; valid choices: {_KERNELS}")
  return kernels


class DepthwiseConv(nnx.Module):
  """Depthwise k x k convolution on NHWC inputs (one filter per channel) plus optional bias.

  The kernel has shape ``[k, k, 1, features]``, the layout of
  ``nnx.Conv(features, features, k, feature_group_count=features)``, so weights port across.

  Args:
    features: channels ``c`` of the input and output.
    kernel_size: ``k``.
    strides: 1 or 2.
    padding: ``"SAME"`` or ``"VALID"``.
    use_bias: add a per-channel bias.
    kernels: ``"pallas"`` (jaxsched kernel) or ``"xla"`` (``lax.conv_general_dilated``).
    interpret: Pallas interpret mode (needed on CPU); ignored by ``"xla"``.
    config: kernel tiling; None looks one up per call.
    param_dtype: dtype the parameters are stored in.
    kernel_init: initializer of the ``[k, k, 1, features]`` kernel.
    rngs: random streams; ``rngs.params`` initializes the kernel.
  """

  def __init__(
    self,
    features: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    kernels: str = "pallas",
    interpret: Any = False,
    config: DepthwiseConvConfig | None = None,
    param_dtype: Any = jnp.float32,
    kernel_init: nnx.Initializer = _DEFAULT_INIT,
    rngs: nnx.Rngs,
  ):
    if features < 1 or kernel_size < 1:
      raise ValueError(f"{features=} and {kernel_size=} must be positive")
    self.features = features
    self.kernel_size = kernel_size
    self.strides = strides
    self.padding = padding
    self.kernels = _check_kernels(kernels)
    self.interpret = interpret
    self.config = config
    self.kernel = nnx.Param(
      kernel_init(rngs.params(), (kernel_size, kernel_size, 1, features), param_dtype)
    )
    self.bias = nnx.Param(jnp.zeros((features,), param_dtype)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, features]`` -> ``[n, ho, wo, features]`` in ``x``'s dtype."""
    w = self.kernel[...].astype(x.dtype)
    if self.kernels == "pallas":
      y = depthwise_conv2d(
        x,
        w,
        stride=self.strides,
        padding=self.padding,
        config=self.config,
        interpret=self.interpret,
      )
    else:
      y = depthwise_conv2d_reference(x, w, stride=self.strides, padding=self.padding)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class PointwiseConv(nnx.Module):
  """1x1 convolution (a per-pixel dense layer) on NHWC inputs plus optional bias.

  Args:
    in_features: input channels.
    out_features: output channels.
    use_bias: add a per-channel bias.
    kernels: ``"pallas"`` (jaxsched matmul kernel) or ``"xla"`` (``jnp.einsum``).
    interpret: Pallas interpret mode (needed on CPU); ignored by ``"xla"``.
    config: matmul blocks; None looks one up per call.
    param_dtype: dtype the parameters are stored in.
    kernel_init: initializer of the ``[in_features, out_features]`` kernel.
    rngs: random streams; ``rngs.params`` initializes the kernel.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    kernels: str = "pallas",
    interpret: Any = False,
    config: MatmulConfig | None = None,
    param_dtype: Any = jnp.float32,
    kernel_init: nnx.Initializer = _DEFAULT_INIT,
    rngs: nnx.Rngs,
  ):
    if in_features < 1 or out_features < 1:
      raise ValueError(f"{in_features=} and {out_features=} must be positive")
    self.in_features = in_features
    self.out_features = out_features
    self.kernels = _check_kernels(kernels)
    self.interpret = interpret
    self.config = config
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_features]`` -> ``[n, h, w, out_features]`` in ``x``'s dtype."""
    if x.shape[-1] != self.in_features:
      raise ValueError(
        f"PointwiseConv expects {self.in_features} input channels, got x.shape={x.shape}"
      )
    w = self.kernel[...].astype(x.dtype)
    if self.kernels == "pallas":
      y = pointwise_conv(x, w, config=self.config, interpret=self.interpret)
    else:
      y = pointwise_conv_reference(x, w)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y
