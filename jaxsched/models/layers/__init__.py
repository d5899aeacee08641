"""NNX layers that run on jaxsched's own kernels (drop-in for user Flax models)."""

from jaxsched.models.layers._conv import DepthwiseConv, PointwiseConv
from jaxsched.models.layers._viterbi import ViterbiDense, ViterbiIndex

__all__ = [
  "DepthwiseConv",
  "PointwiseConv",
  "ViterbiDense",
  "ViterbiIndex",
]
