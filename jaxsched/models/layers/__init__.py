"""NNX layers that run on jaxsched's own kernels (drop-in for user Flax models)."""

from jaxsched.models.layers._conv import DepthwiseConv, PointwiseConv

__all__ = [
  "DepthwiseConv",
  "PointwiseConv",
]
