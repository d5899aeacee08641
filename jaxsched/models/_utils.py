"""Parameter counting helpers."""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

__all__ = ["count_nonzeros", "count_params"]


def count_params(model: nnx.Module | nnx.State) -> int:
  """Number of learnable (nnx.Param) scalars; shared submodules count once.

  Works on abstract models from `nnx.eval_shape` too.
  """
  state = model if isinstance(model, nnx.State) else nnx.state(model, nnx.Param)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))


def count_nonzeros(model: nnx.Module | nnx.State) -> int:
  """Number of nonzero learnable scalars."""
  state = model if isinstance(model, nnx.State) else nnx.state(model, nnx.Param)
  return int(sum(np.count_nonzero(np.asarray(x)) for x in jax.tree.leaves(state)))
