"""Lowering: resolve the schedule into a plan (regions, tile tables) and a loop-nest tree.

The plan is what backends execute; the loop nest (``Pipeline.lower()``) is its inspectable
form, with per-node loop extents, bytes read/written, recompute factors and storage sizes, for
printing, for the tuner's features and for a Pallas lowering.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from jaxsched.pipelines import bounds as B
from jaxsched.pipelines import ir

MAX_TILE_STEPS = 1 << 16


# ----------------------------------------------------------------------------- loop nest


@dataclasses.dataclass
class Compute:
  """A stage computed over ``shape`` per iteration of the enclosing loops."""

  func: str
  stage: int
  shape: tuple[int, ...]
  dtype: str
  points: int  # points computed in total (all iterations)
  ops: int  # arithmetic nodes per point (after inlining)
  bytes_read: int  # footprint bytes of every producer/input read, over all iterations
  bytes_written: int
  recompute: float  # points computed / points required
  inlined: tuple[str, ...] = ()
  reads: tuple[str, ...] = ()


@dataclasses.dataclass
class Loop:
  var: str
  extent: int
  kind: str  # serial | parallel | vectorized | unrolled | tile (an executed loop over tiles)
  children: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Realize:
  """Storage for a Func over ``shape`` (allocated once per iteration of enclosing loops)."""

  func: str
  shape: tuple[int, ...]
  dtype: str
  bytes: int
  children: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LoopNest:
  """The lowered pipeline: a forest of Realize/Loop/Compute nodes, producers first."""

  roots: list[Any]
  output_shapes: tuple[tuple[int, ...], ...]

  def nodes(self):
    """All nodes, pre-order, with their depth: ``(depth, node)``."""
    stack = [(0, n) for n in reversed(self.roots)]
    while stack:
      d, n = stack.pop()
      yield d, n
      for c in reversed(getattr(n, "children", [])):
        stack.append((d + 1, c))

  def __str__(self) -> str:
    lines = []
    for d, n in self.nodes():
      pad = "  " * d
      if isinstance(n, Realize):
        lines.append(f"{pad}realize {n.func}{list(n.shape)} {n.dtype} ({n.bytes} B):")
      elif isinstance(n, Loop):
        lines.append(f"{pad}for {n.var} in [0, {n.extent}) {n.kind}:")
      else:
        st = "" if n.stage == 0 else f".update({n.stage - 1})"
        lines.append(
          f"{pad}compute {n.func}{st}{list(n.shape)} points={n.points} ops={n.ops} "
          f"read={n.bytes_read}B write={n.bytes_written}B recompute={n.recompute:.2f}"
        )
    return "\n".join(lines)

  def features(self) -> dict[str, float]:
    """Workload-invariant summary features for cost models."""
    comps = [n for _, n in self.nodes() if isinstance(n, Compute)]
    loops = [n for _, n in self.nodes() if isinstance(n, Loop)]
    reads = sum(c.bytes_read for c in comps)
    writes = sum(c.bytes_written for c in comps)
    flops = sum(c.ops * c.points for c in comps)
    return {
      "stages": float(len(comps)),
      "points": float(sum(c.points for c in comps)),
      "flops": float(flops),
      "bytes_read": float(reads),
      "bytes_written": float(writes),
      "intensity": flops / max(1.0, reads + writes),
      "max_recompute": max([c.recompute for c in comps], default=1.0),
      "storage_bytes": float(sum(n.bytes for _, n in self.nodes() if isinstance(n, Realize))),
      "tile_loops": float(sum(1 for n in loops if n.kind == "tile")),
      "tile_iterations": float(math.prod(n.extent for n in loops if n.kind == "tile") or 1),
      "parallel_extent": float(max([n.extent for n in loops if n.kind == "parallel"], default=1)),
      "vector_width": float(max([n.extent for n in loops if n.kind == "vectorized"], default=1)),
    }


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Stage:
  """An expanded definition: inline Funcs substituted, image extents resolved."""

  args: tuple[ir.Expr, ...]
  value: ir.Expr
  rdom: ir.RDom | None


@dataclasses.dataclass
class FuncPlan:
  func: ir.Func
  level: str  # "root" | "at"
  stages: list[Stage]
  region: list[tuple[int, int]] | None = None  # (min, extent) of the root-level region
  group: TilePlan | None = None  # producers computed inside this Func's loops
  # Effective ("at", func, var) of a compute_at Func: a nested compute_at chain is computed at
  # its outermost consumer's loop (backends have one level of tile loops); None at root.
  home: tuple | None = None


@dataclasses.dataclass
class ChildPlan:
  func: ir.Func
  mode: str  # "tile" (computed per step) | "slide" | "restep" (stored over the outer loop)
  win_lo: np.ndarray  # [ndim, A, B] window mins for steps b >= 1 (tile: all steps)
  win_ext: tuple[int, ...]
  win_lo0: np.ndarray  # [ndim, A] window mins at step 0
  win_ext0: tuple[int, ...]
  store_lo: np.ndarray  # [ndim, A]
  store_ext: tuple[int, ...]
  points: int  # points computed over all steps
  required: int  # points of the region actually required (root level)


@dataclasses.dataclass
class TilePlan:
  consumer: ir.Func
  outer_loops: list[tuple[str, int]]
  inner_loops: list[tuple[str, int]]
  origin: np.ndarray  # [ndim, A, B] consumer tile mins
  ext: tuple[int, ...]
  children: list[ChildPlan]


@dataclasses.dataclass
class Plan:
  outputs: list[ir.Func]
  images: list[ir.ImageParam]
  params: list[ir.Param]
  order: list[FuncPlan]  # non-inline Funcs, producers first
  by_func: dict[int, FuncPlan]
  inlined: dict[int, list[str]]  # id(func) -> names of Funcs inlined into it
  out_shapes: dict[int, tuple[int, ...]]


def _definition_exprs(f: ir.Func) -> list[ir.Expr]:
  if f.extern is not None:
    return []
  out: list[ir.Expr] = []
  for d in f.definitions:
    out.extend(d.args)
    out.append(d.value)
  return out


def collect(outputs: list[ir.Func]) -> tuple[list[ir.Func], list[ir.ImageParam], list[ir.Param]]:
  """Funcs reachable from ``outputs`` (producers first), images and params."""
  funcs: dict[int, ir.Func] = {}
  images: dict[int, ir.ImageParam] = {}
  params: dict[int, ir.Param] = {}
  order: list[ir.Func] = []
  state: dict[int, int] = {}

  def visit(f: ir.Func, path: tuple[str, ...]):
    if state.get(id(f)) == 2:
      return
    if state.get(id(f)) == 1:
      raise ValueError(f"the pipeline has a cycle through Funcs {' -> '.join(path + (f.name,))}")
    if not f.defined:
      raise ValueError(f"Func {f.name} is used but never defined (called from {path[-1:]})")
    state[id(f)] = 1
    exprs = _definition_exprs(f)
    if f.extern is not None:
      for img in f.extern.inputs:
        images.setdefault(id(img), img)
    for e in exprs:
      for n in ir.walk(e):
        if isinstance(n, ir.Call):
          if isinstance(n.target, ir.ImageParam):
            images.setdefault(id(n.target), n.target)
          elif n.target is not f:
            visit(n.target, path + (f.name,))
        elif isinstance(n, ir.Param):
          params.setdefault(id(n), n)
        elif isinstance(n, ir.Extent):
          images.setdefault(id(n.image), n.image)
      if isinstance(e, ir.Expr):
        pass
    for d in f.definitions:
      if d.rdom is not None:
        for lo, ext in d.rdom.ranges:
          for n in (*ir.walk(lo), *ir.walk(ext)):
            if isinstance(n, ir.Extent):
              images.setdefault(id(n.image), n.image)
    state[id(f)] = 2
    funcs[id(f)] = f
    order.append(f)

  for o in outputs:
    if not isinstance(o, ir.Func):
      raise TypeError(f"Pipeline outputs must be Funcs, got {o!r}")
    visit(o, ())
  return order, sorted(images.values(), key=lambda i: i.order), list(params.values())


def is_inline(f: ir.Func, outputs: list[ir.Func]) -> bool:
  return (
    f.sched.compute[0] == "inline"
    and not f.updates
    and f.extern is None
    and all(f is not o for o in outputs)
  )


def _where(r: ir.RDom | None) -> ir.Expr | None:
  """The conjunction of ``r``'s ``where`` predicates (None: none)."""
  preds = getattr(r, "predicates", None) or []
  out = None
  for p in preds:
    out = p if out is None else ir.logical_and(out, p)
  return out


