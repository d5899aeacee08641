"""The XLA backend: vectorised evaluation of a lowered plan with jax.numpy.

Each non-inline Func is evaluated over its region as whole arrays. Loads with affine indices
become (strided, possibly dynamic) slices of the producer, single-variable indices (clamps,
``x // 2``, mirrors) become 1-D takes along one axis, and anything else a gather. Root Funcs
are fenced off behind a data-dependent ``lax.cond`` so XLA does not re-fuse (and recompute)
them: XLA CPU drops ``optimization_barrier`` before fusion (see :func:`_materialize`). Tiled
groups (``compute_at``) run as a ``fori_loop`` over tiles; sliding windows as a loop that
computes only the new part of the stored producer each step. A definition that branches on
``v % k`` (a Bayer interleave) is evaluated once per residue class of ``v``
(:func:`_phase_pieces`) and the classes interleaved (:func:`_assemble`).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsched.pipelines import bounds as B
from jaxsched.pipelines import ir
from jaxsched.pipelines import lower as L

Buf = tuple[jax.Array, list[Any]]  # (array, per-dim mins: int or traced int32)


def _is_static(v: Any) -> bool:
  return isinstance(v, int | np.integer)


class _Interner:
  """Structural ids for expression nodes (hash-consing), so equal subtrees (e.g. the copies
  made by inlining ``ix * ix``) are evaluated once."""

  def __init__(self):
    self.by_node: dict[int, int] = {}
    self.table: dict[tuple, int] = {}
    self.alive: list[ir.Expr] = []  # keep nodes alive so their id()s stay unique
    self.fills = itertools.count()  # see _fill_value

  def __call__(self, e: ir.Expr) -> int:
    k = self.by_node.get(id(e))
    if k is not None:
      return k
    if isinstance(e, ir.Const):
      sig: tuple = ("c", e.value, e.dtype.str, e.weak)
    elif isinstance(e, ir.Var | ir.RVar):
      sig = B.key(e)
    elif isinstance(e, ir.Param):
      sig = ("p", id(e))
    elif isinstance(e, ir.Call):
      sig = ("call", id(e.target), *[self(a) for a in e.args])
    elif isinstance(e, ir.Cast):
      sig = ("cast", e.to.str, self(e.a))
    elif isinstance(e, ir.Reduce):
      sig = ("red", e.op, id(e.rdom), e.component, self(e.body))
    else:
      sig = (type(e).__name__, getattr(e, "op", None), *[self(c) for c in ir.children(e)])
    k = self.table.setdefault(sig, len(self.table))
    self.by_node[id(e)] = k
    self.alive.append(e)
    return k


_INTERNER: list[_Interner] = []


class _Ctx:
  """Evaluation of expressions over a region ``[(min, extent)]`` of a Func's pure vars."""

  def __init__(self, names: list[str], mins: list[Any], exts: list[int], bufs: dict, params):
    self.bufs, self.params = bufs, params
    self.intern = _INTERNER[-1] if _INTERNER else _Interner()
    self.memo: dict[int, Any] = {}
    self.dynamic = not all(_is_static(m) for m in mins)
    self.n = len(names)
    self.lead = 0
    self.vals: dict[tuple, Any] = {}
    self.ranges: dict[tuple, tuple[Any, int, int]] = {}
    for ax, (nm, lo, ext) in enumerate(zip(names, mins, exts, strict=True)):
      shape = [1] * self.n
      shape[ax] = ext
      self.vals[("v", nm)] = (lo + jnp.arange(ext, dtype=jnp.int32)).reshape(shape)
      # (min, extent, axis counted from the end): stable when reductions add leading axes.
      self.ranges[("v", nm)] = (lo, ext, self.n - ax)

  # -- expressions
  def ev(self, e: ir.Expr) -> Any:
    if isinstance(e, ir.Const | ir.Var | ir.RVar | ir.Param):
      return self._ev(e)
    k = self.intern(e)
    v = self.memo.get(k)
    if v is None:
      v = self.memo[k] = self._ev(e)
    return v

  def _ev(self, e: ir.Expr) -> Any:
    if isinstance(e, ir.Const):
      return e.value if e.weak else np.asarray(e.value, e.dtype)
    if isinstance(e, ir.Var | ir.RVar):
      k = B.key(e)
      if k not in self.vals:
        raise ValueError(f"{e!r} is not bound in this definition")
      return self.vals[k]
    if isinstance(e, ir.Param):
      return self.params[id(e)]
    if isinstance(e, ir.BinOp):
      if e.op == "truediv" and _RECIP_DIV and isinstance(e.b, ir.Const):
        a = self.ev(e.a)
        b = float(e.b.value)
        if (
          isinstance(a, jax.Array)
          and a.dtype == e.dtype
          and e.dtype.kind == "f"
          and b != 0
          and math.isfinite(b)
        ):
          # Division by a constant as a multiply by its reciprocal, bit-for-bit what Halide
          # emits: XLA keeps a true division, a much slower instruction (inlined harris divides
          # by 12 eighteen times a pixel). Differs from x / b by at most an ulp.
          return a * np.asarray(1.0 / b, e.dtype)
      return ir.BINARY_OPS[e.op](self.ev(e.a), self.ev(e.b))
    if isinstance(e, ir.UnOp):
      return ir.UNARY_OPS[e.op](self.ev(e.a))
    if isinstance(e, ir.Select):
      return jnp.where(self.ev(e.cond), self.ev(e.t), self.ev(e.f))
    if isinstance(e, ir.Cast):
      return jnp.asarray(self.ev(e.a)).astype(e.to)
    if isinstance(e, ir.Call):
      return self.load(e)
    if isinstance(e, ir.Reduce):
      return self.reduce(e)
    raise TypeError(f"cannot evaluate {e!r}")

  def rvar_axes(self, rdom: ir.RDom) -> tuple[dict, tuple[int, ...], list[int]]:
    """Bind the RVars of ``rdom`` to new leading axes (r[0] innermost); returns the previous
    bindings (for :meth:`unbind`), the RDom's dims (outermost first) and its mins."""
    k = len(rdom)
    rank = k + self.n + self.lead
    mins = [B.static_int(lo) for lo, _ in rdom.ranges]
    exts = [B.static_int(ex) for _, ex in rdom.ranges]
    saved = (dict(self.vals), dict(self.ranges), self.lead)
    for j in range(k):
      shape = [1] * rank
      shape[k - 1 - j] = exts[j]
      key = B.key(rdom.vars[j])
      self.vals[key] = (mins[j] + jnp.arange(exts[j], dtype=jnp.int32)).reshape(shape)
      self.ranges[key] = (mins[j], exts[j], rank - (k - 1 - j))
    self.lead += k
    rdims = tuple(exts[j] for j in reversed(range(k)))
    return saved, rdims, mins

  def unbind(self, saved) -> None:
    self.vals, self.ranges, self.lead = saved

  def reduce(self, e: ir.Reduce) -> Any:
    k = len(e.rdom)
    if e.op in _UNROLL_OPS and _rdom_size(e.rdom) <= UNROLL_LIMIT:
      return self._unrolled(e)
    saved, rdims, mins = self.rvar_axes(e.rdom)
    try:
      body = jnp.asarray(self.ev(e.body))
    finally:
      self.unbind(saved)
    rank = k + self.n + self.lead
    body = body.reshape((1,) * (rank - body.ndim) + body.shape)
    body = jnp.broadcast_to(body, rdims + body.shape[k:])
    axes = tuple(range(k))
    if e.op == "sum":
      return jnp.sum(body, axis=axes).astype(e.dtype)
    if e.op == "product":
      return jnp.prod(body, axis=axes).astype(e.dtype)
    if e.op == "max":
      return jnp.max(body, axis=axes)
    if e.op == "min":
      return jnp.min(body, axis=axes)
    flat = body.reshape((-1,) + body.shape[k:])
    if e.component == k:
      return jnp.max(flat, axis=0) if e.op == "argmax" else jnp.min(flat, axis=0)
    idx = jnp.argmax(flat, axis=0) if e.op == "argmax" else jnp.argmin(flat, axis=0)
    coords = jnp.unravel_index(idx, rdims)
    return (coords[k - 1 - e.component] + mins[e.component]).astype(jnp.int32)

  def _unrolled(self, e: ir.Reduce) -> Any:
    """Small reductions unrolled at trace time: loads like ``in[y, x + r]`` become slices."""
    mins = [B.static_int(lo) for lo, _ in e.rdom.ranges]
    exts = [B.static_int(ex) for _, ex in e.rdom.ranges]
    acc = None
    for point in itertools.product(*[range(m, m + n) for m, n in zip(mins, exts, strict=True)]):
      vals = {B.key(r): v for r, v in zip(e.rdom.vars, point, strict=True)}
      body = B.fold(
        B.substitute(
          e.body,
          lambda n, vals=vals: (
            ir.Const(vals[B.key(n)], np.int32)
            if isinstance(n, ir.RVar) and B.key(n) in vals
            else None
          ),
        )
      )
      v = jnp.asarray(self.ev(body)).astype(e.dtype)
      acc = v if acc is None else _UNROLL_OPS[e.op](acc, v)
    return jnp.asarray(acc).astype(e.dtype)

  # -- loads
  def _var_of(self, a: ir.Expr) -> tuple | None:
    """The single bound (R)Var ``a`` depends on (None if several, a call or a param)."""
    found = None
    for n in ir.walk(a):
      if isinstance(n, ir.Call | ir.Param | ir.Reduce):
        return None
      if isinstance(n, ir.Var | ir.RVar):
        k = B.key(n)
        if k not in self.ranges or (found is not None and found != k):
          return None
        found = k
    return found

  def load(self, call: ir.Call) -> Any:
    if id(call.target) not in self.bufs:
      raise ValueError(f"no buffer for {call.target.name} (internal scheduling error)")
    arr, mins = self.bufs[id(call.target)]
    args = call.args
    padded = self.bufs.get(("pad", id(call.target)))
    if padded is not None and self.dynamic:
      # Reads clamped to the buffer's edges become plain slices of its edge-padded copy.
      new = [_unclamp(a, lo, hi) for a, lo, hi in zip(args, padded[2], padded[3], strict=True)]
      if any(n is not a for n, a in zip(new, args, strict=True)):
        arr, mins, args = padded[0], padded[1], new
    plan = []
    used = set()
    for a in args:
      lin = B.linear(a)
      if lin is not None and not lin[0]:
        plan.append(("const", lin[1]))
        continue
      k = self._var_of(a)
      if k is None or k in used:
        return self.gather(arr, mins, args)
      used.add(k)
      if lin is not None and lin[0][k] >= 1:
        plan.append(("affine", k, lin[0][k], lin[1]))
      else:
        plan.append(("take", k, a))
    out = arr
    keep = []  # var key per remaining axis
    for d, step in enumerate(plan):
      if step[0] == "const":
        at = step[1] - mins[d]
        if _is_static(at):
          out = lax.index_in_dim(out, int(at), axis=len(keep), keepdims=False)
        else:  # a per-tile buffer whose window moves with the tile
          out = lax.dynamic_index_in_dim(out, at, axis=len(keep), keepdims=False)
        continue
      ax = len(keep)
      k = step[1]
      lo, ext, _ = self.ranges[k]
      if step[0] == "affine":
        coef, off = step[2], step[3]
        start = coef * lo + off - mins[d]
        size = coef * (ext - 1) + 1
        if _is_static(start):
          out = lax.slice_in_dim(out, int(start), int(start) + size, coef, axis=ax)
        else:
          out = lax.dynamic_slice_in_dim(out, start, size, axis=ax)
          if coef > 1:
            out = lax.slice_in_dim(out, 0, size, coef, axis=ax)
      else:
        out = self._take(out, ax, step[2], k, mins[d], out.shape[ax])
      keep.append(k)
    # Arrange the var axes in evaluation order and broadcast over the others.
    ends = [self.ranges[k][2] for k in keep]
    perm = sorted(range(len(ends)), key=lambda i: -ends[i])
    out = jnp.transpose(out, perm) if perm != list(range(len(ends))) else out
    rank = max(ends, default=0)
    shape = [1] * rank
    for j, i in enumerate(perm):
      shape[rank - ends[i]] = out.shape[j]
    return out.reshape(shape)

  def _take(self, arr, ax: int, a: ir.Expr, k: tuple, bmin: Any, size: int):
    lo, ext, rax = self.ranges[k]
    clamp = _clamp_pattern(a, k)
    if clamp is not None and _is_static(lo) and _is_static(bmin):
      step, off, cl, ch = clamp
      return _clamped_slice(arr, ax, step * lo + off - bmin, ext, cl - bmin, ch - bmin, step)
    idx = jnp.asarray(self.ev(a)).reshape(-1) - bmin  # [ext] along the var's axis
    return jnp.take(arr, idx, axis=ax, mode="clip")

  def index(self, a: ir.Expr, m: Any) -> jax.Array:
    """``a - m`` as an index array. A zero-based index that is a widening cast of an unsigned
    value (``cast(int32, u8_image[y, x])``) is used unconverted: no int32 copy of the image is
    materialised and no negative-index fix-up is emitted (4x faster histograms on XLA CPU)."""
    if (
      _is_static(m)
      and m == 0
      and isinstance(a, ir.Cast)
      and a.to.kind in "iu"
      and a.a.dtype.kind == "u"
      and a.a.dtype.itemsize < a.to.itemsize
    ):
      return jnp.asarray(self.ev(a.a))
    return jnp.asarray(self.ev(a)) - m

  def gather(self, arr, mins, args) -> Any:
    idx = [self.index(a, m) for a, m in zip(args, mins, strict=True)]
    if len(idx) == 1:
      # Indices lie in the buffer's region (bounds inference) unless a bound() promised it;
      # "clip" clamps to the region instead of wrapping negative ones as numpy indexing would.
      return jnp.take(arr, idx[0], axis=0, mode="clip")
    if len(idx) > 1 and _FLAT_INDEX and arr.size < 2**31:
      # One linear index into the flattened buffer (each dim clamped, as XLA's gather clamps):
      # an N-D gather makes XLA concatenate the broadcast per-dim indices into an [.., N]
      # array first (the bilateral slice: 16 gathers, 41 of its 93 ms in those concatenates).
      lin, stride = None, 1
      for d in reversed(range(len(idx))):
        i = jnp.clip(jnp.asarray(idx[d]).astype(jnp.int32), 0, arr.shape[d] - 1)
        term = i if stride == 1 else i * np.int32(stride)
        lin = term if lin is None else lin + term
        stride *= arr.shape[d]
      return jnp.take(arr.reshape(-1), lin, mode="clip")
    return arr.at[tuple(idx)].get(mode="clip")


