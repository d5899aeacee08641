"""Prune every large 2-D weight of a parameter tree (e.g. a restored checkpoint) with a VD."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxsched.sparse._decompressor import ViterbiDecompressor
from jaxsched.sparse._format import ViterbiSparseMatrix, index_cost_report
from jaxsched.sparse._prune import viterbi_prune

__all__ = ["prune_checkpoint"]


def prune_checkpoint(
    params: Any,
    *,
    vd: ViterbiDecompressor,
    sparsity: float,
    min_size: int = 4096,
    include: Callable[[str, jax.Array], bool] | None = None,
    **prune_kwargs: Any,
) -> tuple[Any, dict[str, dict]]:
  """Replaces the prunable leaves of ``params`` by :class:`ViterbiSparseMatrix` es.

  A leaf is pruned when it is a 2-D floating array ``[K, N]`` (a dense kernel, ``x @ W``
  layout) with at least ``min_size`` elements and ``include(path, leaf)`` (if given) is true.
  No I/O: load and save the tree in the driver (the ``jaxsched prune`` CLI).

  Args:
    params: a pytree of arrays.
    vd: the decompressor used for every pruned leaf.
    sparsity: target sparsity of every pruned leaf.
    min_size: smaller leaves are left dense.
    include: optional ``(path_string, leaf) -> bool`` filter.
    **prune_kwargs: forwarded to :func:`viterbi_prune` (``tile_k``, ``tile_n``, ...).

  Returns:
    ``(new_params, report)``; ``report[path]`` holds ``matrix.stats`` and the
    :func:`index_cost_report` of that leaf.
  """
  report: dict[str, dict] = {}

  def visit(path, leaf):
    name = jax.tree_util.keystr(path)
    arr = jnp.asarray(leaf)
    if (arr.ndim != 2 or not jnp.issubdtype(arr.dtype, jnp.floating) or arr.size < min_size
        or (include is not None and not include(name, arr))):
      return leaf
    m = viterbi_prune(arr, vd=vd, sparsity=sparsity, **prune_kwargs)
    report[name] = {"stats": m.stats, "index_cost": index_cost_report(m)}
    return m

  new = jax.tree_util.tree_map_with_path(
      visit, params, is_leaf=lambda x: isinstance(x, ViterbiSparseMatrix))
  return new, report
