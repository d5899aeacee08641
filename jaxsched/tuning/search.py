"""Search: simulated annealing on a cost model, diverse top-k, tuners and the ``tune`` entry point.

The decomposition follows TVM's autotvm: a *Tuner* proposes batches (``next_batch``), learns from
measurements (``update``) and drives the loop (``tune``); the model-based tuner composes a
:mod:`cost model <jaxsched.tuning.cost_models>` with an optimizer over the space.

The optimizer is simulated annealing with the model as energy. When the model has a pure JAX form
(``jax_apply``) and features are the raw knob features, all chains run as one ``jax.vmap``'ed
``lax.scan`` over steps in a single jitted graph; otherwise the same algorithm runs chain-batched
on the host, calling ``model.predict`` once per step.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.tuning import cost_models as cm
from jaxsched.tuning import database as dbm
from jaxsched.tuning.measure import Measurer, MeasureResult
from jaxsched.tuning.space import SearchSpace, Task

__all__ = [
  "METHODS",
  "GATuner",
  "GridTuner",
  "ModelTuner",
  "RandomTuner",
  "TuneResult",
  "Tuner",
  "diverse_top_k",
  "simulated_annealing",
  "simulated_annealing_host",
  "tune",
]

BASELINES = ("random", "grid", "ga")


# Spaces with at most this many knob combinations draw random points from the explicit remainder.
SMALL_SPACE = 4096
# Model-based batches rank every unvisited valid point of spaces up to this size instead of
# annealing (each point's validity is checked, which may lower a pipeline: keep it small).
RANK_ALL_LIMIT = 1024


def _methods() -> tuple[str, ...]:
  return (*sorted(cm.COST_MODELS), *BASELINES)


METHODS = _methods()

# Simulated annealing -----------------------------------------------------------------------------


def _sa_propose(key: jax.Array, knobs: jax.Array, sizes: jax.Array, movable: jax.Array):
  """Changes one randomly chosen movable knob of ``knobs`` [D] to a different choice."""
  k_dim, k_val = jax.random.split(key)
  d = jax.random.choice(k_dim, movable.shape[0], p=movable / movable.sum())
  # Shift by 1..size-1 (mod size): always a different choice, uniform over the others.
  shift = 1 + jax.random.randint(k_val, (), 0, jnp.maximum(sizes[d] - 1, 1))
  return knobs.at[d].set((knobs[d] + shift) % sizes[d])


@functools.partial(jax.jit, static_argnames=("energy", "num_steps"))
def _sa_jax(energy, params, init, sizes, key, temps, *, num_steps):
  del num_steps  # Static only so that the scan length is part of the cache key.
  movable = (sizes > 1).astype(jnp.float32)
  batched_energy = jax.vmap(energy, in_axes=(None, 0))
  e0 = batched_energy(params, init)

  def step(carry, inputs):
    knobs, e = carry
    k, temp = inputs
    k_prop, k_acc = jax.random.split(k)
    chains = knobs.shape[0]
    prop = jax.vmap(_sa_propose, in_axes=(0, 0, None, None))(
      jax.random.split(k_prop, chains), knobs, sizes, movable
    )
    e_prop = batched_energy(params, prop)
    # Metropolis: always accept downhill, uphill with probability exp(-delta / T).
    accept = jax.random.uniform(k_acc, (chains,)) < jnp.exp(-(e_prop - e) / temp)
    knobs = jnp.where(accept[:, None], prop, knobs)
    e = jnp.where(accept, e_prop, e)
    return (knobs, e), (prop, e_prop)

  keys = jax.random.split(key, temps.shape[0])
  _, (points, energies) = jax.lax.scan(step, (init, e0), (keys, temps))
  d = init.shape[1]
  return (jnp.concatenate([init, points.reshape(-1, d)]),
          jnp.concatenate([e0, energies.reshape(-1)]))


def _temps(num_steps: int, t_start: float, t_end: float) -> np.ndarray:
  return np.linspace(t_start, t_end, num_steps, dtype=np.float32)


def simulated_annealing(
  energy: Callable[[Any, jax.Array], jax.Array],
  params: Any,
  sizes: Sequence[int],
  *,
  init: np.ndarray,
  key: jax.Array,
  num_steps: int = 500,
  t_start: float = 1.0,
  t_end: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
  """Vmapped simulated annealing: all chains advance together in one jitted ``lax.scan``.

  Args:
    energy: ``energy(params, knobs int32[D]) -> scalar`` (lower is better), pure and jittable;
      keep the same function object across calls to reuse the compiled graph.
    params: pytree passed to ``energy`` (e.g. model weights).
    sizes: number of choices per knob.
    init: ``int32[chains, D]`` starting points (one chain per row).
    key: PRNG key.
    num_steps: annealing steps; the temperature falls linearly from ``t_start`` to ``t_end``.

  Returns:
    ``(points int32[(steps + 1) * chains, D], energies float32[...])``: every visited proposal.
  """
  init = np.asarray(init, np.int32)
  sizes = np.asarray(sizes, np.int32)
  if init.ndim != 2 or init.shape[1] != sizes.shape[0]:
    raise ValueError(f"init must be [chains, {sizes.shape[0]}], got shape {init.shape}")
  if num_steps < 1:
    raise ValueError(f"{num_steps=} must be >= 1")
  pts, es = _sa_jax(energy, params, jnp.asarray(init), jnp.asarray(sizes), key,
                    jnp.asarray(_temps(num_steps, t_start, t_end)), num_steps=num_steps)
  return np.asarray(pts), np.asarray(es)


def simulated_annealing_host(
  energy: Callable[[np.ndarray], np.ndarray],
  sizes: Sequence[int],
  *,
  init: np.ndarray,
  rng: np.random.Generator,
  num_steps: int = 100,
  t_start: float = 1.0,
  t_end: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
  """The same annealing with a host-side batched ``energy(knobs int[chains, D]) -> [chains]``."""
  knobs = np.array(init, np.int32)
  sizes = np.asarray(sizes, np.int32)
  chains, _ = knobs.shape
  movable = np.flatnonzero(sizes > 1)
  e = np.asarray(energy(knobs), np.float64)
  pts, ens = [knobs.copy()], [e.copy()]
  if movable.size == 0:
    return knobs, e.astype(np.float32)
  for temp in _temps(num_steps, t_start, t_end):
    d = movable[rng.integers(0, movable.size, chains)]
    shift = 1 + (rng.random(chains) * (sizes[d] - 1)).astype(np.int32)
    prop = knobs.copy()
    prop[np.arange(chains), d] = (knobs[np.arange(chains), d] + shift) % sizes[d]
    e_prop = np.asarray(energy(prop), np.float64)
    with np.errstate(over="ignore"):
      accept = rng.random(chains) < np.exp(-(e_prop - e) / temp)
    knobs = np.where(accept[:, None], prop, knobs)
    e = np.where(accept, e_prop, e)
    pts.append(prop)
    ens.append(e_prop)
  return np.concatenate(pts), np.concatenate(ens).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _knob_energy(apply: Callable[[Any, jax.Array], jax.Array]) -> Callable[..., jax.Array]:
  """Composes the knob-feature lookup with a model's ``apply`` (cached: a stable static fn)."""

  def energy(params, knobs):
    table, model_params = params
    return apply(model_params, table[jnp.arange(knobs.shape[0]), knobs])

  return energy