UNROLL_LIMIT = 32
_UNROLL_OPS = {"sum": jnp.add, "product": jnp.multiply, "max": jnp.maximum, "min": jnp.minimum}


def _rdom_size(r: ir.RDom) -> int:
  return math.prod(B.static_int(ex) for _, ex in r.ranges)


def _clamp_any(a: ir.Expr) -> tuple[ir.Expr, int, int] | None:
  """``clamp(e, lo, hi)`` with static bounds -> (e, lo, hi)."""
  if (
    isinstance(a, ir.BinOp)
    and a.op == "min"
    and isinstance(a.a, ir.BinOp)
    and a.a.op == "max"
    and isinstance(a.a.b, ir.Const)
    and isinstance(a.b, ir.Const)
  ):
    return a.a.a, int(a.a.b.value), int(a.b.value)
  return None


def _unclamp(a: ir.Expr, lo: int, hi: int) -> ir.Expr:
  c = _clamp_any(a)
  if c is not None and c[1] == lo and c[2] == hi:
    return c[0]
  return a


def _edge_pads(p: L.Plan, shapes: dict[int, tuple[int, ...]]) -> dict[int, list[list[int]]]:
  """Per buffer, the edge padding that turns every read clamped to its bounds into a slice."""
  bounds: dict[int, list[tuple[int, int]]] = {
    i: [(0, s - 1) for s in shp] for i, shp in shapes.items()
  }
  for fp in p.order:
    if fp.level == "root" and fp.region is not None:
      bounds[id(fp.func)] = [(m, m + e - 1) for m, e in fp.region]
  pads: dict[int, list[list[int]]] = {}

  def visit(e: ir.Expr, env):
    for n, en in B.walk_env(e, env):
      if not (isinstance(n, ir.Call) and id(n.target) in bounds):
        continue
      bd = bounds[id(n.target)]
      need = []
      for a, (lo, hi) in zip(n.args, bd, strict=True):
        c = _clamp_any(a)
        if c is None or (c[1], c[2]) != (lo, hi):
          need.append([0, 0])
          continue
        ilo, ihi = B.interval(c[0], en)
        ilo, ihi = float(np.min(ilo)), float(np.max(ihi))
        if not (np.isfinite(ilo) and np.isfinite(ihi)) or B.linear(c[0]) is None:
          need.append([0, 0])
          continue
        need.append([max(0, lo - int(ilo)), max(0, int(ihi) - hi)])
      if any(x for pr in need for x in pr):
        cur = pads.setdefault(id(n.target), [[0, 0] for _ in bd])
        for cp, nd in zip(cur, need, strict=True):
          cp[0], cp[1] = max(cp[0], nd[0]), max(cp[1], nd[1])

  for fp in p.order:
    # Only reads inside tile loops (dynamic offsets) use padded copies; static regions are
    # peeled into interior and borders instead (see _eval_pure).
    if fp.func.extern is not None or (fp.level == "root" and fp.group is None):
      continue
    lo = [np.float64(m) for m, _ in fp.region]
    hi = [np.float64(m + e - 1) for m, e in fp.region]
    for st in fp.stages:
      env = L._stage_env(st, fp.func, lo, hi)
      for e in (*st.args, st.value):
        visit(e, env)
  return pads


