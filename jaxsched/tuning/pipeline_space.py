"""Schedule search spaces for the pipeline apps, tuning tasks for them, and tuned lookups.

A pipeline schedule is encoded as a flat dict of knobs:

* one knob per schedulable Func of the app (its ``funcs`` minus the outputs), named after the
  Func, with choices ``"inline"``, ``"root"`` and ``"at"`` (computed at a loop of the output);
* ``split_y`` / ``split_x``: split factors of the output's ``y`` / ``x`` loops (``0``: no
  split);
* ``at``: the output loop the ``"at"`` Funcs are computed at: ``"yo"`` (row strips of
  ``split_y`` rows), ``"xo"`` (``split_y`` x ``split_x`` tiles), or ``"yi"`` (a sliding window:
  stored per strip, one new output row per step).

Split choices are those smaller than the image (a tile as big as the image is no tiling). Knobs
that would not change the program (splits without any ``"at"`` Func: splits are hints on XLA)
must sit at their canonical value, so no two valid configs compile to the same program.

Apps build a fresh :class:`~jaxsched.pipelines.apps.AppGraph` each time; :func:`apply_schedule`
schedules one. :func:`pipeline_task` makes the :class:`~jaxsched.tuning.space.Task` that measures
the jitted XLA pipeline; :func:`tuned_schedule` / :func:`make_tuned` read the tuning database
(fastest record first, then the app's default schedule). :func:`tuned_pipeline` is the
``"tuned"`` schedule provider behind ``Pipeline.compile(schedule="tuned")`` (registered when this
module is imported, which the pipelines package does on first use of that name).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxsched.tuning import database as dbm
from jaxsched.tuning.space import SearchSpace, Task

__all__ = [
  "BACKENDS",
  "LEVELS",
  "PipelineSpace",
  "apply_schedule",
  "make_tuned",
  "pipeline_task",
  "pipeline_workload",
  "schedule_space",
  "tuned_pipeline",
  "tuned_schedule",
]

BACKENDS = ("xla",)
LEVELS = ("inline", "root", "at")
SPLITS_Y = (0, 8, 16, 32, 64, 128, 256, 512)
SPLITS_X = (0, 64, 128, 256, 512, 1024)
AT_LOOPS = ("yo", "xo", "yi")
# Inlining chains multiplies the work per point (a pyramid level inlined into the next is 16
# reads per point); past this many expression nodes per point the XLA graph takes minutes to
# build, so such configs are rejected before lowering.
MAX_INLINED_OPS = 12000
# Above this many Funcs or points in the space, per-Func knobs are grouped by family (names that
# differ only by a trailing level number, e.g. the levels of a pyramid): flat indices must fit in
# int64, and with one knob per pyramid level almost every random point inlines too much.
_MAX_SPACE = 2**60
_MAX_FUNC_KNOBS = 16


def _check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise ValueError(f"unknown pipeline tuning backend {backend!r}; valid: {list(BACKENDS)}")


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
  try:
    shp = tuple(int(s) for s in shape)
  except (TypeError, ValueError):
    raise ValueError(f"{shape=} must be a sequence of positive ints") from None
  if len(shp) != 2 or any(s <= 0 for s in shp):
    raise ValueError(f"{shape=} must be a 2-D (height, width) shape of positive ints")
  return shp


def _build(app: str, build_kwargs: Mapping[str, Any]):
  from jaxsched.pipelines import apps

  return apps.get_app(app).build(**dict(build_kwargs))


def _calls(f: Any) -> list[Any]:
  """Funcs called by ``f``'s definitions, with multiplicity (one entry per call site)."""
  from jaxsched.pipelines import ir

  out = []
  for d in f.definitions:
    for e in (*d.args, d.value):
      for n in ir.walk(e):
        if isinstance(n, ir.Call) and isinstance(n.target, ir.Func) and n.target is not f:
          out.append(n.target)
  return out


def _own_ops(f: Any) -> int:
  from jaxsched.pipelines import ir

  n = 0
  for d in f.definitions:
    for node in ir.walk(d.value):
      n += not isinstance(node, ir.Call | ir.Var | ir.Const)
  return max(n, 1)