def _padded_feature_table(space: SearchSpace) -> np.ndarray:
  table = np.zeros((space.ndim, int(space.sizes.max())), np.float32)
  for d, t in enumerate(space.feature_tables):
    table[d, : len(t)] = t
  return table


# Diverse top-k -----------------------------------------------------------------------------------


def diverse_top_k(
  knobs: np.ndarray, energies: np.ndarray, k: int, *, diversity: float = 0.5,
  pool: int | None = None,
) -> np.ndarray:
  """Greedy maximization of quality + facility-location coverage; returns row indices.

  Objective: ``F(S) = sum_{s in S} q(s) + diversity * mean_{c in pool} max_{s in S} sim(c, s)``,
  with ``q`` the energy rank-normalized to [0, 1] (1 = best) and ``sim`` the fraction of equal
  knobs. ``F`` is monotone submodular, so the greedy pick is within ``1 - 1/e`` of the optimum
  (given the first pick, which is always the predicted best); ``diversity=0`` is plain top-k.

  Args:
    knobs: ``int[M, D]`` candidates (distinct rows).
    energies: ``[M]`` predicted costs (lower is better).
    k: how many to pick.
    diversity: weight of the coverage term.
    pool: consider only the best ``pool`` candidates (default ``max(8 k, 64)``).
  """
  knobs = np.asarray(knobs)
  energies = np.asarray(energies, np.float64)
  m = knobs.shape[0]
  k = min(int(k), m)
  if k <= 0:
    return np.zeros((0,), np.int64)
  order = np.argsort(energies, kind="stable")[: min(m, pool or max(8 * k, 64))]
  cand = knobs[order]
  p = len(order)
  q = 1.0 - np.arange(p) / max(p - 1, 1)  # Rank-normalized quality of the sorted pool.
  sim = (cand[:, None, :] == cand[None, :, :]).mean(-1)  # [pool, pool]
  # The predicted best is always taken; the greedy steps then trade quality for coverage.
  chosen: list[int] = [0]
  available = np.ones(p, bool)
  available[0] = False
  cover = sim[:, 0].copy()
  for _ in range(k - 1):
    gain = q + diversity * np.maximum(sim - cover[:, None], 0.0).mean(0)
    gain[~available] = -np.inf
    j = int(np.argmax(gain))
    chosen.append(j)
    available[j] = False
    cover = np.maximum(cover, sim[:, j])
  return order[np.array(chosen)]


