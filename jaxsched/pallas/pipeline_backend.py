"""Pallas backend for :mod:`jaxsched.pipelines`: ``Pipeline.compile(backend="pallas", ...)``.

Importing :mod:`jaxsched.pallas` registers it. Options: ``target="gpu" | "tpu"`` (or a target
name such as ``"h100"`` / ``"tpu-v5e"``; None: the target ``targets.compile_for`` is building
for, else the local device), ``interpret=False | True | pltpu.InterpretParams()`` and, on GPU,
``num_warps`` (default 4).

How the schedule maps (details and measurements in docs/pallas_backend.md):

* Every root-level Func whose definition is a *stencil* (see below) becomes one ``pallas_call``,
  producers first (breadth-first over ``compute_root``). Its ``tile()`` (or ``split()``) factors
  are the block shape and its outer tile loops the grid, in loop order; ``parallel`` outer loops
  are ``"parallel"`` grid dims on TPU, every other loop ``"arbitrary"`` (sequential). Unsplit
  dims: the last two are whole in the block, leading dims step with block 1 (one grid axis
  each); a Func with no split at all gets a default block. ``vectorize``/``unroll`` (and their
  splits), ``reorder`` of inner vars and ``store_at`` are hints: the compilers vectorise the
  block themselves.
* ``compute_at(out, v)`` producers are computed inside ``out``'s kernel over the block plus its
  halo (overlapped tiling), whatever the tile var ``v`` is (the block is the finest tile Pallas
  has). GPU (Triton): by recomputation from shifted power-of-two loads of the inputs (each
  (buffer, shift) is loaded once, loads hit L1/L2). TPU (Mosaic): each input window
  (block + halo, rounded to (8, 128)) is DMA'd into VMEM scratch once per grid step; producers
  are evaluated once over that window and every shifted tap is a ``pltpu.roll`` of a VMEM value,
  so no unaligned slice is ever taken. A sliding window (``store_at`` an outer loop) is computed
  as overlapped tiling at the block level: same results, more recompute; :func:`describe` says so
  for each such producer.
* Inputs are edge-extended once (XLA ``pad`` before the kernel) so that reads clamped to a
  buffer's edges (``boundary.repeat_edge``) become plain shifted loads, and blocks may run past
  the image: image sizes that are not a multiple of the block are padded, and the padding is
  sliced off the result.
* Inline reductions over small static RDoms (``<= 64`` points, e.g. a Gaussian's taps) are
  unrolled into the kernel. Scalar ``Param``\\ s and 1-D tables read at constant indices (a
  Gaussian's weights) are kernel operands (SMEM on TPU).

**What runs as XLA ops between the kernels** (never silently: tracing issues an
:class:`XlaFallbackWarning` naming them, :func:`describe` lists every Func with the reason, and
docs/pallas_backend.md says why): Funcs with update definitions
(histograms, scans: RDom scatter-add and prefix sums), extern Funcs, 1-D Funcs (lookup tables),
and Funcs whose reads are not stencils: data-dependent or strided indices (gathers, pyramids'
``2 * x``, ``x // 2``), transposed dims, constant indices into images, clamps that are not the
buffer's edges, large or arg-reductions. Those Funcs are evaluated with the XLA backend's own
evaluator, and their results feed the kernels as ordinary inputs.

Composition: the compiled function works under ``jax.jit`` and ``jax.vmap`` (Pallas batches the
grid); ``jax.grad`` uses a custom VJP whose backward pass is the XLA backend's VJP of the same plan
(the forward pass stays on Pallas; no backward kernels).

Tile rules are checked when the pipeline is traced, before any kernel is built: Triton block
dims must be powers of two; TPU blocks must have the last dim a multiple of 128 and the
second-to-last a multiple of 8 (16 for 16-bit, 32 for 8-bit dtypes), or cover the whole dim.
Violations raise ``ValueError`` naming the rule, the Func and the tile.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from jaxsched.pallas import targets as _targets
from jaxsched.pipelines import apps as _apps
from jaxsched.pipelines import backends as _backends
from jaxsched.pipelines import bounds as B
from jaxsched.pipelines import ir
from jaxsched.pipelines import lower as L
from jaxsched.pipelines import xla as _xla

__all__ = [
  "PALLAS_SCHEDULES",
  "XlaFallbackWarning",
  "FuncReport",
  "PallasReport",
  "describe",
  "execute",
]

UNROLL_LIMIT = 64  # inline-reduction points unrolled into a kernel
_KINDS = ("gpu", "tpu")


# ----------------------------------------------------------------------------- target


def _resolve_kind(target: Any, interpret: Any) -> tuple[str, _targets.Target | None]:
  """(``"gpu"`` | ``"tpu"``, the Target or None) for the backend's options."""
  if isinstance(interpret, pltpu.InterpretParams):
    if target not in (None, "tpu") and _targets.get_target(target).kind != "tpu":
      raise ValueError(f"interpret=pltpu.InterpretParams() emulates a TPU, but {target=}")
    return "tpu", _targets.active_target()
  if target in _KINDS:
    act = _targets.active_target()
    if act is not None and act.kind != target and not interpret:
      raise ValueError(
        f"pallas backend: {target=} but targets.compile_for is compiling for {act.name!r} "
        f"(a {act.kind}); pass target={act.kind!r}"
      )
    return target, act
  if target is not None and not isinstance(target, str | _targets.Target):
    raise ValueError(f"pallas backend: {target=} must be one of {list(_KINDS)} or a target name")
  try:
    tgt = _targets.resolve_target(target)
  except ValueError:
    raise ValueError(
      f"pallas backend: unknown {target=}; valid: {list(_KINDS)} or {sorted(_targets.TARGETS)}"
    ) from None
  if tgt.kind == "cpu":
    if not interpret:
      raise ValueError(
        "the pallas backend runs on CPU only in interpret mode: pass interpret=True (and "
        f"target='gpu' or 'tpu' to choose the lowering to emulate); got {interpret=}"
      )
    return "gpu", None
  if tgt.kind not in _KINDS:
    raise ValueError(f"pallas backend: target {tgt.name!r} of kind {tgt.kind!r} is not gpu/tpu")
  return tgt.kind, tgt