class PipelineSpace:
  """The schedule space of one app on one shape (see the module docstring for the knobs).

  Args:
    app: registered app name (``jaxsched.pipelines.apps.APPS``).
    shape: ``(height, width)`` of the input image(s).
    backend: ``"xla"`` (the only backend with a tunable schedule space so far).
    check_plan: also lower the scheduled pipeline in the validity predicate (cached), rejecting
      configs the lowering refuses; the static rules catch most of them without lowering.
    groups: optional ``{knob name: [Func names]}``: Funcs scheduled together by one knob (a
      smaller space); every schedulable Func must be in exactly one group.
    splits_y, splits_x: the split factors offered (``0`` = no split is always added).
    **build_kwargs: passed to the app's ``build`` (e.g. ``levels=4`` for local_laplacian).

  Attributes:
    space: the :class:`SearchSpace` (dict configs).
    funcs: knob name -> names of the Funcs it schedules (one, or a family when grouped).
  """

  def __init__(self, app: str, shape: Sequence[int], *, backend: str = "xla",
               check_plan: bool = True, groups: Mapping[str, Sequence[str]] | None = None,
               splits_y: Sequence[int] = SPLITS_Y, splits_x: Sequence[int] = SPLITS_X,
               **build_kwargs: Any):
    _check_backend(backend)
    self.app = app
    self.shape = _check_shape(shape)
    self.backend = backend
    self.build_kwargs = dict(build_kwargs)
    self.check_plan = check_plan
    g = _build(app, self.build_kwargs)  # Raises for an unknown app, listing the valid ones.
    outs = g.pipeline.outputs
    if len(outs) != 1 or outs[0].ndim != 2:
      raise NotImplementedError(
        f"app {app!r}: schedule spaces need one 2-D output Func, got "
        f"{[(o.name, o.ndim) for o in outs]}"
      )
    self.output = outs[0].name
    reachable = {id(f) for f in g.pipeline.funcs}
    seen: set[int] = set()
    names: list[str] = []
    fixed_root: set[str] = set()
    order = {id(f): i for i, f in enumerate(g.pipeline.funcs)}
    for f in sorted(g.funcs.values(), key=lambda f: order.get(id(f), -1)):
      if id(f) in seen or id(f) not in reachable or f is outs[0]:
        continue
      seen.add(id(f))
      names.append(f.name)
      if f.updates or f.extern is not None:
        fixed_root.add(f.name)  # Reductions and externs are never inlined or tiled.
    self._fixed_root = fixed_root
    self._splits = (tuple(dict.fromkeys((0, *map(int, splits_y)))),
                    tuple(dict.fromkeys((0, *map(int, splits_x)))))
    if any(f < 0 for f in self._splits[0] + self._splits[1]):
      raise ValueError(f"{splits_y=} and {splits_x=} must be positive split factors")
    # The call graph by Func name, with multiplicity (one callee entry per call site).
    self._callees = {f.name: [c.name for c in _calls(f)] for f in g.pipeline.funcs}
    self._own_ops = {f.name: _own_ops(f) for f in g.pipeline.funcs}
    self._consumers: dict[str, list[str]] = {f.name: [] for f in g.pipeline.funcs}
    for f in g.pipeline.funcs:
      for c in dict.fromkeys(self._callees[f.name]):
        self._consumers[c].append(f.name)
    if groups is not None:
      groups = {str(k): list(v) for k, v in groups.items()}
      flat = [m for v in groups.values() for m in v]
      if sorted(flat) != sorted(names):
        raise ValueError(f"groups={groups} must cover each schedulable Func of app {app!r} "
                         f"exactly once: {names}")
      self.funcs = groups
      knobs = self._knobs(groups)
    elif (len(names) > _MAX_FUNC_KNOBS
          or math.prod(len(c) for c in self._knobs({n: [n] for n in names}).values())
          > _MAX_SPACE):
      families: dict[str, list[str]] = {}
      for n in names:
        families.setdefault(re.sub(r"\d+$", "", n) + ("*" if re.search(r"\d$", n) else ""),
                            []).append(n)
      knobs = self._knobs(families)
      self.funcs = families
    else:
      self.funcs = {n: [n] for n in names}
      knobs = self._knobs(self.funcs)
    self.space = SearchSpace(knobs, valid=self.is_valid)
    self._plan_cache: dict[str, str | None] = {}

  def _knobs(self, groups: Mapping[str, Sequence[str]]) -> dict[str, tuple[Any, ...]]:
    knobs: dict[str, tuple[Any, ...]] = {}
    every = [m for members in groups.values() for m in members]
    for key, members in groups.items():
      if any(m in self._fixed_root for m in members):
        knobs[key] = ("root",)
        continue
      # "inline" is offered only if inlining this knob's Funcs alone (everything else at root)
      # fits the op budget: e.g. a whole pyramid inlined is 16x the work per level.
      alone = dict.fromkeys(every, "root") | dict.fromkeys(members, "inline")
      levels = [lv for lv in LEVELS if lv != "inline" or self._too_many_ops(alone) is None]
      # "at" is offered only if the output can call these Funcs at all (everything else inline).
      if self._why_graph(dict.fromkeys(every, "inline") | dict.fromkeys(members, "at")):
        levels.remove("at")
      knobs[key] = tuple(levels)
    if any("at" in c for c in knobs.values()):
      h, w = self.shape
      knobs.update(split_y=tuple(s for s in self._splits[0] if s < h),
                   split_x=tuple(s for s in self._splits[1] if s < w), at=AT_LOOPS)
    else:  # Nothing can be computed at the output: its splits would only be XLA hints.
      knobs.update(split_y=(0,), split_x=(0,), at=AT_LOOPS[:1])
    return knobs

  def __repr__(self) -> str:
    return f"PipelineSpace({self.app!r}, shape={self.shape}, size={self.space.size})"

  # Applying a config ------------------------------------------------------------------------------

  def levels(self, config: Mapping[str, Any]) -> dict[str, str]:
    """Func name -> ``"inline"`` / ``"root"`` / ``"at"`` for a config."""
    self._check_keys(config)
    return {m: config[k] for k, members in self.funcs.items() for m in members}

  def _check_keys(self, config: Mapping[str, Any]) -> None:
    missing = [n for n in self.space.names if n not in config]
    extra = sorted(set(config) - set(self.space.names))
    if missing or extra:
      raise ValueError(f"config {dict(config)} of app {self.app!r} lacks knobs {missing} / has "
                       f"unknown knobs {extra}; knobs: {list(self.space.names)}")

  def apply(self, g: Any, config: Mapping[str, Any]) -> Any:
    """Schedules a fresh (unscheduled) AppGraph of this app with ``config``; returns it."""
    from jaxsched.pipelines import ir

    levels = self.levels(config)
    funcs = {f.name: f for f in g.pipeline.funcs}
    out = funcs[self.output]
    y, x = out.args
    yo, yi, xo, xi = ir.Var("yo"), ir.Var("yi"), ir.Var("xo"), ir.Var("xi")
    sy, sx, at = int(config["split_y"]), int(config["split_x"]), config["at"]
    if at == "xo" and sy and sx:
      out.tile(x, y, xo, yo, xi, yi, sx, sy)
    elif sy:
      out.split(y, yo, yi, sy)
    for name, level in levels.items():
      f = funcs[name]
      if level == "root":
        f.compute_root()
      elif level == "at":
        if at == "yi":
          f.store_at(out, yo).compute_at(out, yi)
        else:
          f.compute_at(out, xo if at == "xo" else yo)
    return g

  def build(self, config: Mapping[str, Any]) -> Any:
    """A fresh AppGraph of this app scheduled with ``config``."""
    return self.apply(_build(self.app, self.build_kwargs), config)

  # Validity ---------------------------------------------------------------------------------------

  def why_invalid(self, config: Mapping[str, Any], *, check_plan: bool | None = None) -> str | None:
    """Why ``config`` is not a valid distinct schedule (``None`` if it is)."""
    try:
      levels = self.levels(config)
    except ValueError as e:
      return str(e)
    h, w = self.shape
    sy, sx, at = int(config["split_y"]), int(config["split_x"]), config["at"]
    tiled = [n for n, lv in levels.items() if lv == "at"]
    if not tiled:
      if (sy, sx, at) != (0, 0, AT_LOOPS[0]):
        return (f"no Func is computed 'at' the output, so split_y={sy}, split_x={sx}, at={at!r} "
                f"change nothing (XLA hints); canonical: split_y=0, split_x=0, at={AT_LOOPS[0]!r}")
    else:
      if not sy:
        return f"Funcs {tiled} are computed at the output, which needs split_y > 0 (got {sy})"
      if sy >= h:
        return f"split_y={sy} must be smaller than the image height {h}"
      if at == "xo":
        if not sx:
          return "at='xo' (tiles) needs split_x > 0"
        if sx >= w:
          return f"split_x={sx} must be smaller than the image width {w}"
        if -(-h // sy) * -(-w // sx) > 1 << 16:
          return f"{sy}x{sx} tiles of a {h}x{w} image are too many loop steps (max 65536)"
      elif sx:
        return f"split_x={sx} only matters with at='xo' (got at={at!r}); use split_x=0"
    why = self._why_graph(levels)
    if why is not None:
      return why
    if check_plan if check_plan is not None else self.check_plan:
      return self._why_plan(config)
    return None

  def is_valid(self, config: Mapping[str, Any]) -> bool:
    """The space's validity predicate."""
    return self.why_invalid(config) is None

  def _why_graph(self, levels: Mapping[str, str]) -> str | None:
    out = self.output

    def level(name: str) -> str:
      return "root" if name == out else levels.get(name, "inline")

    def effective(name: str) -> list[str]:
      # Consumers of a Func as the lowering sees them: through inlined Funcs.
      res = []
      for c in self._consumers[name]:
        res += effective(c) if level(c) == "inline" else [c]
      return res

    for name, lv in levels.items():
      if lv != "at":
        continue
      eff = set(effective(name))
      if out not in eff:
        return (f"Func {name} is computed at the output, but the output does not call it "
                f"(directly or through inlined Funcs); its consumers are {sorted(eff)}")
      bad = sorted(c for c in eff if c != out and level(c) != "at")
      if bad:
        return (f"Func {name} is computed at the output but also consumed by {bad}, which are "
                "not; compute it at root")
    return self._too_many_ops(levels)

  def _too_many_ops(self, levels: Mapping[str, str]) -> str | None:
    out = self.output

    def level(name: str) -> str:
      return "root" if name == out else levels.get(name, "inline")

    memo: dict[str, int] = {}

    def cost(name: str) -> int:
      if name not in memo:
        memo[name] = self._own_ops[name] + sum(
          cost(c) for c in self._callees[name] if level(c) == "inline")
      return memo[name]

    for name in self._own_ops:
      if level(name) != "inline" and cost(name) > MAX_INLINED_OPS:
        return (f"Func {name} inlines ~{cost(name)} expression nodes per point (max "
                f"{MAX_INLINED_OPS}); compute some of its producers at root")
    return None

  def _why_plan(self, config: Mapping[str, Any]) -> str | None:
    key = dbm.canonical_config(config)
    if key not in self._plan_cache:
      try:
        self.lower(config)
        self._plan_cache[key] = None
      except (ValueError, NotImplementedError) as e:
        self._plan_cache[key] = f"the lowering rejects it: {e}"
    return self._plan_cache[key]

  # Lowering and features --------------------------------------------------------------------------

  def lower(self, config: Mapping[str, Any]) -> Any:
    """``Pipeline.lower()`` of the scheduled app for this shape (the loop-nest tree)."""
    g = self.build(config)
    return g.pipeline.lower(self.shape, input_shapes=[self.shape] * len(g.pipeline.images))

  def features(self, config: Mapping[str, Any]) -> np.ndarray:
    """Loop-nest summary features ``float32[12]`` (all ``-1`` for an invalid config)."""
    return _features(self, dbm.canonical_config(config))

  def tree(self, config: Mapping[str, Any]) -> Any:
    """The loop-nest :class:`~jaxsched.tuning.cost_models.Tree` (a 1-node tree if invalid)."""
    return _tree(self, dbm.canonical_config(config))

  def default_config(self) -> dict[str, Any]:
    """Everything inline where offered (else root), no splits; if that is invalid (the
    bilateral grid's blurs inlined into its slice exceed the inlining limit), the first valid
    config in the space's order."""
    first = {n: self.space.choices[i][0] for i, n in enumerate(self.funcs)} | {
      "split_y": 0, "split_x": 0, "at": AT_LOOPS[0]}
    if self.why_invalid(first) is None:
      return first
    k = next(iter(self.space.iter_valid()), None)
    if k is None:
      raise ValueError(f"app {self.app!r} at {self.shape}: its schedule space has no valid config")
    return self.space.knobs_to_config(k)


@functools.lru_cache(maxsize=4096)
def _features(ps: PipelineSpace, key: str) -> np.ndarray:
  import json

  from jaxsched.tuning.features import loop_nest_vector

  config = json.loads(key)
  if ps.why_invalid(config, check_plan=False) is not None:
    return np.full(12, -1.0, np.float32)
  try:
    return loop_nest_vector(ps.lower(config))
  except (ValueError, NotImplementedError):
    return np.full(12, -1.0, np.float32)


@functools.lru_cache(maxsize=4096)
def _tree(ps: PipelineSpace, key: str) -> Any:
  import json

  from jaxsched.tuning.cost_models import Tree
  from jaxsched.tuning.features import NODE_FEATURES, loop_nest_tree

  config = json.loads(key)
  if ps.why_invalid(config, check_plan=False) is None:
    try:
      return loop_nest_tree(ps.lower(config))
    except (ValueError, NotImplementedError):
      pass
  return Tree(np.full((1, len(NODE_FEATURES)), -1.0, np.float32), ((),))


@functools.lru_cache(maxsize=64)
def schedule_space(app: str, shape: tuple[int, ...], *, backend: str = "xla",
                   check_plan: bool = True) -> PipelineSpace:
  """The (cached) :class:`PipelineSpace` of ``app`` at ``shape`` with default build arguments."""
  return PipelineSpace(app, shape, backend=backend, check_plan=check_plan)


# Spaces built with non-default arguments, keyed by their canonical JSON but built from the
# original objects (a JSON round trip would turn e.g. ``dtype=jnp.float16`` into a string).
_SPACES: dict[tuple, PipelineSpace] = {}
_MAX_SPACES = 64


def _space(app: str, shape: Sequence[int], backend: str, build_kwargs: Mapping[str, Any],
           space_kwargs: Mapping[str, Any] | None = None) -> PipelineSpace:
  shape = _check_shape(shape)
  if not build_kwargs and not space_kwargs:
    return schedule_space(app, shape, backend=backend)
  options = {"space": dict(space_kwargs or {}), "build": dict(build_kwargs)}
  key = (app, shape, backend, dbm.canonical_config(options))
  ps = _SPACES.get(key)
  if ps is None:
    if len(_SPACES) >= _MAX_SPACES:
      _SPACES.pop(next(iter(_SPACES)))
    ps = _SPACES[key] = PipelineSpace(
      app, shape, backend=backend, **options["space"], **options["build"]
    )
  return ps


def apply_schedule(g: Any, config: Mapping[str, Any], *, shape: Sequence[int],
                   **build_kwargs: Any) -> Any:
  """Schedules a fresh AppGraph ``g`` (``apps.get_app(name).build(**build_kwargs)``) with a
  tuned ``config``; pass the same ``build_kwargs`` the graph was built with.

  Raises:
    ValueError: the config is not a valid schedule of the app at ``shape`` (names the reason).
  """
  ps = _space(g.name, shape, "xla", build_kwargs)
  why = ps.why_invalid(config)
  if why is not None:
    raise ValueError(f"config {dict(config)} is not a valid schedule of app {g.name!r} at "
                     f"shape {tuple(shape)}: {why}")
  return ps.apply(g, config)


# Tasks ------------------------------------------------------------------------------------------


def pipeline_workload(app: str, shape: Sequence[int], *, backend: str = "xla",
                      **build_kwargs: Any) -> str:
  """The workload key pipeline records are stored under."""
  _check_backend(backend)
  return dbm.workload_key(app, shapes=[_check_shape(shape)], dtypes=["float32"], backend=backend,
                          **build_kwargs)


def _random_images(g: Any, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  out = []
  for img in g.pipeline.images:
    if img.ndim != len(shape):
      raise NotImplementedError(f"app {g.name!r}: ImageParam {img.name} is {img.ndim}-D; tuning "
                                f"inputs are {len(shape)}-D of shape {shape}")
    out.append(rng.random(shape).astype(np.dtype(img.dtype)))
  return out


def measure_pipeline(config: Mapping[str, Any], *, app: str, shape: tuple[int, ...],
                     backend: str = "xla", build_kwargs: tuple[tuple[str, Any], ...] = (),
                     space_kwargs: tuple[tuple[str, Any], ...] = (), seed: int = 0) -> Any:
  """``Task.measure_fn`` of pipeline tasks: compiles the scheduled app and returns the thunk."""
  import jax.numpy as jnp

  ps = _space(app, shape, backend, dict(build_kwargs), dict(space_kwargs))
  g = ps.build(config)
  fn = g.compile(backend)
  images = [jnp.asarray(a) for a in _random_images(g, tuple(shape), seed)]
  return lambda: fn(*images)


def pipeline_task(app: str, shape: Sequence[int], *, backend: str = "xla",
                  features: str = "knobs", space_kwargs: Mapping[str, Any] | None = None,
                  **build_kwargs: Any) -> Task:
  """The tuning task for ``app`` at ``shape``: measures the jitted pipeline on the local device.

  Args:
    app: registered app name.
    shape: ``(height, width)`` of the input image.
    backend: ``"xla"``.
    features: ``"knobs"`` (raw knob features: fast, annealing runs as one jitted scan) or
      ``"loop_nest"`` (features and trees of ``Pipeline.lower()``: invariant across apps, so
      they transfer, but each new candidate is lowered on the host).
    space_kwargs: :class:`PipelineSpace` options (``groups``, ``splits_y``, ``splits_x``) for a
      narrower space; records of such a space are stored under the same workload.
    **build_kwargs: app build arguments.
  """
  valid_features = ("knobs", "loop_nest")
  if features not in valid_features:
    raise ValueError(f"unknown {features=}; valid: {list(valid_features)}")
  shape = _check_shape(shape)
  space_kwargs = {k: (dict(v) if isinstance(v, Mapping) else tuple(v))
                  for k, v in (space_kwargs or {}).items()}
  ps = _space(app, shape, backend, build_kwargs, space_kwargs)
  measure = functools.partial(measure_pipeline, app=app, shape=shape, backend=backend,
                              build_kwargs=tuple(sorted(build_kwargs.items())),
                              space_kwargs=tuple(sorted(space_kwargs.items())))
  loop = features == "loop_nest"

  def record_tree_fn(shapes: Any, config: Mapping[str, Any]) -> Any:
    # Another workload of this app (another shape): its tree at its own shape.
    return _space(app, _check_shape(shapes[0]), backend, build_kwargs, space_kwargs).tree(config)

  return Task(
    workload=pipeline_workload(app, shape, backend=backend, **build_kwargs),
    space=ps.space,
    measure_fn=measure,
    feature_fn=ps.features if loop else None,
    tree_fn=ps.tree if loop else None,
    record_tree_fn=record_tree_fn if loop else None,
    op=app,
    shapes=(shape,),
    dtypes=("float32",),
  )


# Using results ----------------------------------------------------------------------------------


def tuned_schedule(app: str, shape: Sequence[int], *, backend: str = "xla",
                   db: str | dbm.TuningDatabase | None = None, target: str | None = None,
                   **build_kwargs: Any) -> dict[str, Any] | None:
  """The fastest recorded schedule config of ``app`` at ``shape`` that is valid today, or None.

  Args:
    app: registered app name.
    shape: ``(height, width)``.
    backend: ``"xla"``.
    db: database path or instance (default: ``$JAXSCHED_TUNING_DB`` or the user cache dir).
    target: device kind records were measured on (default: this machine's).
  """
  from jaxsched.pipelines import apps

  apps.get_app(app)  # Unknown app: error listing the registered ones.
  _check_backend(backend)
  shape = _check_shape(shape)
  workload = pipeline_workload(app, shape, backend=backend, **build_kwargs)
  target = target or dbm.current_target()
  if isinstance(db, dbm.TuningDatabase):
    recs = db.best(workload, target, k=8)
  else:
    path = Path(db).expanduser() if db is not None else dbm.default_db_path()
    if not path.exists():  # Nothing tuned yet; do not create the file.
      return None
    with dbm.TuningDatabase(path) as database:
      recs = database.best(workload, target, k=8)
  candidates = [r.config for r in recs]  # Fastest first; later ones if the best is stale.
  if not candidates:
    return None  # Also for apps without a schedule space (nothing can be recorded for them).
  ps = _space(app, shape, backend, build_kwargs)
  for config in candidates:
    if ps.why_invalid(config) is None:  # Records of an older space definition are skipped.
      return dict(config)
  return None


def make_tuned(app: str, shape: Sequence[int], *, backend: str = "xla",
               db: str | dbm.TuningDatabase | None = None, target: str | None = None,
               **build_kwargs: Any) -> Any:
  """A fresh AppGraph of ``app`` with the tuned schedule for ``shape``, else its default one.

  The graph's ``schedule_source`` attribute says which: ``"tuned"`` or ``"default"``;
  ``schedule_config`` is the tuned config (``None`` for the default schedule).
  """
  from jaxsched.pipelines import apps

  config = tuned_schedule(app, shape, backend=backend, db=db, target=target, **build_kwargs)
  if config is None:
    g = apps.make(app, "default", backend=backend, **build_kwargs)
    g.schedule_source, g.schedule_config = "default", None
    return g
  g = _space(app, shape, backend, build_kwargs).build(config)
  g.schedule_source, g.schedule_config = "tuned", config
  return g


def tuned_pipeline(workload: Any, *, image_shapes: Sequence[Sequence[int]],
                   backend: str = "xla") -> Any:
  """The ``"tuned"`` schedule provider (``Pipeline.compile(schedule="tuned")``).

  For backend ``"xla"`` (the only one with records so far): the fastest valid database record
  of the app at the first image's ``(height, width)`` on this machine (database:
  ``$JAXSCHED_TUNING_DB``, else :func:`~jaxsched.tuning.database.default_db_path`), else the
  app's default schedule. Other backends (``"pallas"``): the app's default schedule for them.

  Args:
    workload: the pipeline's :class:`~jaxsched.pipelines.schedule_providers.Workload`.
    image_shapes: concrete shapes of the pipeline's input images, in order.
    backend: the backend the pipeline will run on.

  Returns:
    A :class:`~jaxsched.pipelines.schedule_providers.ScheduleChoice` with a fresh scheduled
    Pipeline and ``source`` ``"tuned"`` (with its ``config``) or ``"default"`` (with the
    default schedule's name).
  """
  from jaxsched.pipelines import apps
  from jaxsched.pipelines.schedule_providers import ScheduleChoice

  app, build_kwargs = workload
  if not image_shapes:
    raise ValueError(f"app {app!r}: the tuned schedule is looked up by the input image shape, "
                     "but the pipeline has no input images")
  if backend in BACKENDS:
    g = make_tuned(app, image_shapes[0], backend=backend, **build_kwargs)
  else:  # No records for this backend: its default schedule.
    g = apps.make(app, "default", backend=backend, **build_kwargs)
    g.schedule_source, g.schedule_config = "default", None
  name = apps.get_app(app).default[backend] if g.schedule_source == "default" else None
  return ScheduleChoice(g.pipeline, source=g.schedule_source, config=g.schedule_config,
                        schedule=name)


def _register_provider() -> None:
  from jaxsched.pipelines.schedule_providers import register_schedule_provider

  register_schedule_provider("tuned", tuned_pipeline, overwrite=True)


_register_provider()
