"""Gradual magnitude pruning (Zhu & Gupta 2017) as an optax transformation wrapper.

`gradual_pruning` wraps any optax `GradientTransformation`: it keeps a boolean mask per parameter
in its state, re-prunes by magnitude every `frequency` steps following `polynomial_sparsity`,
keeps pruned weights at exactly zero and freezes the masks after `end_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
  "GradualPruningState",
  "SCOPES",
  "default_prunable",
  "gradual_pruning",
  "polynomial_sparsity",
  "sparsity_report",
]

SCOPES = ("layer", "global")


def _check_schedule(initial, final, begin_step, end_step, frequency, power) -> None:
  if not 0.0 <= initial <= final < 1.0:
    raise ValueError(f"need 0 <= {initial=} <= {final=} < 1")
  if not 0 <= begin_step < end_step:
    raise ValueError(f"need 0 <= {begin_step=} < {end_step=}")
  if frequency < 1:
    raise ValueError(f"{frequency=} must be >= 1")
  if power <= 0:
    raise ValueError(f"{power=} must be > 0")


def polynomial_sparsity(
  step: int | jax.Array,
  *,
  initial: float,
  final: float,
  begin_step: int,
  end_step: int,
  frequency: int = 1,
  power: float = 3,
) -> jax.Array:
  """Zhu & Gupta's schedule s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^power.

  t is the latest pruning step <= `step`; pruning steps are begin_step + k * frequency within
  [begin_step, end_step], plus end_step itself (so the final sparsity is always reached). The
  value is `initial` before begin_step and `final` after end_step.

  Args:
    step: Current optimizer step (may be traced).
    initial: s_i, sparsity at begin_step.
    final: s_f, sparsity from end_step on.
    begin_step: t0.
    end_step: t0 + n dt.
    frequency: dt, steps between pruning events.
    power: Exponent of the decay (3 in the paper).

  Returns:
    The target sparsity as a float32 scalar.
  """
  _check_schedule(initial, final, begin_step, end_step, frequency, power)
  step = jnp.asarray(step)
  t = begin_step + (jnp.maximum(step - begin_step, 0) // frequency) * frequency
  t = jnp.where(step >= end_step, end_step, jnp.minimum(t, end_step))
  frac = (t - begin_step).astype(jnp.float32) / (end_step - begin_step)
  return jnp.asarray(final + (initial - final) * (1.0 - frac) ** power, jnp.float32)


def _is_prune_step(step: jax.Array, begin_step: int, end_step: int, frequency: int) -> jax.Array:
  in_range = (step >= begin_step) & (step <= end_step)
  return in_range & (((step - begin_step) % frequency == 0) | (step == end_step))


def default_prunable(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  """Prunes weight matrices and kernels (ndim >= 2); keeps biases, norms and embeddings."""
  del path
  return leaf.ndim >= 2


class GradualPruningState(NamedTuple):
  """State of `gradual_pruning`."""

  count: jax.Array  # [] int32, number of updates applied so far
  masks: Any  # pytree like params of bool; True = kept (all True for unprunable leaves)
  inner_state: optax.OptState


def _keep_mask(magnitudes: jax.Array, sparsity: jax.Array) -> jax.Array:
  """Keeps all but the round(sparsity * n) smallest entries of a flat array (ties by index)."""
  n = magnitudes.shape[0]
  k = jnp.round(sparsity * n).astype(jnp.int32)
  order = jnp.argsort(magnitudes, stable=True)
  ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return ranks >= k


def gradual_pruning(
  inner: optax.GradientTransformation,
  *,
  schedule_kwargs: Mapping[str, Any],
  scope: str = "layer",
  prunable: Callable[[tuple[Any, ...], jax.Array], bool] = default_prunable,
) -> optax.GradientTransformation:
  """Wraps `inner` with gradual magnitude pruning.

  At every pruning step (see `polynomial_sparsity`) the masks are recomputed so that the target
  fraction of the prunable weights with the smallest magnitude (after this step's update) is
  zero, per layer or over all prunable weights together. Gradients of pruned weights are zeroed
  before `inner` sees them, and the emitted updates set pruned weights to exactly zero. Masks are
  frozen after end_step.

  Args:
    inner: The optimizer to wrap.
    schedule_kwargs: Keyword arguments of `polynomial_sparsity` (initial, final, begin_step,
      end_step, frequency, power).
    scope: "layer" (each prunable leaf reaches the target) or "global" (one magnitude threshold).
    prunable: Predicate (path, leaf) -> bool selecting the leaves to prune.

  Returns:
    An optax GradientTransformation whose update requires `params`.
  """
  if scope not in SCOPES:
    raise ValueError(f"unknown {scope=}; valid choices: {SCOPES}")
  kw = dict(schedule_kwargs)
  allowed = {"initial", "final", "begin_step", "end_step", "frequency", "power"}
  if unknown := set(kw) - allowed:
    raise ValueError(f"unknown schedule_kwargs {sorted(unknown)}; valid: {sorted(allowed)}")
  kw.setdefault("initial", 0.0)
  kw.setdefault("frequency", 1)
  kw.setdefault("power", 3)
  if missing := {"final", "begin_step", "end_step"} - set(kw):
    raise ValueError(f"schedule_kwargs is missing {sorted(missing)}")
  _check_schedule(**kw)

  def init_fn(params):
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    return GradualPruningState(jnp.zeros([], jnp.int32), masks, inner.init(params))

  def new_masks(weights, masks, sparsity):
    flags = jax.tree_util.tree_map_with_path(prunable, weights)
    leaves, treedef = jax.tree.flatten(weights)
    flag_leaves = treedef.flatten_up_to(flags)
    mask_leaves = treedef.flatten_up_to(masks)
    # Pruned weights count as magnitude 0, so they stay pruned while sparsity only grows.
    mags = [jnp.abs(w * m).ravel() for w, m in zip(leaves, mask_leaves, strict=True)]
    out = [jnp.ones(w.shape, bool) for w in leaves]
    idx = [i for i, f in enumerate(flag_leaves) if f]
    if scope == "layer":
      for i in idx:
        out[i] = _keep_mask(mags[i], sparsity).reshape(leaves[i].shape)
    elif idx:
      keep = _keep_mask(jnp.concatenate([mags[i] for i in idx]), sparsity)
      offsets = np.cumsum([0] + [mags[i].shape[0] for i in idx])
      for j, i in enumerate(idx):
        out[i] = keep[offsets[j] : offsets[j + 1]].reshape(leaves[i].shape)
    return treedef.unflatten(out)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("gradual_pruning needs params: call update(updates, state, params)")
    step = state.count
    updates = jax.tree.map(lambda g, m: jnp.where(m, g, 0), updates, state.masks)
    updates, inner_state = inner.update(updates, state.inner_state, params)
    proposed = jax.tree.map(lambda p, u: p + u, params, updates)
    sparsity = polynomial_sparsity(step, **kw)
    masks = jax.lax.cond(
      _is_prune_step(step, kw["begin_step"], kw["end_step"], kw["frequency"]),
      lambda: new_masks(proposed, state.masks, sparsity),
      lambda: state.masks,
    )
    # p + (0 - p) == 0 exactly in IEEE arithmetic, so pruned weights are exact zeros.
    updates = jax.tree.map(
      lambda p, q, m: jnp.where(m, q, 0).astype(p.dtype) - p, params, proposed, masks
    )
    return updates, GradualPruningState(step + 1, masks, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def sparsity_report(params: Any, masks: Any | None = None) -> dict[str, Any]:
  """Sizes, nonzeros and sparsity per leaf and in total.

  Args:
    params: A pytree of arrays.
    masks: Optional pytree of bool masks like params (e.g. `GradualPruningState.masks`); weights
      are multiplied by them before counting.

  Returns:
    {"layers": {path: {"size", "nonzeros", "sparsity"}}, "size", "nonzeros", "sparsity"}.
  """
  if masks is not None:
    params = jax.tree.map(lambda p, m: p * m, params, masks)
  layers = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.size(leaf))
    nnz = int(np.count_nonzero(np.asarray(leaf)))
    layers[jax.tree_util.keystr(path)] = dict(
      size=size, nonzeros=nnz, sparsity=1.0 - nnz / size if size else 0.0
    )
  size = sum(v["size"] for v in layers.values())
  nnz = sum(v["nonzeros"] for v in layers.values())
  return dict(layers=layers, size=size, nonzeros=nnz, sparsity=1.0 - nnz / size if size else 0.0)