# Tuners ------------------------------------------------------------------------------------------


class Tuner:
  """Base tuner: tracks what was measured; subclasses implement ``next_batch``.

  Args:
    task: the tuning task.
    seed: seed of the tuner's randomness.
  """

  def __init__(self, task: Task, *, seed: int = 0):
    self.task = task
    self.space = task.space
    self.rng = np.random.default_rng(seed)
    self.seed = seed
    self.visited: set[int] = set()
    self.xs: list[np.ndarray] = []  # Measured knob vectors, in order.
    self.costs: list[float] = []  # Their costs (inf = failed).

  def has_next(self) -> bool:
    return len(self.visited) < self.space.size

  def next_batch(self, batch_size: int) -> list[np.ndarray]:
    """Up to ``batch_size`` unmeasured, valid knob vectors."""
    raise NotImplementedError

  def update(self, knobs: Sequence[np.ndarray], costs: Sequence[float]) -> None:
    """Learns from measured points (``inf`` cost = failed)."""
    for k, c in zip(knobs, costs, strict=True):
      k = np.asarray(k, np.int32)
      self.visited.add(int(self.space.knobs_to_index(k)))
      self.xs.append(k)
      self.costs.append(float(c))

  @property
  def best_cost(self) -> float:
    return min(self.costs, default=math.inf)

  @property
  def best_knobs(self) -> np.ndarray | None:
    if not self.costs or not np.isfinite(self.best_cost):
      return None
    return self.xs[int(np.argmin(self.costs))]

  def _random_unvisited(self, n: int, exclude: set[int] | None = None) -> list[np.ndarray]:
    """Random valid points not yet measured nor in ``exclude`` (may return fewer than ``n``)."""
    taken = set(self.visited) | (exclude or set())
    out: list[np.ndarray] = []
    if n <= 0:
      return out
    if self.space.size <= SMALL_SPACE:  # Small space: draw from the explicit remainder.
      rest = np.array([i for i in range(self.space.size) if i not in taken], np.int64)
      self.rng.shuffle(rest)
      for idx in rest:
        k = self.space.index_to_knobs(idx)
        if self.space.is_valid_knobs(k):
          out.append(k)
          if len(out) == n:
            break
      return out
    for _ in range(50 * n):
      k = (self.rng.random(self.space.ndim) * self.space.sizes).astype(np.int32)
      idx = int(self.space.knobs_to_index(k))
      if idx not in taken and self.space.is_valid_knobs(k):
        taken.add(idx)
        out.append(k)
        if len(out) == n:
          break
    return out

  def tune(
    self,
    measurer: Measurer,
    *,
    trials: int,
    batch_size: int = 16,
    callback: Callable[[Tuner, list[np.ndarray], list[MeasureResult]], None] | None = None,
  ) -> None:
    """Measures batches until ``trials`` points were measured (counting earlier ``update``s)."""
    while len(self.costs) < trials and self.has_next():
      batch = self.next_batch(min(batch_size, trials - len(self.costs)))
      if not batch:
        break
      results = measurer.measure([self.space.knobs_to_config(k) for k in batch])
      self.update(batch, [r.cost for r in results])
      if callback is not None:
        callback(self, batch, results)


class RandomTuner(Tuner):
  """Uniform random search without repeats."""

  def next_batch(self, batch_size: int) -> list[np.ndarray]:
    return self._random_unvisited(batch_size)


class GridTuner(Tuner):
  """Exhaustive search in index order (last knob fastest), skipping invalid points."""

  def __init__(self, task: Task, *, seed: int = 0):
    super().__init__(task, seed=seed)
    self._next = 0

  def next_batch(self, batch_size: int) -> list[np.ndarray]:
    out = []
    while len(out) < batch_size and self._next < self.space.size:
      idx = self._next
      self._next += 1
      if idx in self.visited:
        continue
      k = self.space.index_to_knobs(idx)
      if self.space.is_valid_knobs(k):
        out.append(k)
    return out

  def has_next(self) -> bool:
    return self._next < self.space.size