def _identity(op: str, dtype: np.dtype) -> ir.Expr:
  """The value a reduction ``op`` ignores: excluded RDom points contribute it."""
  dtype = np.dtype(dtype)
  if op in ("sum", "add"):
    v = 0
  elif op in ("product", "mul"):
    v = 1
  elif dtype == np.bool_:
    v = op in ("min", "argmin")
  elif dtype.kind == "f":
    v = -np.inf if op in ("max", "argmax") else np.inf
  else:
    info = np.iinfo(dtype)
    v = info.min if op in ("max", "argmax") else info.max
  return ir.Const(bool(v) if dtype == np.bool_ else v, dtype)


def _masked_body(n: ir.Reduce) -> ir.Expr:
  """An inline reduction's body with excluded points (``RDom.where``) replaced by the op's
  identity (for argmax/argmin: the lowest/highest value, so they are never chosen)."""
  pred = _where(n.rdom)
  if pred is None:
    return n.body
  return ir.select(pred, n.body, _identity(n.op, n.body.dtype))


def _masked_update(f: ir.Func, d: Any) -> ir.Expr:
  """An update's value with ``RDom.where`` applied: a commutative self-update ``f[L] op= e``
  adds the op's identity at excluded points (so it stays a scatter); any other update keeps
  ``f[L]``'s current value there (Halide: excluded points are not visited)."""
  pred = _where(d.rdom)
  if pred is None:
    return d.value
  su = B.self_update(f, d.args, d.value)
  if su is None:
    return ir.select(pred, d.value, ir.Call(f, d.args))
  op, other, mine = su
  masked = ir.select(pred, other, _identity(op, other.dtype))
  return ir.BinOp(op, mine, masked) if mine is d.value.a else ir.BinOp(op, masked, mine)


def _resolve(e: ir.Expr, shapes: dict[int, tuple[int, ...]]) -> ir.Expr:
  def fn(n: ir.Expr):
    if isinstance(n, ir.Extent):
      return ir.Const(shapes[id(n.image)][n.dim], np.int32, weak=False)
    return None

  return B.fold(B.substitute(e, fn))


def _clone_rdom(r: ir.RDom, shapes, rdmap: dict[int, ir.RDom]) -> ir.RDom:
  """A copy of ``r`` with static ranges for these shapes (the user's RDom is not mutated)."""
  if getattr(r, "_resolved", False):
    return r
  c = rdmap.get(id(r))
  if c is None:
    c = ir.RDom.__new__(ir.RDom)
    c.name = r.name
    c.ranges = [(_resolve(a, shapes), _resolve(b, shapes)) for a, b in r.ranges]
    c.vars = [ir.RVar(c, i) for i in range(len(r.ranges))]
    c._resolved = True
    for i, (_, b) in enumerate(c.ranges):
      if B.static_int(b) <= 0:
        raise ValueError(f"RDom {r.name}: extent of dim {i} is {B.static_int(b)}, must be positive")
    rdmap[id(r)] = c
  return c


def _freshen(e: ir.Expr) -> ir.Expr:
  """Give every inline reduction in ``e`` its own RDom copy, so inlining one Func into
  another reduction over the same RDom cannot capture its RVars."""

  def fn(n: ir.Expr):
    if not isinstance(n, ir.Reduce):
      return None
    fresh = ir.RDom.__new__(ir.RDom)
    fresh.name, fresh.ranges = n.rdom.name, list(n.rdom.ranges)
    fresh.vars = [ir.RVar(fresh, i) for i in range(len(n.rdom.ranges))]
    body = B.substitute(
      _freshen(n.body),
      lambda m: fresh.vars[m.index] if isinstance(m, ir.RVar) and m.rdom is n.rdom else None,
    )
    return ir.Reduce(n.op, fresh, body, n.component)

  return B.substitute(e, fn)


