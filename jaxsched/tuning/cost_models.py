"""Learned cost models behind one interface: ``fit(features, costs)``, ``predict(features)``.

``predict`` returns a *relative cost*: lower means predicted faster. Models are trained to rank
(pairwise objectives), so only the order is meaningful; a small regression term on standardized
log-costs keeps scores on a comparable scale, which the bootstrap ensemble's std relies on.
Failed measurements (``cost = inf``) are kept as the worst configs, so the model learns to avoid
them. ``groups`` (one id per row, e.g. the workload) restrict rank pairs to the same group, which
is what makes pre-training on other workloads' records meaningful (transfer learning).

Registered models (:data:`COST_MODELS`):

* ``"xgb"``: gradient-boosted trees, xgboost's core ``xgb.train`` with ``rank:pairwise``.
* ``"mlp"``: a JAX MLP with a pairwise logistic rank loss (optax); prediction is jitted+vmapped.
* ``"treegru"``: a Flax NNX child-sum TreeGRU over a tree of feature vectors per candidate
  (e.g. the lowered loop nest), padded to arrays (:class:`TreeBatch`) so it vmaps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = [
  "COST_MODELS",
  "BootstrapEnsemble",
  "CostModel",
  "MLPCostModel",
  "Tree",
  "TreeBatch",
  "TransferCostModel",
  "TreeGRUCostModel",
  "XGBCostModel",
  "make_cost_model",
  "pad_trees",
  "register_cost_model",
  "tree_levels",
]


# Shared helpers ----------------------------------------------------------------------------------


def _clean_costs(costs: np.ndarray) -> np.ndarray:
  """Failures (inf/nan) -> twice the worst finite cost, so they rank last."""
  costs = np.asarray(costs, np.float64)
  finite = np.isfinite(costs)
  worst = costs[finite].max() if finite.any() else 1.0
  return np.where(finite, costs, 2.0 * worst + 1e-12)


def _log_targets(costs: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """Log-costs standardized within each group: comparable across workloads of any speed."""
  y = np.log(np.maximum(_clean_costs(costs), 1e-12))
  out = np.zeros_like(y)
  for g in np.unique(groups):
    m = groups == g
    sd = y[m].std()
    out[m] = (y[m] - y[m].mean()) / (sd if sd > 0 else 1.0)
  return out.astype(np.float32)


def _check_fit_inputs(n: int, costs: Any, groups: Any) -> tuple[np.ndarray, np.ndarray]:
  costs = np.asarray(costs, np.float64).reshape(-1)
  if costs.shape[0] != n:
    raise ValueError(f"features have {n} rows but costs has {costs.shape[0]}")
  if n < 2:
    raise ValueError(f"fitting a rank model needs at least 2 records, got {n}")
  groups = np.zeros(n, np.int32) if groups is None else np.asarray(groups).reshape(-1)
  if groups.shape[0] != n:
    raise ValueError(f"features have {n} rows but groups has {groups.shape[0]}")
  _, groups = np.unique(groups, return_inverse=True)
  return costs, groups.astype(np.int32)


def _check_margin(n: int, base_margin: Any) -> np.ndarray | None:
  if base_margin is None:
    return None
  m = np.asarray(base_margin, np.float32).reshape(-1)
  if m.shape[0] != n:
    raise ValueError(f"features have {n} rows but base_margin has {m.shape[0]}")
  if not np.isfinite(m).all():
    raise ValueError(f"base_margin must be finite, got {m[~np.isfinite(m)][:4]} among its values")
  return m


def _bucket(n: int, minimum: int = 64) -> int:
  """Pads sizes to powers of two so jitted functions compile once per bucket, not per refit."""
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


class CostModel:
  """Interface every cost model implements (see the module docstring for the conventions)."""

  #: Whether ``fit`` takes ``base_margin`` (what :class:`TransferCostModel` builds on).
  accepts_base_margin: bool = False

  def fit(self, features: Any, costs: Any, *, groups: Any = None,
          base_margin: Any = None) -> CostModel:
    """Trains on ``features`` (array ``[n, F]`` or a batched pytree) and ``costs`` ``[n]``.

    ``base_margin`` (models with ``accepts_base_margin``): a base model's relative cost per row.
    The model then learns a correction: ``base_margin + predict(x)`` ranks the rows, and
    ``predict`` returns the correction alone (xgboost's ``base_margin``, AutoTVM's transfer).
    """
    raise NotImplementedError

  def predict(self, features: Any) -> np.ndarray:
    """Relative costs ``float32[n]`` (lower = predicted faster)."""
    raise NotImplementedError

  def jax_apply(self) -> tuple[Callable[[Any, jax.Array], jax.Array], Any] | None:
    """``(apply, params)`` with ``apply(params, features[F]) -> cost`` pure and jittable, for
    search inside one jitted graph; ``None`` if the model has no such form (or is not fitted).

    ``apply`` must be the same object across refits (it is a static argument of jitted search).
    """
    return None

  @property
  def fitted(self) -> bool:
    raise NotImplementedError


# xgboost -----------------------------------------------------------------------------------------


class XGBCostModel(CostModel):
  """Gradient-boosted trees with xgboost's pairwise rank objective (core ``xgb.train`` API).

  Args:
    num_rounds: boosting rounds.
    max_depth, eta, subsample, min_child_weight, colsample_bytree: the usual xgboost
      parameters.
    seed: xgboost seed.
  """

  accepts_base_margin = True

  def __init__(
    self,
    *,
    num_rounds: int = 100,
    max_depth: int = 6,
    eta: float = 0.1,
    subsample: float = 1.0,
    # 0: the pairwise objective's hessians are small, and with a handful of measurements a
    # weight of 1 forbade most splits (blur replay: 6 -> 4.5 trials to within 5% of the best).
    min_child_weight: float = 0.0,
    colsample_bytree: float = 1.0,
    seed: int = 0,
  ):
    self._xgb  # noqa: B018  (fails early if xgboost is missing)
    self.num_rounds = num_rounds
    self.params = {
      "objective": "rank:pairwise",
      # "mean" samples pairs uniformly; the default top-k pairing ranked tuning data worse.
      "lambdarank_pair_method": "mean",
      "lambdarank_num_pair_per_sample": 32,
      "max_depth": max_depth,
      "eta": eta,
      "subsample": subsample,
      "min_child_weight": min_child_weight,
      "colsample_bytree": colsample_bytree,
      "seed": seed,
      "nthread": 1,
      "verbosity": 0,
    }
    self._booster: Any = None

  @property
  def _xgb(self) -> Any:
    # Imported here: an optional dependency (``pip install xgboost-cpu``). Not kept as an
    # attribute, so that an unfitted model deep-copies (a transfer base is a copy).
    import xgboost

    return xgboost

  @property
  def fitted(self) -> bool:
    return self._booster is not None

  def fit(self, features: Any, costs: Any, *, groups: Any = None,
          base_margin: Any = None) -> XGBCostModel:
    x = np.asarray(features, np.float32)
    costs, groups = _check_fit_inputs(x.shape[0], costs, groups)
    margin = _check_margin(x.shape[0], base_margin)
    # rank:pairwise wants relevance (higher = better) and rows of a query group contiguous.
    order = np.argsort(groups, kind="stable")
    x, costs, groups = x[order], costs[order], groups[order]
    label = -_log_targets(costs, groups)
    # A margin is a relative cost (lower = better); xgboost's is a relevance score.
    dtrain = self._xgb.DMatrix(x, label=label,
                               base_margin=None if margin is None else -margin[order])
    dtrain.set_group(np.bincount(groups).astype(np.uint32))
    self._booster = self._xgb.train(self.params, dtrain, num_boost_round=self.num_rounds)
    return self

  def predict(self, features: Any) -> np.ndarray:
    if self._booster is None:
      raise RuntimeError("XGBCostModel.predict called before fit")
    x = np.asarray(features, np.float32)
    # inplace_predict skips building a DMatrix: ~10x faster for the small batches of annealing.
    return -np.asarray(self._booster.inplace_predict(x), np.float32)


# Pairwise-rank training shared by the JAX models -------------------------------------------------


def _pairwise_loss(scores, logt, groups, valid, regression_weight):
  """Logistic loss on every ordered pair of the same group, + MSE on standardized log-cost."""
  better = (logt[:, None] < logt[None, :]) & (groups[:, None] == groups[None, :])
  pair_mask = better & valid[:, None] & valid[None, :]
  # s_i should be below s_j when i is faster: penalize softplus(s_i - s_j).
  pair_loss = jax.nn.softplus(scores[:, None] - scores[None, :])
  rank = jnp.sum(pair_loss * pair_mask) / jnp.maximum(jnp.sum(pair_mask), 1)
  reg = jnp.sum(valid * (scores - logt) ** 2) / jnp.maximum(jnp.sum(valid), 1)
  return rank + regression_weight * reg


@functools.partial(
  jax.jit, static_argnames=("apply", "tx", "steps", "batch", "regression_weight")
)
def _train(params, opt_state, x, logt, groups, offset, n, key, *, apply, tx, steps, batch,
           regression_weight):
  """``steps`` Adam steps on random minibatches of the first ``n`` (padded) rows; the loss
  scores ``offset + apply(params, x)`` (a base model's margin, or zeros)."""

  def step(carry, k):
    params, opt_state = carry
    idx = jax.random.randint(k, (batch,), 0, n)
    xb = jax.tree.map(lambda a: a[idx], x)
    valid = jnp.ones((batch,), bool)

    def loss_fn(p):
      scores = jax.vmap(apply, in_axes=(None, 0))(p, xb) + offset[idx]
      return _pairwise_loss(scores, logt[idx], groups[idx], valid, regression_weight)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(
    step, (params, opt_state), jax.random.split(key, steps)
  )
  return params, opt_state, losses


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
  # Shared per learning rate: it is a static jit argument, so a new one would recompile.
  return optax.adam(learning_rate)


_PREDICT_CHUNK = 8192


@functools.partial(jax.jit, static_argnames=("apply",))
def _predict_batch(params, x, *, apply):
  n = jax.tree.leaves(x)[0].shape[0]
  if n <= _PREDICT_CHUNK:
    return jax.vmap(apply, in_axes=(None, 0))(params, x)
  # Chunks keep intermediates in cache: ~4x the throughput of one huge vmap on CPU.
  chunks = jax.tree.map(lambda a: a.reshape(n // _PREDICT_CHUNK, _PREDICT_CHUNK, *a.shape[1:]), x)
  out = jax.lax.map(lambda c: jax.vmap(apply, in_axes=(None, 0))(params, c), chunks)
  return out.reshape(n)


def _pad_rows(x: Any, size: int) -> Any:
  def pad(a):
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[:1], size - a.shape[0], axis=0)]) if size > len(a) else a

  return jax.tree.map(pad, x)