def _sublane(dtypes: Sequence[Any]) -> int:
  """TPU second-minor tile: 8 rows of 32-bit values, 16 of 16-bit, 32 of 8-bit."""
  return max([8 * max(1, 4 // np.dtype(d).itemsize) for d in dtypes], default=8)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _pow2(x: int) -> int:
  return 1 << max(0, (int(x) - 1).bit_length())


# ----------------------------------------------------------------------------- analysis


class XlaFallbackWarning(UserWarning):
  """Issued when a traced pipeline runs some Funcs as XLA ops instead of Pallas kernels."""


class _Unsupported(Exception):
  """A Func the kernel lowering cannot express; it runs on XLA (the message says why)."""


def _short(e: Any, n: int = 72) -> str:
  s = repr(e)
  return s if len(s) <= n else s[: n - 3] + "..."


def _clamp_any(a: ir.Expr) -> tuple[ir.Expr, int, int] | None:
  return _xla._clamp_any(a)


def _unroll(e: ir.Expr) -> ir.Expr:
  """Inline reductions with small static RDoms as explicit sums/products/min/max."""

  def fn(n: ir.Expr):
    if not isinstance(n, ir.Reduce):
      return None
    if n.op not in ("sum", "product", "max", "min"):
      raise _Unsupported(f"inline {n.op}() reduction")
    mins = [B.static_int(lo) for lo, _ in n.rdom.ranges]
    exts = [B.static_int(ex) for _, ex in n.rdom.ranges]
    if math.prod(exts) > UNROLL_LIMIT:
      raise _Unsupported(
        f"inline {n.op}() over {math.prod(exts)} points (> {UNROLL_LIMIT}, not unrolled)"
      )
    body = _unroll(n.body)
    op = {"sum": "add", "product": "mul", "max": "max", "min": "min"}[n.op]
    acc = None
    for point in itertools.product(*[range(m, m + k) for m, k in zip(mins, exts, strict=True)]):
      vals = dict(zip([B.key(r) for r in n.rdom.vars], point, strict=True))
      term = B.substitute(
        body,
        lambda m, vals=vals: (
          ir.Const(vals[B.key(m)], np.int32)
          if isinstance(m, ir.RVar) and B.key(m) in vals
          else None
        ),
      )
      term = ir.Cast(n.dtype, term)
      acc = term if acc is None else ir.Cast(n.dtype, ir.BinOp(op, acc, term))
    return acc

  return B.fold(B.substitute(e, fn))


@dataclasses.dataclass
class _Read:
  kind: str  # "buf" (shifted window of a root buffer) | "child" | "scalar"
  target: Any
  shift: tuple[int, ...] = ()  # per consumer dim ("buf", "child")
  index: int = 0  # "scalar": element of a 1-D table


def _classify_call(
  c: ir.Call, names: list[str], children: dict[int, Any], bounds: dict[int, list[tuple[int, int]]]
) -> _Read:
  """How a kernel reads ``c``; raises _Unsupported for anything but a stencil."""
  t = c.target
  tn = t.name
  lins = []
  for a in c.args:
    cl = _clamp_any(a)
    inner, lo, hi = (a, None, None) if cl is None else cl
    lin = B.linear(inner)
    if lin is None:
      raise _Unsupported(
        f"read {_short(c)}: index {_short(a)} is not affine (data-dependent: a gather)"
      )
    lins.append((lin, lo, hi))
  if all(not lin[0] for lin, _, _ in lins):
    if len(c.args) == 1 and id(t) in bounds and id(t) not in children:
      ((lin, lo, hi),) = lins
      v = lin[1] if lo is None else min(max(lin[1], lo), hi)
      return _Read("scalar", t, index=v - bounds[id(t)][0][0])
    raise _Unsupported(f"read {_short(c)} at a constant index of a {len(c.args)}-D buffer")
  if len(c.args) != len(names):
    raise _Unsupported(f"read {_short(c)}: {tn} has {len(c.args)} dims, the consumer {len(names)}")
  shift = []
  for j, ((coef, off), lo, hi) in enumerate(lins):
    if coef != {("v", names[j]): 1}:
      raise _Unsupported(
        f"read {_short(c)}: index {j} must be {names[j]} + const (strided, transposed or mixed "
        "indices are gathers)"
      )
    if lo is not None:
      if id(t) in children:
        raise _Unsupported(f"read {_short(c)}: clamped read of a compute_at producer")
      blo, bhi = bounds[id(t)][j]
      if (lo, hi) != (blo, bhi):
        raise _Unsupported(
          f"read {_short(c)}: clamp [{lo}, {hi}] in dim {j} is not the edge of {tn}'s buffer "
          f"[{blo}, {bhi}]"
        )
    shift.append(int(off))
  return _Read("child" if id(t) in children else "buf", t, tuple(shift))


@dataclasses.dataclass
class _Kernel:
  """The lowering of one root Func to a pallas_call."""

  fp: L.FuncPlan
  value: ir.Expr
  children: list[tuple[L.FuncPlan, ir.Expr]]  # compute_at producers, producers first
  reads: dict[int, dict[int, _Read]]  # id(expr value) -> id(call node) -> read
  tile: dict[str, int]  # loop var -> factor, as scheduled (for messages)
  block: tuple[int, ...]  # effective block shape (after padding rules)
  grid: list[tuple[int, int, str]]  # (array dim, steps, "parallel" | "arbitrary"), outermost 1st
  default_tile: bool


def _block_rule(
  f: ir.Func, kind: str, tile: dict[str, int], req: list[int | None], exts: list[int], dtypes
) -> tuple[int, ...]:
  """Effective block per dim for requested blocks ``req`` (None: whole dim); checks the rules."""
  nd = len(exts)
  sub = _sublane(dtypes)
  out = []
  for d, (b, e) in enumerate(zip(req, exts, strict=True)):
    if kind == "gpu":
      if b is not None and b != _pow2(b):
        raise ValueError(
          f"Func {f.name}: tile {tile} breaks the Triton (GPU) rule 'block dims must be powers "
          f"of two': dim {d} ({f.args[d].name}) has block {b}; use e.g. {_pow2(b)}"
        )
      out.append(_pow2(e) if b is None else min(b, _pow2(e)))
      continue
    align = 128 if d == nd - 1 else (sub if d == nd - 2 else 1)
    if b is None or b >= e:
      out.append(_round_up(e, align))
    elif b % align:
      which = "last" if d == nd - 1 else "second-to-last"
      raise ValueError(
        f"Func {f.name}: tile {tile} breaks the TPU (8, 128) rule: the {which} block dim "
        f"({f.args[d].name}) must be a multiple of {align} or cover the whole extent {e}; got "
        f"block {b}"
      )
    else:
      out.append(b)
  return tuple(out)


def _default_block(kind: str, exts: list[int]) -> list[int | None]:
  nd = len(exts)
  out: list[int | None] = [1] * nd
  if kind == "gpu":
    out[-1] = min(_pow2(exts[-1]), 256)
    out[-2] = min(_pow2(exts[-2]), 16)
  else:
    out[-1] = None if exts[-1] <= 512 else 512
    out[-2] = None if exts[-2] <= 64 else 64
  return out


def _schedule_blocks(fp: L.FuncPlan, kind: str, dtypes) -> tuple:
  f = fp.func
  st = f.definitions[0].schedule
  names = [v.name for v in f.args]
  exts = [e for _, e in fp.region]
  if st.fuses:
    raise NotImplementedError(
      f"Func {f.name}: fuse {st.fuses} is not supported by the pallas backend (the grid has "
      "one axis per tiled dim); drop the fuse"
    )
  # Unsplit dims: the last two are whole in the block; leading dims step one at a time (a whole
  # 4-D grid in one block would not fit registers or VMEM).
  req: list[int | None] = [1] * max(0, len(names) - 2) + [None] * min(2, len(names))
  outer: dict[str, int] = {}
  tile: dict[str, int] = {}
  for old, o, i, fac in st.splits:
    if st.kind(i) in ("vectorized", "unrolled"):
      continue  # a hint: the compilers vectorise the block
    if old not in names or names.index(old) in outer.values():
      raise NotImplementedError(
        f"Func {f.name}: nested split of {old!r} (-> {o!r}, {i!r}) is not supported by the "
        "pallas backend; split each dim once"
      )
    req[names.index(old)] = fac
    outer[o] = names.index(old)
    tile[i] = fac
  default = not outer
  if default:
    req = _default_block(kind, exts)
    tile = {n: "whole" if b is None else b for n, b in zip(names, req, strict=True)}
  block = _block_rule(f, kind, tile, req, exts, dtypes)
  steps = [-(-e // b) for e, b in zip(exts, block, strict=True)]
  if default:
    grid = [(d, steps[d], "arbitrary") for d in range(len(names)) if steps[d] > 1]
  else:
    # Grid axes in loop order: the outer loop of each split dim, and unsplit dims that still
    # take several blocks (leading dims, or a block shrunk to the padded extent).
    grid = []
    for n in st.loops:
      if n in outer:
        d = outer[n]
      elif n in names and names.index(n) not in outer.values():
        d = names.index(n)
      else:
        continue
      if steps[d] > 1 and all(d != g for g, _, _ in grid):
        grid.append((d, steps[d], "parallel" if st.kind(n) == "parallel" else "arbitrary"))
  return tile, block, grid, default


def _buffer_bounds(p: L.Plan, image_shapes) -> dict[int, list[tuple[int, int]]]:
  out = {key: [(0, s - 1) for s in shp] for key, shp in image_shapes.items()}
  for fp in p.order:
    if fp.level == "root":
      out[id(fp.func)] = [(m, m + e - 1) for m, e in fp.region]
  return out


def _plan_kernel(p: L.Plan, fp: L.FuncPlan, kind: str, bounds) -> _Kernel:
  """The kernel lowering of root Func ``fp``; raises _Unsupported with the reason otherwise."""
  f = fp.func
  if f.extern is not None:
    raise _Unsupported("extern Func (its values come from a JAX function)")
  if len(fp.stages) > 1:
    raise _Unsupported(
      f"{len(fp.stages) - 1} update definition(s) (RDom scatter/scan: run as XLA ops)"
    )
  if f.ndim < 2:
    raise _Unsupported("1-D Func (a table): computed with XLA ops, read by kernels as scalars")
  kids = [] if fp.group is None else [p.by_func[id(ch.func)] for ch in fp.group.children]
  children = {id(k.func): k for k in kids}
  names = [v.name for v in f.args]
  values = []
  reads: dict[int, dict[int, _Read]] = {}
  dtypes = [f.dtype]
  for q in [*kids, fp]:
    if q.func.ndim != f.ndim:
      raise _Unsupported(f"compute_at producer {q.func.name} has a different rank")
    try:
      v = _unroll(q.stages[0].value)
    except _Unsupported as e:
      raise _Unsupported(f"{q.func.name}: {e}") from None
    rd: dict[int, _Read] = {}
    for n in ir.walk(v):
      if isinstance(n, ir.Reduce):
        raise _Unsupported(f"{q.func.name}: nested inline reduction")
      if isinstance(n, ir.Call):
        rd[id(n)] = _classify_call(n, names, children, bounds)
        if rd[id(n)].kind == "buf":
          dtypes.append(n.target.dtype)
    reads[id(v)] = rd
    values.append(v)
  tile, block, grid, default = _schedule_blocks(fp, kind, dtypes)
  return _Kernel(
    fp, values[-1], list(zip(kids, values[:-1], strict=True)), reads, tile, block, grid, default
  )


def _walk_no_args(e: ir.Expr):
  """Nodes of ``e`` without descending into call indices (they are fully analysed)."""
  stack = [e]
  while stack:
    n = stack.pop()
    yield n
    if not isinstance(n, ir.Call):
      stack.extend(ir.children(n))


@dataclasses.dataclass
class _Layout:
  """Where each read lands: shift ranges per buffer and child origins."""

  buf_lo: dict[int, np.ndarray]
  buf_hi: dict[int, np.ndarray]
  child_at: dict[int, list[tuple[int, ...]]]  # GPU: shifts each child is evaluated at
  child_origin: dict[int, np.ndarray]  # TPU: the one origin each child is evaluated at
  scalars: dict[int, Any]  # id(target) -> target (tables and params)
  domain: tuple[int, ...]  # evaluation shape (GPU: the block; TPU: the aligned window)


def _layout(k: _Kernel, kind: str) -> _Layout:
  nd = k.fp.func.ndim
  buf_lo: dict[int, np.ndarray] = {}
  buf_hi: dict[int, np.ndarray] = {}
  child_req: dict[int, list[tuple[int, ...]]] = {}
  scalars: dict[int, Any] = {}
  kid_val = {id(kp.func): v for kp, v in k.children}
  done: set = set()

  def visit(v: ir.Expr, s: tuple[int, ...]):
    if (id(v), s) in done:
      return
    done.add((id(v), s))
    rd = k.reads[id(v)]
    for n in _walk_no_args(v):
      if isinstance(n, ir.Param):
        scalars[id(n)] = n
      if not isinstance(n, ir.Call):
        continue
      r = rd[id(n)]
      if r.kind == "scalar":
        scalars[id(r.target)] = r.target
        continue
      t = tuple(a + b for a, b in zip(s, r.shift, strict=True))
      if r.kind == "buf":
        key = id(r.target)
        buf_lo[key] = np.minimum(buf_lo.get(key, t), t)
        buf_hi[key] = np.maximum(buf_hi.get(key, t), t)
      else:
        child_req.setdefault(id(r.target), [])
        if t not in child_req[id(r.target)]:
          child_req[id(r.target)].append(t)
        if kind == "gpu":
          visit(kid_val[id(r.target)], t)

  visit(k.value, (0,) * nd)
  origin: dict[int, np.ndarray] = {}
  if kind == "tpu":
    for kp, v in reversed(k.children):  # consumers first: all requests known before visiting
      req = child_req.get(id(kp.func))
      if not req:
        continue
      o = tuple(int(x) for x in np.min(np.array(req), axis=0))
      origin[id(kp.func)] = np.array(o)
      visit(v, o)
  if kind == "gpu":
    domain = k.block
  else:
    spans = [np.asarray(buf_hi[q]) - np.asarray(buf_lo[q]) for q in buf_lo]
    for kp, _ in k.children:
      req = child_req.get(id(kp.func))
      if req:
        spans.append(np.max(np.array(req), axis=0) - np.min(np.array(req), axis=0))
    span = np.max(np.array(spans), axis=0) if spans else np.zeros(nd, int)
    sub = _sublane([k.fp.func.dtype] + [t.dtype for t in _targets_of(k) if t is not None])
    dom = []
    for d in range(nd):
      align = 128 if d == nd - 1 else (sub if d == nd - 2 else 1)
      dom.append(_round_up(k.block[d] + int(span[d]), align))
    domain = tuple(dom)
  return _Layout(buf_lo, buf_hi, child_req, origin, scalars, domain)


def _targets_of(k: _Kernel) -> list[Any]:
  return [r.target for rd in k.reads.values() for r in rd.values() if r.kind == "buf"]


# ----------------------------------------------------------------------------- kernel


def _roll(x: jax.Array, k: int, axis: int) -> jax.Array:
  """``out[a] = x[a + k]`` (wrapping) along ``axis``: a lane/sublane rotate on TPU."""
  n = x.shape[axis]
  k %= n
  if k == 0:
    return x
  if axis >= x.ndim - 2:
    return pltpu.roll(x, n - k, axis)
  return jnp.concatenate(
    [lax.slice_in_dim(x, k, n, axis=axis), lax.slice_in_dim(x, 0, k, axis=axis)], axis=axis
  )


class _Eval:
  """Evaluates kernel expressions over the domain shifted by ``s`` from the block origin."""

  def __init__(self, k: _Kernel, lay: _Layout, kind: str, block0, refs: dict, windows: dict):
    self.k, self.lay, self.kind = k, lay, kind
    self.block0 = block0  # traced block origin per dim (region coordinates)
    self.refs, self.windows = refs, windows
    self.names = [v.name for v in k.fp.func.args]
    self.kid_val = {id(kp.func): v for kp, v in k.children}
    self.intern = _xla._Interner()
    self.memo: dict[tuple, Any] = {}
    self.child_memo: dict[tuple, Any] = {}

  def value(self, v: ir.Expr, s: tuple[int, ...]) -> Any:
    self.cur = self.k.reads[id(v)]
    return self.ev(v, s)

  def ev(self, e: ir.Expr, s: tuple[int, ...]) -> Any:
    key = (self.intern(e), s)
    if key in self.memo:
      return self.memo[key]
    out = self._ev(e, s)
    self.memo[key] = out
    return out

  def _ev(self, e: ir.Expr, s) -> Any:
    if isinstance(e, ir.Const):
      return e.value if e.weak else np.asarray(e.value, e.dtype)
    if isinstance(e, ir.Var):
      d = self.names.index(e.name)
      io = lax.broadcasted_iota(jnp.int32, self.lay.domain, d)
      return io + (self.block0[d] + s[d])
    if isinstance(e, ir.Param):
      return self._scalar(e, 0, e.dtype)
    if isinstance(e, ir.BinOp):
      return ir.BINARY_OPS[e.op](self.ev(e.a, s), self.ev(e.b, s))
    if isinstance(e, ir.UnOp):
      return ir.UNARY_OPS[e.op](self.ev(e.a, s))
    if isinstance(e, ir.Select):
      return jnp.where(self.ev(e.cond, s), self.ev(e.t, s), self.ev(e.f, s))
    if isinstance(e, ir.Cast):
      return jnp.asarray(self.ev(e.a, s)).astype(e.to)
    if isinstance(e, ir.Call):
      return self._call(e, s)
    raise TypeError(f"pallas backend cannot evaluate {e!r}")

  def _scalar(self, t: Any, index: int, dtype) -> Any:
    ref = self.refs[id(t)]
    if self.kind == "tpu":
      return ref[index].astype(dtype)  # SMEM scalar (32-bit storage)
    v = ref[pl.ds(index, 1)].astype(dtype)
    return v.reshape((1,) * len(self.names))

  def _call(self, c: ir.Call, s) -> Any:
    r = self.cur[id(c)]
    if r.kind == "scalar":
      return self._scalar(r.target, r.index, r.target.dtype)
    t = tuple(a + b for a, b in zip(s, r.shift, strict=True))
    if r.kind == "child":
      return self._child(r.target, t)
    return self._buf(r.target, t)

  def _buf(self, q: Any, t: tuple[int, ...]) -> Any:
    lo = self.lay.buf_lo[id(q)]
    if self.kind == "gpu":
      # The prepared buffer starts at region min + lo: the load starts at block start + t - lo.
      idx = tuple(
        pl.ds(self.block0[d] - self.k.fp.region[d][0] + int(t[d] - lo[d]), b)
        for d, b in enumerate(self.k.block)
      )
      return self.refs[id(q)][idx]
    x = self.windows[id(q)]
    for d in range(len(t)):
      x = _roll(x, int(t[d] - lo[d]), d)
    return x.astype(q.dtype)

  def _child(self, g: Any, t: tuple[int, ...]) -> Any:
    v = self.kid_val[id(g)]
    if self.kind == "gpu":  # recompute at this shift
      key = (id(g), t)
      if key not in self.child_memo:
        saved = self.cur
        out = self.value(v, t)
        self.cur = saved
        self.child_memo[key] = jnp.broadcast_to(jnp.asarray(out).astype(g.dtype), self.lay.domain)
      return self.child_memo[key]
    o = tuple(int(x) for x in self.lay.child_origin[id(g)])
    if id(g) not in self.child_memo:
      saved = self.cur
      out = self.value(v, o)
      self.cur = saved
      self.child_memo[id(g)] = jnp.broadcast_to(jnp.asarray(out).astype(g.dtype), self.lay.domain)
    x = self.child_memo[id(g)]
    for d in range(len(t)):
      x = _roll(x, t[d] - o[d], d)
    return x


def _kernel_body(*refs, k: _Kernel, lay: _Layout, kind: str, order: list, grid_dims: list):
  """The pallas kernel: refs are scalars, buffers, the output, then (TPU) VMEM windows."""
  n_in = len(order)
  ins, out_ref, scratch = refs[:n_in], refs[n_in], refs[n_in + 1 :]
  by_id = {key: r for (key, _), r in zip(order, ins, strict=True)}
  fr = k.fp.region
  block0 = [fr[d][0] for d in range(len(fr))]
  for axis, (d, _, _) in enumerate(grid_dims):
    block0[d] = block0[d] + pl.program_id(axis) * k.block[d]
  windows = {}
  if kind == "tpu":
    bufs = [(key, what) for key, what in order if what == "buf"]
    for (key, _), win in zip(bufs, scratch, strict=True):
      idx = tuple(pl.ds(block0[d] - fr[d][0], lay.domain[d]) for d in range(len(fr)))
      pltpu.sync_copy(by_id[key].at[idx], win)
      w = win[...]
      if w.dtype.itemsize < 4:  # Mosaic rotates only unpacked (32-bit) vregs
        w = w.astype(jnp.float32 if w.dtype.kind == "f" else jnp.int32)
      windows[key] = w
  ev = _Eval(k, lay, kind, block0, by_id, windows)
  val = jnp.asarray(ev.value(k.value, (0,) * len(fr))).astype(k.fp.func.dtype)
  val = jnp.broadcast_to(val, lay.domain)
  if kind == "tpu":
    val = val[tuple(slice(0, b) for b in k.block)]
  out_ref[...] = val


def _prepare(arr: jax.Array, amin: Sequence[int], lo: Sequence[int], size: Sequence[int]):
  """``arr`` (covering ``[amin, amin + shape)``) edge-extended/cropped to ``[lo, lo + size)``."""
  crop, pad = [], []
  for a0, n, l0, s in zip(amin, arr.shape, lo, size, strict=True):
    start, stop = max(l0, a0), min(l0 + s, a0 + n)
    if stop <= start:  # window entirely outside: replicate the nearest edge
      start, stop = (a0, a0 + 1) if l0 + s <= a0 else (a0 + n - 1, a0 + n)
    crop.append((start - a0, stop - a0))
    pad.append((max(0, start - l0), max(0, l0 + s - stop)))
  arr = arr[tuple(slice(a, b) for a, b in crop)]
  if any(p for pr in pad for p in pr):
    arr = jnp.pad(arr, pad, mode="edge")
  return arr


def _run_kernel(k: _Kernel, bufs: dict, params: dict, kind: str, interpret, num_warps):
  f = k.fp.func
  lay = _layout(k, kind)
  nd = f.ndim
  region = k.fp.region
  steps = [-(-e // b) for (_, e), b in zip(region, k.block, strict=True)]
  order: list[tuple[int, str]] = []
  args, in_specs, scratch = [], [], []
  smem = pltpu.SMEM if kind == "tpu" else pl.ANY
  for key, t in lay.scalars.items():
    if isinstance(t, ir.Param):
      a = jnp.asarray(params[key]).reshape(1)
    else:
      a = bufs[key][0].reshape(-1)
    if kind == "tpu":  # SMEM holds 32-bit words
      a = a.astype(jnp.float32 if a.dtype.kind == "f" else jnp.int32)
    order.append((key, "scalar"))
    args.append(a)
    in_specs.append(pl.BlockSpec(memory_space=smem))
  for key in lay.buf_lo:
    arr, amin = bufs[key]
    lo = [region[d][0] + int(lay.buf_lo[key][d]) for d in range(nd)]
    if kind == "gpu":
      size = [
        (steps[d] - 1) * k.block[d] + k.block[d] + int(lay.buf_hi[key][d] - lay.buf_lo[key][d])
        for d in range(nd)
      ]
    else:
      size = [(steps[d] - 1) * k.block[d] + lay.domain[d] for d in range(nd)]
    args.append(_prepare(arr, amin, lo, size))
    order.append((key, "buf"))
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    if kind == "tpu":
      scratch.append(pltpu.VMEM(lay.domain, arr.dtype))
  grid_dims = k.grid
  gpos = {d: a for a, (d, _, _) in enumerate(grid_dims)}

  def index_map(*g):
    return tuple(g[gpos[d]] if d in gpos else 0 for d in range(nd))

  out_shape = jax.ShapeDtypeStruct(
    tuple(s * b for s, b in zip(steps, k.block, strict=True)), f.dtype
  )
  params_c = None
  if not interpret:
    if kind == "tpu":
      params_c = pltpu.CompilerParams(dimension_semantics=tuple(s for _, _, s in grid_dims))
    else:
      params_c = pl_triton.CompilerParams(num_warps=num_warps, num_stages=1)
  body = functools.partial(_kernel_body, k=k, lay=lay, kind=kind, order=order, grid_dims=grid_dims)
  out = pl.pallas_call(
    body,
    out_shape=out_shape,
    grid=tuple(n for _, n, _ in grid_dims),
    in_specs=in_specs,
    out_specs=pl.BlockSpec(k.block, index_map),
    scratch_shapes=scratch,
    compiler_params=params_c,
    interpret=interpret,
    name=f"jaxsched_{f.name}",
  )(*args)
  return out[tuple(slice(0, e) for _, e in region)]


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass
class FuncReport:
  """How one root-level Func runs: ``"pallas"`` (a kernel) or ``"xla"`` (and why)."""

  func: str
  how: str
  detail: str

  def __str__(self) -> str:
    return f"{self.func}: {self.how} ({self.detail})"


@dataclasses.dataclass
class PallasReport:
  """The Pallas lowering of a pipeline, in execution order (see :func:`describe`)."""

  target: str
  funcs: list[FuncReport]

  @property
  def xla_funcs(self) -> list[str]:
    return [r.func for r in self.funcs if r.how == "xla"]

  def __str__(self) -> str:
    return "\n".join([f"pallas backend ({self.target}):"] + [f"  {r}" for r in self.funcs])


def _lowerings(p: L.Plan, image_shapes, kind: str) -> list[tuple[L.FuncPlan, Any]]:
  """Per root Func, its _Kernel or the reason (str) it runs on XLA."""
  bounds = _buffer_bounds(p, image_shapes)
  out = []
  for fp in p.order:
    if fp.level != "root":
      continue
    try:
      out.append((fp, _plan_kernel(p, fp, kind, bounds)))
    except _Unsupported as e:
      out.append((fp, str(e)))
  return out


def _report(lows, kind: str) -> PallasReport:
  rep = []
  for fp, k in lows:
    if isinstance(k, str):
      rep.append(FuncReport(fp.func.name, "xla", k))
      continue
    kids = [kp.func.name for kp, _ in k.children]
    grid = [(k.fp.func.args[d].name, n, s) for d, n, s in k.grid]
    tile = ("default " if k.default_tile else "") + f"tile {k.tile}"
    detail = f"{tile}, block {k.block}, grid {grid}"
    if kids:
      detail += f", computes {kids} per block + halo"
    # store_at an outer loop (Halide's sliding window): no carried scratch window yet, so the
    # kernel recomputes the overlap per block. Say so rather than pretend the reuse happens.
    slid = [c.func.name for c in (fp.group.children if fp.group else []) if c.mode != "tile"]
    if slid:
      detail += (
        f"; sliding window (store_at) of {slid} computed as overlapped tiling: no reuse "
        "across blocks (a carried-scratch sliding window is not implemented)"
      )
    rep.append(FuncReport(fp.func.name, "pallas", detail))
  return PallasReport(kind, rep)


def describe(
  pipeline: Any,
  output_shape: Any = None,
  *,
  input_shapes: Sequence[tuple[int, ...]] | None = None,
  target: str = "gpu",
) -> PallasReport:
  """Which Funcs of ``pipeline`` become Pallas kernels (grid, block) and which run on XLA, why.

  Args:
    pipeline: a :class:`jaxsched.pipelines.Pipeline`.
    output_shape: as for ``Pipeline.lower``.
    input_shapes: image shapes (default: ImageParam estimates, else ``output_shape``).
    target: ``"gpu"`` or ``"tpu"`` (or a target name), whose tile rules apply.
  """
  kind, _ = _resolve_kind(target, True)
  if input_shapes is None:
    input_shapes = []
    for img in pipeline.images:
      if img.estimate is not None:
        input_shapes.append(img.estimate)
      elif output_shape is not None and len(output_shape) == img.ndim:
        input_shapes.append(tuple(output_shape))
      else:
        raise ValueError(f"describe(): no shape for ImageParam {img.name}; pass input_shapes")
  p = pipeline.plan(output_shape, input_shapes)
  shapes = {id(i): tuple(s) for i, s in zip(p.images, input_shapes, strict=True)}
  return _report(_lowerings(p, shapes, kind), kind)


def execute(
  p: L.Plan,
  images: list[jax.Array],
  params: dict[int, jax.Array],
  *,
  target: Any = None,
  interpret: Any = False,
  num_warps: int = 4,
) -> list[jax.Array]:
  """Run a lowered plan with Pallas kernels (the ``"pallas"`` backend function)."""
  if num_warps not in (1, 2, 4, 8, 16):
    raise ValueError(f"pallas backend: {num_warps=} must be one of (1, 2, 4, 8, 16)")
  kind, _ = _resolve_kind(target, interpret)
  shapes = {id(i): tuple(a.shape) for i, a in zip(p.images, images, strict=True)}
  lows = _lowerings(p, shapes, kind)
  # Loud, once per trace: which stages are not kernels and why (1-D tables are by design).
  fallback = [
    f"{fp.func.name} ({k})" for fp, k in lows if isinstance(k, str) and not k.startswith("1-D")
  ]
  if fallback:
    warnings.warn(
      f"pallas backend: {len(fallback)} Func(s) run as XLA ops between the kernels: "
      + "; ".join(fallback),
      XlaFallbackWarning,
      stacklevel=2,
    )
  _xla._INTERNER.append(_xla._Interner())
  try:
    bufs: dict[Any, Any] = {}
    for img, arr in zip(p.images, images, strict=True):
      bufs[id(img)] = (arr, [0] * arr.ndim)
    for fp, k in lows:
      mins = [m for m, _ in fp.region]
      if not isinstance(k, str):
        arr = _run_kernel(k, bufs, params, kind, interpret, num_warps)
      else:  # no kernel for this Func: the XLA backend evaluates it
        arr = _xla.eval_root(p, fp, bufs, params)
      bufs[id(fp.func)] = (arr, mins)
    return _xla.collect_outputs(p, bufs)
  finally:
    _xla._INTERNER.pop()


def _pallas_backend(plan, images, params, **options):
  unknown = sorted(set(options) - {"target", "interpret", "num_warps"})
  if unknown:
    raise ValueError(
      f"the pallas backend takes options target, interpret, num_warps; got unknown {unknown}"
    )
  # jax.grad: pallas_call has no general autodiff, so the backward pass is the VJP of the same
  # plan on the XLA backend (the forward pass stays on Pallas).

  @jax.custom_vjp
  def run(imgs, prms):
    return execute(plan, imgs, prms, **options)

  def fwd(imgs, prms):
    return run(imgs, prms), (imgs, prms)

  def bwd(res, g):
    _, vjp = jax.vjp(lambda i, q: _xla.execute(plan, i, q), *res)
    return vjp(g)

  run.defvjp(fwd, bwd)
  return run(list(images), dict(params))


_backends.register_backend("pallas", _pallas_backend, overwrite=True)


# ----------------------------------------------------------------------------- app schedules


def _tiled(
  out: str,
  producers: Sequence[str],
  ty: int,
  tx: int,
  root: Sequence[str] = (),
  parallel: bool = True,
) -> Callable[[Any], None]:
  def sched(g: Any) -> None:
    v = g.vars
    for n in root:
      g.funcs[n].compute_root()
    o = g.funcs[out]
    o.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    if parallel:
      o.parallel(v["yo"])
    for n in producers:
      g.funcs[n].compute_at(o, v["xo"])

  sched.__doc__ = f"{out} in {ty}x{tx} blocks; {list(producers)} per block + halo in-kernel."
  return sched


def _roots(names: Sequence[str]) -> Callable[[Any], None]:
  def sched(g: Any) -> None:
    for n in names:
      g.funcs[n].compute_root()

  sched.__doc__ = f"{list(names)} as their own kernels (default blocks), the rest fused."
  return sched


# Default Pallas schedules per app, registered with ``apps.add_schedule(..., "pallas", ...)``:
# {app: ({name: schedule}, default name)}. Tiles obey both rule sets (powers of two that are
# (8, 128)-aligned), so one schedule serves GPU and TPU.
PALLAS_SCHEDULES: dict[str, tuple[dict[str, Callable[[Any], None]], str]] = {
  "blur": (
    {
      "tiled": _tiled("blur_y", ["blur_x"], 16, 128),
      "tiled_small": _tiled("blur_y", ["blur_x"], 8, 128),
      "root": _roots(["blur_x"]),
    },
    "tiled",
  ),
  "unsharp": (
    {
      "tiled": _tiled("unsharp", ["blur_x"], 16, 128, root=["kernel"]),
      "tiled_small": _tiled("unsharp", ["blur_x"], 8, 128, root=["kernel"]),
      "root": _roots(["kernel", "blur_x"]),
    },
    "tiled",
  ),
  "harris": (
    {
      "tiled": _tiled("harris", ["Ix", "Iy"], 16, 128),
      "tiled_small": _tiled("harris", ["Ix", "Iy"], 8, 128),
      "root": _roots(["Ix", "Iy"]),
    },
    "tiled",
  ),
}


def _tile_funcs(
  names: Sequence[str], root: Sequence[str], ty: int, tx: int
) -> Callable[[Any], None]:
  def sched(g: Any) -> None:
    v = g.vars
    for n in root:
      g.funcs[n].compute_root()
    for n in names:
      g.funcs[n].compute_root().tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)

  sched.__doc__ = f"{list(names)} as kernels in {ty}x{tx} blocks; {list(root)} root."
  return sched


def _grid_tiles(names: Sequence[str], tz: int, tgy: int | None = None) -> Callable[[Any], None]:
  def sched(g: Any) -> None:
    v = g.vars
    for n in names:
      f = g.funcs[n].compute_root().split(v["z"], "zo", "zi", tz)
      if tgy is not None:
        f.split(v["gy"], "gyo", "gyi", tgy)

  sched.__doc__ = f"Grid blurs {list(names)} as kernels, blocks of {tz} z-bins ({tgy} rows)."
  return sched


def _ll_tiled(g: Any, ty: int, tx: int) -> None:
  """Every pyramid level root (Halide's breadth-first schedule), full-res stages tiled."""
  _apps.get_app("local_laplacian").schedules["xla"]["root"](g)
  y, x = g.vars["y"], g.vars["x"]
  g.funcs["output"].tile(x, y, "xo", "yo", "xi", "yi", tx, ty)
  g.funcs["inGPyramid0"].tile(x, y, "xo", "yo", "xi", "yi", tx, ty)


# The apps below read through gathers (lookup tables, pyramids' 2x/x/2 resampling, trilinear
# slicing) or reduce with RDom updates: those Funcs run as XLA ops between the kernels (see
# ``describe``); their stencil stages are kernels.
_CAMERA_ROOT = ["curve", "g_gr", "r_r", "b_b", "g_gb"]
PALLAS_SCHEDULES.update(
  {
    "histogram_equalize": ({"default": _roots([])}, "default"),
    "camera_pipe": (
      {
        "root": _roots(["curve", "denoised", *_CAMERA_ROOT[1:]]),
        "tiled": _tile_funcs(["denoised"], _CAMERA_ROOT, 32, 128),
        "tiled_small": _tile_funcs(["denoised"], _CAMERA_ROOT, 16, 128),
      },
      "tiled",
    ),
    "bilateral_grid": (
      {
        "root": _roots(["blurz", "blurx", "blury"]),
        "tiled": _grid_tiles(["blurz", "blurx", "blury"], 8),
        "tiled_small": _grid_tiles(["blurz", "blurx", "blury"], 8, 4),
      },
      "root",
    ),
    "local_laplacian": (
      {
        "root": lambda g: _apps.get_app("local_laplacian").schedules["xla"]["root"](g),
        "tiled": lambda g: _ll_tiled(g, 16, 128),
        "tiled_small": lambda g: _ll_tiled(g, 8, 128),
      },
      "root",
    ),
  }
)


for _name, (_scheds, _default) in PALLAS_SCHEDULES.items():
  for _sname, _fn in _scheds.items():
    _apps.add_schedule(_name, "pallas", _sname, _fn, default=_sname == _default)