def _expand(
  e: ir.Expr,
  inline: dict[int, ir.Func],
  shapes: dict[int, tuple[int, ...]],
  used: list[str],
  rdmap: dict[int, ir.RDom],
  cache: dict[int, tuple[ir.Expr, list[str], bool]] | None = None,
) -> ir.Expr:
  """Substitute inline Funcs (recursively), resolve image extents and RDom ranges.

  Each inline Func's body is expanded once (``cache``) and then instantiated per call site by
  substituting its Vars with the (expanded) call arguments.
  """
  cache = {} if cache is None else cache

  def body_of(g: ir.Func) -> tuple[ir.Expr, list[str], bool]:
    if id(g) not in cache:
      inner: list[str] = []
      body = _expand(g.value, inline, shapes, inner, rdmap, cache)
      has_red = any(isinstance(n, ir.Reduce) for n in ir.walk(body))
      cache[id(g)] = (body, inner, has_red)
    return cache[id(g)]

  def fn(n: ir.Expr):
    if isinstance(n, ir.RVar):
      return _clone_rdom(n.rdom, shapes, rdmap).vars[n.index]
    if isinstance(n, ir.Reduce):
      body = _expand(_masked_body(n), inline, shapes, used, rdmap, cache)
      return ir.Reduce(n.op, _clone_rdom(n.rdom, shapes, rdmap), body, n.component)
    if isinstance(n, ir.Call) and id(n.target) in inline:
      g = n.target
      body, inner, has_red = body_of(g)
      for name in (g.name, *inner):
        if name not in used:
          used.append(name)
      args = [B.substitute(a, fn) for a in n.args]
      by_name = {v.name: a for v, a in zip(g.args, args, strict=True)}
      return B.substitute(
        _freshen(body) if has_red else body,
        lambda m: by_name.get(m.name) if isinstance(m, ir.Var) else None,
      )
    if isinstance(n, ir.Extent):
      return ir.Const(shapes[id(n.image)][n.dim], np.int32, weak=False)
    return None

  return B.substitute(e, fn)


def _region_env(f: ir.Func, lo: list[np.ndarray], hi: list[np.ndarray]) -> dict:
  return {
    ("v", v.name): (np.asarray(a, np.float64), np.asarray(b, np.float64))
    for v, a, b in zip(f.args, lo, hi, strict=True)
  }


def _stage_env(st: Stage, f: ir.Func, lo, hi) -> dict:
  env = _region_env(f, lo, hi)
  if st.rdom is not None:
    for r in st.rdom.vars:
      env[B.key(r)] = B.rdom_interval(r)
  return env


def _stage_exprs(st: Stage) -> list[ir.Expr]:
  return [*st.args, st.value]


def _fmt_range(iv) -> str:
  lo, hi = iv
  return f"[{_num(np.min(lo))}, {_num(np.max(hi))}]"


def _num(v) -> str:
  return str(int(v)) if np.isfinite(v) else ("-inf" if v < 0 else "inf")