class _JaxRankModel(CostModel):
  """Common fit/predict for models given as ``apply(params, x_single) -> score``."""

  def __init__(self, *, steps: int, batch: int, learning_rate: float, regression_weight: float,
               seed: int):
    self.steps = steps
    self.batch = batch
    self.learning_rate = learning_rate
    self.regression_weight = regression_weight
    self.seed = seed
    self.params: Any = None
    self.losses: np.ndarray | None = None
    self._key = jax.random.key(seed)
    self._tx = _adam(learning_rate)

  @property
  def fitted(self) -> bool:
    return self.params is not None

  # Subclasses define these.
  def _init_params(self, key: jax.Array, x: Any) -> Any:
    raise NotImplementedError

  def _apply(self) -> Callable[[Any, Any], jax.Array]:
    raise NotImplementedError

  def _normalize(self, x: Any, *, fit: bool) -> Any:
    raise NotImplementedError

  def _num_rows(self, x: Any) -> int:
    return int(jax.tree.leaves(x)[0].shape[0])

  accepts_base_margin = True

  def fit(self, features: Any, costs: Any, *, groups: Any = None,
          base_margin: Any = None) -> _JaxRankModel:
    n = self._num_rows(features)
    costs, groups = _check_fit_inputs(n, costs, groups)
    margin = _check_margin(n, base_margin)
    x = self._normalize(features, fit=True)
    logt = _log_targets(costs, groups)
    size = _bucket(n)
    xp = _pad_rows(x, size)
    lp, gp = _pad_rows(logt, size), _pad_rows(groups, size)
    op = _pad_rows(np.zeros(n, np.float32) if margin is None else margin, size)
    self._key, k_init, k_train = jax.random.split(self._key, 3)
    tx = self._tx
    # Re-initialized on every fit: the tuner refits on all records each batch.
    params = self._init_params(k_init, jax.tree.map(lambda a: a[0], xp))
    params, _, losses = _train(
      params, tx.init(params), xp, jnp.asarray(lp), jnp.asarray(gp), jnp.asarray(op), jnp.int32(n),
      k_train,
      apply=self._apply(), tx=tx, steps=self.steps, batch=self.batch,
      regression_weight=self.regression_weight,
    )
    self.params = params
    self.losses = np.asarray(losses)
    return self

  def predict(self, features: Any) -> np.ndarray:
    if self.params is None:
      raise RuntimeError(f"{type(self).__name__}.predict called before fit")
    n = self._num_rows(features)
    x = self._normalize(features, fit=False)
    size = _bucket(n)
    out = _predict_batch(self.params, _pad_rows(x, size), apply=self._apply())
    return np.asarray(out[:n], np.float32)