class GATuner(Tuner):
  """Genetic algorithm: rank-weighted parents, uniform crossover, per-knob mutation, elitism.

  Args:
    pop_size: population (the best ``pop_size`` measured points are the parents' pool).
    elite: how many of the best are always in the pool (they are not re-measured).
    mutation_prob: per-knob probability of a random new choice.
  """

  def __init__(self, task: Task, *, seed: int = 0, pop_size: int = 32, elite: int = 4,
               mutation_prob: float = 0.1):
    super().__init__(task, seed=seed)
    if pop_size < 2:
      raise ValueError(f"{pop_size=} must be >= 2")
    self.pop_size = pop_size
    self.elite = elite
    self.mutation_prob = mutation_prob

  def next_batch(self, batch_size: int) -> list[np.ndarray]:
    ok = [i for i, c in enumerate(self.costs) if np.isfinite(c)]
    if len(ok) < 2:
      return self._random_unvisited(batch_size)
    ranked = sorted(ok, key=lambda i: self.costs[i])[: self.pop_size]
    parents = np.stack([self.xs[i] for i in ranked])
    weights = 1.0 / (1.0 + np.arange(len(ranked)))  # Rank-based fitness.
    weights /= weights.sum()
    out: list[np.ndarray] = []
    taken: set[int] = set()
    for _ in range(20 * batch_size):
      if len(out) == batch_size:
        break
      a, b = parents[self.rng.choice(len(parents), 2, p=weights)]
      child = np.where(self.rng.random(self.space.ndim) < 0.5, a, b)
      mutate = self.rng.random(self.space.ndim) < self.mutation_prob
      child = np.where(mutate, (self.rng.random(self.space.ndim) * self.space.sizes), child)
      child = child.astype(np.int32)
      idx = int(self.space.knobs_to_index(child))
      if idx in self.visited or idx in taken or not self.space.is_valid_knobs(child):
        continue
      taken.add(idx)
      out.append(child)
    # Converged populations breed duplicates: top up with random points.
    return out + self._random_unvisited(batch_size - len(out), taken)


@dataclasses.dataclass
class Prior:
  """Records of other workloads for transfer learning: features ``[n, F]``, costs, group ids,
  and optionally one :class:`~cost_models.Tree` per record (what a TreeGRU on trees trains on;
  without them such a model starts from the task's own measurements only)."""

  features: np.ndarray
  costs: np.ndarray
  groups: np.ndarray
  trees: Sequence[Any] | None = None

  def __post_init__(self):
    n = len(self.costs)
    if len(self.features) != n or len(self.groups) != n:
      raise ValueError(f"Prior needs one feature row and group per cost: {len(self.features)} "
                       f"rows, {len(self.groups)} groups, {n} costs")
    if self.trees is not None and len(self.trees) != n:
      raise ValueError(f"Prior needs one tree per cost: {len(self.trees)} trees, {n} costs")