def plan(
  outputs: list[ir.Func],
  output_shapes: list[tuple[int, ...]],
  image_shapes: dict[int, tuple[int, ...]],
  funcs: list[ir.Func],
  images: list[ir.ImageParam],
  params: list[ir.Param],
) -> Plan:
  """Resolve schedules and infer every region for concrete shapes."""
  inline = {id(f): f for f in funcs if is_inline(f, outputs)}
  fplans: dict[int, FuncPlan] = {}
  inlined: dict[int, list[str]] = {}
  order: list[FuncPlan] = []
  rdmap: dict[int, ir.RDom] = {}
  cache: dict[int, Any] = {}
  for f in funcs:
    if id(f) in inline:
      continue
    used: list[str] = []
    stages = []
    if f.extern is None:
      for d in f.definitions:
        stages.append(
          Stage(
            tuple(B.fold(_expand(a, inline, image_shapes, used, rdmap, cache)) for a in d.args),
            B.fold(_expand(_masked_update(f, d), inline, image_shapes, used, rdmap, cache)),
            None if d.rdom is None else _clone_rdom(d.rdom, image_shapes, rdmap),
          )
        )
    level = "at" if f.sched.compute[0] == "at" else "root"
    if any(f is o for o in outputs):
      level = "root"
    fp = FuncPlan(f, level, stages)
    fplans[id(f)] = fp
    inlined[id(f)] = used
    order.append(fp)

  consumers: dict[int, list[FuncPlan]] = {id(fp.func): [] for fp in order}
  consumers.update({id(i): [] for i in images})
  for fp in order:
    exprs = [e for st in fp.stages for e in _stage_exprs(st)]
    for t in B.calls_of(exprs):
      if t is not fp.func and id(t) in consumers:
        consumers[id(t)].append(fp)
    if fp.func.extern is not None:
      for img in fp.func.extern.inputs:
        consumers[id(img)].append(fp)

  _validate_levels(order, fplans, consumers, outputs)
  for fp in order:
    if fp.level == "at":
      home = fp.func.sched.compute
      while fplans[id(home[1])].level == "at":
        home = home[1].sched.compute
      fp.home = home

  boxes: dict[int, B.FlatBox | None] = {}
  # Box edges lie near image and output edges (a halo away): searched within a few extents.
  flat_search = float(
    4 * max((max(s) for s in [*output_shapes, *image_shapes.values()] if s), default=1) + 1024
  )

  def box_of(t: Any) -> B.FlatBox | None:
    if id(t) not in boxes:
      boxes[id(t)] = None  # a cycle (never in a valid pipeline) proves nothing
      tp = fplans.get(id(t))
      if tp is not None and _pure_single(tp):
        boxes[id(t)] = B.flat_box(
          [v.name for v in t.args], tp.stages[0].value, box_of, search=flat_search
        )
    return boxes[id(t)]

  # Root-level regions, consumers first.
  regions: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
  clipped: set[int] = set()
  out_ids = {id(o): s for o, s in zip(outputs, output_shapes, strict=True)}
  for fp in reversed(order):
    f = fp.func
    req: list | None = None
    if id(f) in out_ids:
      shp = out_ids[id(f)]
      req = [(np.float64(0), np.float64(s - 1)) for s in shp]
    for c in consumers[id(f)]:
      fpc = _consumer_footprint(c, f, regions)
      if fpc is not None:
        req = fpc if req is None else [B.hull(a, b) for a, b in zip(req, fpc, strict=True)]
    if req is None:
      raise ValueError(f"Func {f.name} is not used by any output")
    names = [v.name for v in f.args]
    bounded = {names.index(n) for n in f.sched.bounds}
    for i, (lo, hi) in enumerate(req):
      if not (np.isfinite(lo) and np.isfinite(hi)) and i not in bounded:
        raise ValueError(
          f"Func {f.name} is accessed with an unbounded index in dim {i} ({names[i]}): range "
          f"{_fmt_range((lo, hi))}; clamp the index or fix the region with "
          f"{f.name}.bound({names[i]!r}, min, extent)"
        )
    # Update definitions may write outside the required region: compute the hull.
    for k, st in enumerate(fp.stages[1:]):
      env = _stage_env(st, f, [r[0] for r in req], [r[1] for r in req])
      for i, a in enumerate(st.args):
        if isinstance(a, ir.Var):
          continue
        iv = B.interval(a, env)
        if not (np.isfinite(iv[0]) and np.isfinite(iv[1])):
          if i in bounded:
            continue  # the bound is the user's promise (out-of-bound writes are dropped)
          raise ValueError(
            f"update {k} of Func {f.name} writes dim {i} at an unbounded index {a!r} (range "
            f"{_fmt_range(iv)}); clamp it or use {f.name}.bound({names[i]!r}, min, extent)"
          )
        req[i] = B.hull(req[i], iv)
      own = B.footprint([st.value], f, env)
      if own is not None:
        for i, iv in enumerate(own):
          if not isinstance(st.args[i], ir.Var) and np.isfinite(iv[0]) and np.isfinite(iv[1]):
            req[i] = B.hull(req[i], iv)
    _check_self_reads(f, fp.stages, req, names)
    for name, (bmin, bext) in f.sched.bounds.items():
      i = names.index(name)
      lo, hi = req[i]
      # A data-dependent access bounds inference cannot limit (infinite) is the user's promise:
      # reads outside the bound are clamped to it, as XLA's gathers clamp.
      if (np.isfinite(lo) and lo < bmin) or (np.isfinite(hi) and hi > bmin + bext - 1):
        raise ValueError(
          f"Func {f.name}.bound({name!r}, {bmin}, {bext}) is too small: region "
          f"{_fmt_range((lo, hi))} is required"
        )
      req[i] = (np.float64(bmin), np.float64(bmin + bext - 1))
    if _FLAT_CLIP and id(f) not in out_ids and not f.sched.bounds and fp.level == "root":
      cut = _clip_flat(fp, req, consumers[id(f)], box_of, clipped)
      if cut is not req:
        clipped.add(id(f))
        req = cut
    regions[id(f)] = ([r[0] for r in req], [r[1] for r in req])
    fp.region = [(int(lo), int(hi - lo + 1)) for lo, hi in req]

  # Inputs must be read inside their extents.
  for img in images:
    shp = image_shapes[id(img)]
    for c in consumers[id(img)]:
      if c.func.extern is not None:
        continue
      for st in c.stages:
        _check_image_reads(img, shp, c, st, regions)

  for fp in order:
    if any(fplans[id(ch.func)].level == "at" for ch in consumers_of_at(fp, order)):
      fp.group = _tile_plan(fp, order, fplans, consumers, regions)
  return Plan(outputs, images, params, order, fplans, inlined, out_ids)


# Root Funcs are computed only inside their flat box when that saves at least this share of
# their region's points (a pyramid's halo), or when a consumer was cut (the next level down the
# pyramid: its own border then needs no peeling). Small stencil halos are left alone: their
# consumers would be peeled for a row or two (unsharp root 5.6 -> 8.0 ms at 2048^2).
_FLAT_CLIP = True
_FLAT_MIN_SAVING = 0.1


def _pure_single(fp: FuncPlan) -> bool:
  f = fp.func
  return (
    f.extern is None
    and len(fp.stages) == 1
    and fp.stages[0].rdom is None
    and all(isinstance(a, ir.Var) for a in fp.stages[0].args)
  )


def _clip_flat(fp: FuncPlan, req, consumers: list[FuncPlan], box_of, clipped: set[int]) -> list:
  """``req`` cut to ``fp``'s flat box (bounds.flat_box), its consumers' reads of it clamped to
  the cut region: exact, since the Func equals its value at the box's edge beyond it. Returns
  ``req`` itself when it is not cut."""
  box = box_of(fp.func)
  if box is None:  # not a single pure definition
    return req
  new = []
  for (lo, hi), (a, b) in zip(req, box, strict=True):
    nlo, nhi = min(max(lo, a), hi), max(min(hi, b), lo)
    if nlo > nhi:  # flat on both sides that overlap: constant along this dim
      nhi = nlo
    new.append((np.float64(nlo), np.float64(nhi)))
  old_n = math.prod(float(hi - lo + 1) for lo, hi in req)
  new_n = math.prod(float(hi - lo + 1) for lo, hi in new)
  if new_n == old_n or (
    new_n > (1 - _FLAT_MIN_SAVING) * old_n and not any(id(c.func) in clipped for c in consumers)
  ):
    return req
  f = fp.func
  cut = list(zip(new, req, strict=True))

  def clamp_read(n: ir.Expr) -> ir.Expr | None:
    if not (isinstance(n, ir.Call) and n.target is f):
      return None
    args = [
      a if (nl, nh) == (ol, oh) else ir.clamp(a, int(nl), int(nh))
      for a, ((nl, nh), (ol, oh)) in zip(n.args, cut, strict=True)
    ]
    return ir.Call(f, args)

  for c in consumers:
    c.stages = [
      Stage(
        tuple(B.fold(B.substitute(a, clamp_read)) for a in st.args),
        B.fold(B.substitute(st.value, clamp_read)),
        st.rdom,
      )
      for st in c.stages
    ]
  return new


