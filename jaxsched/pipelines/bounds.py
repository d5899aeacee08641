"""Bounds inference: interval arithmetic over expressions, affine analysis, substitution.

Intervals are closed ``(lo, hi)`` pairs of float64 numpy arrays (``inf`` = unbounded); arrays
let one pass infer the regions of every tile of a loop at once. They are exact for affine and
strided index expressions and conservative (a hull) for everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxsched.pipelines import ir

Interval = tuple[np.ndarray, np.ndarray]
INF = np.inf


def key(v: ir.Expr) -> tuple:
  """Environment key of a Var (by name, as in Halide) or an RVar."""
  if isinstance(v, ir.Var):
    return ("v", v.name)
  if isinstance(v, ir.RVar):
    return ("r", id(v.rdom), v.index)
  raise TypeError(v)


def dtype_range(dtype: np.dtype) -> Interval:
  dtype = np.dtype(dtype)
  if dtype == np.bool_:
    return np.float64(0), np.float64(1)
  if dtype.kind in "iu" and dtype.itemsize <= 2:
    info = np.iinfo(dtype)
    return np.float64(info.min), np.float64(info.max)
  # 32/64-bit values are treated as unknown: a region that large is never what was meant.
  return np.float64(-INF), np.float64(INF)


def _mul(a: Interval, b: Interval) -> Interval:
  with np.errstate(invalid="ignore"):
    ps = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
  ps = [np.nan_to_num(p, nan=0.0, posinf=INF, neginf=-INF) for p in ps]
  return np.minimum.reduce(ps), np.maximum.reduce(ps)


def interval(e: ir.Expr, env: dict[tuple, Interval], memo: dict | None = None) -> Interval:
  """Closed interval containing every value of ``e`` when vars range over ``env``; ``memo``
  (keyed by node id, for one ``env``) makes repeated queries on sub-expressions linear."""
  if memo is None:
    return _interval(e, env, None)
  r = memo.get(id(e))
  if r is None:
    r = memo[id(e)] = _interval(e, env, memo)
  return r


def _interval(e: ir.Expr, env: dict[tuple, Interval], memo: dict | None) -> Interval:
  if isinstance(e, ir.Const):
    v = np.float64(e.value)
    return v, v
  if isinstance(e, ir.Var | ir.RVar):
    k = key(e)
    if k not in env:
      raise ValueError(f"bounds inference: {e!r} is not bound here (known: {list(env)})")
    return env[k]
  if isinstance(e, ir.BinOp):
    a, b = interval(e.a, env, memo), interval(e.b, env, memo)
    op = e.op
    if op == "add":
      return a[0] + b[0], a[1] + b[1]
    if op == "sub":
      return a[0] - b[1], a[1] - b[0]
    if op == "mul":
      return _mul(a, b)
    if op == "max":
      return np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    if op == "min":
      return np.minimum(a[0], b[0]), np.minimum(a[1], b[1])
    if op in ("floordiv", "truediv"):
      if np.all(b[0] > 0) or np.all(b[1] < 0):
        with np.errstate(invalid="ignore", divide="ignore"):
          qs = [a[0] / b[0], a[0] / b[1], a[1] / b[0], a[1] / b[1]]
        qs = [np.nan_to_num(q, nan=0.0, posinf=INF, neginf=-INF) for q in qs]
        lo, hi = np.minimum.reduce(qs), np.maximum.reduce(qs)
        if op == "floordiv":
          return np.floor(lo), np.floor(hi)
        return lo, hi
      return dtype_range(e.dtype)
    if op == "mod":
      if np.all(b[0] > 0):
        if e.dtype.kind in "iu":
          return np.zeros_like(b[1]), b[1] - 1
        return np.zeros_like(b[1]), b[1]
      return dtype_range(e.dtype)
    if op in ("lt", "le", "gt", "ge", "eq", "ne"):
      return np.float64(0), np.float64(1)
    return dtype_range(e.dtype)
  if isinstance(e, ir.UnOp):
    a = interval(e.a, env, memo)
    if e.op == "neg":
      return -a[1], -a[0]
    if e.op in ("floor", "ceil", "round"):
      return np.floor(a[0]), np.ceil(a[1])
    if e.op == "abs":
      lo = np.where((a[0] <= 0) & (a[1] >= 0), 0.0, np.minimum(np.abs(a[0]), np.abs(a[1])))
      return lo, np.maximum(np.abs(a[0]), np.abs(a[1]))
    if e.op == "exp":
      return np.exp(a[0]), np.exp(a[1])
    if e.op == "sqrt":
      return np.sqrt(np.maximum(a[0], 0)), np.sqrt(np.maximum(a[1], 0))
    if e.op in ("sin", "cos", "tanh"):
      return np.float64(-1), np.float64(1)
    return dtype_range(e.dtype)
  if isinstance(e, ir.Select):
    t, f = interval(e.t, env, memo), interval(e.f, env, memo)
    return np.minimum(t[0], f[0]), np.maximum(t[1], f[1])
  if isinstance(e, ir.Cast):
    a = interval(e.a, env, memo)
    r = dtype_range(e.to)
    if e.to.kind in "iu":  # truncation toward zero, saturated to the type's range
      a = (np.floor(a[0]), np.ceil(a[1]))
      if e.a.dtype.kind == "f" or e.a.dtype.kind in "iu" and not _fits(e.a.dtype, e.to):
        # Out-of-range conversions wrap or are undefined: be conservative.
        info = np.iinfo(e.to)
        in_range = (a[0] >= info.min) & (a[1] <= info.max)
        return np.where(in_range, a[0], r[0]), np.where(in_range, a[1], r[1])
    if e.to == np.bool_:
      return r
    return a
  if isinstance(e, ir.Reduce):
    if e.op in ("argmax", "argmin") and e.component < len(e.rdom):
      lo, ext = e.rdom.ranges[e.component]
      lo_v, ext_v = static_int(lo), static_int(ext)
      return np.float64(lo_v), np.float64(lo_v + ext_v - 1)
    if e.op in ("max", "min", "argmax", "argmin"):
      inner = dict(env)
      for r in e.rdom.vars:
        inner[key(r)] = rdom_interval(r)
      return interval(e.body, inner)
    return dtype_range(e.dtype)
  if isinstance(e, ir.Call | ir.Param):
    return dtype_range(e.dtype)
  if isinstance(e, ir.Extent):
    raise ValueError(f"{e!r} must be resolved before bounds inference")
  raise TypeError(f"bounds inference: unknown node {e!r}")


def _fits(src: np.dtype, dst: np.dtype) -> bool:
  return np.can_cast(src, dst, casting="safe")


def rdom_interval(r: ir.RVar) -> Interval:
  lo, ext = r.rdom.ranges[r.index]
  lo_v, ext_v = static_int(lo), static_int(ext)
  return np.float64(lo_v), np.float64(lo_v + ext_v - 1)


def static_int(e: ir.Expr) -> int:
  """Value of an expression that must be a compile-time integer (after extents are resolved)."""
  if isinstance(e, ir.Const):
    return int(e.value)
  lo, hi = interval(e, {})
  if not (np.isfinite(lo) and lo == hi):
    raise ValueError(f"{e!r} must be a static integer (an int or image extents)")
  return int(lo)


def linear(e: ir.Expr) -> tuple[dict[tuple, int], int] | None:
  """``e`` as ``sum(coef * var) + const`` with int coefficients, or None if not affine."""
  if isinstance(e, ir.Const):
    if e.dtype.kind in "iu" or isinstance(e.value, int):
      return {}, int(e.value)
    return None
  if isinstance(e, ir.Var | ir.RVar):
    return {key(e): 1}, 0
  if isinstance(e, ir.UnOp) and e.op == "neg":
    a = linear(e.a)
    return None if a is None else ({k: -c for k, c in a[0].items()}, -a[1])
  if isinstance(e, ir.BinOp) and e.op in ("add", "sub", "mul"):
    a, b = linear(e.a), linear(e.b)
    if a is None or b is None:
      return None
    if e.op == "mul":
      if a[0] and b[0]:
        return None
      (v, c), s = (a, b[1]) if a[0] else (b, a[1])
      return {k: x * s for k, x in v.items() if x * s}, c * s
    sign = 1 if e.op == "add" else -1
    out = dict(a[0])
    for k, x in b[0].items():
      out[k] = out.get(k, 0) + sign * x
    return {k: x for k, x in out.items() if x}, a[1] + sign * b[1]
  return None


def substitute(e: ir.Expr, fn: Callable[[ir.Expr], ir.Expr | None]) -> ir.Expr:
  """Rebuild ``e`` bottom-up; ``fn(node)`` returns a replacement (not revisited) or None."""
  memo: dict[int, ir.Expr] = {}

  def go(n: ir.Expr) -> ir.Expr:
    r = memo.get(id(n))
    if r is not None:
      return r
    rep = fn(n)
    if rep is None:
      kids = ir.children(n)
      new = [go(k) for k in kids]
      rep = n if all(a is b for a, b in zip(new, kids, strict=True)) else ir.rebuild(n, new)
    memo[id(n)] = rep
    return rep

  return go(e)


NP_OPS = {
  "eq": np.equal,
  "ne": np.not_equal,
  "lt": np.less,
  "le": np.less_equal,
  "gt": np.greater,
  "ge": np.greater_equal,
  "and": np.bitwise_and,
  "or": np.bitwise_or,
  "not": np.invert,
  "add": np.add,
  "sub": np.subtract,
  "mul": np.multiply,
  "floordiv": np.floor_divide,
  "mod": np.mod,
  "max": np.maximum,
  "min": np.minimum,
  "neg": np.negative,
  "abs": np.abs,
}


def fold(e: ir.Expr) -> ir.Expr:
  """Fold integer constant sub-expressions (so index analysis sees plain ints)."""
  memo: dict[int, ir.Expr] = {}

  def go(n: ir.Expr) -> ir.Expr:
    r = memo.get(id(n))
    if r is not None:
      return r
    kids = ir.children(n)
    new = [go(k) for k in kids]
    out = n if all(a is b for a, b in zip(new, kids, strict=True)) else ir.rebuild(n, new)
    if (
      isinstance(out, ir.BinOp | ir.UnOp)
      and out.dtype.kind in "iub"
      and out.op in NP_OPS
      and all(isinstance(k, ir.Const) and k.dtype.kind in "iub" for k in new)
    ):
      args = [np.asarray(k.value, k.dtype) for k in new]
      with np.errstate(all="ignore"):
        v = np.asarray(NP_OPS[out.op](*args)).astype(out.dtype)
      out = ir.Const(bool(v) if out.dtype == np.bool_ else int(v), out.dtype, weak=out.weak)
    elif isinstance(out, ir.Select) and isinstance(new[0], ir.Const):
      # A decided select is its branch (cast to the select's promoted dtype).
      pick = new[1] if new[0].value else new[2]
      out = pick if pick.dtype == out.dtype else ir.Cast(out.dtype, pick)
    memo[id(n)] = out
    return out

  return go(e)


def hull(a: Interval | None, b: Interval) -> Interval:
  if a is None:
    return b
  return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


def footprint(
  exprs: list[ir.Expr], target: Any, env: dict[tuple, Interval]
) -> list[Interval] | None:
  """Per-dimension hull of all calls to ``target`` in ``exprs`` (None if never called)."""
  out: list[Interval] | None = None
  for e in exprs:
    for n, en in walk_env(e, env):
      if isinstance(n, ir.Call) and n.target is target:
        ivs = [interval(a, en) for a in n.args]
        out = ivs if out is None else [hull(o, i) for o, i in zip(out, ivs, strict=True)]
  return out


def walk_env(
  e: ir.Expr, env: dict[tuple, Interval]
) -> Iterator[tuple[ir.Expr, dict[tuple, Interval]]]:
  """Every node of ``e`` in pre-order with the intervals in force at it: inside an inline
  reduction its RVars range over their RDom (the Reduce node itself is not yielded)."""
  stack = [(e, env)]
  while stack:
    n, en = stack.pop()
    if isinstance(n, ir.Reduce):
      inner = dict(en)
      for r in n.rdom.vars:
        inner[key(r)] = rdom_interval(r)
      stack.append((n.body, inner))
      continue
    yield n, en
    stack.extend((c, en) for c in reversed(list(ir.children(n))))


def calls_of(exprs: list[ir.Expr]) -> list[Any]:
  """Distinct Funcs and ImageParams called in ``exprs``, in first-seen order."""
  seen: dict[int, Any] = {}
  for e in exprs:
    for n in ir.walk(e):
      if isinstance(n, ir.Call):
        seen.setdefault(id(n.target), n.target)
  return list(seen.values())


def parity_moduli(e: ir.Expr, name: str) -> set[int]:
  """The constant moduli ``k >= 2`` of ``mod(a, k)`` nodes in the conditions of ``e``'s selects
  whose ``a`` is affine in the pure var ``name`` (``select(x % 2 == 0, ...)`` in a Bayer
  interleave): the dims where a polyphase evaluation folds branches away. (``x % k`` in
  arithmetic, as in an upsampling index or interpolation weights, is left alone: per-phase
  evaluation of those measured 10-20% slower on XLA CPU.)"""
  out = set()
  conds = [n.cond for n in ir.walk(e) if isinstance(n, ir.Select)]
  for n in (m for c in conds for m in ir.walk(c)):
    if (
      isinstance(n, ir.BinOp)
      and n.op == "mod"
      and isinstance(n.b, ir.Const)
      and n.b.dtype.kind in "iu"
      and int(n.b.value) >= 2
    ):
      lin = linear(n.a)
      if lin is not None and lin[0].get(("v", name), 0):
        out.add(int(n.b.value))
  return out


def phase(e: ir.Expr, var: ir.Var, k: int, p: int) -> ir.Expr:
  """``e`` with ``var`` replaced by ``k * var + p`` (``var`` then counts phase-``p`` points),
  and every ``a // k`` / ``a % k`` whose ``a`` becomes ``k * (affine) + const`` simplified to
  the affine part / the constant: in phase ``p`` of ``x``, ``x % 2`` is ``p`` and ``x // 2`` is
  ``x``, so parity selects fold away and half-resolution reads become plain shifts."""
  vkey = key(var)

  def rebuild(coefs: dict[tuple, int], const: int, nodes: dict[tuple, ir.Expr]) -> ir.Expr:
    out: ir.Expr = ir.Const(const, np.int32)
    for kk, c in coefs.items():
      term = nodes[kk] if c == 1 else ir.BinOp("mul", ir.Const(c, np.int32), nodes[kk])
      out = ir.BinOp("add", term, out)
    return out

  def fn(n: ir.Expr) -> ir.Expr | None:
    if isinstance(n, ir.Var) and n.name == var.name:
      return ir.BinOp("add", ir.BinOp("mul", ir.Const(k, np.int32), n), ir.Const(p, np.int32))
    if (
      isinstance(n, ir.BinOp)
      and n.op in ("floordiv", "mod")
      and isinstance(n.b, ir.Const)
      and n.b.dtype.kind in "iu"
      and int(n.b.value) == k
      and n.dtype == np.int32
    ):
      lin = linear(n.a)
      if lin is None or vkey not in lin[0]:
        return None
      coefs, const = lin
      c = coefs[vkey]
      new = dict(coefs)
      new[vkey] = c * k  # after substitution: c * (k * var + p)
      const = const + c * p
      if any(v % k for v in new.values()):
        return None
      nodes = {key(m): m for m in ir.walk(n.a) if isinstance(m, ir.Var | ir.RVar)}
      if n.op == "mod":
        return ir.Const(const % k, np.int32)
      return rebuild({kk: v // k for kk, v in new.items()}, const // k, nodes)
    return None

  return fold(substitute(e, fn))


def same(a: ir.Expr, b: ir.Expr) -> bool:
  """Structural equality of two expressions."""
  if a is b:
    return True
  if type(a) is not type(b):
    return False
  if isinstance(a, ir.Const):
    return a.value == b.value and a.dtype == b.dtype
  if isinstance(a, ir.Var):
    return a.name == b.name
  if isinstance(a, ir.RVar):
    return a.rdom is b.rdom and a.index == b.index
  if isinstance(a, ir.Param):
    return a is b
  if isinstance(a, ir.Call) and a.target is not b.target:
    return False
  if getattr(a, "op", None) != getattr(b, "op", None):
    return False
  if isinstance(a, ir.Cast) and a.to != b.to:
    return False
  ka, kb = ir.children(a), ir.children(b)
  return len(ka) == len(kb) and all(same(x, y) for x, y in zip(ka, kb, strict=True))


def refs(e: ir.Expr, target: Any) -> bool:
  """Whether ``e`` calls ``target``."""
  return any(isinstance(n, ir.Call) and n.target is target for n in ir.walk(e))


def pointwise_update(f: Any, args: tuple[ir.Expr, ...], value: ir.Expr, *more: ir.Expr) -> bool:
  """``f[v0, v1, ..] = e`` with the left side exactly ``f``'s pure vars and ``e`` (and ``more``:
  an RDom's ``where`` predicates) reading ``f`` only at that same point: each point is updated
  from itself, so any sub-region (a tile) is updated exactly as the whole Func would be."""
  if len(args) != len(f.args) or not all(
    isinstance(a, ir.Var) and a.name == v.name for a, v in zip(args, f.args, strict=True)
  ):
    return False
  return all(
    all(same(x, y) for x, y in zip(n.args, args, strict=True))
    for e in (value, *more)
    for n in ir.walk(e)
    if isinstance(n, ir.Call) and n.target is f
  )


def self_update(
  f: Any, args: tuple[ir.Expr, ...], value: ir.Expr
) -> tuple[str, ir.Expr, ir.Call] | None:
  """``f[args] = f[args] op e`` with op in + * max min and ``e`` not reading ``f`` (a
  commutative, order-independent update: a scatter) -> (op, e, the ``f[args]`` call)."""
  if not (isinstance(value, ir.BinOp) and value.op in ("add", "mul", "max", "min")):
    return None
  for mine, other in ((value.a, value.b), (value.b, value.a)):
    if (
      isinstance(mine, ir.Call)
      and mine.target is f
      and not refs(other, f)
      and all(same(x, y) for x, y in zip(mine.args, args, strict=True))
    ):
      return value.op, other, mine
  return None


# Edge-flat regions. A Func read through a clamped (repeat-edge) image is constant beyond some
# box along each dim: a pointwise Func of the image past the image's edge, a down-sampling of it
# a few points further in, and so on up a pyramid. Halide computes such Funcs over their whole
# required region (a 2048^2 local Laplacian pyramid base needs 2814^2 points); computing them
# only inside the box and clamping the reads is exact and moves half the bytes.

# The box's edges are searched in [-search, search] (vars themselves are unbounded in the
# analysis, so a box is proven for every index; an edge beyond the range is reported at it).
FLAT_SEARCH = float(2**30)

# (lo, hi) per dim: the Func equals its value at lo for every index <= lo, and at hi for every
# index >= hi; -inf / inf where it is flat on no side.
FlatBox = list[tuple[float, float]]


class _Flat:
  """One flatness query: Var ``name`` ranges over ``env``; intervals and results memoised per
  node (expressions are DAGs)."""

  def __init__(self, name: str, env, box_of, names_cache: dict):
    self.name, self.env, self.box_of = name, env, box_of
    self.memo: dict = {}
    self.done: dict = {}
    self.names = names_cache  # id(node) -> Var names below it (independent of env)

  def mentions(self, e: ir.Expr) -> bool:
    got = self.names.get(id(e))
    if got is None:
      got = frozenset({e.name}) if isinstance(e, ir.Var) else frozenset()
      for c in ir.children(e):
        self.mentions(c)
        got |= self.names[id(c)]
      self.names[id(e)] = got
    return self.name in got

  def interval(self, e: ir.Expr) -> Interval:
    with np.errstate(all="ignore"):  # inf - inf on unbounded vars: nan, never a point
      return interval(e, self.env, self.memo)

  def flat(self, e: ir.Expr) -> bool:
    got = self.done.get(id(e))
    if got is None:
      got = self.done[id(e)] = self._flat(e)
    return got

  def _flat(self, e: ir.Expr) -> bool:
    if not self.mentions(e):
      return True
    if isinstance(e, ir.Var) or isinstance(e, ir.BinOp) and e.op in ("min", "max"):
      # A point: the var itself at the search's end, or clamp(x, 0, W - 1) for x <= 0.
      lo, hi = self.interval(e)
      if np.isfinite(lo) and lo == hi:
        return True
      if isinstance(e, ir.Var):
        return False
    if isinstance(e, ir.Reduce):  # its RVars range over the RDom: a query of its own
      inner = dict(self.env)
      for r in e.rdom.vars:
        inner[key(r)] = rdom_interval(r)
      return _Flat(self.name, inner, self.box_of, self.names).flat(e.body)
    if isinstance(e, ir.Call):
      box = None
      for j, a in enumerate(e.args):
        if self.flat(a):
          continue
        box = self.box_of(e.target) if box is None else box
        if box is None:
          return False
        alo, ahi = self.interval(a)
        if not (ahi <= box[j][0] or alo >= box[j][1]):
          return False
      return True
    return all(self.flat(c) for c in ir.children(e))


def flat_box(
  names: list[str],
  value: ir.Expr,
  box_of: Callable[[Any], FlatBox | None],
  search: float = FLAT_SEARCH,
) -> FlatBox:
  """The flat box of a pure definition ``f[names] = value``. Reads of a Func are flat where
  each index is flat or lies on one flat side of that Func's ``box_of`` box (None: no box);
  image reads only where every index is flat. Binary search per dim and side (flatness on
  ``(-inf, a]`` implies it for a' < a); conservative: a side not proven flat is infinite."""
  s, inf = search, np.float64(INF)
  cache: dict = {}
  box = []
  for name in names:
    env = {("v", n): (-inf, inf) for n in names}

    def ok(lo: float, hi: float, name=name, env=env) -> bool:
      q = _Flat(name, {**env, ("v", name): (np.float64(lo), np.float64(hi))}, box_of, cache)
      return q.flat(value)

    if not ok(-inf, -s):
      a = -INF
    elif ok(-inf, s):
      a = s
    else:
      a = _last_passing(lambda m: ok(-inf, m), -s, s)
    if not ok(s, inf):
      b = INF
    elif ok(-s, inf):
      b = -s
    else:
      b = -_last_passing(lambda m: ok(-m, inf), -s, s)
    box.append((a, b))
  return box


def _last_passing(passes: Callable[[float], bool], lo: float, hi: float) -> float:
  """The last integer in [lo, hi) that passes, given passes(lo) and not passes(hi)."""
  while hi - lo > 1:
    mid = float(np.floor((lo + hi) / 2))
    lo, hi = (mid, hi) if passes(mid) else (lo, mid)
  return lo
