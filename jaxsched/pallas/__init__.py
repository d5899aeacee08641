"""jaxsched.pallas: tunable Pallas kernels and deviceless compilation targets.

Kernels (one module each: kernel, validating wrapper, ``*_reference`` in jnp):
:func:`matmul`, :func:`depthwise_conv2d`, :func:`pointwise_conv`. Each takes ``config=`` (a frozen
dataclass whose fields declare their allowed choices; None looks one up), ``interpret=`` and
``target=`` (a :mod:`targets` name; None uses the target ``targets.compile_for`` is building for,
else the local backend). :func:`search_space` enumerates the valid configs of an op for a
problem on a target; the tuner consumes exactly that.
"""

from jaxsched.pallas import config, pipeline_backend, targets  # pipeline_backend: backend "pallas"
from jaxsched.pallas.config import default_config, lookup_config, search_space
from jaxsched.pallas.depthwise_conv import (
  DepthwiseConvConfig,
  depthwise_conv2d,
  depthwise_conv2d_reference,
)
from jaxsched.pallas.matmul import MatmulConfig, matmul, matmul_reference
from jaxsched.pallas.pointwise_conv import pointwise_conv, pointwise_conv_reference

__all__ = [
  "DepthwiseConvConfig",
  "depthwise_conv2d",
  "depthwise_conv2d_reference",
  "MatmulConfig",
  "config",
  "default_config",
  "lookup_config",
  "matmul",
  "matmul_reference",
  "pipeline_backend",
  "pointwise_conv",
  "pointwise_conv_reference",
  "search_space",
  "targets",
]
