"""Tunable-config machinery shared by the Pallas kernels: declared choices, search spaces, lookup.

Every op keeps its tunables in a frozen, slotted dataclass whose fields declare their allowed
values in field metadata (``field(default=128, metadata={"choices": (...), ...})``). That
declaration is the single source of truth: :func:`search_space` enumerates the cartesian product
of the declared choices and prunes it with the op's target rules, and the tuner consumes exactly
that list.

Fields may also declare ``"kinds"``: the target kinds on which the field matters (e.g.
``num_warps`` only means something to Triton). Elsewhere the field stays at its default, so the
search space has no duplicates.

Op rules come in two strengths:

* hard rules (block alignment, e.g. TPU (8, 128) tiling): a config breaking one cannot lower, so
  the public wrappers reject it with an error naming the rule, and :func:`search_space` drops it;
* soft rules (resource estimates vs the target's shared memory / scoped VMEM, no block larger
  than the padded problem): only :func:`search_space` prunes with them. A user's explicit config
  that is over budget is passed to the compiler, whose own message (e.g. Triton's
  ``Shared memory size limit exceeded``) is more exact than any estimate.

``config=None`` resolves through :func:`lookup_config`: the tuned table in
``tuned_configs.json`` keyed by (target kind, shapes, dtype, op params), else
:func:`default_config`, a config derived from the dataclass defaults that satisfies every rule.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import itertools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp

from jaxsched.pallas import targets as _targets

__all__ = [
  "OpSpec",
  "OPS",
  "choices",
  "default_config",
  "kernel_target",
  "lookup_config",
  "register_op",
  "search_space",
  "tunable_fields",
  "validate_choices",
]

Shapes = tuple[tuple[int, ...], ...]


def choices(config_cls: type | Any) -> dict[str, tuple[Any, ...]]:
  """The declared choices of every tunable field of a config dataclass (or instance)."""
  return {
    f.name: tuple(f.metadata["choices"])
    for f in dataclasses.fields(config_cls)
    if "choices" in f.metadata
  }


def tunable_fields(config_cls: type | Any, kind: str) -> dict[str, tuple[Any, ...]]:
  """The fields that are tuned on targets of ``kind``, with their choices.

  Fields declaring ``metadata["kinds"]`` are only tuned on those kinds.
  """
  return {
    f.name: tuple(f.metadata["choices"])
    for f in dataclasses.fields(config_cls)
    if "choices" in f.metadata and kind in f.metadata.get("kinds", (kind,))
  }


def validate_choices(config: Any) -> None:
  """Raises ValueError unless every field of ``config`` is one of its declared choices.

  Meant to be called from a config's ``__post_init__``.
  """
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    allowed = f.metadata.get("choices")
    if allowed is not None and value not in allowed:
      raise ValueError(
        f"{type(config).__name__}.{f.name}={value!r} is not an allowed choice; "
        f"valid choices: {tuple(allowed)}"
      )


@dataclasses.dataclass(frozen=True)
class OpSpec:
  """How the config machinery sees one op.

  Attributes:
    name: registry name, e.g. ``"matmul"``.
    config_cls: the op's frozen config dataclass.
    validate: ``validate(shapes, dtype, **params)`` raises on bad problem shapes/params and
      returns the params normalized (e.g. ``padding`` upper-cased).
    check: ``check(config, shapes, dtype, target, *, hard_only, **params) -> str | None``: why
      ``config`` is invalid for this problem on ``target`` (None when valid). With
      ``hard_only=True`` only the rules whose breach cannot compile are applied.
    block_dims: ``block_dims(shapes, **params) -> {field: problem extent}``: the extent each
      block field tiles, used to shrink default blocks to the problem.
  """

  name: str
  config_cls: type
  validate: Callable[..., dict[str, Any]]
  check: Callable[..., str | None]
  block_dims: Callable[..., dict[str, int]]


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
  """Registers an op so :func:`search_space` and :func:`lookup_config` know it."""
  OPS[spec.name] = spec
  return spec


def _get_op(op: str) -> OpSpec:
  if op not in OPS:  # the op modules register themselves when jaxsched.pallas is imported
    import jaxsched.pallas  # noqa: F401
  try:
    return OPS[op]
  except KeyError:
    raise ValueError(f"unknown op {op!r}; valid ops: {sorted(OPS)}") from None


def _norm_shapes(shapes: Sequence[Sequence[int]]) -> Shapes:
  try:
    return tuple(tuple(int(d) for d in s) for s in shapes)
  except TypeError:
    raise ValueError(f"{shapes=} must be a sequence of shape tuples, one per operand") from None


def _dtype_name(dtype: Any) -> str:
  return jnp.dtype(dtype).name


def _target_key(target: Any) -> _targets.Target:
  """Resolves a target for config selection (None means the local backend)."""
  return _targets.resolve_target(target)


def _params_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted(params.items()))


@functools.lru_cache(maxsize=256)
def _search_space(
  op: str, shapes: Shapes, dtype: str, target: _targets.Target, params: tuple
) -> tuple[Any, ...]:
  spec = _get_op(op)
  kw = dict(params)
  tuned = tunable_fields(spec.config_cls, target.kind)
  names = list(tuned)
  out = []
  for values in itertools.product(*(tuned[n] for n in names)):
    cfg = spec.config_cls(**dict(zip(names, values, strict=True)))
    if spec.check(cfg, shapes, dtype, target, hard_only=False, **kw) is None:
      out.append(cfg)
  return tuple(out)


def search_space(
  op: str,
  shapes: Sequence[Sequence[int]],
  dtype: Any,
  target: str | _targets.Target | None = None,
  **params: Any,
) -> list[Any]:
  """Every valid config of ``op`` for a problem on ``target``.

  Args:
    op: registered op name (``"matmul"``, ``"depthwise_conv2d"``, ``"pointwise_conv"``).
    shapes: the operand shapes, e.g. ``((m, k), (k, n))`` for matmul.
    dtype: operand dtype.
    target: a target name or :class:`~jaxsched.pallas.targets.Target`; None resolves like the
      kernels do (active ``compile_for`` target, else the local backend).
    **params: op parameters that change the problem (``stride=``, ``padding=`` for depthwise).

  Returns:
    The configs obeying the target's hard and soft rules, in declaration order of the choices.

  Raises:
    ValueError: unknown op, or shapes/params the op rejects.
  """
  spec = _get_op(op)
  shapes = _norm_shapes(shapes)
  dtype_name = _dtype_name(dtype)
  params = spec.validate(shapes, dtype_name, **params)
  tgt = _target_key(target)
  return list(_search_space(op, shapes, dtype_name, tgt, _params_key(params)))


def _log_distance(cfg: Any, ref: Any) -> float:
  dist = 0.0
  for name in choices(cfg):
    a, b = getattr(cfg, name), getattr(ref, name)
    dist += abs(math.log2(a / b)) if a > 0 and b > 0 else float(a != b)
  return dist


@functools.lru_cache(maxsize=256)
def _default_config(
  op: str, shapes: Shapes, dtype: str, target: _targets.Target, params: tuple
) -> Any:
  spec = _get_op(op)
  kw = dict(params)
  base = spec.config_cls()
  # Shrink each block to the smallest choice covering its extent: no block larger than needed.
  updates = {}
  all_choices = tunable_fields(spec.config_cls, target.kind)
  for name, extent in spec.block_dims(shapes, **kw).items():
    if name not in all_choices:
      continue
    current = getattr(base, name)
    if current > extent:
      covering = [c for c in all_choices[name] if c >= extent]
      updates[name] = min(covering) if covering else current
  cfg = dataclasses.replace(base, **updates)
  if spec.check(cfg, shapes, dtype, target, hard_only=False, **kw) is None:
    return cfg
  space = _search_space(op, shapes, dtype, target, params)
  if not space:
    raise ValueError(
      f"no valid {op} config for {shapes=}, {dtype=} on target {target.name!r} "
      f"(every candidate breaks a target rule)"
    )
  # The valid config nearest the defaults (log-scale distance); ties favour bigger blocks.
  return min(space, key=lambda c: (_log_distance(c, cfg), -_volume(c)))


def _volume(cfg: Any) -> int:
  return math.prod(getattr(cfg, n) for n in choices(cfg) if n.startswith(("block", "tile")))


def default_config(
  op: str,
  shapes: Sequence[Sequence[int]],
  dtype: Any,
  target: str | _targets.Target | None = None,
  **params: Any,
) -> Any:
  """A sound default config: the dataclass defaults shrunk to the problem, made valid.

  Blocks larger than their extent are shrunk to the smallest choice covering it; if the result
  still breaks a rule of ``target``, the valid config nearest to it (log2 distance per field) is
  returned instead.
  """
  spec = _get_op(op)
  shapes = _norm_shapes(shapes)
  dtype_name = _dtype_name(dtype)
  params = spec.validate(shapes, dtype_name, **params)
  tgt = _target_key(target)
  return _default_config(op, shapes, dtype_name, tgt, _params_key(params))


@functools.cache
def _tuned_table() -> dict[tuple, dict[str, Any]]:
  text = importlib.resources.files("jaxsched.pallas").joinpath("tuned_configs.json").read_text()
  table = {}
  for entry in json.loads(text)["entries"]:
    key = (
      entry["op"],
      entry["kind"],
      _norm_shapes(entry["shapes"]),
      _dtype_name(entry["dtype"]),
      _params_key(entry.get("params", {})),
    )
    table[key] = entry["config"]
  return table


def lookup_config(
  op: str,
  shapes: Sequence[Sequence[int]],
  dtype: Any,
  target: str | _targets.Target | None = None,
  **params: Any,
) -> Any:
  """The config to use when a kernel is called with ``config=None``.

  Order: the fastest record of the tuning database (``jaxsched.tuning``; path from
  ``$JAXSCHED_TUNING_DB`` or the user cache dir) for this op, shapes, dtype, params and device
  kind; then the tuned table (``tuned_configs.json``, keyed by target kind, operand shapes, dtype
  and op params); then :func:`default_config`. A database or table entry that no longer builds,
  or breaks a rule of ``target``, is skipped.
  """
  spec = _get_op(op)
  shapes = _norm_shapes(shapes)
  dtype_name = _dtype_name(dtype)
  params = spec.validate(shapes, dtype_name, **params)
  tgt = _target_key(target)
  pkey = _params_key(params)
  for fields in (
    _db_best(op, shapes, dtype_name, tgt, params),
    _tuned_table().get((op, tgt.kind, shapes, dtype_name, pkey)),
  ):
    if fields is None:
      continue
    try:
      cfg = spec.config_cls(**fields)
    except (TypeError, ValueError):  # Recorded under an older config class.
      continue
    if spec.check(cfg, shapes, dtype_name, tgt, hard_only=False, **params) is None:
      return cfg
  return _default_config(op, shapes, dtype_name, tgt, pkey)


def db_target(target: str | _targets.Target | None = None) -> str:
  """The device-kind string the tuning database stores ``target``'s records under.

  Accelerators: ``"<kind>:<device>"`` (e.g. ``"gpu:NVIDIA H100 80GB HBM3"``), which is what
  ``jaxsched.tuning.current_target()`` reports on that device; the local CPU: its model name.
  """
  tgt = _targets.resolve_target(target)
  if tgt.kind == "cpu":
    from jaxsched.tuning.database import current_target

    return current_target()
  return f"{tgt.kind}:{tgt.device}"


def db_workload(op: str, shapes: Shapes, dtype: str, **params: Any) -> dict[str, Any]:
  """The ``workload_key`` arguments (without ``op``) kernel records are stored under."""
  return {"shapes": [list(s) for s in shapes], "dtypes": [dtype], **params}


def _db_best(
  op: str, shapes: Shapes, dtype: str, target: _targets.Target, params: dict[str, Any]
) -> dict[str, Any] | None:
  # Imported here: the database module is light (sqlite, no jax), and pallas must not import
  # the tuner at module level.
  from jaxsched.tuning.database import lookup_best_config

  return lookup_best_config(op, db_workload(op, shapes, dtype, **params), db_target(target))


def resolve_config(
  op: str,
  config: Any,
  shapes: Shapes,
  dtype: Any,
  target: _targets.Target,
  **params: Any,
) -> Any:
  """The config a wrapper should run: ``config`` checked against hard rules, or the lookup.

  Raises:
    TypeError: ``config`` is not the op's config class.
    ValueError: ``config`` breaks a hard rule of ``target`` (the message names the rule).
  """
  spec = _get_op(op)
  if config is None:
    return lookup_config(op, shapes, dtype, target, **params)
  if not isinstance(config, spec.config_cls):
    raise TypeError(
      f"{op} config must be a {spec.config_cls.__name__}, got {type(config).__name__}: {config!r}"
    )
  why = spec.check(config, shapes, _dtype_name(dtype), target, hard_only=True, **params)
  if why is not None:
    raise ValueError(f"{op} {config} is invalid on target {target.name!r}: {why}")
  return config


def kernel_target(target: str | _targets.Target | None, interpret: Any) -> _targets.Target:
  """The target a kernel wrapper builds for (see ``targets.resolve_target``).

  Raises:
    ValueError: the target is the local CPU and ``interpret`` is off.
  """
  tgt = _targets.resolve_target(target)
  if tgt.kind == "cpu" and not interpret:
    raise ValueError(
      "Pallas kernels run on CPU only in interpret mode: pass interpret=True, or compile for "
      f"an accelerator target ({sorted(_targets.TARGETS)}) (got {interpret=}, target='cpu')"
    )
  return tgt


def round_up(x: int, m: int) -> int:
  """``x`` rounded up to a multiple of ``m``."""
  return -(-x // m) * m


def tpu_lane_ok(block: int, extent: int) -> bool:
  """TPU lane (last) dim rule: a multiple of 128, or one block spanning the padded extent."""
  return block % 128 == 0 or block >= extent


def tpu_sublane_ok(block: int, extent: int, dtype: str) -> bool:
  """TPU sublane (second-last) dim rule: a multiple of 8 (16 for 16-bit), or one block."""
  packing = max(1, 4 // jnp.dtype(dtype).itemsize)
  return block % (8 * packing) == 0 or block >= extent


def not_oversized(block: int, extent: int, all_choices: Sequence[int]) -> bool:
  """Soft rule: no block larger than the smallest choice covering the extent."""
  covering = [c for c in all_choices if c >= extent]
  return block < extent or (bool(covering) and block == min(covering))