# MLP ---------------------------------------------------------------------------------------------


def _mlp_apply(params: Any, x: jax.Array) -> jax.Array:
  """``x float32[F]`` -> scalar; the feature normalization is folded into ``params``."""
  h = (x - params["mean"]) * params["inv_std"]
  for w, b in params["layers"][:-1]:
    # GELU: smoother extrapolation than ReLU, which annealing otherwise exploits at the corners.
    h = jax.nn.gelu(h @ w + b)
  w, b = params["layers"][-1]
  return (h @ w + b)[0]


@functools.partial(jax.jit, static_argnames=("sizes",))
def _mlp_init(key: jax.Array, *, sizes: tuple[int, ...]) -> list[tuple[jax.Array, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    (jax.random.normal(k, (a, b)) * math.sqrt(2.0 / a), jnp.zeros((b,)))
    for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


class MLPCostModel(_JaxRankModel):
  """A JAX MLP trained with a pairwise logistic rank loss (optax Adam).

  Args:
    hidden: hidden layer widths.
    steps: Adam steps per fit (one jitted ``lax.scan``).
    batch: rows per step (all pairs of the batch enter the loss).
    learning_rate: Adam learning rate.
    regression_weight: weight of the MSE term on standardized log-costs.
    seed: PRNG seed.
  """

  def __init__(self, *, hidden: Sequence[int] = (32, 32), steps: int = 300, batch: int = 128,
               learning_rate: float = 1e-2, regression_weight: float = 0.1, seed: int = 0):
    super().__init__(steps=steps, batch=batch, learning_rate=learning_rate,
                     regression_weight=regression_weight, seed=seed)
    self.hidden = tuple(hidden)
    self._mean: np.ndarray | None = None
    self._std: np.ndarray | None = None

  def _normalize(self, x: Any, *, fit: bool) -> Any:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
      raise ValueError(f"MLPCostModel features must be [n, F], got shape {x.shape}")
    if fit:
      self._mean, self._std = x.mean(0), x.std(0)
    elif x.shape[1] != self._mean.shape[0]:
      raise ValueError(f"features have {x.shape[1]} columns, the model was fit on "
                       f"{self._mean.shape[0]}")
    return x

  def _init_params(self, key: jax.Array, x: Any) -> Any:
    std = np.where(self._std > 0, self._std, 1.0)
    layers = _mlp_init(key, sizes=(x.shape[0], *self.hidden, 1))
    return {"mean": jnp.asarray(self._mean), "inv_std": jnp.asarray(1.0 / std), "layers": layers}

  def _apply(self) -> Callable[[Any, Any], jax.Array]:
    return _mlp_apply

  def jax_apply(self) -> tuple[Callable[[Any, jax.Array], jax.Array], Any] | None:
    return None if self.params is None else (_mlp_apply, self.params)


# TreeGRU -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tree:
  """A tree of feature vectors in post-order: children come before parents, the root is last.

  Attributes:
    features: ``float32[num_nodes, F]`` node features.
    children: per node, the indices of its children (each smaller than the node's own index).
  """

  features: np.ndarray
  children: tuple[tuple[int, ...], ...]

  def __post_init__(self):
    n = len(self.children)
    if np.asarray(self.features).shape[0] != n or n == 0:
      raise ValueError(f"a tree needs one feature row per node, got {n} nodes and features of "
                       f"shape {np.asarray(self.features).shape}")
    for i, cs in enumerate(self.children):
      if any(not 0 <= c < i for c in cs):
        raise ValueError(f"node {i} has children {cs}: children must precede their parent")

  @classmethod
  def from_nested(cls, node: tuple[Sequence[float], Sequence[Any]]) -> Tree:
    """From ``(features, [child, ...])`` nested tuples (e.g. a loop nest), in post-order."""
    feats: list[np.ndarray] = []
    children: list[tuple[int, ...]] = []

    def visit(nd):
      f, kids = nd
      ids = tuple(visit(k) for k in kids)
      feats.append(np.asarray(f, np.float32))
      children.append(ids)
      return len(feats) - 1

    visit(node)
    return cls(np.stack(feats), tuple(children))


class TreeBatch(NamedTuple):
  """Trees padded to arrays (a pytree with a leading batch axis)."""

  features: np.ndarray  # [batch, max_nodes, F]
  children: np.ndarray  # [batch, max_nodes, max_children], -1 = none
  num_nodes: np.ndarray  # [batch]
  # [batch, levels, width]: node ids by height (leaves first), -1 = none; see tree_levels.
  levels: np.ndarray | None = None


def tree_levels(children: np.ndarray, num_nodes: np.ndarray) -> np.ndarray:
  """Node ids grouped by height (0 = leaves), ``[batch, levels, width]`` padded with -1.

  Nodes of one height depend only on lower ones, so a TreeGRU updates a whole level at once:
  as many sequential steps as the tree is tall instead of one per node. Children must come
  before their parents (as :func:`pad_trees` and :meth:`Tree.from_nested` order them).
  """
  children = np.asarray(children)
  num_nodes = np.asarray(num_nodes)
  b, n, _ = children.shape
  height = np.zeros((b, n), np.int64)
  for i in range(n):
    kids = children[:, i]
    kh = np.where(kids >= 0, np.take_along_axis(height, np.maximum(kids, 0), 1), -1)
    height[:, i] = kh.max(1) + 1
  valid = np.arange(n)[None, :] < num_nodes[:, None]
  depth = int(height[valid].max()) + 1 if valid.any() else 1
  key = np.where(valid, height, depth)  # padding sorts last
  order = np.argsort(key, axis=1, kind="stable")
  hs = np.take_along_axis(key, order, 1)
  counts = np.stack([(key == lv).sum(1) for lv in range(depth)], 1)  # [b, depth]
  starts = np.cumsum(counts, 1) - counts
  width = max(1, int(counts.max()))
  levels = np.full((b, depth, width), -1, np.int32)
  rows, cols = np.nonzero(hs < depth)
  lv = hs[rows, cols]
  levels[rows, lv, cols - starts[rows, lv]] = order[rows, cols]
  return levels


def pad_trees(trees: Sequence[Tree], *, max_nodes: int | None = None,
              max_children: int | None = None) -> TreeBatch:
  """Pads trees to a :class:`TreeBatch` (root of tree ``b`` at ``num_nodes[b] - 1``)."""
  if not trees:
    raise ValueError("pad_trees needs at least one tree")
  nf = {t.features.shape[1] for t in trees}
  if len(nf) != 1:
    raise ValueError(f"all trees need the same node feature width, got {sorted(nf)}")
  need_nodes = max(len(t.children) for t in trees)
  need_kids = max(1, max(len(c) for t in trees for c in t.children))
  max_nodes = max_nodes or need_nodes
  max_children = max_children or need_kids
  if need_nodes > max_nodes or need_kids > max_children:
    raise ValueError(f"trees need {need_nodes=} and {need_kids=}, above {max_nodes=} "
                     f"{max_children=}")
  b = len(trees)
  feats = np.zeros((b, max_nodes, nf.pop()), np.float32)
  kids = np.full((b, max_nodes, max_children), -1, np.int32)
  for i, t in enumerate(trees):
    feats[i, : len(t.children)] = t.features
    for j, cs in enumerate(t.children):
      kids[i, j, : len(cs)] = cs
  return TreeBatch(feats, kids, np.array([len(t.children) for t in trees], np.int32))


_UNROLL_NODES = 16
_TREE_LEVELS = True  # TreeGRU evaluated level by level (see tree_levels)


class _TreeGRU(nnx.Module):
  """Child-sum TreeGRU: each node's state is a GRU update of its input by its children's sum.
  With ``wide``, the root's own features also reach the head through one dense layer."""

  def __init__(self, num_features: int, hidden: int, *, wide: bool, rngs: nnx.Rngs):
    self.embed = nnx.Linear(num_features, hidden, rngs=rngs)
    self.wx = nnx.Linear(hidden, 3 * hidden, rngs=rngs)
    self.wh = nnx.Linear(hidden, 2 * hidden, use_bias=False, rngs=rngs)
    self.uh = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
    self.wide = nnx.Linear(num_features, hidden, rngs=rngs) if wide else None
    self.head = nnx.Linear(hidden, 1, rngs=rngs)
    self.hidden = hidden

  def __call__(self, feats: jax.Array, children: jax.Array, num_nodes: jax.Array,
               levels: jax.Array | None = None) -> jax.Array:
    # feats [N, F], children [N, C], levels [L, W]; one tree (vmapped outside).
    xs = self.wx(jnp.tanh(self.embed(feats)))  # [N, 3H]
    hsz = self.hidden
    n = feats.shape[0]

    def gru(x, hc):
      # x [..., 3H] (the node's input), hc [..., H] (its children's summed states)
      zr = jax.nn.sigmoid(x[..., : 2 * hsz] + self.wh(hc))
      z, r = zr[..., :hsz], zr[..., hsz:]
      cand = jnp.tanh(x[..., 2 * hsz :] + self.uh(r * hc))
      return (1 - z) * hc + z * cand

    if levels is None:  # one node at a time, in order (children first)

      def node(hs, inputs):
        i, x, kids = inputs
        hc = jnp.sum(jnp.where(kids[:, None] >= 0, hs[jnp.maximum(kids, 0)], 0.0), axis=0)
        return hs.at[i].set(gru(x, hc)), None

      # Unrolled for small trees: compiles ~2x faster than a scan nested in the training scan.
      hs, _ = jax.lax.scan(node, jnp.zeros((n, hsz)), (jnp.arange(n), xs, children),
                           unroll=n <= _UNROLL_NODES)
    else:  # one level at a time: a loop as long as the tree is tall
      # Children's sums as a scatter-add by parent (N x H a level), not a gather of padded
      # child lists (N x max_children x H: 40 wide for loop nests, most of them padding).
      flat = children.reshape(-1)
      owner = jnp.repeat(jnp.arange(n), children.shape[1])
      parent = jnp.full((n,), n).at[jnp.where(flat >= 0, flat, n)].set(owner, mode="drop")

      def level(hs, ids):
        hc = jnp.zeros((n + 1, hsz)).at[parent].add(hs)
        i = jnp.maximum(ids, 0)
        h = gru(xs[i], hc[i])
        return hs.at[jnp.where(ids >= 0, ids, n)].set(h, mode="drop"), None

      hs, _ = jax.lax.scan(level, jnp.zeros((n, hsz)), levels, unroll=True)
    root = num_nodes - 1
    if self.wide is not None:
      return self.head(hs[root] + jax.nn.gelu(self.wide(feats[root])))[0]
    return self.head(hs[root])[0]


class TreeGRUCostModel(_JaxRankModel):
  """A Flax NNX child-sum TreeGRU over a tree of feature vectors per candidate.

  ``features`` are a :class:`TreeBatch` (see :func:`pad_trees`). Plain ``[n, F]`` arrays are
  accepted too and read as a one-level tree: a root over one leaf per feature column (with the
  column's one-hot id), which is the knob vector seen as a tree.

  Node features are standardised over the fitted trees' nodes, roots apart from the rest (a
  loop-nest root carries the whole nest's summary, see ``features.loop_nest_tree``).

  Args:
    hidden: GRU state width.
    wide: also feed the root's own features to the head through one dense GELU layer (a
      "wide" path next to the tree's): with a handful of measurements the tree path alone
      ranked loop nests worse than an MLP on their summary (docs/tuning.md).
    steps, batch, learning_rate, regression_weight, seed: as :class:`MLPCostModel`.
  """

  def __init__(self, *, hidden: int = 32, wide: bool = True, steps: int = 200, batch: int = 64,
               learning_rate: float = 3e-3, regression_weight: float = 0.1, seed: int = 0):
    super().__init__(steps=steps, batch=batch, learning_rate=learning_rate,
                     regression_weight=regression_weight, seed=seed)
    self.hidden = hidden
    self.wide = wide
    self._graphdef: Any = None
    self._mean: np.ndarray | None = None
    self._std: np.ndarray | None = None

  @staticmethod
  def knobs_as_trees(x: np.ndarray) -> TreeBatch:
    """``[n, F]`` -> a root with F leaves; leaf j carries ``[x_j, onehot(j)]``."""
    x = np.asarray(x, np.float32)
    n, f = x.shape
    leaves = np.concatenate([x[:, :, None], np.broadcast_to(np.eye(f), (n, f, f))], axis=2)
    feats = np.concatenate([leaves, np.zeros((n, 1, f + 1), np.float32)], axis=1)
    kids = np.full((n, f + 1, f), -1, np.int32)
    kids[:, f, :] = np.arange(f)
    return TreeBatch(feats.astype(np.float32), kids, np.full(n, f + 1, np.int32))

  def _normalize(self, x: Any, *, fit: bool) -> Any:
    if not isinstance(x, TreeBatch):
      x = np.asarray(x)
      if x.ndim != 2:
        raise ValueError(f"TreeGRU features must be a TreeBatch or [n, F], got shape {x.shape}")
      x = self.knobs_as_trees(x)
    feats = np.asarray(x.features, np.float32)
    nn = np.asarray(x.num_nodes)
    pos = np.arange(feats.shape[1])[None, :]
    is_root = pos == (nn - 1)[:, None]
    if fit:
      # Roots and other nodes standardised apart: a root's summary columns are 0 elsewhere.
      stats = []
      for rows in (feats[(pos < nn[:, None]) & ~is_root], feats[is_root]):
        rows = rows if len(rows) else feats[is_root]
        sd = rows.std(0)
        stats.append((rows.mean(0), np.where(sd > 0, sd, 1.0)))
      (self._mean, self._std), (self._root_mean, self._root_std) = stats
    out = np.where(is_root[..., None], (feats - self._root_mean) / self._root_std,
                   (feats - self._mean) / self._std)
    kids, nn = np.asarray(x.children, np.int32), np.asarray(x.num_nodes, np.int32)
    levels = tree_levels(kids, nn) if _TREE_LEVELS else None
    return TreeBatch(out.astype(np.float32), kids, nn, levels)

  def _num_rows(self, x: Any) -> int:
    return int(np.asarray(x.features if isinstance(x, TreeBatch) else x).shape[0])

  def _init_params(self, key: jax.Array, x: Any) -> Any:
    self._graphdef, params = _treegru_init(key, num_features=x.features.shape[-1],
                                           hidden=self.hidden, wide=self.wide)
    return params

  def _apply(self) -> Callable[[Any, Any], jax.Array]:
    return _treegru_apply(self._graphdef)


@functools.partial(jax.jit, static_argnames=("num_features", "hidden", "wide"))
def _treegru_init_jit(key: jax.Array, *, num_features: int, hidden: int, wide: bool) -> Any:
  # One jitted call: initializing op by op compiles each initializer eagerly (~3 s on CPU).
  return nnx.split(_TreeGRU(num_features, hidden, wide=wide, rngs=nnx.Rngs(params=key)))[1]


@functools.lru_cache(maxsize=32)
def _treegru_graphdef(num_features: int, hidden: int, wide: bool) -> Any:
  return nnx.split(
    nnx.eval_shape(lambda: _TreeGRU(num_features, hidden, wide=wide, rngs=nnx.Rngs(0)))
  )[0]


def _treegru_init(key: jax.Array, *, num_features: int, hidden: int,
                  wide: bool) -> tuple[Any, Any]:
  """``(graphdef, params)``; the graphdef is cached, so ``apply`` stays the same function."""
  params = _treegru_init_jit(key, num_features=num_features, hidden=hidden, wide=wide)
  return _treegru_graphdef(num_features, hidden, wide), params


@functools.lru_cache(maxsize=32)
def _treegru_apply(graphdef: Any) -> Callable[[Any, Any], jax.Array]:
  # Cached per graphdef so the jitted trainer sees the same static function across refits.
  def apply(params, tree):
    return nnx.merge(graphdef, params)(tree.features, tree.children, tree.num_nodes, tree.levels)

  return apply


# Ensemble ----------------------------------------------------------------------------------------


class BootstrapEnsemble(CostModel):
  """Members fit on bootstrap resamples; ``predict_mean_std`` gives mean and spread.

  Each member's predictions are standardized over the queried candidates before averaging, so
  members with different score scales (rank objectives) combine meaningfully.

  Args:
    factory: builds one member, ``factory(seed) -> CostModel``.
    num_members: ensemble size.
    seed: resampling seed.
  """

  def __init__(self, factory: Callable[[int], CostModel], *, num_members: int = 4, seed: int = 0):
    if num_members < 2:
      raise ValueError(f"{num_members=} must be >= 2 for a spread estimate")
    self.members = [factory(seed * 1000 + i) for i in range(num_members)]
    self._rng = np.random.default_rng(seed)

  @property
  def fitted(self) -> bool:
    return all(m.fitted for m in self.members)

  @property
  def accepts_base_margin(self) -> bool:
    return all(m.accepts_base_margin for m in self.members)

  def fit(self, features: Any, costs: Any, *, groups: Any = None,
          base_margin: Any = None) -> BootstrapEnsemble:
    n = int(jax.tree.leaves(features)[0].shape[0])
    costs = np.asarray(costs, np.float64)
    groups = np.zeros(n, np.int32) if groups is None else np.asarray(groups)
    margin = _check_margin(n, base_margin)
    for m in self.members:
      idx = self._rng.integers(0, n, n)
      if np.unique(idx).size < 2:
        idx = np.arange(n)
      kw = {} if margin is None else {"base_margin": margin[idx]}
      m.fit(jax.tree.map(lambda a, i=idx: np.asarray(a)[i], features), costs[idx],
            groups=groups[idx], **kw)
    return self

  def predict_mean_std(self, features: Any, *,
                       base_margin: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the members' standardized predictions; with ``base_margin`` (members
    fit on one), of ``base_margin + member`` (the members predict corrections)."""
    preds = np.stack([m.predict(features) for m in self.members]).astype(np.float64)
    if base_margin is not None:
      preds = preds + np.asarray(base_margin, np.float64)[None, :]
    sd = preds.std(axis=1, keepdims=True)
    preds = (preds - preds.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    return preds.mean(0).astype(np.float32), preds.std(0).astype(np.float32)

  def predict(self, features: Any) -> np.ndarray:
    return self.predict_mean_std(features)[0]

  def predict_ucb(self, features: Any, *, kappa: float = 1.0) -> np.ndarray:
    """Optimistic cost ``mean - kappa * std`` (lower = more worth measuring)."""
    mean, std = self.predict_mean_std(features)
    return mean - kappa * std


# Transfer ----------------------------------------------------------------------------------------


def _kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
  """Kendall's tau-a of two score vectors (ties count as neither concordant nor discordant)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  n = len(a)
  if n < 2:
    return 0.0
  s = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
  return float(s[np.triu_indices(n, 1)].sum() / (n * (n - 1) / 2))


@functools.lru_cache(maxsize=16)
def _sum_apply(base_apply: Callable, local_apply: Callable) -> Callable:
  # Cached per pair so jitted search sees the same static function across refits.
  def apply(params, x):
    discount, base_params, local_params = params
    return discount * base_apply(base_params, x) + local_apply(local_params, x)

  return apply


@functools.lru_cache(maxsize=16)
def _first_columns(apply: Callable, k: int) -> Callable:
  # Cached like _sum_apply: the same static function for the same base across refits.
  def first(params, x):
    return apply(params, x[..., :k])

  return first


class TransferCostModel(CostModel):
  """A base model pre-trained on other workloads plus a local model fit on top of its margins.

  AutoTVM's transfer learning: the base (fit once, on the prior) gives every record of the
  workload being tuned a margin, and the local model learns only a correction to it from that
  workload's own records. Pooling the prior with the workload's records instead lets a large
  prior outvote them: on the 128-schedule local Laplacian, pooled xgb transfer from blur and
  harris took 18 trials to within 5% of the best, against 12 from scratch (docs/tuning.md).

  Args:
    base: a fitted cost model (its predictions are the margins).
    local: a cost model with ``accepts_base_margin``; this model's ``fit`` fits it.
    half_life: the base's weight halves every ``half_life`` local records (AutoTVM's discount);
      ``None``: no decay.
    rank_weighted: from ``min_rank_records`` local records on, the base's weight is also
      scaled by how well it ranks them: ``max(0, tau)``, tau = Kendall's tau of its predictions
      against their costs (RGPE's ranking-loss weights, Feurer et al. 2018), so that a prior
      the workload's own records contradict fades. Off by default: on the local Laplacian
      with a blur+harris prior it did not help (xgb 16.5 -> 15, MLP 9 -> 12.5 trials, 10
      seeds; blur and harris unchanged; docs/tuning.md).
    min_rank_records: local records needed before ``rank_weighted`` applies.
    base_columns: the base sees only the first ``base_columns`` feature columns (``None``: all).
      The base must read features that mean the same in every workload; the local model may
      read more, e.g. this workload's own knob vector appended (``ModelTuner(knob_features=
      True)``). Needs ``[n, F]`` array features.
  """

  def __init__(self, base: CostModel, local: CostModel, *, half_life: float | None = None,
               rank_weighted: bool = False, min_rank_records: int = 3,
               base_columns: int | None = None):
    if not base.fitted:
      raise ValueError("TransferCostModel needs a fitted base model (fit it on the prior first)")
    if not local.accepts_base_margin:
      raise ValueError(f"TransferCostModel's local model must accept base_margin; "
                       f"{type(local).__name__} does not")
    if half_life is not None and not half_life > 0:
      raise ValueError(f"{half_life=} must be > 0 (or None: no discount)")
    if min_rank_records < 2:
      raise ValueError(f"{min_rank_records=} must be >= 2 (a rank correlation needs two)")
    if base_columns is not None and base_columns < 1:
      raise ValueError(f"{base_columns=} must be >= 1 (or None: the base reads every column)")
    self.base = base
    self.base_columns = base_columns
    self.local = local
    self.half_life = half_life
    self.rank_weighted = rank_weighted
    self.min_rank_records = min_rank_records
    self.num_local = 0
    self.trust = 1.0

  @property
  def fitted(self) -> bool:
    return True  # the base alone predicts until the local model has records

  @property
  def discount(self) -> float:
    """The base's weight: ``trust`` times the half-life decay."""
    decay = 1.0 if self.half_life is None else 0.5 ** (self.num_local / self.half_life)
    return self.trust * decay

  def fit(self, features: Any, costs: Any, *, groups: Any = None,
          base_margin: Any = None) -> TransferCostModel:
    if base_margin is not None:
      raise ValueError("TransferCostModel makes its own base_margin (from its base model)")
    self.num_local = int(jax.tree.leaves(features)[0].shape[0])
    base = np.asarray(self._base_predict(features), np.float64)
    self.trust = 1.0
    if self.rank_weighted and self.num_local >= self.min_rank_records:
      self.trust = max(0.0, _kendall_tau(base, _clean_costs(costs)))
    margin = self.discount * base
    self.local.fit(features, costs, groups=groups, base_margin=margin)
    return self

  def _base_predict(self, features: Any) -> np.ndarray:
    if self.base_columns is None:
      return self.base.predict(features)
    x = np.asarray(features) if isinstance(features, np.ndarray | jax.Array) else None
    if x is None or x.ndim != 2 or x.shape[1] < self.base_columns:
      shape = None if x is None else x.shape
      raise ValueError(f"base_columns={self.base_columns} needs [n, F >= {self.base_columns}] "
                       f"array features, got {type(features).__name__} of shape {shape}")
    return self.base.predict(x[:, : self.base_columns])

  def _margin(self, features: Any) -> np.ndarray:
    return self.discount * np.asarray(self._base_predict(features), np.float32)

  def predict(self, features: Any) -> np.ndarray:
    margin = self._margin(features)
    if not self.local.fitted:
      return margin
    if isinstance(self.local, BootstrapEnsemble):  # its predict standardizes members apart
      return self.local.predict_mean_std(features, base_margin=margin)[0]
    return margin + self.local.predict(features)

  def predict_ucb(self, features: Any, *, kappa: float = 1.0) -> np.ndarray:
    """Optimistic cost of a :class:`BootstrapEnsemble` local model on the base's margins."""
    if not isinstance(self.local, BootstrapEnsemble):
      raise ValueError(f"predict_ucb needs a BootstrapEnsemble local model, got "
                       f"{type(self.local).__name__}")
    margin = self._margin(features)
    if not self.local.fitted:
      return margin
    mean, std = self.local.predict_mean_std(features, base_margin=margin)
    return mean - kappa * std

  def jax_apply(self) -> tuple[Callable[[Any, jax.Array], jax.Array], Any] | None:
    base, local = self.base.jax_apply(), self.local.jax_apply()
    if base is None or local is None:
      return None
    base_apply = base[0] if self.base_columns is None else _first_columns(base[0],
                                                                          self.base_columns)
    return _sum_apply(base_apply, local[0]), (jnp.float32(self.discount), base[1], local[1])


# Registry ----------------------------------------------------------------------------------------

COST_MODELS: dict[str, Callable[..., CostModel]] = {
  "xgb": XGBCostModel,
  "mlp": MLPCostModel,
  "treegru": TreeGRUCostModel,
}


def register_cost_model(name: str, factory: Callable[..., CostModel]) -> None:
  """Registers ``factory(**kwargs) -> CostModel`` under ``name`` (replacing is an error)."""
  if name in COST_MODELS:
    raise ValueError(f"cost model {name!r} is already registered: {sorted(COST_MODELS)}")
  COST_MODELS[name] = factory


def make_cost_model(name: str, **kwargs: Any) -> CostModel:
  """Builds a registered cost model; unknown names list the valid ones."""
  if name not in COST_MODELS:
    raise ValueError(f"unknown cost model {name!r}; valid: {sorted(COST_MODELS)}")
  return COST_MODELS[name](**kwargs)
