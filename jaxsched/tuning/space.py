"""Discrete search spaces of named knobs, and the tuning ``Task``.

A :class:`SearchSpace` is the product of named knobs, each with a finite tuple of choices, plus an
optional validity predicate. Points are handled in three encodings:

* a *config*: ``{name: value}`` dict, or an instance of the frozen dataclass the space came from;
* a *knob vector*: ``int32[ndim]`` of choice indices (what search algorithms move around in);
* a flat *index* in ``[0, size)`` (mixed radix over the knob vector, last knob fastest).

Kernel configs declare their own choices on the dataclass fields::

  @dataclasses.dataclass(frozen=True, slots=True)
  class BlockSizes:
    block_m: int = dataclasses.field(default=128, metadata={"choices": (64, 128, 256)})

  space = SearchSpace.from_dataclass(BlockSizes)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SearchSpace", "Task"]


def _knob_value_features(choices: tuple[Any, ...]) -> np.ndarray:
  """Per-choice scalar feature: log2 for positive numbers, 0/1 for bools, else the choice index."""
  if all(isinstance(c, bool) for c in choices):
    return np.array([float(c) for c in choices], np.float32)
  if all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in choices):
    # Tile sizes and factors act multiplicatively, so log2 makes the feature near-linear.
    return np.log2(np.array(choices, np.float64)).astype(np.float32)
  if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
    return np.array(choices, np.float32)
  return np.arange(len(choices), dtype=np.float32)


def _canonical_key(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
  return tuple(sorted((k, repr(v)) for k, v in values.items()))


class SearchSpace:
  """The product of named discrete knobs, with an optional validity predicate.

  Args:
    knobs: ``{name: choices}``; every knob needs at least one choice and no duplicate choices.
    valid: ``valid(config) -> bool``; configs it rejects (or that raise ``ValueError`` or
      ``TypeError``, e.g. in a dataclass ``__post_init__``) are never proposed for measurement.
    config_cls: if given, configs are built as ``config_cls(**values)`` instead of dicts.
  """

  def __init__(
    self,
    knobs: Mapping[str, Sequence[Any]],
    *,
    valid: Callable[[Any], bool] | None = None,
    config_cls: type | None = None,
  ):
    if not knobs:
      raise ValueError("the search space is empty: it needs at least one knob, got knobs={}")
    names, choices = [], []
    for name, cs in knobs.items():
      cs = tuple(cs)
      if not cs:
        raise ValueError(f"knob {name!r} has no choices: the search space is empty")
      if len(set(map(repr, cs))) != len(cs):
        raise ValueError(f"knob {name!r} has duplicate choices: {cs}")
      names.append(str(name))
      choices.append(cs)
    self.names: tuple[str, ...] = tuple(names)
    self.choices: tuple[tuple[Any, ...], ...] = tuple(choices)
    self.sizes = np.array([len(c) for c in choices], np.int64)
    self.size = int(math.prod(len(c) for c in choices))
    self.valid_fn = valid
    self.config_cls = config_cls
    # Mixed-radix strides, last knob fastest.
    self._strides = np.array(
      [math.prod(len(c) for c in choices[i + 1 :]) for i in range(len(choices))], np.int64
    )
    self._value_features = [_knob_value_features(c) for c in choices]
    self._lookup = [{repr(v): i for i, v in enumerate(c)} for c in choices]

  @classmethod
  def from_dataclass(
    cls,
    config_cls: type,
    *,
    valid: Callable[[Any], bool] | None = None,
    fixed: Mapping[str, Any] | None = None,
  ) -> SearchSpace:
    """Builds the space from a (frozen) dataclass whose fields declare ``metadata["choices"]``.

    Fields without ``choices`` keep their default (or the value in ``fixed``); ``fixed`` also pins
    a knob to one value.
    """
    if not dataclasses.is_dataclass(config_cls):
      raise TypeError(f"{config_cls=} is not a dataclass type")
    fixed = dict(fixed or {})
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fixed) - set(fields))
    if unknown:
      raise ValueError(
        f"fixed names {unknown} are not fields of {config_cls.__name__}: {sorted(fields)}"
      )
    knobs: dict[str, tuple[Any, ...]] = {}
    for name, f in fields.items():
      if name in fixed:
        knobs[name] = (fixed[name],)
      elif "choices" in f.metadata:
        knobs[name] = tuple(f.metadata["choices"])
      elif f.default is not dataclasses.MISSING:
        knobs[name] = (f.default,)
      elif f.default_factory is not dataclasses.MISSING:
        knobs[name] = (f.default_factory(),)
      else:
        raise ValueError(
          f"field {name!r} of {config_cls.__name__} has no metadata['choices'], no default and "
          "no value in fixed="
        )
    if all(len(c) == 1 for c in knobs.values()) and not any(
      "choices" in f.metadata for f in fields.values()
    ):
      raise ValueError(f"{config_cls.__name__} declares no field with metadata['choices']")
    return cls(knobs, valid=valid, config_cls=config_cls)

  @classmethod
  def from_configs(cls, configs: Sequence[Any]) -> SearchSpace:
    """Builds the space from an explicit list of valid configs (e.g. a kernel's
    ``jaxsched.pallas.config.search_space(...)``): knobs are the fields that vary, choices in
    first-seen order, and a config is valid iff it is in the list.
    """
    configs = list(configs)
    if not configs:
      raise ValueError("the search space is empty: configs=[] (no valid config)")
    kinds = {type(c) for c in configs}
    if len(kinds) != 1:
      raise TypeError(f"configs mix types {sorted(k.__name__ for k in kinds)}")
    config_cls = kinds.pop()
    as_dicts = [
      {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
      if dataclasses.is_dataclass(c) else dict(c)
      for c in configs
    ]
    knobs: dict[str, list[Any]] = {}
    for d in as_dicts:
      for name, value in d.items():
        seen = knobs.setdefault(name, [])
        if all(repr(value) != repr(v) for v in seen):
          seen.append(value)
    allowed = {_canonical_key(d) for d in as_dicts}
    is_dc = dataclasses.is_dataclass(config_cls)

    def valid(config: Any) -> bool:
      values = (
        {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        if is_dc else dict(config)
      )
      return _canonical_key(values) in allowed

    return cls(knobs, valid=valid, config_cls=config_cls if is_dc else None)

  # Encodings -----------------------------------------------------------------------------------

  @property
  def ndim(self) -> int:
    return len(self.names)

  def __len__(self) -> int:
    return self.size

  def __repr__(self) -> str:
    knobs = ", ".join(f"{n}={c}" for n, c in zip(self.names, self.choices, strict=True))
    return f"SearchSpace({knobs}; size={self.size})"

  def knobs_to_config(self, knobs: Sequence[int] | np.ndarray) -> Any:
    """Knob vector ``int[ndim]`` -> config (dict, or ``config_cls`` instance)."""
    knobs = np.asarray(knobs)
    if knobs.shape != (self.ndim,) or np.any(knobs < 0) or np.any(knobs >= self.sizes):
      raise ValueError(f"{knobs=} is not a knob vector of this space (sizes={self.sizes.tolist()})")
    values = {n: c[int(k)] for n, c, k in zip(self.names, self.choices, knobs, strict=True)}
    return self.config_cls(**values) if self.config_cls is not None else values

  def config_to_knobs(self, config: Any) -> np.ndarray:
    """Config -> knob vector ``int32[ndim]``; values must be among the declared choices."""
    values = self.config_values(config)
    missing = [n for n in self.names if n not in values]
    if missing:
      raise ValueError(f"config {config!r} lacks knobs {missing}")
    out = np.empty(self.ndim, np.int32)
    for i, (name, lookup) in enumerate(zip(self.names, self._lookup, strict=True)):
      try:
        out[i] = lookup[repr(values[name])]
      except KeyError:
        raise ValueError(
          f"{name}={values[name]!r} is not a choice of knob {name!r}: {self.choices[i]}"
        ) from None
    return out

  def config_values(self, config: Any) -> dict[str, Any]:
    """Config -> plain ``{name: value}`` dict (for JSON records)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
      return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
      return dict(config)
    raise TypeError(f"{config=} is neither a mapping nor a dataclass instance")

  def knobs_to_index(self, knobs: np.ndarray) -> np.ndarray:
    """Knob vectors ``int[..., ndim]`` -> flat indices ``int64[...]``."""
    return np.asarray(knobs, np.int64) @ self._strides

  def index_to_knobs(self, index: int | np.ndarray) -> np.ndarray:
    """Flat indices ``int[...]`` -> knob vectors ``int32[..., ndim]``."""
    index = np.asarray(index, np.int64)
    if np.any(index < 0) or np.any(index >= self.size):
      raise ValueError(f"{index=} is outside [0, {self.size})")
    return ((index[..., None] // self._strides) % self.sizes).astype(np.int32)

  def index_to_config(self, index: int) -> Any:
    return self.knobs_to_config(self.index_to_knobs(int(index)))

  def config_to_index(self, config: Any) -> int:
    return int(self.knobs_to_index(self.config_to_knobs(config)))

  # Validity, sampling, neighbourhoods ----------------------------------------------------------

  def is_valid(self, config: Any) -> bool:
    """Whether ``config`` passes the predicate (building a dataclass that rejects it = invalid)."""
    if self.valid_fn is None:
      return True
    try:
      return bool(self.valid_fn(config))
    except (ValueError, TypeError):
      return False

  def is_valid_knobs(self, knobs: np.ndarray) -> bool:
    try:
      config = self.knobs_to_config(knobs)
    except (ValueError, TypeError):  # a dataclass __post_init__ rejecting the combination
      return False
    return self.is_valid(config)

  def sample(
    self, rng: np.random.Generator, n: int, *, valid_only: bool = True, max_tries: int = 50
  ) -> np.ndarray:
    """``n`` uniformly random knob vectors ``int32[n, ndim]`` (valid ones if ``valid_only``).

    Raises:
      ValueError: if no valid point is found in ``max_tries * n`` draws.
    """
    out: list[np.ndarray] = []
    for _ in range(max_tries):
      draw = (rng.random((max(n, 1), self.ndim)) * self.sizes).astype(np.int32)
      for k in draw:
        if not valid_only or self.is_valid_knobs(k):
          out.append(k)
          if len(out) == n:
            return np.stack(out)
    if not out:
      raise ValueError(f"no valid config found in {max_tries * max(n, 1)} random draws of {self}")
    return np.stack(out)

  def neighbours(self, knobs: np.ndarray) -> np.ndarray:
    """All points differing from ``knobs`` in exactly one knob: ``int32[sum(sizes - 1), ndim]``."""
    knobs = np.asarray(knobs, np.int32)
    rows = []
    for d in range(self.ndim):
      for v in range(int(self.sizes[d])):
        if v != knobs[d]:
          k = knobs.copy()
          k[d] = v
          rows.append(k)
    return np.stack(rows) if rows else np.zeros((0, self.ndim), np.int32)

  def iter_valid(self) -> Iterator[np.ndarray]:
    """Every valid knob vector in index order (grid search)."""
    for idx in range(self.size):
      k = self.index_to_knobs(idx)
      if self.is_valid_knobs(k):
        yield k

  # Features ------------------------------------------------------------------------------------

  @property
  def feature_tables(self) -> tuple[np.ndarray, ...]:
    """Per knob, the scalar feature of each choice (``float32[sizes[d]]``)."""
    return tuple(self._value_features)

  def knob_features(self, knobs: np.ndarray) -> np.ndarray:
    """Raw knob-vector features ``float32[..., ndim]`` (log2 of numeric choices, else index)."""
    knobs = np.asarray(knobs, np.int64)
    cols = [t[knobs[..., d]] for d, t in enumerate(self._value_features)]
    return np.stack(cols, axis=-1).astype(np.float32)

  def knob_features_jax(self) -> Callable[[Any], Any]:
    """A jittable ``knobs int32[ndim] -> float32[ndim]`` equivalent of :meth:`knob_features`."""
    import jax.numpy as jnp

    width = int(self.sizes.max())
    # One padded [ndim, max_choices] table keeps the gather a single op.
    table = np.zeros((self.ndim, width), np.float32)
    for d, t in enumerate(self._value_features):
      table[d, : len(t)] = t
    table_j = jnp.asarray(table)
    rows = jnp.arange(self.ndim)

    def featurize(knobs):
      return table_j[rows, knobs]

    return featurize


@dataclasses.dataclass(frozen=True)
class Task:
  """One tuning problem: what to measure, over which space, with which features.

  Attributes:
    workload: the workload key records are stored under (see :func:`database.workload_key`).
    space: the search space.
    measure_fn: ``measure_fn(config) -> thunk``; calling ``thunk()`` runs the candidate once (the
      measurer blocks on its result and times it). Must be a module-level function (picklable)
      when candidates run in worker processes.
    feature_fn: ``feature_fn(config) -> float32[F]`` features for the cost model; ``None`` uses the
      raw knob features. Use features that mean the same across workloads for transfer learning.
    tree_fn: ``tree_fn(config) -> Tree`` for the TreeGRU model (e.g. the lowered loop nest);
      ``None`` uses a one-level tree with one leaf per knob.
    op: op or app name (records are looked up by it); defaults to the workload key's prefix.
    shapes, dtypes: recorded with each measurement.
    record_tree_fn: ``record_tree_fn(shapes, config) -> Tree``: the tree of another workload's
      record (its recorded shapes), so a TreeGRU on trees can be pre-trained on the database
      (transfer); ``None``: a TreeGRU on trees starts from this task's measurements only.
  """

  workload: str
  space: SearchSpace
  measure_fn: Callable[[Any], Callable[[], Any]]
  feature_fn: Callable[[Any], np.ndarray] | None = None
  tree_fn: Callable[[Any], Any] | None = None
  op: str | None = None
  shapes: tuple[tuple[int, ...], ...] = ()
  dtypes: tuple[str, ...] = ()
  record_tree_fn: Callable[[Any, Any], Any] | None = None

  @property
  def op_name(self) -> str:
    return self.op if self.op is not None else self.workload.split("|", 1)[0]

  def features(self, knobs: np.ndarray) -> np.ndarray:
    """Features of knob vectors ``int[n, ndim]`` -> ``float32[n, F]``."""
    knobs = np.asarray(knobs)
    if self.feature_fn is None:
      return self.space.knob_features(knobs)
    rows = [np.asarray(self.feature_fn(self.space.knobs_to_config(k)), np.float32) for k in knobs]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)
