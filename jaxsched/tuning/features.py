"""Cost-model features from a lowered loop nest (``jaxsched.pipelines`` ``Pipeline.lower()``).

Two forms, both invariant across workloads (log-scaled sizes, ratios, kinds; no names):

* :func:`loop_nest_vector`: a fixed-width summary vector (for xgb / MLP, and transfer);
* :func:`loop_nest_tree`: a :class:`~jaxsched.tuning.cost_models.Tree` with one node per
  Loop / Realize / Compute (for the TreeGRU), under a virtual root joining the forest.

Nodes are read by duck typing (``extent``/``kind`` = loop, ``points`` = compute, ``bytes`` =
storage), so this module does not import the pipeline package.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxsched.tuning.cost_models import Tree

__all__ = ["LOOP_KINDS", "NODE_FEATURES", "loop_nest_tree", "loop_nest_vector"]

LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled", "tile")

_VECTOR_KEYS = (
  "stages", "points", "flops", "bytes_read", "bytes_written", "intensity", "max_recompute",
  "storage_bytes", "tile_loops", "tile_iterations", "parallel_extent", "vector_width",
)

# Per-node feature layout of loop_nest_tree. The virtual root carries the whole nest's summary
# (loop_nest_vector) in the ``nest_*`` columns: totals are sums of products over nodes, which a
# small tree model would otherwise have to learn to form from a handful of measurements.
NODE_FEATURES = (
  "is_root", "is_loop", "is_realize", "is_compute",
  *(f"kind_{k}" for k in LOOP_KINDS),
  "log_extent", "log_bytes", "log_points", "log_ops", "log_bytes_read", "log_bytes_written",
  "recompute", "log_intensity",
  *(f"nest_{k}" for k in _VECTOR_KEYS),
)


def _log(x: float) -> float:
  return math.log2(1.0 + max(float(x), 0.0))


def _node_vector(node: Any) -> np.ndarray:
  f = dict.fromkeys(NODE_FEATURES, 0.0)
  if hasattr(node, "extent") and hasattr(node, "kind"):
    f["is_loop"] = 1.0
    if node.kind in LOOP_KINDS:
      f[f"kind_{node.kind}"] = 1.0
    f["log_extent"] = _log(node.extent)
  elif hasattr(node, "points"):
    f["is_compute"] = 1.0
    f["log_points"] = _log(node.points)
    f["log_ops"] = _log(node.ops)
    f["log_bytes_read"] = _log(node.bytes_read)
    f["log_bytes_written"] = _log(node.bytes_written)
    f["recompute"] = float(node.recompute)
    traffic = node.bytes_read + node.bytes_written
    f["log_intensity"] = _log(node.ops * node.points / max(traffic, 1))
  elif hasattr(node, "bytes"):
    f["is_realize"] = 1.0
    f["log_bytes"] = _log(node.bytes)
  else:
    raise TypeError(f"unknown loop-nest node {type(node).__name__}: expected a Loop, Realize "
                    "or Compute")
  return np.array([f[k] for k in NODE_FEATURES], np.float32)


def loop_nest_tree(nest: Any) -> Tree:
  """The loop nest as a post-order :class:`Tree` (a virtual root joins ``nest.roots``)."""
  feats: list[np.ndarray] = []
  children: list[tuple[int, ...]] = []

  def visit(node: Any) -> int:
    kids = tuple(visit(c) for c in getattr(node, "children", []))
    feats.append(_node_vector(node))
    children.append(kids)
    return len(feats) - 1

  tops = tuple(visit(r) for r in nest.roots)
  root = np.zeros(len(NODE_FEATURES), np.float32)
  root[0] = 1.0
  root[NODE_FEATURES.index(f"nest_{_VECTOR_KEYS[0]}") :] = loop_nest_vector(nest)
  feats.append(root)
  children.append(tops)
  return Tree(np.stack(feats), tuple(children))


def loop_nest_vector(nest: Any) -> np.ndarray:
  """``nest.features()`` as a fixed-order vector, sizes log-scaled (``float32[12]``)."""
  f = nest.features()
  missing = [k for k in _VECTOR_KEYS if k not in f]
  if missing:
    raise ValueError(f"loop-nest features lack {missing}; got {sorted(f)}")
  ratios = {"intensity", "max_recompute"}
  return np.array([f[k] if k in ratios else _log(f[k]) for k in _VECTOR_KEYS], np.float32)
