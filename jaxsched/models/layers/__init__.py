"""NNX layers that run on jaxsched's own kernels (drop-in for user Flax models)."""

from jaxsched.models.layers._conv import DepthwiseConv, PointwiseConv
from jaxsched.models.layers._viterbi import ViterbiConv, ViterbiDense, ViterbiIndex

__all__ = [
  "DepthwiseConv",
  "PointwiseConv",
  "ViterbiConv",
  "ViterbiDense",
  "ViterbiIndex",
]