def _clamp_pattern(a: ir.Expr, k: tuple) -> tuple[int, int, int, int] | None:
  """``clamp(s * v + off, lo, hi)`` with static ints, s >= 1 -> (s, off, lo, hi)."""
  if not (
    isinstance(a, ir.BinOp) and a.op == "min" and isinstance(a.a, ir.BinOp) and a.a.op == "max"
  ):
    return None
  inner, lo, hi = a.a.a, a.a.b, a.b
  lin = B.linear(inner)
  if lin is None or set(lin[0]) != {k} or lin[0][k] < 1:
    return None
  if not (isinstance(lo, ir.Const) and isinstance(hi, ir.Const)):
    return None
  return lin[0][k], lin[1], int(lo.value), int(hi.value)


def _clamped_slice(arr, ax: int, s: int, ext: int, lo: int, hi: int, step: int = 1):
  """``arr[clip(s + step * arange(ext), lo, hi)]`` along ``ax`` with slices (edge
  replication): the points below ``lo``, a strided slice, the points above ``hi``."""
  lp = int(np.clip(-((s - lo) // step), 0, ext))
  rp = int(np.clip(ext - ((hi - s) // step + 1), 0, ext))
  mid = ext - lp - rp
  parts = []
  if lp:
    parts.append(jnp.repeat(lax.slice_in_dim(arr, lo, lo + 1, axis=ax), lp, axis=ax))
  if mid > 0:
    a = s + step * lp
    parts.append(lax.slice_in_dim(arr, a, a + step * (mid - 1) + 1, step, axis=ax))
  if rp:
    parts.append(jnp.repeat(lax.slice_in_dim(arr, hi, hi + 1, axis=ax), rp, axis=ax))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=ax)


# ----------------------------------------------------------------------------- stages


UNROLL_DIM_LIMIT = 16


class _Piece(NamedTuple):
  """Part of a region's values: ``arr[i]`` is the point ``starts + steps * i`` (offsets from
  the region's origin, per dim). A pure dim evaluated one index at a time or one residue class
  at a time yields several pieces, which :func:`_assemble` puts together."""

  starts: tuple[int, ...]
  steps: tuple[int, ...]
  arr: jax.Array


def _eval_region(
  fp: L.FuncPlan,
  mins: list[Any],
  exts: tuple[int, ...],
  bufs,
  params,
  value: ir.Expr | None = None,
  windows: bool = False,
) -> jax.Array:
  """Evaluate the pure definition over a region (see :func:`_region_pieces`)."""
  pieces = _region_pieces(fp, mins, exts, bufs, params, value, frozenset(), windows)
  return _assemble(tuple(exts), pieces)


def _region_pieces(fp, mins, exts, bufs, params, value, done: frozenset, windows: bool):
  """The region's values as pieces. A pure dim scheduled ``unroll`` (with a small static
  extent) is evaluated one index at a time with the var substituted, so selects on it
  (``select(c == 0, ...)``) fold away instead of computing every branch everywhere; a dim
  whose selects branch on ``v % k`` is evaluated per residue class (:func:`_phase_pieces`)."""
  f = fp.func
  value = fp.stages[0].value if value is None else value
  st = f.definitions[0].schedule
  for d, v in enumerate(f.args):
    if (
      d in done
      or st.kind(v.name) != "unrolled"
      or not _is_static(mins[d])
      or exts[d] > UNROLL_DIM_LIMIT
    ):
      continue
    pieces = []
    for i in range(exts[d]):
      c = ir.Const(int(mins[d]) + i, np.int32)
      val_i = B.fold(
        B.substitute(
          value,
          lambda n, c=c, name=v.name: c if isinstance(n, ir.Var) and n.name == name else None,
        )
      )
      sub_mins = list(mins)
      sub_mins[d] = int(mins[d]) + i
      sub_exts = list(exts)
      sub_exts[d] = 1
      sub = _region_pieces(fp, sub_mins, tuple(sub_exts), bufs, params, val_i, done | {d}, windows)
      pieces += _shift(sub, d, i, 1)
    return pieces
  for d, v in enumerate(f.args):
    if d in done or not _POLYPHASE or not _is_static(mins[d]):
      continue
    ks = B.parity_moduli(value, v.name)
    if len(ks) != 1 or exts[d] < 2 * min(ks):
      continue
    (k,) = ks
    return _phase_pieces(fp, mins, exts, bufs, params, value, done | {d}, windows, d, k)
  ctx = _Ctx([v.name for v in f.args], mins, list(exts), bufs, params)
  ctx.dynamic |= windows  # clamped reads come from the slab's edge-padded windows
  val = jnp.asarray(ctx.ev(value)).astype(f.dtype)
  n = len(exts)
  return [_Piece((0,) * n, (1,) * n, jnp.broadcast_to(val, tuple(exts)))]


def _phase_pieces(fp, mins, exts, bufs, params, value, done, windows, d: int, k: int):
  """Polyphase evaluation along dim ``d``: a definition that branches on ``v % k`` (a Bayer
  interleave: ``select(x % 2 == 0, a[x // 2], b[x // 2])``) is evaluated once per residue
  class of ``v`` with ``v = k * v' + p`` substituted, so the parity selects fold to one branch
  and ``v // k`` reads become plain slices. Without it every branch is computed at every point
  and each half-resolution read is a take."""
  v = fp.func.args[d]
  m0, ext = int(mins[d]), int(exts[d])
  pieces = []
  for j in range(k):
    cnt = -(-(ext - j) // k)  # points m0 + j + k * i inside the region
    p, q0 = (m0 + j) % k, (m0 + j) // k
    sub_mins, sub_exts = list(mins), list(exts)
    sub_mins[d], sub_exts[d] = q0, cnt
    sub = _region_pieces(
      fp, sub_mins, tuple(sub_exts), bufs, params, B.phase(value, v, k, p), done, windows
    )
    pieces += _shift(sub, d, j, k)
  return pieces


def _shift(pieces: list[_Piece], d: int, start: int, step: int) -> list[_Piece]:
  """Pieces of a sub-region whose dim-``d`` offset ``i`` is the region's ``start + step * i``."""

  def put(t: tuple[int, ...], val: int) -> tuple[int, ...]:
    return t[:d] + (val,) + t[d + 1 :]

  return [
    _Piece(put(q.starts, start + step * q.starts[d]), put(q.steps, step * q.steps[d]), q.arr)
    for q in pieces
  ]


def _assemble(exts: tuple[int, ...], pieces: list[_Piece]) -> jax.Array:
  """The region's array from its pieces.

  Along a dim split into residue classes mod ``k`` the pieces interleave: the region is
  viewed as ``(ceil(ext / k), k)`` there, where each piece is a box. The boxes are
  concatenated in that view and the view reshaped once at the end. (Stacking each level of an
  interleave and reshaping it before the next level put reshapes inside XLA's fused loop,
  which then recomputes a div/mod index per element: the camera pipe's output, three unrolled
  channels x four Bayer phases, took 1.5-1.8x as long.)"""
  if len(pieces) == 1 and pieces[0].arr.shape == exts:
    return pieces[0].arr
  # Each dim is split at most once (unrolled or into residue classes), so the pieces are always
  # boxes of one interleaved view.
  ks, ns = _grid(exts, pieces)
  placed = []  # (index into the view, piece padded to its box)
  for q in pieces:
    idx, shape, pad = [], [], []
    for d, (s, k) in enumerate(zip(q.starts, ks, strict=True)):
      if k > 1:
        idx += [s // k, s % k]
        shape += [ns[d], 1]
        pad.append((0, ns[d] - q.arr.shape[d]))
      else:
        idx.append(s)
        shape.append(q.arr.shape[d])
        pad.append((0, 0))
    arr = q.arr if not any(b for _, b in pad) else jnp.pad(q.arr, pad)
    placed.append((tuple(idx), arr.reshape(shape)))
  full = tuple(n * k for n, k in zip(ns, ks, strict=True))
  out = _concat_boxes(placed, 0).reshape(full)
  if full != tuple(exts):
    out = lax.slice(out, (0,) * len(exts), tuple(exts))
  return out


def _concat_boxes(placed: list[tuple[tuple[int, ...], jax.Array]], axis: int) -> jax.Array:
  """Boxes that tile an array, keyed by their index in it, concatenated axis by axis."""
  if axis == len(placed[0][0]):
    ((_, arr),) = placed
    return arr
  groups: dict[int, list] = {}
  for idx, arr in placed:
    groups.setdefault(idx[axis], []).append((idx, arr))
  parts = [_concat_boxes(groups[i], axis + 1) for i in sorted(groups)]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis)


def _grid(exts, pieces) -> tuple[list[int], list[int]]:
  """Per dim the interleave factor ``k`` (1 where pieces are plain boxes) and the view's
  outer extent ``ceil(ext / k)``."""
  ks, ns = [], []
  for d, ext in enumerate(exts):
    k = max(q.steps[d] for q in pieces)
    n = -(-ext // k)
    for q in pieces:
      s, t, c = q.starts[d], q.steps[d], q.arr.shape[d]
      ok = (s < k and t == k and c <= n) if k > 1 else (s + c <= ext)
      assert ok, f"piece {s}:{t}x{c} is not a box of the ({n}, {k}) view of dim {d}"
    ks.append(k)
    ns.append(n)
  return ks, ns


def _interior(fp: L.FuncPlan, mins: list[int], exts: tuple[int, ...]) -> list[tuple[int, int]]:
  """The sub-region where no clamped read ``clamp(v + e, lo, hi)`` is active."""
  f = fp.func
  names = [v.name for v in f.args]
  inter = [(m, m + e - 1) for m, e in zip(mins, exts, strict=True)]
  env = {("v", n): (np.float64(0), np.float64(0)) for n in names}

  for n, en in B.walk_env(fp.stages[0].value, env):
    c = _clamp_any(n)
    lin = None if c is None else B.linear(c[0])
    if lin is None:
      continue
    vs = [k for k in lin[0] if k[0] == "v"]
    if len(vs) == 1 and lin[0][vs[0]] >= 1:
      d, s = names.index(vs[0][1]), lin[0][vs[0]]
      # Offset e - s v ranges over [dlo, dhi] (RVars included): s v + e stays in [lo, hi] for
      # v in [ceil((lo - dlo) / s), floor((hi - dhi) / s)].
      rest = B.interval(c[0], en)  # with v = 0
      lo, hi = inter[d]
      inter[d] = (
        max(lo, -((int(rest[0]) - c[1]) // s)),
        min(hi, (c[2] - int(rest[1])) // s),
      )
  return inter


# Lowering switches, kept for A/B measurements (bench/pipelines.py, docs/pipelines.md): how a
# peeled region's core is assembled ("auto", True: in place into a scratch buffer, False: padded;
# see _core_in_place), and float division by a constant as a multiply by its reciprocal (what
# Halide emits).
_CORE_IN_PLACE: bool | str = "auto"
_SLAB_WINDOWS = True  # border slabs read edge-padded windows (see _slab_windows)
_RECIP_DIV = True
_MATERIALIZE = True  # root Funcs behind a real fusion boundary (see _materialize)
_MATERIALIZE_MIN = 64
_PEEL_MIN_FRACTION = 0.75
_FLAT_INDEX = True  # N-D gathers/scatters at one linear index (_Ctx.gather, _scatter)
_SCATTER_CHUNK = 1 << 19  # update points per chunk of a large scatter (see _chunked_scatter)
_MERGE_BLOCKS = True  # blocked reads s*v + r as one var (see _merge_blocks)
_POLYPHASE = True  # branches on v % k evaluated per residue class (see _phase_pieces)


def _fill_value(dtype: np.dtype) -> Any:
  """A fill constant for a scratch base buffer, distinct per buffer of one trace: equal
  constant broadcasts would be merged by XLA's CSE into one buffer, then copied once per
  in-place writer. Every element is overwritten, so the value never shows."""
  k = next(_INTERNER[-1].fills) if _INTERNER else 0
  return bool(k % 2) if np.dtype(dtype) == np.bool_ else k % 100


def _core_in_place(fp: L.FuncPlan) -> bool:
  """Whether a peeled core is written in place into a scratch buffer rather than padded.

  XLA CPU turns a pad of the core into one pad fusion that it splits across cores, with a
  bounds check per element. When the core reads runtime scalars (Params, loads at constant
  indices such as the unsharp mask's weights) that fusion is not vectorised and runs 2-3x
  slower than the core alone, so the core is written in place instead: vectorised, but XLA
  runs in-place fusions on one thread, and the scratch fill is an extra pass. With only
  immediate constants the pad fusion is the fastest (blur 2.7 -> 1.2 ms, harris 10.7 -> 6.6 ms
  in one A/B run on 2 cores; docs/pipelines.md).
  """
  if _CORE_IN_PLACE != "auto":
    return bool(_CORE_IN_PLACE)
  for n in ir.walk(fp.stages[0].value):
    if isinstance(n, ir.Param):
      return True
    # A load whose index has no pure var is one value per point (per reduction step, for
    # reductions unrolled at trace time): a runtime scalar in the fused loop.
    if isinstance(n, ir.Call) and not any(
      isinstance(m, ir.Var) for a in n.args for m in ir.walk(a)
    ):
      return True
  return False


def _eval_extern(fp: L.FuncPlan, mins: list[Any], exts: tuple[int, ...], bufs) -> jax.Array:
  """An extern Func over a region: its JAX function on the full input arrays. Inside a tile
  loop (compute_at) the origin's entries may be traced int32 scalars."""
  f = fp.func
  ins = [bufs[id(i)][0] for i in f.extern.inputs]
  arr = jnp.asarray(f.extern.fn(*ins, tuple(mins), tuple(exts)))
  if arr.shape != tuple(exts):
    raise ValueError(f"extern Func {f.name} returned shape {arr.shape}, expected {tuple(exts)}")
  return arr.astype(f.dtype)


def _eval_pure(fp: L.FuncPlan, mins: list[Any], exts: tuple[int, ...], bufs, params):
  """Evaluate over a region. Statically placed regions with edge-clamped reads are peeled:
  the interior, where every clamp is inactive, is pure slices (fast on XLA); only thin border
  slabs pay for the clamping, and are written into place with dynamic_update_slice."""
  if fp.func.extern is not None:
    return _eval_extern(fp, mins, exts, bufs)
  if not all(_is_static(m) for m in mins):
    return _eval_region(fp, mins, exts, bufs, params)
  inter = _interior(fp, mins, exts)
  full = [(m, m + e - 1) for m, e in zip(mins, exts, strict=True)]
  if inter == full or any(hi - lo + 1 < 8 for lo, hi in inter):
    return _eval_region(fp, mins, exts, bufs, params)
  if math.prod(hi - lo + 1 for lo, hi in inter) < _PEEL_MIN_FRACTION * math.prod(exts):
    # Mostly border (a pyramid base with its halo: 53% interior): one clamped pass beats
    # filling a scratch buffer and writing core + slabs into it (local Laplacian 167 -> 134 ms).
    return _eval_region(fp, mins, exts, bufs, params)
  core = _eval_region(
    fp, [lo for lo, _ in inter], tuple(hi - lo + 1 for lo, hi in inter), bufs, params
  )
  if _core_in_place(fp):
    base = _barrier(jnp.full(exts, _fill_value(core.dtype), core.dtype))
    out = lax.dynamic_update_slice(
      base, core, [lo - m for (lo, _), m in zip(inter, mins, strict=True)]
    )
  else:
    cfg = [(lo - m, m + e - 1 - hi, 0) for (lo, hi), m, e in zip(inter, mins, exts, strict=True)]
    out = lax.pad(core, jnp.zeros((), core.dtype), cfg)
  box = list(full)  # the slab being peeled shrinks dim by dim
  for d, (lo, hi) in enumerate(inter):
    for a, b in ((box[d][0], lo - 1), (hi + 1, box[d][1])):
      if b < a:
        continue
      sub = list(box)
      sub[d] = (a, b)
      sbufs = _slab_windows(fp, sub, bufs)
      arr = _eval_region(
        fp,
        [s for s, _ in sub],
        tuple(t - s + 1 for s, t in sub),
        sbufs,
        params,
        windows=sbufs is not bufs,
      )
      out = lax.dynamic_update_slice(out, arr, [s - m for (s, _), m in zip(sub, mins, strict=True)])
    box[d] = (lo, hi)
  return out


# A slab's window of a buffer may be this many times the slab's own size before the clamped
# slices are kept instead (data-dependent or far-reaching reads).
_WINDOW_FACTOR = 16


def _slab_windows(fp: L.FuncPlan, box: list[tuple[int, int]], bufs) -> dict:
  """``bufs`` plus, per buffer the slab reads clamped to the buffer's bounds, a small edge-padded
  copy of the window those reads cover (``("pad", id)`` entries, as tile loops use), so the
  slab is evaluated from plain slices: one small pad and one fusion per slab instead of a
  slice-and-concatenate per clamped tap (harris had ~80 tiny XLA ops for its borders).
  Returns ``bufs`` itself when no buffer qualifies."""
  if not _SLAB_WINDOWS:
    return bufs
  f = fp.func
  env = L._stage_env(
    fp.stages[0], f, [np.float64(a) for a, _ in box], [np.float64(b) for _, b in box]
  )
  need: dict[int, list[list[float]] | None] = {}

  for n, en in B.walk_env(fp.stages[0].value, env):
    if not isinstance(n, ir.Call) or id(n.target) not in bufs or need.get(id(n.target), 0) is None:
      continue
    arr, bmins = bufs[id(n.target)]
    ivs, clamped = [], False
    for a, m, sz in zip(n.args, bmins, arr.shape, strict=True):
      c = _clamp_any(a)
      if c is not None and (c[1], c[2]) == (m, m + sz - 1):
        a, clamped = c[0], True
      lo, hi = B.interval(a, en)
      ivs.append([float(np.min(lo)), float(np.max(hi))])
    if not clamped:
      continue
    if not all(np.isfinite(v) for iv in ivs for v in iv) or not _is_static(bmins[0]):
      need[id(n.target)] = None
    else:
      cur = need.setdefault(id(n.target), ivs)
      for c, iv in zip(cur, ivs, strict=True):
        c[0], c[1] = min(c[0], iv[0]), max(c[1], iv[1])
  size = math.prod(b - a + 1 for a, b in box)
  out = None
  for key, ivs in need.items():
    if ivs is None:
      continue
    arr, bmins = bufs[key]
    wlo = [int(np.floor(lo)) for lo, _ in ivs]
    wext = [int(np.ceil(hi)) - lo + 1 for lo, (_, hi) in zip(wlo, ivs, strict=True)]
    if math.prod(wext) > _WINDOW_FACTOR * size + 4096:
      continue
    win = arr
    for ax, (lo, ext, m, sz) in enumerate(zip(wlo, wext, bmins, arr.shape, strict=True)):
      win = _clamped_slice(win, ax, lo - m, ext, 0, sz - 1)
    out = dict(bufs) if out is None else out
    out[("pad", key)] = (
      win,
      wlo,
      list(bmins),
      [m + sz - 1 for m, sz in zip(bmins, arr.shape, strict=True)],
    )
  return bufs if out is None else out


def _eval_updates(fp: L.FuncPlan, arr, mins: list[int], bufs, params):
  for st in fp.stages[1:]:
    arr = _eval_update(fp, st, arr, mins, bufs, params)
  return arr


def _eval_update(fp: L.FuncPlan, st: L.Stage, arr, mins, bufs, params):
  f = fp.func
  names = [v.name for v in f.args]
  exts = list(arr.shape)
  pure = [isinstance(a, ir.Var) for a in st.args]
  # Region vars are only the pure dims used bare on the left; others have extent 1.
  r_names = names
  r_exts = [e if p else 1 for e, p in zip(exts, pure, strict=True)]
  r_mins = [m if p else 0 for m, p in zip(mins, pure, strict=True)]

  def ctx_for(cur):
    b = dict(bufs)
    b[id(f)] = (cur, mins)
    return _Ctx(r_names, r_mins, r_exts, b, params)

  val = st.value
  if st.rdom is None:
    ctx = ctx_for(arr)
    v = jnp.asarray(ctx.ev(val)).astype(f.dtype)
    idx = [jnp.asarray(ctx.ev(a)) - m for a, m in zip(st.args, mins, strict=True)]
    shape = jnp.broadcast_shapes(v.shape, *[i.shape for i in idx])
    return arr.at[tuple(jnp.broadcast_to(i, shape) for i in idx)].set(jnp.broadcast_to(v, shape))

  # Commutative self-update f[L] = f[L] op e: a scatter (order-independent).
  su = B.self_update(f, st.args, val)
  if su is not None:
    return _chunked_scatter(fp, st, arr, mins, r_mins, r_exts, bufs, params, su[1], su[0])

  scan = _prefix_scan(f, st)
  if scan is not None:
    return _run_scan(ctx_for, st, scan, arr, mins, f.dtype)

  if not B.refs(val, f) and _injective(st):
    return _chunked_scatter(fp, st, arr, mins, r_mins, r_exts, bufs, params, val, "set")

  # General case: serial over the RDom in Halide order (r[0] innermost).
  rd = st.rdom
  rmins = [B.static_int(lo) for lo, _ in rd.ranges]
  rexts = [B.static_int(ex) for _, ex in rd.ranges]
  total = math.prod(rexts)

  def body(t, cur):
    ctx = ctx_for(cur)
    rem = t
    for j in range(len(rexts)):
      ctx.vals[B.key(rd.vars[j])] = (rmins[j] + rem % rexts[j]).astype(jnp.int32)
      rem = rem // rexts[j]
    v = jnp.asarray(ctx.ev(val)).astype(f.dtype)
    idx = [jnp.asarray(ctx.ev(a)) - m for a, m in zip(st.args, mins, strict=True)]
    shape = jnp.broadcast_shapes(v.shape, *[i.shape for i in idx])
    return cur.at[tuple(jnp.broadcast_to(i, shape) for i in idx)].set(jnp.broadcast_to(v, shape))

  return lax.fori_loop(0, total, body, arr)


def _chunk_axis(r_exts: list[int], points: int) -> tuple[int, int] | None:
  """(axis, rows) splitting an update's region into chunks of about ``_SCATTER_CHUNK`` points,
  or None when it is small enough (or has no axis worth splitting)."""
  if not _SCATTER_CHUNK or points <= 2 * _SCATTER_CHUNK:
    return None
  for d, e in enumerate(r_exts):
    rows = _SCATTER_CHUNK // (points // e)
    if rows >= 1 and 2 * rows <= e:
      return d, rows
  return None


def _merge_blocks(st: L.Stage, e: ir.Expr, names, mins, exts, pure):
  """Re-index an order-independent update whose reads take ``s*v + r`` (``r`` an RVar of
  extent ``s``, ``v`` a pure var of the region): each such (v, r) pair becomes one var
  ``t = s*v + r`` over ``[s*v_min + r_min, ..)``, so ``v = (t - r_min) // s`` and
  ``r = r_min + (t - r_min) % s``: a bijection of the update's domain. (``v_min`` may be a
  tile's traced origin; it enters only the region, not the expressions.)
  A blocked read (the bilateral grid's splat reads ``inp[8 gy + r.y - 4, 8 gx + r.x - 4]``)
  is then a slice along ``t`` instead of a gather whose RDom axes lead and a transposing copy.
  Returns the stage, value, region (names, mins, extents) and the number of RDom points left
  per region point; unchanged when nothing pairs."""
  rd = st.rdom
  if rd is None:
    return st, e, names, mins, exts, 1
  if not _MERGE_BLOCKS:
    return st, e, names, mins, exts, _rdom_size(rd)
  rng = {
    B.key(rv): (B.static_int(lo), B.static_int(ex))
    for rv, (lo, ex) in zip(rd.vars, rd.ranges, strict=True)
  }
  axis_of = {("v", n): ax for ax, n in enumerate(names) if pure[ax] and exts[ax] > 1}
  pairs: dict[tuple, tuple] = {}
  seen: set[int] = set()
  stack = [e]
  while stack:
    n = stack.pop()
    if id(n) in seen:
      continue
    seen.add(id(n))
    stack.extend(ir.children(n))
    lin = B.linear(n) if isinstance(n, ir.BinOp) else None
    if lin is None or len(lin[0]) != 2:
      continue
    (kv, cv), (kr, cr) = sorted(lin[0].items(), key=lambda kc: kc[0][0] == "r")
    if kv in axis_of and kr in rng and cr == 1 and cv == rng[kr][1]:
      if kv not in pairs and kr not in pairs.values():
        pairs[kv] = kr
  if not pairs:
    return st, e, names, mins, exts, _rdom_size(rd)
  names, mins, exts = list(names), list(mins), list(exts)
  merged = {}
  for kv, kr in pairs.items():
    ax = axis_of[kv]
    t = ir.Var(f"{kv[1]}~{rd.name}{kr[2]}")
    s, rmin = rng[kr][1], rng[kr][0]
    merged[kv] = (t, s, kr, rmin)
    names[ax], mins[ax], exts[ax] = t.name, s * mins[ax] + rmin, s * exts[ax]

  def sub(n: ir.Expr) -> ir.Expr | None:
    if isinstance(n, ir.BinOp):
      lin = B.linear(n)
      if lin is not None and len(lin[0]) == 2:
        for kv, (t, s, kr, _) in merged.items():
          if lin[0] == {kv: s, kr: 1}:
            return t + lin[1]
      return None
    if isinstance(n, ir.Var | ir.RVar):
      k = B.key(n)
      for kv, (t, s, kr, rmin) in merged.items():
        if k == kv:
          return (t - rmin) // s
        if k == kr:
          return (t - rmin) % s + rmin
    return None

  args = tuple(B.fold(B.substitute(a, sub)) for a in st.args)
  rest = math.prod(ex for k, (_, ex) in rng.items() if k not in pairs.values())
  return L.Stage(args, st.value, rd), B.fold(B.substitute(e, sub)), names, mins, exts, rest


def _chunked_scatter(fp: L.FuncPlan, st: L.Stage, arr, mins, r_mins, r_exts, bufs, params, e, op):
  """An order-independent update (commutative self-update or collision-free set) as one
  scatter, or, when its region is large, as scatters over chunks of its outermost splittable
  dim. XLA CPU materialises a scatter's index and update arrays and then scatters on one
  thread: the bilateral grid's whole-image splat wrote and re-read 70 MB of them (44 ms at
  2048^2); per chunk they stay in cache."""
  f = fp.func
  pure = [isinstance(a, ir.Var) for a in st.args]
  st, e, names, r_mins, r_exts, rest = _merge_blocks(
    st, e, [v.name for v in f.args], r_mins, r_exts, pure
  )

  split = _chunk_axis(r_exts, math.prod(r_exts) * rest)
  d, rows = split if split is not None else (0, 0)

  def run(cur, lo=None, ext=None, stage=None):  # over rows [lo, lo + ext) of dim d (or all)
    cm, ce = list(r_mins), list(r_exts)
    if lo is not None:
      cm[d], ce[d] = r_mins[d] + lo, ext
    # Edge-padded copies are sized for tile loops' reads, not these: clamped reads stay gathers
    # (cheaper here than padding the image: 1.9 vs 6.4 ms for the bilateral splat at 2048^2).
    b = {k: v for k, v in bufs.items() if not (isinstance(k, tuple) and k[0] == "pad")}
    b[id(f)] = (cur, mins)
    return _scatter(_Ctx(names, cm, ce, b, params), stage or st, e, cur, mins, op, f.dtype)

  if split is None:
    rsplit = _rdom_chunks(st.rdom, rest)
    if rsplit is None:
      return run(arr)
    # No region dim to split (a histogram: its one dim is data-dependent): chunks of the
    # outermost RVar instead, unrolled with static ranges. XLA CPU otherwise materialises the
    # whole update array (4M ones for a 2048^2 histogram: 16 MB, written before the scatter).
    for rd in rsplit:
      arr = run(arr, stage=L.Stage(st.args, st.value, rd))
    return arr
  n = r_exts[d] // rows
  # A loop, not unrolled chunks: XLA CPU ran the unrolled chunks' fusions as separate thunks
  # (bilateral grid 40 vs 28 ms at 2048^2).
  arr = lax.fori_loop(0, n, lambda i, cur: run(cur, i * rows, rows), arr)
  if n * rows < r_exts[d]:
    arr = run(arr, n * rows, r_exts[d] - n * rows)
  return arr


def _rdom_chunks(rd: ir.RDom | None, points: int) -> list[ir.RDom] | None:
  """Copies of ``rd`` whose outermost RVar covers consecutive slices of its range, about
  ``_SCATTER_CHUNK`` of the ``points`` each (the RVars stay the same objects, so expressions
  need no rewriting); None when ``rd`` is small or has no such axis."""
  if rd is None or not _SCATTER_CHUNK or points <= 2 * _SCATTER_CHUNK:
    return None
  k = len(rd) - 1
  lo, ext = (B.static_int(v) for v in rd.ranges[k])
  rows = _SCATTER_CHUNK // max(1, points // ext)
  if rows < 1 or 2 * rows > ext:
    return None
  out = []
  for start in range(0, ext, rows):
    c = copy.copy(rd)
    n = min(rows, ext - start)
    c.ranges = [*rd.ranges[:k], (ir.Const(lo + start, np.int32), ir.Const(n, np.int32))]
    out.append(c)
  return out


def _scatter(ctx: _Ctx, st: L.Stage, e: ir.Expr, arr, mins, op: str, dtype):
  ctx.rvar_axes(st.rdom)
  v = jnp.asarray(ctx.ev(e)).astype(dtype)
  idx = [ctx.index(a, m) for a, m in zip(st.args, mins, strict=True)]
  shape = jnp.broadcast_shapes(v.shape, *[i.shape for i in idx])
  if len({i.dtype for i in idx}) > 1:
    idx = [i.astype(jnp.int32) for i in idx]
  # One lax scatter with XLA's native semantics (out-of-range updates dropped; bounds inference
  # keeps every index in range): no negative-index fix-up, so narrow unsigned indices (a
  # histogram of a uint8 image) are read as they are instead of being copied to int32.
  v = jnp.broadcast_to(v, shape).reshape(-1)
  if arr.ndim > 1 and _FLAT_INDEX and arr.size < 2**31:
    # A 1-D scatter into the flattened buffer at one linear index: XLA would otherwise build
    # an [N, ndim] index array (the bilateral grid's splat: 44 of its 93 ms). Out-of-range
    # points (none, by bounds inference) keep being dropped: their index is set past the end.
    lin, ok, stride = None, None, 1
    for d in reversed(range(arr.ndim)):
      i = jnp.asarray(idx[d]).astype(jnp.int32)
      inside = (i >= 0) & (i < arr.shape[d])
      term = i if stride == 1 else i * np.int32(stride)
      lin = term if lin is None else lin + term
      ok = inside if ok is None else ok & inside
      stride *= arr.shape[d]
    lin = jnp.where(ok, lin, np.int32(arr.size))
    flat = _scatter_fn(op)(
      arr.reshape(-1),
      jnp.broadcast_to(lin, shape).reshape(-1, 1),
      v,
      lax.ScatterDimensionNumbers(
        update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
      ),
      mode=lax.GatherScatterMode.FILL_OR_DROP,
    )
    return flat.reshape(arr.shape)
  ind = jnp.stack([jnp.broadcast_to(i, shape).reshape(-1) for i in idx], axis=-1)
  dims = tuple(range(arr.ndim))
  dn = lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=dims, scatter_dims_to_operand_dims=dims
  )
  return _scatter_fn(op)(arr, ind, v, dn, mode=lax.GatherScatterMode.FILL_OR_DROP)


def _scatter_fn(op: str):
  return {
    "add": lax.scatter_add,
    "mul": lax.scatter_mul,
    "max": lax.scatter_max,
    "min": lax.scatter_min,
    "set": lax.scatter,
  }[op]


def _injective(st: L.Stage) -> bool:
  """Every RVar appears in exactly one left-hand arg, affinely, alone there: no collisions."""
  seen = set()
  for a in st.args:
    if isinstance(a, ir.Var):
      continue
    lin = B.linear(a)
    if lin is None or len(lin[0]) != 1:
      return False
    (k,) = lin[0]
    if k[0] != "r" or k in seen:
      return False
    seen.add(k)
  return len(seen) == len(st.rdom)


def _prefix_scan(f: ir.Func, st: L.Stage) -> tuple[int, ir.Expr] | None:
  """``f[.., r, ..] = f[.., r - 1, ..] + e`` with ``e`` free of f -> (axis, e)."""
  if len(st.rdom) != 1:
    return None
  rk = B.key(st.rdom.vars[0])
  q = [i for i, a in enumerate(st.args) if not isinstance(a, ir.Var)]
  if len(q) != 1 or B.linear(st.args[q[0]]) != ({rk: 1}, 0):
    return None
  q = q[0]
  v = st.value
  if not (isinstance(v, ir.BinOp) and v.op == "add"):
    return None
  for mine, other in ((v.a, v.b), (v.b, v.a)):
    if not (isinstance(mine, ir.Call) and mine.target is f) or B.refs(other, f):
      continue
    ok = all(
      (B.linear(x) == ({rk: 1}, -1)) if i == q else B.same(x, y)
      for i, (x, y) in enumerate(zip(mine.args, st.args, strict=True))
    )
    if ok:
      return q, other
  return None


def _run_scan(ctx_for, st: L.Stage, scan, arr, mins, dtype):
  q, e = scan
  ctx = ctx_for(arr)
  _, rdims, rmins = ctx.rvar_axes(st.rdom)
  v = jnp.asarray(ctx.ev(e)).astype(dtype)
  n = ctx.n
  v = v.reshape((1,) * (n + 1 - v.ndim) + v.shape)
  full = (rdims[0],) + tuple(1 if i == q else s for i, s in enumerate(arr.shape))
  v = jnp.broadcast_to(v, full)
  start = rmins[0] - mins[q]
  init = lax.slice_in_dim(arr, start - 1, start, axis=q)
  vq = jnp.moveaxis(jnp.squeeze(v, axis=q + 1), 0, q)  # [..., R (axis q), ...]
  # init, init + v0, init + v0 + v1, ...: Halide's serial order.
  new = jnp.cumsum(jnp.concatenate([init, vq], axis=q), axis=q, dtype=dtype)
  if start == 1 and new.shape[q] == arr.shape[q]:
    # The scan covers the whole axis: no update-slice, which XLA would otherwise fuse into
    # (and re-evaluate in) every consumer, e.g. per pixel of a histogram-equalisation lookup.
    return new
  return lax.dynamic_update_slice_in_dim(arr, new, start - 1, axis=q)


# ----------------------------------------------------------------------------- driver


def _barrier(x):
  return lax.optimization_barrier(x)


# Bits of one float32 NaN: the first element of a buffer never has them unless it is that NaN.
_NAN_PAYLOAD = 0x7FC0_1234


def _touch(a: jax.Array) -> jax.Array:
  """An exact identity that XLA does not simplify away (integer ``+ 0`` on the bits)."""
  if a.dtype == jnp.bool_:
    return a.astype(jnp.uint8) + np.uint8(0) != 0
  if jnp.issubdtype(a.dtype, jnp.floating):
    bits = jnp.dtype(f"uint{8 * a.dtype.itemsize}")
    return lax.bitcast_convert_type(lax.bitcast_convert_type(a, bits) + bits.type(0), a.dtype)
  return a + a.dtype.type(0)


def _materialize(x: jax.Array) -> jax.Array:
  """``x``, written to memory before its consumers run: what compute_root promises.

  XLA CPU drops ``optimization_barrier`` before fusion (OptimizationBarrierExpander), and its
  fusion pass then happily duplicates an expensive producer into every tap of a stencil
  consumer (5 sin/cos per point for a 5-tap stencil: 65 ms vs 15 ms materialised at 2048^2)
  or into a gather (the camera pipe's gamma curve: one ``pow`` per pixel instead of per table
  entry). A conditional is a fusion boundary XLA keeps when its predicate is data-dependent:
  here, whether the first element's bits are one particular NaN; both branches return ``x``.
  Under vmap the cond becomes a select (still exact, no longer a boundary). Only on CPU
  (``lax.platform_dependent``, resolved at lowering): GPU and TPU builds keep the barrier (a
  cond cost the deviceless TPU build of the bilateral grid's XLA stages 2 -> 19 s).

  Tiny buffers (<= _MATERIALIZE_MIN elements: filter weights) are left to XLA, which folds them
  into immediate constants when they depend on no runtime value (unsharp: 5.6 vs 7.2 ms)."""
  if not _MATERIALIZE or x.size <= _MATERIALIZE_MIN:
    return _barrier(x)

  def fence(a: jax.Array) -> jax.Array:
    first = a.reshape(-1)[0].astype(jnp.float32)
    pred = lax.bitcast_convert_type(first, jnp.int32) == _NAN_PAYLOAD
    return lax.cond(pred, _touch, lambda v: v, a)

  return lax.platform_dependent(x, cpu=fence, default=_barrier)


def execute(p: L.Plan, images: list[jax.Array], params: dict[int, jax.Array]) -> list[jax.Array]:
  """Run a plan; returns the outputs over ``[0, shape)``."""
  _INTERNER.append(_Interner())
  try:
    return _execute(p, images, params)
  finally:
    _INTERNER.pop()


def _pad(bufs, pads, key, arr, mins) -> None:
  pad = pads.get(key)
  if pad is None:
    return
  padded = _materialize(jnp.pad(arr, pad, mode="edge"))
  bufs[("pad", key)] = (
    padded,
    [m - lp for m, (lp, _) in zip(mins, pad, strict=True)],
    list(mins),
    [m + s - 1 for m, s in zip(mins, arr.shape, strict=True)],
  )


def _execute(p: L.Plan, images, params) -> list[jax.Array]:
  bufs: dict[Any, Any] = {}
  pads = _edge_pads(p, {id(i): a.shape for i, a in zip(p.images, images, strict=True)})
  for img, arr in zip(p.images, images, strict=True):
    bufs[id(img)] = (arr, [0] * arr.ndim)
    _pad(bufs, pads, id(img), arr, [0] * arr.ndim)
  out_ids = {id(o) for o in p.outputs}
  for fp in p.order:
    if fp.level != "root":
      continue
    f = fp.func
    mins = [m for m, _ in fp.region]
    arr = eval_root(p, fp, bufs, params)
    if id(f) not in out_ids:
      arr = _materialize(arr)
    bufs[id(f)] = (arr, mins)
    _pad(bufs, pads, id(f), arr, mins)
  return collect_outputs(p, bufs)


def eval_root(p: L.Plan, fp: L.FuncPlan, bufs, params) -> jax.Array:
  """Evaluates one materialised Func over its region (extern, fused group, or pure + updates).

  Shared with other backends (the Pallas backend runs here whatever it has no kernel for).
  ``bufs`` maps ``id(func_or_image)`` to ``(array, mins)`` of what is already computed.
  """
  f = fp.func
  mins = [m for m, _ in fp.region]
  exts = tuple(e for _, e in fp.region)
  if f.extern is not None:
    return _eval_extern(fp, mins, exts, bufs)
  if fp.group is not None:  # the pure definition tiled; updates read no per-tile producer
    arr = _run_group(p, fp, bufs, params)
  else:
    arr = _eval_pure(fp, mins, exts, bufs, params)
  return _eval_updates(fp, arr, mins, bufs, params)


def collect_outputs(p: L.Plan, bufs) -> list[jax.Array]:
  """The outputs over ``[0, output_shape)``, sliced out of their computed regions."""
  outs = []
  for o in p.outputs:
    arr, mins = bufs[id(o)]
    shp = p.out_shapes[id(o)]
    sl = tuple(slice(-m, -m + s) for m, s in zip(mins, shp, strict=True))
    outs.append(arr[sl] if any(m != 0 for m in mins) or arr.shape != shp else arr)
  return outs


def _run_group(p: L.Plan, fp: L.FuncPlan, bufs, params):
  g = fp.group
  f = fp.func
  a_n, b_n = g.origin.shape[1], g.origin.shape[2]
  cmins = [m for m, _ in fp.region]
  exts = tuple(e for _, e in fp.region)
  origin = g.origin
  tables = [(ch.win_lo, ch.win_lo0, ch.store_lo) for ch in g.children]

  def idx(table: np.ndarray, *ij):
    if all(_is_static(i) for i in ij):  # static slices when the loop index is known
      return [int(v) for v in table[(slice(None),) + ij]]
    t = jnp.asarray(table, jnp.int32)[(slice(None),) + ij]
    # Dims whose start is the same in every tile stay static (a scan's whole dim needs it).
    return [
      int(table[d].flat[0]) if np.all(table[d] == table[d].flat[0]) else t[d]
      for d in range(t.shape[0])
    ]

  def step(a, b, first, stores, out):
    local = dict(bufs)
    for ch, (wl, wl0, sl) in zip(g.children, tables, strict=True):
      kp = p.by_func[id(ch.func)]
      if ch.mode == "tile":
        lo = idx(wl, a, b)
        # Materialised per tile: unfenced, XLA fuses the producer into its consumer and
        # recomputes it at every use, with dynamic-slice indexing per element (harris strips
        # 17.5 -> 7.9 ms, unsharp tiled 11.0 -> 6.2 ms at 2048^2 once it really is fenced).
        val = _eval_pure(kp, lo, ch.win_ext, local, params)
        # Tile-local updates write inside the window (scatters drop what falls outside);
        # other updates cover their whole dims (lower.whole_dims), so their starts are static.
        val = _eval_updates(kp, val, lo, local, params)
        local[id(ch.func)] = (_materialize(val), lo)
        continue
      slo = idx(sl, a)
      ext = ch.win_ext0 if first else ch.win_ext
      if math.prod(ext) > 0:
        lo = idx(wl0, a) if first else idx(wl, a, b)
        val = _eval_pure(kp, lo, ext, local, params)
        off = [x - s for x, s in zip(lo, slo, strict=True)]
        stores[id(ch.func)] = lax.dynamic_update_slice(stores[id(ch.func)], val, off)
      local[id(ch.func)] = (stores[id(ch.func)], slo)
    lo = idx(origin, a, b)
    tile = _eval_pure(fp, lo, g.ext, local, params)
    off = [x - m for x, m in zip(lo, cmins, strict=True)]
    return stores, lax.dynamic_update_slice(out, tile, off)

  def outer(a, out):
    stores = {
      id(ch.func): jnp.zeros(ch.store_ext, ch.func.dtype) for ch in g.children if ch.mode != "tile"
    }
    stores, out = step(a, 0, True, stores, out)
    if b_n > 1:

      def inner(b, carry):
        return step(a, b, False, *carry)

      stores, out = lax.fori_loop(1, b_n, inner, (stores, out))
    return out

  out = jnp.zeros(exts, f.dtype)
  if a_n == 1:
    return outer(0, out)
  return lax.fori_loop(0, a_n, outer, out)