def _check_self_reads(f: ir.Func, stages: list[Stage], req, names) -> None:
  """An update reading ``f`` along a pure dim beyond the region the update covers (``f[y, x]
  = .. f[y, x + 1] ..`` at the region's last column) would need the pure definition over a larger
  region than the update (Halide's per-stage bounds); every stage here covers one region."""
  for k, st in enumerate(stages[1:], start=1):
    env = _stage_env(st, f, [r[0] for r in req], [r[1] for r in req])
    own = B.footprint([st.value], f, env)
    for i, iv in enumerate(own or []):
      finite = np.all(np.isfinite(iv[0])) and np.all(np.isfinite(iv[1]))
      if not isinstance(st.args[i], ir.Var) or not finite:
        continue  # data-dependent reads are gathers, clamped into the buffer as before
      lo, hi = req[i]
      if np.min(iv[0]) < lo or np.max(iv[1]) > hi:
        raise NotImplementedError(
          f"update {k} of Func {f.name} reads {f.name} in dim {i} ({names[i]}) over "
          f"{_fmt_range(iv)}, outside the region [{_num(lo)}, {_num(hi)}] the update computes; "
          "every stage of a Func is evaluated over one region, so read the Func only inside it "
          f"(e.g. clamp the index) or compute the values it reads in another Func"
        )


def consumers_of_at(fp: FuncPlan, order: list[FuncPlan]) -> list[FuncPlan]:
  return [p for p in order if p.level == "at" and p.home[1] is fp.func]


def _consumer_footprint(c: FuncPlan, f: Any, regions) -> list | None:
  lo, hi = regions[id(c.func)]
  out = None
  for st in c.stages:
    fpt = B.footprint(_stage_exprs(st), f, _stage_env(st, c.func, lo, hi))
    if fpt is not None:
      out = fpt if out is None else [B.hull(a, b) for a, b in zip(out, fpt, strict=True)]
  return out


def _check_image_reads(img, shp, c: FuncPlan, st: Stage, regions) -> None:
  lo, hi = regions[id(c.func)]
  env = _stage_env(st, c.func, lo, hi)

  for e in _stage_exprs(st):
    for n, en in B.walk_env(e, env):
      if not (isinstance(n, ir.Call) and n.target is img):
        continue
      for d, a in enumerate(n.args):
        iv = B.interval(a, en)
        if np.min(iv[0]) < 0 or np.max(iv[1]) > shp[d] - 1:
          raise ValueError(
            f"Func {c.func.name} reads {n!r}: index {d} ranges over {_fmt_range(iv)} but "
            f"ImageParam {img.name} has extent {shp[d]} there (valid [0, {shp[d] - 1}]); wrap "
            f"the input with boundary.repeat_edge({img.name}) (or another boundary condition) "
            "or request a smaller output"
          )


def _validate_levels(order, fplans, consumers, outputs) -> None:
  for fp in order:
    f = fp.func
    comp = f.sched.compute
    for what, lvl in (("compute_at", comp), ("store_at", f.sched.store)):
      if not lvl or lvl[0] != "at":
        continue
      g, var = lvl[1], lvl[2]
      if what == "store_at" and comp[0] != "at":
        raise ValueError(f"Func {f.name}.store_at({g.name}, {var}) needs a compute_at too")
      if id(g) not in fplans:
        raise ValueError(
          f"{what}: Func {f.name} is scheduled at Func {g.name}, which is not a (non-inline) "
          "stage of this pipeline; schedule the consumer compute_root or make it an output"
        )
      if not any(c.func is g for c in consumers[id(f)]):
        raise ValueError(
          f"{what}: Func {g.name} does not call Func {f.name} (directly or through inlined "
          f"Funcs); Func {f.name} can only be computed at one of its consumers "
          f"{[c.func.name for c in consumers[id(f)]]}"
        )
      loops = g.definitions[0].schedule.loops
      if var not in loops:
        raise ValueError(
          f"{what}: Func {g.name} has no loop var {var!r} (Func {f.name} scheduled there); "
          f"its loops are {loops}"
        )
      if what == "store_at" and comp[1] is g and loops.index(var) > loops.index(comp[2]):
        raise ValueError(
          f"store_at: Func {f.name} is stored at Func {g.name}'s loop {var!r}, inside the loop "
          f"{comp[2]!r} it is computed at; the store level must be at or outside the compute "
          f"level (loops outermost first: {loops})"
        )
      if g.updates:
        # The tile loop computes the consumer's pure definition; its updates then run over the
        # whole region, so they must not need the per-tile producer.
        gp = fplans[id(g)]
        upd = [e for st in gp.stages[1:] for e in _stage_exprs(st)]
        reads = any(t is f for t in B.calls_of(upd))
        if gp.level != "root" or reads:
          why = (
            f"whose update definitions read Func {f.name}"
            if reads
            else "which has update definitions"
            + (" and is itself compute_at" if gp.level != "root" else "")
          )
          raise NotImplementedError(
            f"{what}: Func {f.name} at Func {g.name}, {why}: a producer can be scheduled at "
            f"the loops of a root Func's pure definition when only that definition reads it; "
            f"compute Func {f.name} at root"
          )
    if comp[0] == "at":
      others = [
        c.func.name
        for c in consumers[id(f)]
        if c.func is not comp[1] and not (c.level == "at" and c.func.sched.compute[1] is comp[1])
      ]
      if others:
        raise ValueError(
          f"compute_at: Func {f.name} is computed at Func {comp[1].name} but also used by "
          f"{others}; compute it at root instead"
        )


def _tile_local(f: ir.Func, d: ir.Definition) -> bool:
  """Whether update ``d`` of ``f`` gives the same values on any sub-region (a tile) as on the
  whole Func: a commutative scatter (writes outside the tile's window are dropped, each point
  sums its own contributions) or a point-wise update (each point from itself)."""
  preds = d.rdom.predicates if d.rdom is not None else []
  if B.pointwise_update(f, d.args, d.value, *preds):
    return True
  # a scatter whose RDom.where reads f would depend on the order and on other points
  return B.self_update(f, d.args, d.value) is not None and not any(B.refs(p, f) for p in preds)