class ModelTuner(Tuner):
  """Cost-model-guided tuner (AutoTVM's model-based tuner).

  Each batch: anneal on the model's predictions (many chains at once), drop measured and invalid
  points, pick a diverse top-k, and fill an ``epsilon`` share with random points for exploration.
  The model is refit on every measurement after each batch.

  Args:
    task: the tuning task.
    model: registered cost model name or a :class:`~cost_models.CostModel` instance.
    seed: seed.
    epsilon: random share of each batch.
    num_chains, num_steps: annealing chains and steps (host path: ``host_steps`` steps).
    diversity: weight of the coverage term of :func:`diverse_top_k`.
    min_fit: measured points needed before the model is used (random until then), unless a
      ``prior`` is given, in which case the model is pre-trained on it and used from the start.
    ucb_kappa: if set, an ensemble of ``ensemble_size`` models gives mean/std and annealing uses
      the optimistic ``mean - ucb_kappa * std``.
    prior: other workloads' records (transfer learning).
    prior_mode: how the prior is used. ``"margin"`` (AutoTVM's): a base model of the same kind
      is fit on the prior once, and the tuner's model learns a correction to its margins from
      this task's records alone (:class:`~cost_models.TransferCostModel`). ``"pooled"``: the
      prior stays in the training set, each workload its own rank group (a large prior then
      outweighs the task's own records).
    transfer_kwargs: ``"margin"`` only: passed to :class:`~cost_models.TransferCostModel`
      (``half_life``, ``rank_weighted``, ``min_rank_records``).
    initial: the points measured before the model is fit: ``"space_filling"`` (each as
      different from those measured as a random pool of candidates allows, a max-min design)
      or ``"random"``.
    knob_features: append the raw knob vector to ``task.feature_fn``'s features. With a
      ``"margin"`` prior the base still reads only ``feature_fn``'s columns (the ones that mean
      the same in every workload) and the local model reads both: the loop nest says what
      transfers, the knobs name what this workload's records have shown. On the local
      Laplacian replay (docs/tuning.md) it took xgb transfer from 16 to 11 trials to within 5%
      of the best (medians of 20 seeds); it did not help the MLP's transfer.
    model_kwargs: passed to the model factory.
  """

  def __init__(
    self,
    task: Task,
    model: str | cm.CostModel = "xgb",
    *,
    seed: int = 0,
    epsilon: float = 0.1,
    num_chains: int = 128,
    num_steps: int = 500,
    host_steps: int = 100,
    diversity: float = 0.5,
    min_fit: int = 8,
    ucb_kappa: float | None = None,
    ensemble_size: int = 4,
    prior: Prior | None = None,
    prior_mode: str = "margin",
    transfer_kwargs: dict[str, Any] | None = None,
    initial: str = "space_filling",
    knob_features: bool = False,
    model_kwargs: dict[str, Any] | None = None,
  ):
    super().__init__(task, seed=seed)
    if knob_features and task.feature_fn is None:
      raise ValueError("knob_features=True appends the knob vector to task.feature_fn's "
                       "features, but this task has no feature_fn (its features are the knobs)")
    if knob_features and prior is not None and prior_mode == "pooled":
      raise ValueError("knob_features=True needs prior_mode='margin': pooled records of other "
                       "workloads have no knob vector of this task's space")
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"{epsilon=} must be in [0, 1]")
    if min_fit < 2:
      raise ValueError(f"{min_fit=} must be >= 2 (a ranking model needs two measurements)")
    if prior_mode not in ("margin", "pooled"):
      raise ValueError(f"unknown {prior_mode=}; valid: 'margin', 'pooled'")
    if initial not in ("space_filling", "random"):
      raise ValueError(f"unknown {initial=}; valid: 'space_filling', 'random'")
    self.initial = initial
    kwargs = dict(model_kwargs or {})
    base: cm.CostModel | None = None
    if isinstance(model, str):
      name = model
      if name not in cm.COST_MODELS:
        raise ValueError(f"unknown cost model {name!r}; valid: {sorted(cm.COST_MODELS)}")
      factory = lambda s: cm.make_cost_model(name, **{"seed": seed * 7919 + s, **kwargs})
      if prior is not None and prior_mode == "margin":
        base = factory(ensemble_size)  # the transfer base, fit on the prior below
      if ucb_kappa is not None:
        model = cm.BootstrapEnsemble(factory, num_members=ensemble_size, seed=seed)
      else:
        model = factory(0)
    elif prior is not None and prior_mode == "margin":
      base = copy.deepcopy(model)  # unfitted: the same kind of model, fit on the prior
    if ucb_kappa is not None and not hasattr(model, "predict_ucb"):
      raise ValueError(f"ucb_kappa={ucb_kappa} needs an ensemble model with predict_ucb (e.g. "
                       f"BootstrapEnsemble), got {type(model).__name__}")
    self.model: cm.CostModel = model
    self.knob_features = knob_features
    if knob_features and self._uses_trees():
      raise ValueError("knob_features=True is for vector features; the TreeGRU reads "
                       "task.tree_fn's trees")
    self.model_name = model if isinstance(model, str) else type(model).__name__
    self.epsilon = epsilon
    self.num_chains = num_chains
    self.num_steps = num_steps
    self.host_steps = host_steps
    self.diversity = diversity
    self.min_fit = min_fit
    self.ucb_kappa = ucb_kappa
    self.prior = prior
    self.prior_mode = prior_mode
    self._key = jax.random.key(seed)
    self._tie_rng = np.random.default_rng([seed, 1])  # apart from self.rng's random picks
    self._explore_rng = np.random.default_rng([seed, 2])
    self._feature_cache: dict[int, Any] = {}
    self._table = _padded_feature_table(self.space)
    self.fit_seconds = 0.0
    self.search_seconds = 0.0
    if prior is not None and not self._prior_usable():
      warnings.warn(
        "ModelTuner: the prior has no trees, so the TreeGRU (on this task's trees) is not "
        "pre-trained on it; give Prior(trees=...) or Task.record_tree_fn", stacklevel=2)
    if self._prior_usable() and len(prior.costs) >= 2:
      if prior_mode == "pooled":
        self._fit()
      else:
        if not self.model.accepts_base_margin:
          raise ValueError(f"prior_mode='margin' needs a model that accepts base_margin; "
                           f"{self.model_name} does not (use prior_mode='pooled')")
        start = time.perf_counter()
        base.fit(self._prior_inputs(), prior.costs, groups=prior.groups)
        if knob_features:
          transfer_kwargs = {"base_columns": prior.features.shape[1], **(transfer_kwargs or {})}
        self.model = cm.TransferCostModel(base, self.model, **(transfer_kwargs or {}))
        self.fit_seconds += time.perf_counter() - start

  # Features ---------------------------------------------------------------------------------------

  def _uses_trees(self) -> bool:
    m = self.model
    m = m.local if isinstance(m, cm.TransferCostModel) else m
    m = m.members[0] if isinstance(m, cm.BootstrapEnsemble) else m
    return isinstance(m, cm.TreeGRUCostModel) and self.task.tree_fn is not None

  def _prior_usable(self) -> bool:
    return self.prior is not None and (not self._uses_trees() or self.prior.trees is not None)

  def model_inputs(self, knobs: np.ndarray) -> Any:
    """Model inputs for knob vectors ``[n, D]`` (vector features, or a TreeBatch)."""
    knobs = np.asarray(knobs, np.int32).reshape(-1, self.space.ndim)
    if self._uses_trees():
      trees = [self._cached(k, lambda c: self.task.tree_fn(c)) for k in knobs]
      return cm.pad_trees(trees)
    if self.task.feature_fn is None:
      return self.space.knob_features(knobs)
    feats = np.stack([self._cached(k, lambda c: np.asarray(self.task.feature_fn(c), np.float32))
                      for k in knobs])
    if self.knob_features:
      feats = np.concatenate([feats, self.space.knob_features(knobs)], axis=1)
    return feats

  def _cached(self, k: np.ndarray, fn: Callable[[Any], Any]) -> Any:
    idx = int(self.space.knobs_to_index(k))
    if idx not in self._feature_cache:
      self._feature_cache[idx] = fn(self.space.knobs_to_config(k))
    return self._feature_cache[idx]

  # Fitting and proposing --------------------------------------------------------------------------

  def _prior_inputs(self) -> Any:
    p = self.prior
    return cm.pad_trees(list(p.trees)) if self._uses_trees() else p.features

  def _fit(self) -> None:
    start = time.perf_counter()
    costs = np.asarray(self.costs, np.float64)
    groups = np.zeros(len(self.costs), np.int64)
    pooled = self._prior_usable() and self.prior_mode == "pooled"
    p = self.prior if pooled else None
    if self._uses_trees():
      trees = [self._cached(k, lambda c: self.task.tree_fn(c)) for k in self.xs]
      trees = (list(p.trees) if p is not None else []) + trees
      feats = cm.pad_trees(trees) if trees else None
    else:
      feats = self.model_inputs(np.stack(self.xs)) if self.xs else None
      if p is not None:
        feats = p.features if feats is None else np.concatenate([p.features, feats])
    if p is not None:
      costs = np.concatenate([p.costs, costs])
      groups = np.concatenate([np.asarray(p.groups) + 1, groups])
    if feats is None or np.isfinite(costs).sum() < 2:
      return
    self.model.fit(feats, costs, groups=groups)
    self.fit_seconds += time.perf_counter() - start

  def update(self, knobs: Sequence[np.ndarray], costs: Sequence[float]) -> None:
    super().update(knobs, costs)
    if sum(np.isfinite(self.costs)) >= min(self.min_fit, self.space.size):
      self._fit()

  def _host_energy(self, knobs: np.ndarray) -> np.ndarray:
    x = self.model_inputs(knobs)
    if self.ucb_kappa is not None:
      return self.model.predict_ucb(x, kappa=self.ucb_kappa)
    return self.model.predict(x)

  def _anneal(self) -> tuple[np.ndarray, np.ndarray]:
    start = time.perf_counter()
    n_seed = min(len(self.xs), self.num_chains // 4)
    order = np.argsort(self.costs)[:n_seed]
    seeds = [self.xs[i] for i in order if np.isfinite(self.costs[i])]
    rand = (self.rng.random((self.num_chains - len(seeds), self.space.ndim)) * self.space.sizes)
    init = np.concatenate([np.array(seeds, np.int32).reshape(-1, self.space.ndim),
                           rand.astype(np.int32)])
    jax_form = self.model.jax_apply() if self.ucb_kappa is None else None
    if jax_form is not None and self.task.feature_fn is None:
      apply, params = jax_form
      self._key, k = jax.random.split(self._key)
      pts, es = simulated_annealing(_knob_energy(apply), (jnp.asarray(self._table), params),
                                    self.space.sizes, init=init, key=k, num_steps=self.num_steps)
    else:
      pts, es = simulated_annealing_host(self._host_energy, self.space.sizes, init=init,
                                         rng=self.rng, num_steps=self.host_steps)
    self.search_seconds += time.perf_counter() - start
    return pts, es

  def _rank_all(self) -> tuple[np.ndarray, np.ndarray]:
    """Every unvisited valid point of a small space with its predicted cost: the model's exact
    top-k instead of annealing's approximation (chains in a sparse valid set spend their steps
    on invalid points)."""
    start = time.perf_counter()
    rest = np.array([i for i in range(self.space.size) if i not in self.visited], np.int64)
    pts = self.space.index_to_knobs(rest).reshape(-1, self.space.ndim) if rest.size else rest
    pts = np.array([k for k in pts if self.space.is_valid_knobs(k)], np.int32)
    pts = pts.reshape(-1, self.space.ndim)
    es = self._host_energy(pts) if len(pts) else np.zeros(0)
    self.search_seconds += time.perf_counter() - start
    return pts, np.asarray(es, np.float64)

  def _space_filling(self, n: int) -> list[np.ndarray]:
    """``n`` unmeasured valid points, each as far (in knobs that differ) from the measured
    points and the earlier picks as a random pool of candidates allows: the initial design
    before a model exists. The first point of a tuning run is random."""
    if self.initial == "random":
      return self._random_unvisited(n)
    pool = self._random_unvisited(max(64, 8 * n))
    if not pool:
      return pool
    pool = np.asarray(pool)
    dist = np.full(len(pool), np.inf)
    for k in self.xs:
      dist = np.minimum(dist, (pool != np.asarray(k)).sum(1))
    out = []
    for _ in range(min(n, len(pool))):
      j = int(np.argmax(dist))  # ties (and an empty history) go to the pool's random order
      out.append(pool[j])
      dist = np.minimum(dist, (pool != pool[j]).sum(1))
      dist[j] = -1
    return out

  def next_batch(self, batch_size: int) -> list[np.ndarray]:
    if not self.model.fitted:
      return self._space_filling(batch_size)
    # Stochastic rounding: an epsilon share of trials is random whatever the batch size (with
    # round(), batches below 1 / (2 epsilon) points never explored).
    want = self.epsilon * batch_size
    n_random = int(want) + int(self._explore_rng.random() < want - int(want))
    pts, es = self._rank_all() if self.space.size <= RANK_ALL_LIMIT else self._anneal()
    idx = self.space.knobs_to_index(pts)
    _, first = np.unique(idx, return_index=True)
    keep = [i for i in first if int(idx[i]) not in self.visited]
    # Ties broken at random, not by index: tree models predict many exact ties, and an index
    # order made a tuner's path the same for every seed (a prior's ties picked the first points).
    keep = [keep[i] for i in self._tie_rng.permutation(len(keep))]
    # Validity is checked on the best candidates only: the predicate may be slow Python.
    keep = sorted(keep, key=lambda i: es[i])
    valid = []
    for i in keep:
      if self.space.is_valid_knobs(pts[i]):
        valid.append(i)
        if len(valid) >= max(8 * batch_size, 64):
          break
    chosen = []
    if valid:
      valid = np.array(valid)
      pick = diverse_top_k(pts[valid], es[valid], batch_size - n_random, diversity=self.diversity)
      chosen = [pts[valid[j]] for j in pick]
    taken = {int(self.space.knobs_to_index(k)) for k in chosen}
    return chosen + self._random_unvisited(batch_size - len(chosen), taken)


# tune() ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TuneResult:
  """Outcome of :func:`tune`. ``costs`` are in measurement order (``inf`` = failed)."""

  best_config: Any
  best_time: float
  configs: list[Any]
  costs: list[float]
  errors: list[str | None]
  resumed: int
  method: str
  tuner: Tuner

  @property
  def curve(self) -> np.ndarray:
    """Best time so far after each trial."""
    return np.minimum.accumulate(np.asarray(self.costs, np.float64))


def make_tuner(task: Task, method: str, *, seed: int = 0, **kwargs: Any) -> Tuner:
  """Builds the tuner for ``method`` (a registered cost model name or a baseline)."""
  if method == "random":
    return RandomTuner(task, seed=seed, **kwargs)
  if method == "grid":
    return GridTuner(task, seed=seed, **kwargs)
  if method == "ga":
    return GATuner(task, seed=seed, **kwargs)
  if method in cm.COST_MODELS:
    return ModelTuner(task, method, seed=seed, **kwargs)
  raise ValueError(f"unknown tuning method {method!r}; valid: {list(_methods())}")


def load_prior(db: dbm.TuningDatabase, task: Task, target: str) -> Prior | None:
  """Other workloads' records of the same op and target that carry features (transfer data)."""
  feats, costs, groups, trees = [], [], [], []
  width = None
  for g, wl in enumerate(db.workloads(op=task.op_name, target=target)):
    if wl == task.workload:
      continue
    recs = [r for r in db.records(wl, target) if r.features is not None]
    f, c = dbm.records_to_arrays(recs)
    if not f:
      continue
    width = width or len(f[0])
    if any(len(r) != width for r in f):
      continue  # A different feature layout cannot share a model.
    feats += f
    costs += c
    groups += [g] * len(c)
    if task.record_tree_fn is not None:
      trees += [task.record_tree_fn(r.shapes, r.config) for r in recs]
  if not costs:
    return None
  return Prior(np.asarray(feats, np.float32), np.asarray(costs), np.asarray(groups),
               trees=trees if task.record_tree_fn is not None else None)


def tune(
  task: Task,
  *,
  trials: int,
  method: str = "xgb",
  db: str | dbm.TuningDatabase | None = None,
  target: str | None = None,
  seed: int = 0,
  batch_size: int = 16,
  transfer: bool = False,
  measurer: Measurer | None = None,
  warmup: int = 1,
  repeats: int = 3,
  timeout: float = 30.0,
  isolate: bool = True,
  progress: bool = True,
  tuner_kwargs: dict[str, Any] | None = None,
) -> TuneResult:
  """Tunes ``task``, recording every measurement in the database.

  Records already in the database for this workload and target count towards ``trials`` and are
  not measured again (a killed run resumes where it stopped).

  Args:
    task: what to tune.
    trials: total measured configs wanted (including resumed ones).
    method: a registered cost model (``"xgb"``, ``"mlp"``, ``"treegru"``) or a baseline
      (``"random"``, ``"grid"``, ``"ga"``).
    db: database path or instance (default :func:`database.default_db_path`).
    target: device kind to record under (default :func:`database.current_target`).
    seed: tuner seed.
    batch_size: configs per batch (the model is refit after each).
    transfer: pre-train the model on this op's other workloads in the database.
    measurer: custom measurer; otherwise one is built from ``warmup``, ``repeats``, ``timeout``
      and ``isolate`` (see :class:`~jaxsched.tuning.measure.Measurer`).
    progress: show a tqdm bar with the best time so far.
    tuner_kwargs: extra arguments of the tuner class.

  Returns:
    A :class:`TuneResult`; ``best_config`` is ``None`` if every candidate failed.

  Raises:
    ValueError: unknown method, ``trials < 1``, or no valid config in the space.
  """
  if method not in _methods():
    raise ValueError(f"unknown tuning method {method!r}; valid: {list(_methods())}")
  if trials < 1 or batch_size < 1:
    raise ValueError(f"{trials=} and {batch_size=} must be >= 1")
  space = task.space
  # Raises if nothing in the space is valid (sparse spaces, e.g. schedules, need many draws).
  task.space.sample(np.random.default_rng(seed), 1, max_tries=5000)
  database = dbm.as_database(db)
  target = target or dbm.current_target()
  kwargs = dict(tuner_kwargs or {})
  if transfer:
    if method not in cm.COST_MODELS:
      raise ValueError(f"transfer needs a cost-model method {sorted(cm.COST_MODELS)}, got "
                       f"{method=}")
    kwargs["prior"] = load_prior(database, task, target)
  tuner = make_tuner(task, method, seed=seed, **kwargs)

  # Resume: feed earlier records of this workload to the tuner instead of re-measuring them.
  old_knobs, old_costs = [], []
  for r in database.records(task.workload, target):
    try:
      old_knobs.append(space.config_to_knobs(r.config))
    except (ValueError, TypeError):
      continue  # Recorded under a different space definition.
    old_costs.append(r.time if r.ok else math.inf)
  if old_knobs:
    tuner.update(old_knobs, old_costs)
  resumed = len(old_knobs)

  configs = [space.knobs_to_config(k) for k in old_knobs]
  costs = list(old_costs)
  errors: list[str | None] = [None if math.isfinite(c) else "resumed failure" for c in old_costs]
  own_measurer = measurer is None
  if measurer is None:
    measurer = Measurer(task.measure_fn, warmup=warmup, repeats=repeats, timeout=timeout,
                        isolate=isolate)
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=trials, initial=min(resumed, trials), desc=f"tune[{method}]", unit="trial")

  def record(t: Tuner, batch: list[np.ndarray], results: list[MeasureResult]) -> None:
    del t
    feats = task.features(np.stack(batch)) if batch else None
    for i, res in enumerate(results):
      database.add(workload=task.workload, target=target, config=space.config_values(res.config),
                   time=res.median, error=res.error,
                   features=None if feats is None else feats[i].tolist(),
                   op=task.op_name, shapes=task.shapes, dtypes=task.dtypes)
      configs.append(res.config)
      costs.append(res.cost)
      errors.append(res.error)
    if bar is not None:
      bar.update(len(results))
      best = min(costs, default=math.inf)
      bar.set_postfix(best=f"{best * 1e3:.3f}ms" if math.isfinite(best) else "none")

  try:
    tuner.tune(measurer, trials=trials, batch_size=batch_size, callback=record)
  finally:
    if own_measurer:
      measurer.close()
    if bar is not None:
      bar.close()
  best_i = int(np.argmin(costs)) if costs else -1
  ok = best_i >= 0 and math.isfinite(costs[best_i])
  return TuneResult(
    best_config=configs[best_i] if ok else None,
    best_time=costs[best_i] if ok else math.inf,
    configs=configs, costs=costs, errors=errors, resumed=resumed, method=method, tuner=tuner,
  )