def whole_dims(f: ir.Func) -> tuple[int, ...]:
  """Dims of ``f`` that a per-tile evaluation must cover whole (as Halide does when a Func with
  a scan is computed at a tile): those of updates that are not tile-local where the update's
  left-hand side is not that dim's own pure var, or where it reads ``f`` at another index
  (``f[y, r] = f[y, r - 1] + ...`` is whole along x, per tile along y)."""
  out: set[int] = set()
  for d in f.updates:
    if _tile_local(f, d):
      continue
    exprs = [d.value, *(d.rdom.predicates if d.rdom is not None else [])]
    reads = [n for e in exprs for n in ir.walk(e) if isinstance(n, ir.Call) and n.target is f]
    for k, (a, v) in enumerate(zip(d.args, f.args, strict=True)):
      own = isinstance(a, ir.Var) and a.name == v.name
      if not own or any(not B.same(n.args[k], a) for n in reads):
        out.add(k)
  return tuple(sorted(out))


def _var_graph(sched, sizes: dict[str, int]):
  """The loop vars of a stage as nodes: its dims, then one node per split/fuse result, in the
  order applied (a name may be reused: ``split(y, y, yi, 8)``).

  Returns ``(ext, steps, cur)``: the extent of each node, the transforms over node ids
  (``("split", old, o, i, factor)`` with the factor capped at the old extent, ``("fuse",
  inner, outer, fused)``), and the node of each current loop name."""
  ext: list[int] = []
  cur: dict[str, int] = {}

  def node(name: str, e: int) -> int:
    cur[name] = len(ext)
    ext.append(e)
    return cur[name]

  for n, e in sizes.items():
    node(n, e)
  steps: list[tuple] = []
  for t in sched.transforms:
    if t[0] == "split":
      _, old, o, i, fac = t
      if old in cur:
        a = cur.pop(old)
      else:  # a var without a size here: extent 1
        a = len(ext)
        ext.append(1)
      fe = min(fac, ext[a])
      steps.append(("split", a, node(o, -(-ext[a] // fe)), node(i, fe), fe))
    else:
      _, i, o, fu = t
      ni, no = cur.pop(i), cur.pop(o)
      steps.append(("fuse", ni, no, node(fu, ext[ni] * ext[no])))
  return ext, steps, cur


def _tile_box(ext, steps, cur, fixed: dict[str, np.ndarray], ndim: int):
  """Per tile, the box of each dim's values: ``(lo, hi)`` arrays (relative to the dim's min)
  when the loops in ``fixed`` take the given values and every other loop runs its whole
  extent. Splits are ``old = min(o * f, n - f) + i`` (the ragged tail shifted inwards) and
  monotone in ``o`` and ``i``; a fused loop ``t = outer * n_inner + inner`` covers whole rows
  of ``inner`` unless its range stays inside one, so a box holds every point (exact for
  splits, the bounding box of a fused range)."""
  lo: dict[int, np.ndarray] = {}
  hi: dict[int, np.ndarray] = {}
  for name, n in cur.items():
    if name in fixed:
      lo[n] = hi[n] = fixed[name]
    else:
      lo[n], hi[n] = np.int64(0), np.int64(ext[n] - 1)
  for st in reversed(steps):
    if st[0] == "split":
      _, a, o, i, fe = st
      top = ext[a] - fe
      lo[a] = np.minimum(lo[o] * fe, top) + lo[i]
      hi[a] = np.minimum(hi[o] * fe, top) + hi[i]
    else:
      _, ni, no, fu = st
      w = ext[ni]
      lo[no], hi[no] = lo[fu] // w, hi[fu] // w
      one_row = lo[no] == hi[no]
      lo[ni] = np.where(one_row, lo[fu] % w, 0)
      hi[ni] = np.where(one_row, hi[fu] % w, w - 1)
  return [(lo[d], hi[d]) for d in range(ndim)]  # the dims are the first nodes


def _tile_plan(fp: FuncPlan, order, fplans, consumers, regions) -> TilePlan:
  c = fp.func
  kids = consumers_of_at(fp, order)
  st = c.definitions[0].schedule
  loops = st.loops
  # Producers computed at different loops of one consumer all run at the outermost of those
  # loops (one level of tile loops): a coarser tile, the same values.
  vc = min({k.home[2] for k in kids}, key=loops.index)  # loops are outermost first

  def store_var(k: FuncPlan) -> str:
    """Where a child is stored here: a store level inside the tile, or at a nested consumer
    (whose loops are not executed: it is computed per tile of ``c``), is the tile itself. So is
    any store level of a Func with update definitions: a sliding window carries the pure
    values only, so such a Func is computed whole per step (store_at is a hint for it)."""
    s = k.func.sched.store
    if not s or k.func.updates:
      return vc
    if s[0] == "root":
      return "<root>"
    if s[1] is not c or loops.index(s[2]) > loops.index(vc):
      return vc
    return s[2]

  # One store level per tile loop nest: the outermost one asked for (a larger window over
  # more steps; steps whose regions do not slide recompute their window).
  svars = {store_var(k) for k in kids} - {vc}
  vs = "<root>" if "<root>" in svars else min(svars, key=loops.index, default=vc)
  inner_set = loops[: loops.index(vc) + 1]
  outer_set = [] if vs == "<root>" else loops[: loops.index(vs) + 1]
  ndim = c.ndim
  region = list(fp.region)
  n_ext, steps, cur = _var_graph(st, {v.name: region[k][1] for k, v in enumerate(c.args)})

  def count(name: str) -> int:
    return n_ext[cur[name]]

  def combos(names):
    return list(itertools.product(*[range(count(n)) for n in names])) or [()]

  outer_names = [n for n in loops if n in outer_set]
  inner_names = [n for n in loops if n in inner_set and n not in outer_set]
  oc, ic = combos(outer_names), combos(inner_names)
  if len(oc) * len(ic) > MAX_TILE_STEPS:
    raise ValueError(
      f"compute_at Func {c.name} var {vc!r}: {len(oc) * len(ic)} loop iterations is too "
      f"fine-grained for a vectorised backend (max {MAX_TILE_STEPS}); compute at an outer loop"
    )
  a_n, b_n = len(oc), len(ic)
  fixed = {n: _loop_values(n, outer_names, inner_names, oc, ic) for n in inner_set}
  # Each step's consumer tile: the box of points its loops cover. Boxes of one size (the
  # largest) keep the vectorised backends' tiles static; a smaller box (a ragged nested split,
  # a fused range) grows inside the region, which only recomputes points.
  origin = np.zeros((ndim, a_n, b_n), np.int64)
  ext = []
  for k, (blo, bhi) in enumerate(_tile_box(n_ext, steps, cur, fixed, ndim)):
    blo = np.broadcast_to(blo, (a_n, b_n))
    e = int(np.max(np.broadcast_to(bhi, (a_n, b_n)) - blo + 1))
    ext.append(e)
    origin[k] = region[k][0] + np.minimum(blo, region[k][1] - e)
  ext_t = tuple(ext)

  # Group bounds: regions of each child per (a, b), consumers first.
  greg: dict[int, tuple[list, list]] = {
    id(c): (
      [origin[k].astype(np.float64) for k in range(ndim)],
      [(origin[k] + ext_t[k] - 1).astype(np.float64) for k in range(ndim)],
    )
  }
  children = []
  for kp in reversed([p for p in order if any(p is k for k in kids)]):
    req = None
    for cons in consumers[id(kp.func)]:
      if id(cons.func) not in greg:
        continue
      lo, hi = greg[id(cons.func)]
      for cst in cons.stages:
        fpt = B.footprint(_stage_exprs(cst), kp.func, _stage_env(cst, cons.func, lo, hi))
        if fpt is not None:
          req = fpt if req is None else [B.hull(a, b) for a, b in zip(req, fpt, strict=True)]
    lo = [np.broadcast_to(r[0], (a_n, b_n)).astype(np.int64) for r in req]
    hi = [np.broadcast_to(r[1], (a_n, b_n)).astype(np.int64) for r in req]
    glo = [g[0] for g in kp.region]
    ghi = [g[0] + g[1] - 1 for g in kp.region]
    for d in whole_dims(kp.func):  # a scan: every tile computes the whole dim (as Halide)
      lo[d] = np.full((a_n, b_n), glo[d], np.int64)
      hi[d] = np.full((a_n, b_n), ghi[d], np.int64)
    greg[id(kp.func)] = ([x.astype(np.float64) for x in lo], [x.astype(np.float64) for x in hi])
    stored_outer = store_var(kp) != vc and b_n > 1
    children.append(_child_plan(kp, lo, hi, glo, ghi, stored_outer, a_n, b_n))
  children.reverse()
  return TilePlan(
    c,
    [(n, count(n)) for n in outer_names],
    [(n, count(n)) for n in inner_names],
    origin,
    ext_t,
    children,
  )


def _loop_values(name, outer_names, inner_names, oc, ic) -> np.ndarray:
  if name in outer_names:
    j = outer_names.index(name)
    return np.array([t[j] for t in oc], np.int64)[:, None] * np.ones((1, len(ic)), np.int64)
  j = inner_names.index(name)
  return np.ones((len(oc), 1), np.int64) * np.array([t[j] for t in ic], np.int64)[None, :]


def _clip_window(lo, ext, glo, ghi):
  return np.clip(lo, glo, ghi - ext + 1)


def _child_plan(kp, lo, hi, glo, ghi, stored_outer, a_n, b_n) -> ChildPlan:
  nd = len(lo)
  required = math.prod(g[1] for g in kp.region)
  if not stored_outer:
    ext = tuple(int(np.max(h - lo_ + 1)) for lo_, h in zip(lo, hi, strict=True))
    wl = np.stack([_clip_window(lo[d], ext[d], glo[d], ghi[d]) for d in range(nd)])
    return ChildPlan(
      kp.func,
      "tile",
      wl,
      ext,
      wl[:, :, 0],
      ext,
      wl[:, :, 0],
      ext,
      points=math.prod(ext) * a_n * b_n,
      required=required,
    )
  slo = [np.min(x, axis=1) for x in lo]
  shi = [np.max(x, axis=1) for x in hi]
  sext = tuple(int(np.max(h - s + 1)) for s, h in zip(slo, shi, strict=True))
  slo_c = np.stack([_clip_window(slo[d], sext[d], glo[d], ghi[d]) for d in range(nd)])
  varying = [d for d in range(nd) if np.any(lo[d] != lo[d][:, :1]) or np.any(hi[d] != hi[d][:, :1])]
  mono = all(
    np.all(np.diff(lo[d], axis=1) >= 0) and np.all(np.diff(hi[d], axis=1) >= 0) for d in varying
  )
  ext0 = tuple(int(np.max(hi[d][:, 0] - lo[d][:, 0] + 1)) for d in range(nd))
  s_hi = slo_c + np.array(sext)[:, None] - 1
  lo0 = np.stack([np.clip(lo[d][:, 0], slo_c[d], s_hi[d] - ext0[d] + 1) for d in range(nd)])
  if len(varying) <= 1 and mono:
    ext = list(ext0)
    wl = np.repeat(lo0[:, :, None], b_n, axis=2).astype(np.int64)
    if varying:
      s = varying[0]
      dlt = int(np.max(np.diff(hi[s], axis=1)))
      ext[s] = max(dlt, 0)
      if dlt > 0:
        start = hi[s] - dlt + 1
        wl[s] = np.clip(start, slo_c[s][:, None], (s_hi[s] - dlt + 1)[:, None])
    else:
      ext = [0] * nd  # nothing new after the first step
    pts = math.prod(ext0) * a_n + math.prod(ext) * a_n * (b_n - 1)
    return ChildPlan(kp.func, "slide", wl, tuple(ext), lo0, ext0, slo_c, sext, pts, required)
  ext = tuple(int(np.max(h - lo_ + 1)) for lo_, h in zip(lo, hi, strict=True))
  wl = np.stack(
    [np.clip(lo[d], slo_c[d][:, None], (s_hi[d] - ext[d] + 1)[:, None]) for d in range(nd)]
  )
  return ChildPlan(
    kp.func,
    "restep",
    wl,
    ext,
    wl[:, :, 0],
    ext,
    slo_c,
    sext,
    points=math.prod(ext) * a_n * b_n,
    required=required,
  )


# ----------------------------------------------------------------------------- loop nest build


def _ops(exprs: list[ir.Expr]) -> int:
  return sum(
    1
    for e in exprs
    for n in ir.walk(e)
    if isinstance(n, ir.BinOp | ir.UnOp | ir.Select | ir.Reduce)
  )


def _itemsize(t) -> int:
  return np.dtype(t.dtype).itemsize


def _reads_bytes(st: Stage, f: ir.Func, lo, hi) -> tuple[int, tuple[str, ...]]:
  exprs = _stage_exprs(st)
  total, names = 0, []
  env = _stage_env(st, f, lo, hi)
  for t in B.calls_of(exprs):
    fpt = B.footprint(exprs, t, env)
    if fpt is None:
      continue
    size = np.ones_like(np.asarray(fpt[0][0], np.float64))
    for a, b in fpt:
      size = size * np.maximum(np.asarray(b) - np.asarray(a) + 1, 0)
    total += int(np.sum(size)) * _itemsize(t)
    names.append(t.name)
  return total, tuple(names)


def loop_nest(p: Plan) -> LoopNest:
  """The loop-nest tree of a plan."""
  roots: list[Any] = []
  for fp in p.order:
    if fp.level != "root":
      continue
    f = fp.func
    shape = tuple(e for _, e in fp.region)
    node = Realize(f.name, shape, str(f.dtype), math.prod(shape) * _itemsize(f))
    lo = [np.float64(m) for m, _ in fp.region]
    hi = [np.float64(m + e - 1) for m, e in fp.region]
    if f.extern is not None:
      node.children.append(
        Compute(
          f.name,
          0,
          shape,
          str(f.dtype),
          math.prod(shape),
          0,
          0,
          math.prod(shape) * _itemsize(f),
          1.0,
        )
      )
      roots.append(node)
      continue
    for k, st in enumerate(fp.stages):
      if k == 0 and fp.group is not None:
        node.children.extend(_group_nest(p, fp))
        continue
      node.children.append(_stage_nest(p, fp, k, st, lo, hi, shape))
    roots.append(node)
  return LoopNest(roots, tuple(tuple(e for _, e in p.by_func[id(o)].region) for o in p.outputs))


def _stage_nest(p: Plan, fp: FuncPlan, k: int, st: Stage, lo, hi, shape):
  f = fp.func
  sched = f.definitions[k].schedule
  sizes = dict(zip([v.name for v in f.args], shape, strict=True))
  if st.rdom is not None:
    for r in st.rdom.vars:
      lo_r, hi_r = B.rdom_interval(r)
      sizes[r.name] = int(hi_r - lo_r + 1)
  ext = _loop_extents(sched, sizes)
  pts = (
    math.prod(shape)
    if k == 0
    else math.prod(
      [sizes[n] for n in sizes if n in {a.name for a in st.args if isinstance(a, ir.Var)}]
      + ([math.prod(B.static_int(e) for _, e in st.rdom.ranges)] if st.rdom is not None else [])
    )
  )
  rb, names = _reads_bytes(st, f, lo, hi)
  comp = Compute(
    f.name,
    k,
    shape,
    str(f.dtype),
    pts,
    _ops(_stage_exprs(st)),
    rb,
    pts * _itemsize(f),
    1.0,
    tuple(p.inlined.get(id(f), ())),
    names,
  )
  inner: Any = comp
  for name in reversed(sched.loops):
    inner = Loop(name, ext.get(name, 1), sched.kind(name), [inner])
  return inner


def _loop_extents(sched, sizes: dict[str, int]) -> dict[str, int]:
  ext, _, cur = _var_graph(sched, sizes)
  return {name: ext[n] for name, n in cur.items()}


def _group_nest(p: Plan, fp: FuncPlan):
  g = fp.group
  f = fp.func
  a_n, b_n = g.origin.shape[1], g.origin.shape[2]
  st = fp.stages[0]
  outer: list[Any] = []
  body_outer = outer
  for name, n in g.outer_loops:
    lp = Loop(name, n, "tile")
    body_outer.append(lp)
    body_outer = lp.children
  stored = [ch for ch in g.children if ch.mode != "tile"]
  holder = body_outer
  for ch in stored:
    r = Realize(
      ch.func.name, ch.store_ext, str(ch.func.dtype), math.prod(ch.store_ext) * _itemsize(ch.func)
    )
    holder.append(r)
    holder = r.children
  body = holder
  for name, n in g.inner_loops:
    lp = Loop(name, n, "tile")
    body.append(lp)
    body = lp.children
  for ch in g.children:
    kp = p.by_func[id(ch.func)]
    lo = [ch.win_lo[d].astype(np.float64) for d in range(len(ch.win_ext))]
    hi = [lo[d] + ch.win_ext[d] - 1 for d in range(len(ch.win_ext))]
    if ch.func.extern is None:
      rb, names = _reads_bytes(kp.stages[0], ch.func, lo, hi)
      ops = _ops(_stage_exprs(kp.stages[0]))
    else:  # an extern's reads and work are its JAX function's, unknown here (as at root)
      rb, names, ops = 0, (), 0
    comp = Compute(
      ch.func.name,
      0,
      ch.win_ext,
      str(ch.func.dtype),
      ch.points,
      ops,
      rb,
      ch.points * _itemsize(ch.func),
      ch.points / max(1, ch.required),
      tuple(p.inlined.get(id(ch.func), ())),
      names,
    )
    if ch.mode == "tile":
      r = Realize(
        ch.func.name,
        ch.win_ext,
        str(ch.func.dtype),
        math.prod(ch.win_ext) * _itemsize(ch.func),
        [comp],
      )
      body.append(r)
    else:
      body.append(comp)
  lo = [g.origin[d].astype(np.float64) for d in range(f.ndim)]
  hi = [lo[d] + g.ext[d] - 1 for d in range(f.ndim)]
  rb, names = _reads_bytes(st, f, lo, hi)
  pts = math.prod(g.ext) * a_n * b_n
  required = math.prod(e for _, e in fp.region)
  body.append(
    Compute(
      f.name,
      0,
      g.ext,
      str(f.dtype),
      pts,
      _ops(_stage_exprs(st)),
      rb,
      pts * _itemsize(f),
      pts / max(1, required),
      tuple(p.inlined.get(id(f), ())),
      names,
    )
  )
  return outer
