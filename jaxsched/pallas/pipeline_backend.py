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
  each); a Func with no split at all gets a default block. Two loops over blocks fused
  (``tile(...).fuse(xo, yo, t)``) are one grid axis. ``vectorize``/``unroll`` (and their
  splits), ``reorder`` of inner vars and ``store_at`` are hints: the compilers vectorise the
  block themselves.
* ``compute_at(out, v)`` producers are computed inside ``out``'s kernel over the block plus its
  halo (overlapped tiling), whatever the tile var ``v`` is (the block is the finest tile Pallas
  has). GPU (Triton): by recomputation from shifted power-of-two loads of the inputs (each
  (buffer, shift) is loaded once, loads hit L1/L2). TPU (Mosaic): each input window
  (block + halo, rounded to (8, 128)) is DMA'd into VMEM scratch once per grid step; producers
  are evaluated once over that window and every shifted tap is a ``pltpu.roll`` of a VMEM value,
  so no unaligned slice is ever taken. A sliding window (``store_at`` an outer loop) on TPU, when
  the producer is computed at the innermost grid axis and stored outside it, is a carried
  ``pltpu.VMEM`` window on that (``"arbitrary"``) axis: computed whole at the first step of each
  store scope, then only the new rows of each block (see ``_plan_slide``). On GPU, a sliding
  window is a loop over the block's rows that carries the producer's last rows as loop values
  (see ``_plan_row_slide``; Triton programs run in parallel, so each block recomputes its
  halo). Otherwise it is overlapped tiling: same results, more recompute. :func:`describe` says
  which, and why, for each such producer.
* Inputs are edge-extended once (XLA ``pad`` before the kernel) so that reads clamped to a
  buffer's edges (``boundary.repeat_edge``) become plain shifted loads, and blocks may run past
  the image: image sizes that are not a multiple of the block are padded, and the padding is
  sliced off the result.
* Inline reductions over small static RDoms (``<= 64`` points, e.g. a Gaussian's taps) are
  unrolled into the kernel. Scalar ``Param``\\ s and 1-D tables read at constant indices (a
  Gaussian's weights) are kernel operands (SMEM on TPU). A 1-D table (``<= TABLE_LIMIT``
  entries) read at a data-dependent index (a LUT: ``cdf[inp[y, x]]``, ``remap[...]``) is looked
  up in-kernel by a loop of compare-selects over its entries (Mosaic has no vector gather).
  A lower-rank root buffer read at a subsequence of the consumer's vars (an image read by a
  ``[y, x, k]`` Func) is broadcast along the missing dims by XLA before the kernel.
* A pure 1-D Func (a lookup table: a gamma curve, Gaussian weights) is a ``[1, n]`` row kernel
  (``_as_row``: Mosaic's 1-D vector layouts need the device generation at lowering), reshaped
  back to ``[n]``; kernels read it as scalars or in-kernel LUTs.
* Resampling reads of a root buffer or image -- strided (a pyramid's ``f[2 * x + c]``),
  floor-divided (upsampling ``f[(x + c) // 2]``) or any static index of one var (``x // 2 - 1
  + 2 * (x % 2)``) -- read a copy XLA resamples before the kernel (one ``take`` of static
  indices per dim, see ``_Derived``): a 4-tap stride-2 filter reads two phase copies at shifts,
  so the kernel stays a stencil on both targets (Mosaic has no strided lane loads, Triton no
  gathers). The cost is one XLA pass per copy (an upsampled copy is the consumer's size).
* RDom updates of a small root 1-D Func (``<= TABLE_LIMIT`` bins) are kernels: a commutative
  scatter ``f[idx(r)] op= v(r)`` (op add/max/min) walks tiles of its RDom (the update's
  ``split``\\ s of the RVars are the block) and reduces a one-hot compare of each RDom row
  against all bins; on TPU the output block is all of ``f``, resident over an "arbitrary" grid
  and initialised at the first step, on GPU each block writes a partial that XLA combines. A
  prefix scan ``f[r] = f[r - 1] + e(r)`` is one triangular compare-and-sum kernel. The pure
  definition (initial values) is evaluated by XLA. Reads in an update must be windows
  (``inp[r.y + c, r.x + c']``, the RVars in the RDom's order, or constants).
* A scatter-add into an N-D Func whose indices are its own pure vars except one small
  data-dependent dim (the bilateral grid's splat ``hist[c, z(r), gy, gx] += v(r)``, <= 64
  RDom points, <= 64 values along ``z``) is rewritten as a pure definition, ``init + sum_r
  select(z(r) == z, v(r), 0)``, and becomes an ordinary kernel: each output block sums its own
  RDom points (no scatter, no atomics); its strided reads are resampled copies.
* A data-dependent read of a buffer upsampled along the consumer's last two dims (the bilateral
  grid's slice ``blury[c, z(data), y // 8 + dy, x // 8 + dx]``), whose plane copies would be
  too large, reads the coarse buffer itself (see ``_Coarse``): a pointer gather on GPU (Triton
  loads take index tensors), one-hot upsampling matmuls per plane and a select on TPU.

**What runs as XLA ops between the kernels** (never silently: tracing issues an
:class:`XlaFallbackWarning` naming them, :func:`describe` lists every Func with the reason, and
docs/pallas_backend.md says why): extern Funcs, updates other than
the above (serial or non-commutative ones, N-D ones of other forms, with gathers in the RDom),
and Funcs whose reads are not stencils: data-dependent indices into N-D buffers (gathers) in
more than one dim or into a large dim, transposed dims, constant indices at every dim of an
N-D buffer, clamps that are not the buffer's edges, resampled reads of compute_at producers,
large or arg-reductions.
Those Funcs are evaluated with the XLA backend's own evaluator, and their results feed the
kernels as ordinary inputs.

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
TABLE_LIMIT = 4096  # entries of a 1-D table read by a data-dependent index / bins of an RDom update
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
  kind: str  # "buf" (shifted window of a root buffer) | "child" | "scalar" | "lut"
  target: Any
  shift: tuple[int, ...] = ()  # per consumer dim ("buf", "child")
  index: int = 0  # "scalar": element of a 1-D table
  expr: ir.Expr | None = None  # "lut": the data-dependent index, evaluated in-kernel
  axes: tuple[int, ...] = ()  # RDom update "buf": layout axis per buffer dim (-1: constant)
  # "select": one "buf" read per value of a small dim read by a data-dependent ``expr``
  # (planes[j] is the value ``index + j``), selected in-kernel by compare-and-select.
  planes: tuple = ()
  # "select" of _Coarse planes: the read itself, a pointer gather on GPU (Triton loads take
  # index tensors; the planes' one-hot matmuls are for Mosaic, which has no vector gather).
  call: ir.Call | None = None
  box: tuple = ()  # with ``call``: the buffer's region per dim, (min, max), which the GPU gather
  # clamps its indices to


class _Derived:
  """A root buffer re-indexed along some dims by XLA before the kernel, so that a resampling
  read becomes a shifted window of it: ``D[.., i, ..] = base[.., g(i), ..]`` per mapped dim.

  ``maps`` has one entry per base dim: None (identity) or ``(kind, ...)``:
  ``("stride", s, r, clamp)`` for ``base[s * v + c]`` (phase ``r = c mod s``, read at shift
  ``(c - r) // s``: a 4-tap downsample of stride 2 is two phase operands), ``("rep", s,
  clamp)`` for ``base[(v + c) // s + c']`` (nearest-neighbour upsampling, read at shift
  ``c + s c'``), ``("expr", repr, expr, var, clamp)`` for any other index that depends on one
  pure var only (``x // 2 - 1 + 2 * (x % 2)``, mirrors), read at shift 0. ``clamp`` is the
  buffer-edge clamp of the read (``boundary.repeat_edge``), or None.
  """

  def __init__(self, base: Any, maps: tuple):
    self.base, self.maps = base, maps
    self.dtype = base.dtype
    tags = [m[0] + (str(m[1]) if m[0] != "expr" else "") for m in maps if m is not None]
    # dims read at one constant index ("const" maps) are dropped from D
    self.keep = tuple(j for j, m in enumerate(maps) if m is None or m[0] != "const")
    self.name = f"{base.name}[{','.join(tags)}]"

  def indices(self, d: int, lo: int, size: int) -> np.ndarray:
    """Base indices for D's positions ``[lo, lo + size)`` along base dim ``d``."""
    m = self.maps[d]
    i = np.arange(lo, lo + size, dtype=np.int64)
    if m[0] == "stride":
      idx, clamp = m[1] * i + m[2], m[3]
    elif m[0] == "rep":
      idx, clamp = i // m[1], m[2]
    else:
      _, _, expr, var, clamp = m
      vals = {("v", var): i}
      idx = np.asarray(_eval_index(expr, vals), dtype=np.int64)
    if clamp is not None:
      idx = np.clip(idx, clamp[0], clamp[1])
    return idx


class _Coarse:
  """A root buffer read at ``(v + c) // s + c'`` along the consumer's last two dims and at
  constants elsewhere, upsampled inside the kernel instead of by a full-resolution copy.

  On TPU the kernel DMAs the coarse window its block needs and upsamples it with two one-hot
  matmuls (``U_y @ P @ U_x^T``, f32 at full precision: exact); on GPU the read is a pointer
  gather of the buffer instead (``_Read.call``). Used for the planes of a data-dependent
  select (the bilateral grid's trilinear slice ``blury[c, z(data), y // 8 + dy, x // 8 + dx]``)
  whose resampled copies would total many times the buffer (``SELECT_GROWTH``). ``maps`` has
  one entry per base dim: ``("rep", s, clamp)`` or ``("const", v)``.
  """

  def __init__(self, base: Any, maps: tuple):
    self.base, self.maps = base, maps
    self.dtype = base.dtype
    self.keep = tuple(j for j, m in enumerate(maps) if m[0] != "const")
    self.factors = tuple(maps[j][1] for j in self.keep)
    tags = [f"/{m[1]}" if m[0] == "rep" else str(m[1]) for m in maps]
    self.name = f"{base.name}[{','.join(tags)}]"


@dataclasses.dataclass(frozen=True)
class _CoarseWin:
  """Where a kernel's coarse window of a _Coarse buffer lies, per kept dim (the consumer's last
  two dims): the upsampling factor, the smallest fine shift read, the prepared buffer's first
  coarse index, and the static window length."""

  factors: tuple[int, ...]
  cmin: tuple[int, ...]
  first: tuple[int, ...]
  length: tuple[int, ...]


def _eval_index(e: ir.Expr, vals: dict) -> Any:
  """A static integer index expression over numpy arrays (trace-time, for _Derived maps)."""
  if isinstance(e, ir.Const):
    return np.asarray(e.value, np.int64) if e.dtype.kind in "iub" else np.asarray(e.value)
  if isinstance(e, ir.Var):
    return vals[("v", e.name)]
  if isinstance(e, ir.BinOp):
    a, b = _eval_index(e.a, vals), _eval_index(e.b, vals)
    return B.NP_OPS[e.op](a, b) if e.op in B.NP_OPS else ir.BINARY_OPS[e.op](a, b)
  if isinstance(e, ir.UnOp):
    return B.NP_OPS[e.op](_eval_index(e.a, vals))
  if isinstance(e, ir.Select):
    return np.where(_eval_index(e.cond, vals), _eval_index(e.t, vals), _eval_index(e.f, vals))
  if isinstance(e, ir.Cast):
    return np.asarray(_eval_index(e.a, vals)).astype(np.int64 if e.to.kind in "iu" else e.to)
  raise _Unsupported(f"index {_short(e)} is not a static function of one var")


def _single_var(a: ir.Expr) -> str | None:
  """The one pure var ``a`` depends on, if it has no loads, Params, RVars or reductions."""
  found = None
  for n in ir.walk(a):
    if isinstance(n, ir.Call | ir.Param | ir.RVar | ir.Reduce | ir.Extent):
      return None
    if isinstance(n, ir.Var):
      if found is not None and found != n.name:
        return None
      found = n.name
  return found


def _floordiv_form(a: ir.Expr) -> tuple[str, int, int] | None:
  """``(v + c) // s + c'`` (s >= 2) -> (v, s, c + s * c')."""
  extra = 0
  if isinstance(a, ir.BinOp) and a.op in ("add", "sub") and isinstance(a.b, ir.Const):
    lin = B.linear(a.b)
    if lin is None:
      return None
    extra = lin[1] if a.op == "add" else -lin[1]
    a = a.a
  if not (
    isinstance(a, ir.BinOp)
    and a.op == "floordiv"
    and isinstance(a.b, ir.Const)
    and a.b.dtype.kind in "iu"
    and int(a.b.value) >= 2
  ):
    return None
  lin = B.linear(a.a)
  if lin is None or len(lin[0]) != 1:
    return None
  ((k, coef),) = lin[0].items()
  if k[0] != "v" or coef != 1:
    return None
  s = int(a.b.value)
  return k[1], s, lin[1] + s * extra


def _resample(a: ir.Expr, t: Any, j: int, bounds, children) -> tuple[str, tuple, int] | None:
  """A read index ``a`` into dim ``j`` of root buffer ``t`` that is a resampling (strided,
  floor-divided, or any static function of one var) as (var, _Derived map, shift)."""
  if id(t) in children or id(t) not in bounds:
    return None
  cl = _clamp_any(a)
  inner, clamp = (a, None) if cl is None else (cl[0], (cl[1], cl[2]))
  if clamp is not None and clamp != tuple(bounds[id(t)][j]):
    return None
  lin = B.linear(inner)
  if lin is not None:
    if not lin[0] and len(bounds[id(t)]) > 1:
      # a constant index into an N-D buffer (a channel, a level): that plane, dim dropped
      v = lin[1] if clamp is None else min(max(lin[1], clamp[0]), clamp[1])
      return None, ("const", v), 0
    if len(lin[0]) != 1:
      return None  # a constant into a table, or several vars (transposed / mixed)
    ((k, s),) = lin[0].items()
    if k[0] != "v" or s < 2:
      return None  # v + c: a plain stencil read
    r = lin[1] % s
    return k[1], ("stride", s, r, clamp), (lin[1] - r) // s
  fd = _floordiv_form(inner)
  if fd is not None:
    return fd[0], ("rep", fd[1], clamp), fd[2]
  v = _single_var(a)
  if v is None:
    return None
  return v, ("expr", repr(a), a, v, None), 0


def _classify_call(
  c: ir.Call,
  names: list[str],
  children: dict[int, Any],
  bounds: dict[int, list[tuple[int, int]]],
  derived: dict,
) -> _Read:
  """How a kernel reads ``c``; raises _Unsupported for anything but a stencil (possibly of a
  resampled root buffer, see _Derived)."""
  t = c.target
  tn = t.name
  # Resampling reads (pyramids' 2 * x + c, upsampling x // 2, ...) of a root buffer: a stencil
  # read of a _Derived copy XLA prepares before the kernel.
  if id(t) in bounds and id(t) not in children:
    dd = [j for j, a in enumerate(c.args) if _data_dependent(a)]
    if len(c.args) > 1 and len(dd) == 1:
      return _classify_select(c, dd[0], names, bounds, derived)
    res = [_resample(a, t, j, bounds, children) for j, a in enumerate(c.args)]
    if not dd and any(r is not None for r in res):
      return _classify_resampled(c, res, names, bounds, derived)
  lins = []
  for a in c.args:
    cl = _clamp_any(a)
    inner, lo, hi = (a, None, None) if cl is None else cl
    lin = B.linear(inner)
    if lin is None:
      if len(c.args) == 1 and id(t) in bounds and id(t) not in children:
        # A small 1-D table read by a data-dependent index (a LUT): an in-kernel one-hot select.
        n = bounds[id(t)][0][1] - bounds[id(t)][0][0] + 1
        if n > TABLE_LIMIT:
          raise _Unsupported(
            f"read {_short(c)}: lookup into a {n}-entry table (> {TABLE_LIMIT}, a gather)"
          )
        return _Read("lut", t, expr=a)
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
  bcast = len(c.args) < len(names) and id(t) not in children
  if len(c.args) != len(names) and not bcast:
    raise _Unsupported(f"read {_short(c)}: {tn} has {len(c.args)} dims, the consumer {len(names)}")
  # A lower-rank root buffer read at a subsequence of the consumer's vars (an image read by a
  # [y, x, k] Func) is broadcast along the missing dims: XLA materialises the broadcast window.
  dims: list[int] = []
  for j, ((coef, _), _, _) in enumerate(lins):
    want = [names[j]] if not bcast else names[(dims[-1] + 1 if dims else 0) :]
    d = next((names.index(n) for n in want if coef == {("v", n): 1}), None)
    if d is None:
      raise _Unsupported(
        f"read {_short(c)}: index {j} must be {names[j] if not bcast else 'a var'} + const "
        "(strided, transposed or mixed indices are gathers)"
      )
    dims.append(d)
  shift = [0] * len(names)
  for j, (((_, off), lo, hi), d) in enumerate(zip(lins, dims, strict=True)):
    if lo is not None:
      if id(t) in children:
        raise _Unsupported(f"read {_short(c)}: clamped read of a compute_at producer")
      blo, bhi = bounds[id(t)][j]
      if (lo, hi) != (blo, bhi):
        raise _Unsupported(
          f"read {_short(c)}: clamp [{lo}, {hi}] in dim {j} is not the edge of {tn}'s buffer "
          f"[{blo}, {bhi}]"
        )
    shift[d] = int(off)
  if bcast:
    return _Read("buf", t, tuple(shift), axes=tuple(dims))
  return _Read("child" if id(t) in children else "buf", t, tuple(shift))


def _classify_resampled(c: ir.Call, res: list, names: list[str], bounds, derived: dict) -> _Read:
  """A read of root buffer ``c.target`` with at least one resampled index (``res[j]`` not
  None): a shifted window of the _Derived buffer, shared by every read with the same maps."""
  t = c.target
  maps, vars_, shift_of = [], [], []
  for j, (a, r) in enumerate(zip(c.args, res, strict=True)):
    if r is not None and r[0] is None:  # a constant index: the dim is dropped
      maps.append(r[1])
      continue
    if r is not None:
      v, m, sh = r
    else:
      cl = _clamp_any(a)
      inner, clamp = (a, None) if cl is None else (cl[0], (cl[1], cl[2]))
      lin = B.linear(inner)
      ok = lin is not None and len(lin[0]) == 1 and next(iter(lin[0].values())) == 1
      if not ok or next(iter(lin[0]))[0] != "v":
        raise _Unsupported(
          f"read {_short(c)}: index {_short(a)} next to a resampled one must be var + const"
        )
      if clamp is not None and clamp != tuple(bounds[id(t)][j]):
        raise _Unsupported(
          f"read {_short(c)}: clamp {list(clamp)} in dim {j} is not the edge of {t.name}'s "
          f"buffer {list(bounds[id(t)][j])}"
        )
      v, sh = next(iter(lin[0]))[1], lin[1]
      # identity along this dim: D's edge extension (XLA pad) is the clamp's
      m = None
    if v not in names:
      raise _Unsupported(f"read {_short(c)}: index {_short(a)} uses {v!r}, not a pure var")
    maps.append(m)
    vars_.append(v)
    shift_of.append(sh)
  dims = [names.index(v) for v in vars_]
  if not dims:
    raise _Unsupported(f"read {_short(c)} at a constant index of a {len(c.args)}-D buffer")
  if len(set(dims)) != len(dims) or dims != sorted(dims):
    raise _Unsupported(f"read {_short(c)}: dims {vars_} are transposed or repeated (a gather)")
  key = (id(t), tuple(m if m is None or m[0] != "expr" else (m[0], m[1]) for m in maps))
  if key not in derived:
    derived[key] = _Derived(t, tuple(maps))
  q = derived[key]
  shift = [0] * len(names)
  for d, sh in zip(dims, shift_of, strict=True):
    shift[d] = int(sh)
  axes = tuple(dims) if len(dims) < len(names) else ()
  return _Read("buf", q, tuple(shift), axes=axes)


SELECT_LIMIT = 16  # values of a dim read by a data-dependent index, selected in-kernel
SELECT_GROWTH = 8  # the plane copies may total this many times the buffer's size


def _data_dependent(a: ir.Expr) -> bool:
  return any(isinstance(n, ir.Call | ir.Param) for n in ir.walk(a))


def _classify_select(c: ir.Call, j: int, names: list[str], bounds, derived: dict) -> _Read:
  """``buf[.., e(data), ..]`` with a small dim ``j`` (level selection ``lPyramid[y, x, li]``):
  one plane read per value of dim ``j`` (``buf[.., z, ..]``, a _Derived copy without that dim),
  selected in-kernel where ``clamp(e) == z`` (Mosaic has no vector gather; XLA's gather clamps
  its indices the same way)."""
  t = c.target
  lo, hi = bounds[id(t)][j]
  n = hi - lo + 1
  if n > SELECT_LIMIT:
    raise _Unsupported(
      f"read {_short(c)}: data-dependent index into dim {j} of {n} values (> {SELECT_LIMIT}, "
      "a gather)"
    )
  planes = []
  for z in range(lo, hi + 1):
    args = list(c.args)
    args[j] = ir.Const(z, np.int32)
    planes.append(_classify_call(ir.Call(t, args), names, {}, bounds, derived))
  if any(p.kind != "buf" for p in planes):
    raise _Unsupported(f"read {_short(c)}: the other indices are not stencils or resamplings")
  base = math.prod(b - a + 1 for a, b in bounds[id(t)])
  copies = {id(p.target): p.target for p in planes if isinstance(p.target, _Derived)}
  grown = sum(_derived_size(q, bounds) for q in copies.values())
  if grown > SELECT_GROWTH * base:
    # Too many full-resolution copies: upsampled planes are upsampled in-kernel instead.
    why = (
      f"read {_short(c)}: selecting among {n} values of dim {j} would read {len(copies)} "
      f"resampled copies of {t.name} ({grown} elements, > {SELECT_GROWTH}x its {base})"
    )
    try:
      planes = [
        _classify_coarse(
          ir.Call(t, [*c.args[:j], ir.Const(z, np.int32), *c.args[j + 1 :]]), names, bounds, derived
        )
        for z in range(lo, hi + 1)
      ]
    except _Unsupported as e:
      raise _Unsupported(f"{why}; upsampling them in-kernel: {e}") from None
    box = tuple(bounds[id(t)])
    return _Read("select", t, expr=c.args[j], index=lo, planes=tuple(planes), call=c, box=box)
  return _Read("select", t, expr=c.args[j], index=lo, planes=tuple(planes))


def _classify_coarse(c: ir.Call, names: list[str], bounds, derived: dict) -> _Read:
  """A read of root buffer ``c.target`` at ``(v + c) // s + c'`` along the consumer's last two
  dims and constants elsewhere, as a _Coarse read (upsampled in-kernel)."""
  t = c.target
  nd = len(names)
  if t.dtype.kind != "f":
    raise _Unsupported(f"{t.name} is {t.dtype} (one-hot matmuls upsample float buffers only)")
  maps, dims, shift = [], [], [0] * nd
  for j, a in enumerate(c.args):
    r = _resample(a, t, j, bounds, {})
    if r is not None and r[0] is None:
      maps.append(r[1])  # a constant index: the dim is dropped
      continue
    if r is None or r[1][0] != "rep" or r[0] not in names:
      raise _Unsupported(f"index {_short(a)} of {_short(c)} is not (var + c) // s + c'")
    maps.append(r[1])
    dims.append(names.index(r[0]))
    shift[dims[-1]] = int(r[2])
  if nd < 2 or dims != [nd - 2, nd - 1]:
    raise _Unsupported(f"{_short(c)} is not upsampled along the consumer's last two dims")
  key = ("coarse", id(t), tuple(maps))
  if key not in derived:
    derived[key] = _Coarse(t, tuple(maps))
  return _Read("coarse", derived[key], tuple(shift))


def _derived_size(q: _Derived, bounds) -> int:
  """Elements of a _Derived copy over its base's region: a repeat map multiplies that dim by
  its factor, a stride map divides it, a constant index drops it."""
  size = 1
  for m, (lo, hi) in zip(q.maps, bounds[id(q.base)], strict=True):
    n = hi - lo + 1
    if m is not None and m[0] == "rep":
      n *= m[1]
    elif m is not None and m[0] == "stride":
      n = -(-n // m[1])
    elif m is not None and m[0] == "const":
      n = 1
    size *= n
  return size


@dataclasses.dataclass
class _Kernel:
  """The lowering of one root Func to a pallas_call."""

  fp: L.FuncPlan
  value: ir.Expr
  children: list[tuple[L.FuncPlan, ir.Expr]]  # compute_at producers, producers first
  reads: dict[int, dict[int, _Read]]  # id(expr value) -> id(call node) -> read
  tile: dict[str, int]  # loop var -> factor, as scheduled (for messages)
  block: tuple[int, ...]  # effective block shape (after padding rules)
  # (array dim, steps, "parallel" | "arbitrary"), outermost first; a fused axis has
  # ((outer dim, steps), (inner dim, steps)) for its dim (_block_ids).
  grid: list[tuple[Any, int, str]]
  default_tile: bool
  lut_range: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)  # table region
  # TPU carried sliding window: (child func, array dim, grid axis) or None; slide_note says why not.
  slide: tuple[Any, int, int] | None = None
  slide_note: str = ""
  # GPU sliding window inside each block: (child func, array dim), or None (see _plan_row_slide).
  row_slide: tuple[Any, int] | None = None


def _block_rule(
  f: ir.Func, kind: str, tile: dict[str, int], req: list[int | None], exts: list[int], dtypes
) -> tuple[int, ...]:
  """Effective block per dim for requested blocks ``req`` (None: whole dim); checks the rules."""
  nd = len(exts)
  sub = _sublane(dtypes)
  out = []
  for d, (b, e) in enumerate(zip(req, exts, strict=True)):
    align = 128 if d == nd - 1 else (sub if d == nd - 2 else 1)
    which = "last" if d == nd - 1 else "second-to-last"
    out.append(
      _legal_block(
        kind,
        b,
        e,
        align,
        f"Func {f.name}: tile {tile}",
        f"dim {d} ({f.args[d].name})",
        f"the {which} block dim ({f.args[d].name})",
      )
    )
  return tuple(out)


def _legal_block(
  kind: str, b: int | None, e: int, align: int, what: str, gpu_dim: str, tpu_dim: str
) -> int:
  """The block for requested ``b`` (None: whole extent ``e``) under the target's rule, or a
  ValueError naming ``what`` (Func and tile), the dim, the rule and the values."""
  if kind == "gpu":
    if b is not None and b != _pow2(b):
      raise ValueError(
        f"{what} breaks the Triton (GPU) rule 'block dims must be powers of two': {gpu_dim} "
        f"has block {b}; use e.g. {_pow2(b)}"
      )
    return _pow2(e) if b is None else min(b, _pow2(e))
  if b is None or b >= e:
    return _round_up(e, align)
  if b % align:
    raise ValueError(
      f"{what} breaks the TPU (8, 128) rule: {tpu_dim} must be a multiple of {align} or cover "
      f"the whole extent {e}; got block {b}"
    )
  return b


def _default_block(kind: str, exts: list[int], small: bool = False) -> list[int | None]:
  """``small``: a TPU kernel that upsamples planes in-kernel (``_Coarse``): Mosaic keeps its
  many plane-sized temporaries in scoped VMEM (the bilateral slice: 19.9 MB at 64x256, over
  the 16 MB limit; 32x256 compiles)."""
  nd = len(exts)
  out: list[int | None] = [1] * nd
  if kind == "gpu":
    out[-1] = min(_pow2(exts[-1]), 256)
    out[-2] = min(_pow2(exts[-2]), 16)
  else:
    rows, lanes = (32, 256) if small else (64, 512)
    out[-1] = None if exts[-1] <= lanes else lanes
    out[-2] = None if exts[-2] <= rows else rows
  return out


def _schedule_blocks(fp: L.FuncPlan, kind: str, dtypes, small: bool = False) -> tuple:
  f = fp.func
  st = f.definitions[0].schedule
  names = [v.name for v in f.args]
  exts = [e for _, e in fp.region]
  # Unsplit dims: the last two are whole in the block; leading dims step one at a time (a whole
  # 4-D grid in one block would not fit registers or VMEM).
  req: list[int | None] = [1] * max(0, len(names) - 2) + [None] * min(2, len(names))
  outer: dict[str, int] = {}
  tile: dict[str, int] = {}
  inside: set[str] = set()  # loops inside the block
  for old, o, i, fac in st.splits:
    if st.kind(i) in ("vectorized", "unrolled"):
      continue  # a hint: the compilers vectorise the block
    if old in inside:  # a second tiling level inside the block orders its work: a hint
      inside |= {o, i}
      continue
    if old not in names or names.index(old) in outer.values():
      raise NotImplementedError(
        f"Func {f.name}: split of the loop over blocks {old!r} (-> {o!r}, {i!r}) is not "
        "supported by the pallas backend (the grid has one axis per tiled dim); split the "
        "inner loop instead"
      )
    req[names.index(old)] = fac
    outer[o] = names.index(old)
    tile[i] = fac
    inside.add(i)
  default = not outer
  if default:
    req = _default_block(kind, exts, small)
    tile = {n: "whole" if b is None else b for n, b in zip(names, req, strict=True)}
  block = _block_rule(f, kind, tile, req, exts, dtypes)
  steps = [-(-e // b) for e, b in zip(exts, block, strict=True)]
  if default:
    grid = [(d, steps[d], "arbitrary") for d in range(len(names)) if steps[d] > 1]
    return tile, block, grid, default

  def grid_dim(n: str) -> int | None:
    """The array dim whose blocks loop ``n`` steps through, or None (a loop inside the block)."""
    if n in outer:
      return outer[n]
    if n in names and names.index(n) not in outer.values():
      return names.index(n)
    return None

  # Fused loops of two grid loops are one grid axis (Halide's parallel tiles:
  # tile(...).fuse(xo, yo, t)); fuses of loops inside the block only order its work.
  fused: dict[str, tuple[int, int]] = {}  # fused var -> (outer dim, inner dim)
  for i, o, fu in st.fuses:
    di, do = grid_dim(i), grid_dim(o)
    if di is None and do is None and i not in fused and o not in fused:
      continue
    if di is None or do is None:
      raise NotImplementedError(
        f"Func {f.name}: fuse({i!r}, {o!r}) joins a loop over blocks with a loop inside the "
        "block (or a fused loop); the pallas backend fuses two loops over blocks into one grid "
        "axis only"
      )
    fused[fu] = (do, di)
  # Grid axes in loop order: the outer loop of each split dim, and unsplit dims that still
  # take several blocks (leading dims, or a block shrunk to the padded extent); a fused pair
  # is one axis over both dims' blocks, ((outer dim, steps), (inner dim, steps)).
  grid = []
  seen: set[int] = set()
  for n in st.loops:
    sem = "parallel" if st.kind(n) == "parallel" else "arbitrary"
    if n in fused:
      do, di = fused[n]
      seen |= {do, di}
      grid.append((((do, steps[do]), (di, steps[di])), steps[do] * steps[di], sem))
      continue
    d = grid_dim(n)
    if d is not None and steps[d] > 1 and d not in seen:
      seen.add(d)
      grid.append((d, steps[d], sem))
  return tile, block, grid, default


def _block_ids(grid: list, ids: Sequence[Any], nd: int) -> list[Any]:
  """Each array dim's block index from the grid's program ids (a fused axis ``t`` over
  ``(outer, no), (inner, ni)`` is ``outer = t // ni``, ``inner = t % ni``); 0 off the grid."""
  out: list[Any] = [0] * nd
  for (d, _, _), g in zip(grid, ids, strict=True):
    if isinstance(d, tuple):
      (do, _), (di, ni) = d
      # lax.div/rem, not // and % (whose sign fix-up Mosaic lowers only with a TPU attached);
      # program ids are >= 0, so truncating division is floor division.
      out[do], out[di] = lax.div(g, ni), lax.rem(g, ni)
    else:
      out[d] = g
  return out


def _buffer_bounds(p: L.Plan, image_shapes) -> dict[int, list[tuple[int, int]]]:
  out = {key: [(0, s - 1) for s in shp] for key, shp in image_shapes.items()}
  for fp in p.order:
    if fp.level == "root":
      out[id(fp.func)] = [(m, m + e - 1) for m, e in fp.region]
  return out


def _as_row(fp: L.FuncPlan) -> L.FuncPlan:
  """A pure 1-D Func (a lookup table: a curve, Gaussian weights) as a ``[1, n]`` Func with the
  same values, so its kernel has the 2-D blocks both targets lay out well; the row is reshaped
  back to ``[n]`` after the kernel."""
  f = fp.func
  (i,) = f.args
  row = ir.Var(f"_{f.name}_row")
  g = ir.Func(f.name)
  g[row, i] = fp.stages[0].value
  return L.FuncPlan(g, "root", [L.Stage((row, i), fp.stages[0].value, None)], [(0, 1), *fp.region])


def _plan_kernel(p: L.Plan, fp: L.FuncPlan, kind: str, bounds) -> _Kernel:
  """The kernel lowering of root Func ``fp``; raises _Unsupported with the reason otherwise."""
  f = fp.func
  if f.extern is not None:
    raise _Unsupported("extern Func (its values come from a JAX function)")
  if f.ndim == 1 and len(fp.stages) == 1 and f.extern is None:
    fp = _as_row(fp)  # a table: a [1, n] kernel (Mosaic's 1-D layouts need the device)
    f = fp.func
  own = _onehot_update(fp) if len(fp.stages) > 1 else None
  if len(fp.stages) > 1 and own is None:
    return _plan_update(fp, kind, bounds)
  kids = [] if fp.group is None else [p.by_func[id(ch.func)] for ch in fp.group.children]
  children = {id(k.func): k for k in kids}
  names = [v.name for v in f.args]
  values = []
  reads: dict[int, dict[int, _Read]] = {}
  dtypes = [f.dtype]
  luts: dict[int, tuple[int, int]] = {}
  derived: dict = {}
  for q in [*kids, fp]:
    if q.func.extern is not None:
      raise _Unsupported(f"compute_at producer {q.func.name} is an extern Func (a JAX function)")
    if q is not fp and len(q.stages) > 1:
      raise _Unsupported(f"compute_at producer {q.func.name} has update definitions")
    if q.func.ndim != f.ndim:
      raise _Unsupported(f"compute_at producer {q.func.name} has a different rank")
    try:
      v = _unroll(own if q is fp and own is not None else q.stages[0].value)
    except _Unsupported as e:
      raise _Unsupported(f"{q.func.name}: {e}") from None
    rd: dict[int, _Read] = {}
    for n in ir.walk(v):
      if isinstance(n, ir.Reduce):
        raise _Unsupported(f"{q.func.name}: nested inline reduction")
      if isinstance(n, ir.Call):
        rd[id(n)] = _classify_call(n, names, children, bounds, derived)
        if rd[id(n)].kind in ("buf", "select"):
          dtypes.append(n.target.dtype)
        if rd[id(n)].kind == "lut":
          luts[id(n.target)] = bounds[id(n.target)][0]
    reads[id(v)] = rd
    values.append(v)
  coarse = [
    p.target.name
    for rd in reads.values()
    for r in rd.values()
    for p in r.planes
    if p.kind == "coarse"
  ]
  if coarse and any(_coarse_in(reads[id(v)]) for v in values[:-1]):
    raise _Unsupported("a compute_at producer upsamples in-kernel (only the root Func may)")
  tile, block, grid, default = _schedule_blocks(fp, kind, dtypes, small=bool(coarse))
  k = _Kernel(
    fp,
    values[-1],
    list(zip(kids, values[:-1], strict=True)),
    reads,
    tile,
    block,
    grid,
    default,
    luts,
  )
  _plan_slide(k, kind)
  return k


def _coarse_in(rd: dict[int, _Read]) -> bool:
  return any(p.kind == "coarse" for r in rd.values() for p in r.planes)


def _plan_slide(k: _Kernel, kind: str) -> None:
  """Decides whether a ``store_at`` producer runs as a carried sliding window (TPU only).

  Eligible: one producer, stored outside the loop it is computed at (``compute_at(out, vo)``
  with ``vo`` the outer loop of a split dim ``d``, one of the last two), ``vo`` the innermost
  grid axis (so its steps run in order inside each store scope), a producer that reads only
  buffers and scalars (no nested producer, no LUT), and a halo along ``d``. The grid axis
  becomes ``"arbitrary"``. Otherwise the producer runs as overlapped tiling and ``slide_note``
  says why.
  """
  fp = k.fp
  slid = [c for c in (fp.group.children if fp.group else []) if c.mode != "tile"]
  if not slid:
    return
  if kind != "tpu":
    _plan_row_slide(k, slid[0].func)
    return
  if len(k.children) != 1:
    k.slide_note = "a carried window is implemented for a single compute_at producer only"
    return
  g = slid[0].func
  comp = g.sched.compute
  st = fp.func.definitions[0].schedule
  names = [v.name for v in fp.func.args]
  outer = {o: names.index(old) for old, o, _, _ in st.splits if old in names}
  vc = comp[2] if comp and comp[0] == "at" else None
  if vc not in outer:
    k.slide_note = (
      f"it is computed at loop {vc!r}, inside the block (the block is the finest tile Pallas "
      "has), so each store scope is one block"
    )
    return
  d = outer[vc]
  nd = fp.func.ndim
  if not k.grid or k.grid[-1][0] != d:
    k.slide_note = f"loop {vc!r} is not the innermost multi-step grid axis"
    return
  if d < nd - 2:
    k.slide_note = f"the slid dim {names[d]!r} is not one of the last two (the (8, 128) tile)"
    return
  v = k.children[0][1]
  rd = k.reads[id(v)]
  if any(r.kind not in ("buf", "scalar") for r in rd.values()):
    k.slide_note = f"producer {g.name} reads another producer or a LUT"
    return
  if _no_halo(k, d):
    k.slide_note = f"the consumer has no halo along {names[d]!r}: nothing to reuse"
    return
  axis = len(k.grid) - 1
  if k.grid[axis][2] == "parallel":
    k.slide_note = (
      f"loop {vc!r} was scheduled parallel; the carried window needs its steps in order, so "
      "it runs 'arbitrary'"
    )
  k.grid[axis] = (d, k.grid[axis][1], "arbitrary")
  k.slide = (g, d, axis)


def _no_halo(k: _Kernel, d: int) -> bool:
  """Whether the consumer reads its producer at a single shift along dim ``d``."""
  shifts = {r.shift[d] for r in k.reads[id(k.value)].values() if r.kind == "child"}
  return len(shifts) < 2


def _slid_dim(fp: L.FuncPlan, g: ir.Func) -> tuple[int | None, str | None]:
  """The consumer dim whose loop ``g`` is computed at (an outer or inner var of a split, or the
  dim's own var), with that loop's name."""
  comp = g.sched.compute
  vc = comp[2] if comp and comp[0] == "at" else None
  names = [v.name for v in fp.func.args]
  dim = {n: d for d, n in enumerate(names)}
  for old, o, i, _ in fp.func.definitions[0].schedule.splits:  # nested splits included
    if old in dim:
      dim[o] = dim[i] = dim[old]
  return dim.get(vc), vc


def _plan_row_slide(k: _Kernel, g: ir.Func) -> None:
  """GPU sliding window (Halide's store_at outside + compute_at a row loop): inside each block,
  an in-kernel loop over the rows of the slid dim computes one new producer row per step and
  keeps the last rows it needs as loop-carried values (a tuple of rows: Triton cannot slice
  register tensors, but a tuple shifts for free). Blocks are Triton programs, which run in
  parallel, so nothing is carried between blocks: each recomputes its halo. Eligible: one
  producer that reads no other producer, read by the consumer at a halo along the slid dim,
  whose block along that dim is more than one row. Otherwise overlapped tiling, and
  ``slide_note`` says why."""
  names = [v.name for v in k.fp.func.args]
  d, vc = _slid_dim(k.fp, g)
  if len(k.children) != 1:
    k.slide_note = "a sliding window is implemented for a single compute_at producer only"
    return
  if d is None:
    k.slide_note = f"it is computed at loop {vc!r}, which is not a loop over one of its dims"
    return
  v = k.children[0][1]
  if any(r.kind == "child" for r in k.reads[id(v)].values()):
    k.slide_note = f"producer {g.name} reads another producer"
    return
  if _no_halo(k, d):
    k.slide_note = f"the consumer has no halo along {names[d]!r}: nothing to reuse"
    return
  if k.block[d] < 2:
    k.slide_note = f"the block along {names[d]!r} is one row: nothing to slide over"
    return
  st = row_slide_stats(k, d)
  if st["computed"] >= st["per_tap"]:
    k.slide_note = (
      f"a row loop along {names[d]!r} would compute {st['computed']} producer rows per block, "
      f"recomputing per tap {st['per_tap']}: no reuse to gain"
    )
    return
  k.row_slide = (g, d)


def _walk_no_args(e: ir.Expr, reads: dict[int, _Read]):
  """Nodes of ``e`` without descending into call indices (they are fully analysed), except the
  data-dependent index of a table lookup, which the kernel evaluates."""
  stack = [e]
  while stack:
    n = stack.pop()
    yield n
    if not isinstance(n, ir.Call):
      stack.extend(ir.children(n))
    elif reads[id(n)].kind in ("lut", "select"):
      stack.append(reads[id(n)].expr)


@dataclasses.dataclass
class _Layout:
  """Where each read lands: shift ranges per buffer and child origins."""

  buf_lo: dict[int, np.ndarray]
  buf_hi: dict[int, np.ndarray]
  child_at: dict[int, list[tuple[int, ...]]]  # GPU: shifts each child is evaluated at
  child_origin: dict[int, np.ndarray]  # TPU: the one origin each child is evaluated at
  scalars: dict[int, Any]  # id(target) -> target (tables and params)
  bcast: dict[int, tuple[int, ...]]  # lower-rank buffers: the consumer dim of each of their dims
  domain: tuple[int, ...]  # evaluation shape (GPU: the block; TPU: the aligned window)
  win: tuple[int, ...] = ()  # TPU input window shape (domain, + the input halo when sliding)
  coarse: dict[int, _CoarseWin] = dataclasses.field(default_factory=dict)
  gathers: dict[int, tuple] = dataclasses.field(default_factory=dict)  # GPU: id -> region box


def _layout(k: _Kernel, kind: str) -> _Layout:
  nd = k.fp.func.ndim
  buf_lo: dict[int, np.ndarray] = {}
  buf_hi: dict[int, np.ndarray] = {}
  child_req: dict[int, list[tuple[int, ...]]] = {}
  scalars: dict[int, Any] = {}
  bcast: dict[int, tuple[int, ...]] = {}
  coarse: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # fine shift range per _Coarse buffer
  gathers: dict[int, Any] = {}  # GPU: buffers read by pointer gathers
  kid_val = {id(kp.func): v for kp, v in k.children}
  done: set = set()

  def visit(v: ir.Expr, s: tuple[int, ...]):
    if (id(v), s) in done:
      return
    done.add((id(v), s))
    rd = k.reads[id(v)]
    for n in _walk_no_args(v, rd):
      if isinstance(n, ir.Param):
        scalars[id(n)] = n
      if not isinstance(n, ir.Call):
        continue
      r = rd[id(n)]
      if r.kind in ("scalar", "lut"):
        scalars[id(r.target)] = r.target
        continue
      if r.call is not None and kind == "gpu":
        gathers[id(r.target)] = r.box
        continue
      for pr in r.planes:  # "select": every plane is read at this point
        t = tuple(a + b for a, b in zip(s, pr.shift, strict=True))
        key = id(pr.target)
        if pr.kind == "coarse":
          lo0, hi0 = coarse.get(key, (t, t))
          coarse[key] = (np.minimum(lo0, t), np.maximum(hi0, t))
          continue
        if pr.axes:
          bcast[key] = pr.axes
        buf_lo[key] = np.minimum(buf_lo.get(key, t), t)
        buf_hi[key] = np.maximum(buf_hi.get(key, t), t)
      if r.kind == "select":
        continue
      t = tuple(a + b for a, b in zip(s, r.shift, strict=True))
      if r.kind == "buf":
        key = id(r.target)
        if r.axes:
          bcast[key] = r.axes
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
    win = list(domain)
    if k.slide is not None:
      # Later steps evaluate the producer over the window's last rows only: the input window
      # then needs the producer's own halo past the window (rolls must not wrap into them).
      d = k.slide[1]
      align = 128 if d == nd - 1 else sub
      win[d] = domain[d] + _round_up(int(span[d]), align)
    wins = _coarse_wins(k, coarse, domain)
    return _Layout(buf_lo, buf_hi, child_req, origin, scalars, bcast, domain, tuple(win), wins)
  return _Layout(buf_lo, buf_hi, child_req, origin, scalars, bcast, domain, domain, gathers=gathers)


def _coarse_wins(k: _Kernel, coarse: dict, domain: tuple[int, ...]) -> dict:
  """The TPU coarse window of each _Coarse buffer: fine positions ``[b0, b0 + n)`` read at
  shifts ``[cmin, cmax]`` need coarse rows ``(b0 + cmin) // s`` to ``(b0 + cmax + n - 1) // s``:
  at most ``(s - 1 + cmax - cmin + n - 1) // s + 1`` of them, whatever ``b0``. A DMA window
  starts at a multiple of the (8, 128) tile (Mosaic cannot prove a computed offset aligned), so
  the window also holds up to one tile of slack before the first needed row."""
  nd = k.fp.func.ndim
  region = k.fp.region
  out = {}
  for key, (lo, hi) in coarse.items():
    factors = next(
      r.target.factors
      for rd in k.reads.values()
      for c in rd.values()
      for r in c.planes
      if id(r.target) == key
    )
    cmin, first, length = [], [], []
    for i, d in enumerate((nd - 2, nd - 1)):
      s, n, align = factors[i], domain[d], _COARSE_ALIGN[i]
      need = (s - 1 + int(hi[d] - lo[d]) + n - 1) // s + 1
      length.append(_round_up(need + align - 1, align))
      cmin.append(int(lo[d]))
      first.append((region[d][0] + cmin[-1]) // s)
    out[key] = _CoarseWin(factors, tuple(cmin), tuple(first), tuple(length))
  return out


_COARSE_ALIGN = (8, 128)  # TPU tile of a 2-D f32 window: (sublanes, lanes)


def _targets_of(k: _Kernel) -> list[Any]:
  reads = [r for rd in k.reads.values() for r in rd.values()]
  return [r.target for r in reads if r.kind == "buf"] + [p.target for r in reads for p in r.planes]


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


def _binop(op: str, a: Any, b: Any) -> Any:
  """``ir.BINARY_OPS[op]``, with integer floordiv / mod written without ``sign`` (its Mosaic
  lowering asks the local device for its TPU generation, which fails in deviceless builds)."""
  if op in ("floordiv", "mod"):
    dt = jnp.result_type(a, b)
    if jnp.issubdtype(dt, jnp.integer):
      a, b = jnp.asarray(a).astype(dt), jnp.asarray(b).astype(dt)
      q, r = lax.div(a, b), lax.rem(a, b)
      fix = (r != 0) & ((r < 0) != (b < 0))  # truncation rounded toward zero: step down
      return q - fix.astype(dt) if op == "floordiv" else jnp.where(fix, r + b, r)
  return ir.BINARY_OPS[op](a, b)


class _Eval:
  """Evaluates kernel expressions over the domain shifted by ``s`` from the block origin."""

  def __init__(
    self, k: _Kernel, lay: _Layout, kind: str, block0, refs: dict, windows: dict, sub=None
  ):
    self.k, self.lay, self.kind = k, lay, kind
    # sub = (dim, offset, rows): evaluate over rows [offset, offset + rows) of the domain only.
    self.sub = sub
    dom = list(lay.domain)
    if sub is not None:
      dom[sub[0]] = sub[2]
    self.dom = tuple(dom)
    self.carry: dict = {}
    self.block0 = block0  # traced block origin per dim (region coordinates)
    self.refs, self.windows = refs, windows
    self.names = [v.name for v in k.fp.func.args]
    self.kid_val = {id(kp.func): v for kp, v in k.children}
    self.intern = _xla._Interner()
    self.memo: dict[tuple, Any] = {}
    self.child_memo: dict[tuple, Any] = {}
    # GPU row slide: the carried producer rows, by (shift with the slid dim zeroed, row shift)
    self.rows: dict[tuple, Any] | None = None

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
      io = lax.broadcasted_iota(jnp.int32, self.dom, d)
      off = self.sub[1] if self.sub is not None and self.sub[0] == d else 0
      return io + (self.block0[d] + s[d] + off)
    if isinstance(e, ir.Param):
      return self._scalar(e, 0, e.dtype)
    if isinstance(e, ir.BinOp):
      return _binop(e.op, self.ev(e.a, s), self.ev(e.b, s))
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
    if r.kind == "lut":
      return self._lut(r, s)
    if r.kind == "select" and r.call is not None and self.kind == "gpu":
      return self._gather(r, s)
    if r.kind == "select":
      idx = jnp.asarray(self.ev(r.expr, s)).astype(jnp.int32)
      idx = jnp.clip(idx, r.index, r.index + len(r.planes) - 1)
      out = None
      for z, pr in enumerate(r.planes, start=r.index):
        t = tuple(a + b for a, b in zip(s, pr.shift, strict=True))
        v = self._coarse(pr.target, t) if pr.kind == "coarse" else self._buf(pr.target, t)
        out = v if out is None else jnp.where(idx == z, v, out)
      return out
    t = tuple(a + b for a, b in zip(s, r.shift, strict=True))
    if r.kind == "child":
      return self._child(r.target, t)
    return self._buf(r.target, t)

  def _lut(self, r: _Read, s) -> Any:
    """``table[clamp(index)]`` as a loop of compare-selects over the table's entries: Mosaic has
    no vector gather, and the loop is the same on Triton. Indices are clamped to the table's
    region (bounds inference keeps them inside it: the clamp only matches XLA's gather)."""
    t = r.target
    lo, hi = self.k.lut_range[id(t)]
    idx = jnp.clip(jnp.asarray(self.ev(r.expr, s)).astype(jnp.int32), lo, hi) - lo
    idx = jnp.broadcast_to(idx, self.dom)

    wide = t.dtype if t.dtype.itemsize >= 4 else (jnp.float32 if t.dtype.kind == "f" else jnp.int32)

    def body(j, acc):  # selects in 32 bits: Mosaic's narrow vector support is partial
      return jnp.where(idx == j, self._scalar(t, j, wide), acc)

    out = lax.fori_loop(0, hi - lo + 1, body, jnp.zeros(self.dom, wide))
    return out.astype(t.dtype)

  def _buf(self, q: Any, t: tuple[int, ...]) -> Any:
    lo = self.lay.buf_lo[id(q)]
    if self.kind == "gpu":
      # The prepared buffer starts at region min + lo: the load starts at block start + t - lo.
      idx = tuple(
        pl.ds(self.block0[d] - self.k.fp.region[d][0] + int(t[d] - lo[d]), b)
        for d, b in enumerate(self.dom)
      )
      return self.refs[id(q)][idx]
    x = self.windows[id(q)]
    for d in range(len(t)):
      off = self.sub[1] if self.sub is not None and self.sub[0] == d else 0
      x = _roll(x, int(t[d] - lo[d]) + off, d)
    if x.shape != self.dom:  # the (larger) sliding input window: aligned slice at 0
      x = x[tuple(slice(0, n) for n in self.dom)]
    return x.astype(q.dtype)

  def _gather(self, r: _Read, s) -> Any:
    """``buf[idx_0, .., idx_k]`` as one Triton pointer gather, each index evaluated over the
    block and clamped to the buffer (as XLA's gather clamps; bounds inference keeps in-range
    reads in range)."""
    idx = []
    for a, (lo, hi) in zip(r.call.args, r.box, strict=True):
      i = jnp.asarray(self.ev(a, s)).astype(jnp.int32)
      idx.append(jnp.broadcast_to(jnp.clip(i, lo, hi) - lo, self.dom))
    return self.refs[id(r.target)][tuple(idx)]

  def _coarse(self, q: _Coarse, t: tuple[int, ...]) -> Any:
    """``q`` upsampled over the domain at fine shift ``t`` (TPU): ``U_y @ P @ U_x^T`` with
    one-hot ``U[i, j] = (j s <= p_i < (j + 1) s)``, ``p_i`` the fine position (block origin +
    shift + i) minus ``s`` times the window's first coarse row: no vector division; f32 dots at
    full precision, exact for finite values (one nonzero term per output). Non-finite values
    would turn ``0 * inf`` into NaN, so they are upsampled separately as codes (1 NaN, 2 +inf,
    3 -inf) and put back with selects."""
    # Not memoised: planes stay live only inside their select (the bilateral slice has 96 at a
    # 64x512 block: kept, they overflow VMEM); the matmuls are recomputed instead.
    cw = self.lay.coarse[id(q)]
    nd = len(self.names)
    p = self.windows[id(q)].astype(jnp.float32)
    starts = _coarse_start(self.block0, cw, nd)
    mats = []
    for i, d in enumerate((nd - 2, nd - 1)):
      s, n, m = cw.factors[i], self.dom[d], cw.length[i]
      a = self.block0[d] + cw.cmin[i]
      # p_i - s * (window's first row) = (p_i - s * (a // s)) + s * (rows of slack)
      base = a - s * _binop("floordiv", a, s) + (t[d] - cw.cmin[i]) + s * starts[i][1]
      shape, fine = ((n, m), 0) if i == 0 else ((m, n), 1)  # U_y [n, m]; U_x^T [m, n]
      pos = lax.broadcasted_iota(jnp.int32, shape, fine) + base
      lo = lax.broadcasted_iota(jnp.int32, shape, 1 - fine) * s
      mats.append(((pos >= lo) & (pos < lo + s)).astype(jnp.float32))
    hi = lax.Precision.HIGHEST

    def up(x):
      x = jnp.dot(x, mats[1], precision=hi, preferred_element_type=jnp.float32)
      return jnp.dot(mats[0], x, precision=hi, preferred_element_type=jnp.float32)

    finite = jnp.isfinite(p)
    out = up(jnp.where(finite, p, 0.0))
    code = up(jnp.where(finite, 0.0, jnp.where(p != p, 1.0, jnp.where(p > 0, 2.0, 3.0))))
    out = jnp.where(
      code == 0.0, out, jnp.where(code == 1.0, jnp.nan, jnp.where(code == 2.0, jnp.inf, -jnp.inf))
    )
    return out.astype(q.dtype)

  def _child(self, g: Any, t: tuple[int, ...]) -> Any:
    v = self.kid_val[id(g)]
    if self.rows is not None:  # GPU row slide: a carried row
      d = self.k.row_slide[1]
      return self.rows[(t[:d] + (0,) + t[d + 1 :], t[d])]
    if self.kind == "gpu":  # recompute at this shift
      key = (id(g), t)
      if key not in self.child_memo:
        saved = self.cur
        out = self.value(v, t)
        self.cur = saved
        self.child_memo[key] = jnp.broadcast_to(jnp.asarray(out).astype(g.dtype), self.lay.domain)
      return self.child_memo[key]
    o = tuple(int(x) for x in self.lay.child_origin[id(g)])
    if id(g) not in self.child_memo and self.k.slide is not None and self.k.slide[0] is g:
      self.child_memo[id(g)] = self._slide(g, v, o)
    if id(g) not in self.child_memo:
      saved = self.cur
      out = self.value(v, o)
      self.cur = saved
      self.child_memo[id(g)] = jnp.broadcast_to(jnp.asarray(out).astype(g.dtype), self.lay.domain)
    x = self.child_memo[id(g)]
    for d in range(len(t)):
      x = _roll(x, t[d] - o[d], d)
    return x

  def _slide(self, g: Any, v: ir.Expr, o: tuple[int, ...]) -> Any:
    """The producer's window from the carried VMEM scratch: computed whole at the first step
    of the store scope; later steps shift the kept part by one block and compute only the block's
    new rows (fresh evaluators per branch: values traced in a branch must not be memoised)."""
    _, d, axis = self.k.slide
    cs = self.carry[id(g)]
    w, n = self.lay.domain[d], self.k.block[d]

    def sl(a: int, b: int) -> tuple:
      return tuple(slice(a, b) if e == d else slice(None) for e in range(len(self.dom)))

    def fresh(sub=None) -> Any:
      ev = _Eval(self.k, self.lay, self.kind, self.block0, self.refs, self.windows, sub)
      out = ev.value(v, o)
      return jnp.broadcast_to(jnp.asarray(out).astype(cs.dtype), ev.dom)

    step = pl.program_id(axis)

    @pl.when(step == 0)
    def _():
      cs[...] = fresh()

    @pl.when(step > 0)
    def _():
      old = cs[...]
      cs[sl(0, w - n)] = old[sl(n, w)]
      cs[sl(w - n, w)] = fresh((d, w - n, n))

    return cs[...].astype(g.dtype)


def _kernel_body(*refs, k: _Kernel, lay: _Layout, kind: str, order: list, grid_dims: list):
  """The pallas kernel: refs are scalars, buffers, the output, then (TPU) VMEM windows."""
  n_in = len(order)
  ins, out_ref, scratch = refs[:n_in], refs[n_in], refs[n_in + 1 :]
  by_id = {key: r for (key, _), r in zip(order, ins, strict=True)}
  fr = k.fp.region
  block0 = [fr[d][0] for d in range(len(fr))]
  ids = _block_ids(grid_dims, [pl.program_id(a) for a in range(len(grid_dims))], len(fr))
  block0 = [b + i * n for b, i, n in zip(block0, ids, k.block, strict=True)]
  windows = {}
  carry = {}
  if kind == "tpu" and k.slide is not None:
    carry[id(k.slide[0])], scratch = scratch[-1], scratch[:-1]
  if kind == "tpu":
    bufs = [(key, what) for key, what in order if what == "buf"]
    for (key, _), win in zip(bufs, scratch[: len(bufs)], strict=True):
      idx = tuple(pl.ds(block0[d] - fr[d][0], lay.win[d]) for d in range(len(fr)))
      pltpu.sync_copy(by_id[key].at[idx], win)
      w = win[...]
      if w.dtype.itemsize < 4:  # Mosaic rotates only unpacked (32-bit) vregs
        w = w.astype(jnp.float32 if w.dtype.kind == "f" else jnp.int32)
      windows[key] = w
    coarse = [key for key, what in order if what == "coarse"]
    for key, win in zip(coarse, scratch[len(bufs) :], strict=True):
      cw = lay.coarse[key]
      st = _coarse_start(block0, cw, len(fr))
      idx = tuple(pl.ds(a, n) for (a, _), n in zip(st, cw.length, strict=True))
      pltpu.sync_copy(by_id[key].at[idx], win)
      windows[key] = win[...]
  if k.row_slide is not None:
    _row_slide(k, lay, by_id, out_ref, block0)
    return
  ev = _Eval(k, lay, kind, block0, by_id, windows)
  ev.carry = carry
  val = jnp.asarray(ev.value(k.value, (0,) * len(fr))).astype(k.fp.func.dtype)
  val = jnp.broadcast_to(val, lay.domain)
  if kind == "tpu":
    val = val[tuple(slice(0, b) for b in k.block)]
  out_ref[...] = val


def _row_windows(k: _Kernel, d: int) -> dict[tuple, tuple[int, int]]:
  """Per shift of the consumer's reads of its producer with the slid dim ``d`` zeroed, the
  range of row shifts along ``d`` read at it: each such window is carried separately."""
  out: dict[tuple, tuple[int, int]] = {}
  for r in k.reads[id(k.value)].values():
    if r.kind == "child":
      o = r.shift[:d] + (0,) + r.shift[d + 1 :]
      lo, hi = out.get(o, (r.shift[d], r.shift[d]))
      out[o] = (min(lo, r.shift[d]), max(hi, r.shift[d]))
  return dict(sorted(out.items()))


def _row_slide(k: _Kernel, lay: _Layout, refs: dict, out_ref: Any, block0: list) -> None:
  """The GPU sliding window of ``k.row_slide`` (see _plan_row_slide): a loop over the block's
  rows along the slid dim ``d``. For each window ``o`` (shift across ``d``, rows ``lo .. hi``),
  step ``i`` computes the producer's row ``i + hi``, then the consumer's row ``i`` from the
  carried rows ``i + lo .. i + hi`` of every window, and stores it; rows ``lo .. hi - 1`` are
  computed before the loop."""
  g, d = k.row_slide
  nd = len(block0)
  child = k.children[0][1]
  wins = _row_windows(k, d)
  row = tuple(1 if e == d else n for e, n in enumerate(lay.domain))
  row_lay = dataclasses.replace(lay, domain=row, win=row)

  def ev_at(i: Any) -> _Eval:
    b = list(block0)
    b[d] = block0[d] + i
    return _Eval(k, row_lay, "gpu", b, refs, {})

  def producer_row(i: Any, o: tuple, r: int) -> Any:
    out = ev_at(i).value(child, o[:d] + (r,) + o[d + 1 :])
    return jnp.broadcast_to(jnp.asarray(out).astype(g.dtype), row)

  def body(i, carry):
    full = [
      c + (producer_row(i, o, hi),) for (o, (_, hi)), c in zip(wins.items(), carry, strict=True)
    ]
    ev = ev_at(i)
    ev.rows = {
      (o, r): w[r - lo]
      for (o, (lo, hi)), w in zip(wins.items(), full, strict=True)
      for r in range(lo, hi + 1)
    }
    val = jnp.asarray(ev.value(k.value, (0,) * nd)).astype(k.fp.func.dtype)
    out_ref[tuple(pl.ds(i, 1) if e == d else slice(None) for e in range(nd))] = jnp.broadcast_to(
      val, row
    )
    return tuple(w[1:] for w in full)

  init = tuple(tuple(producer_row(0, o, r) for r in range(lo, hi)) for o, (lo, hi) in wins.items())
  lax.fori_loop(0, k.block[d], body, init)


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


def _derive(q: _Derived, base: tuple, axes, lo: Sequence[int], size: Sequence[int]):
  """The _Derived buffer ``q`` over the consumer window ``[lo, lo + size)`` (mapped dims) as
  (array, mins): one XLA ``take`` of precomputed base indices per mapped dim."""
  arr, amin = base
  amin = list(amin)
  for j, m in enumerate(q.maps):
    if m is None or m[0] == "const":
      continue
    d = axes[q.keep.index(j)] if axes else q.keep.index(j)  # the consumer dim it is read along
    idx = q.indices(j, lo[d], size[d]) - amin[j]
    idx = np.clip(idx, 0, arr.shape[j] - 1)  # past-the-region block padding only
    arr = jnp.take(arr, jnp.asarray(idx, jnp.int32), axis=j)
    amin[j] = lo[d]
  for j in reversed(range(len(q.maps))):
    m = q.maps[j]
    if m is not None and m[0] == "const":
      arr = lax.index_in_dim(arr, int(np.clip(m[1] - amin[j], 0, arr.shape[j] - 1)), j, False)
      del amin[j]
  return arr, amin


def _coarse_operand(q: _Coarse, cw: _CoarseWin, bufs: dict, region, steps, block) -> jax.Array:
  """The 2-D coarse buffer a kernel's _Coarse windows are loaded from: the base's constant
  dims dropped, edge-extended (the reads' edge clamps) over every block's window."""
  arr, amin = bufs[id(q.base)]
  amin = list(amin)
  for j in reversed(range(len(q.maps))):
    m = q.maps[j]
    if m[0] == "const":
      arr = lax.index_in_dim(arr, int(np.clip(m[1] - amin[j], 0, arr.shape[j] - 1)), j, False)
      del amin[j]
  nd = len(region)
  size = []
  for i, d in enumerate((nd - 2, nd - 1)):
    s = cw.factors[i]
    last = (region[d][0] + (steps[d] - 1) * block[d] + cw.cmin[i]) // s
    size.append(last - cw.first[i] + cw.length[i])
  arr = _prepare(arr, amin, cw.first, size)
  return arr if arr.dtype.itemsize >= 4 else arr.astype(jnp.float32)


def _coarse_start(block0, cw: _CoarseWin, nd: int) -> list[tuple[Any, Any]]:
  """Per kept dim, this block's window start in the coarse operand (rounded down to the
  (8, 128) tile) and the first needed row's offset inside the window."""
  out = []
  for i, d in enumerate((nd - 2, nd - 1)):
    need = _binop("floordiv", block0[d] + cw.cmin[i], cw.factors[i]) - cw.first[i]  # >= 0
    start = _binop("floordiv", need, _COARSE_ALIGN[i]) * _COARSE_ALIGN[i]
    out.append((pl.multiple_of(start, _COARSE_ALIGN[i]), need - start))
  return out


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
  targets = {id(t): t for t in _targets_of(k)}
  for key in lay.buf_lo:
    lo = [region[d][0] + int(lay.buf_lo[key][d]) for d in range(nd)]
    if kind == "gpu":
      size = [
        (steps[d] - 1) * k.block[d] + k.block[d] + int(lay.buf_hi[key][d] - lay.buf_lo[key][d])
        for d in range(nd)
      ]
    else:
      size = [(steps[d] - 1) * k.block[d] + lay.win[d] for d in range(nd)]
    q = targets[key]
    if isinstance(q, _Derived):
      arr, amin = _derive(q, bufs[id(q.base)], lay.bcast.get(key), lo, size)
    else:
      arr, amin = bufs[key]
    if key in lay.bcast:  # unit dims where the consumer has dims the buffer lacks
      axes = lay.bcast[key]
      arr = arr.reshape([arr.shape[axes.index(d)] if d in axes else 1 for d in range(nd)])
      amin = [amin[axes.index(d)] if d in axes else lo[d] for d in range(nd)]
    args.append(_prepare(arr, amin, lo, size))
    order.append((key, "buf"))
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    if kind == "tpu":
      scratch.append(pltpu.VMEM(lay.win, arr.dtype))
  for key, box in lay.gathers.items():
    arr, amin = bufs[key]
    args.append(_prepare(arr, amin, [lo for lo, _ in box], [hi - lo + 1 for lo, hi in box]))
    order.append((key, "gather"))
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
  for key, cw in lay.coarse.items():
    args.append(_coarse_operand(targets[key], cw, bufs, region, steps, k.block))
    order.append((key, "coarse"))
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    if kind == "tpu":
      scratch.append(pltpu.VMEM(cw.length, args[-1].dtype))
  if kind == "tpu" and k.slide is not None:  # the carried producer window (32-bit rows)
    g = k.slide[0]
    dt = g.dtype if g.dtype.itemsize >= 4 else (jnp.float32 if g.dtype.kind == "f" else jnp.int32)
    scratch.append(pltpu.VMEM(lay.domain, dt))
  grid_dims = k.grid

  def index_map(*g):
    return tuple(_block_ids(grid_dims, g, nd))

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


# ----------------------------------------------------------------------------- RDom updates

_SCATTER_OPS = ("add", "max", "min")
# Bins x scan points compared in one scan kernel (Triton holds them in registers).
SCAN_LIMIT = {"gpu": 1 << 16, "tpu": 1 << 20}
GPU_ONEHOT_LIMIT = 1 << 15  # bins x RDom-block cols of a default GPU scatter block


@dataclasses.dataclass
class _UpdateStep:
  """One update definition of a small 1-D Func, as a kernel over its RDom.

  The RDom is laid out as a 2-D array ``[r[1], r[0]]`` (a 1-D RDom as ``[1, r[0]]``): ``r[0]``,
  Halide's innermost, is the lane dim, as a row-major image read at ``[r.y, r.x]`` is.
  """

  kind: str  # "scatter": f[index(r)] op= value(r) | "scan": f[r] = f[r - 1] + value(r)
  op: str  # "add" | "max" | "min"
  index: ir.Expr | None  # scatter: the (data-dependent) bin
  value: ir.Expr
  rvars: list[Any]  # RVar per layout axis (None: the unit axis of a 1-D RDom)
  rmin: tuple[int, int]  # per layout axis
  rext: tuple[int, int]
  reads: dict[int, _Read]  # id(call) -> "buf" (shift per layout axis) | "scalar"
  block: tuple[int, int]
  tile: dict[str, Any]
  default_tile: bool


@dataclasses.dataclass
class _UpdateKernel:
  """A root 1-D Func whose updates all are kernels; its pure definition (the initial values)
  is evaluated by XLA."""

  fp: L.FuncPlan
  steps: list[_UpdateStep]


def _self_update(f: ir.Func, st: L.Stage) -> tuple[str, ir.Expr] | None:
  """``f[L] = f[L] op e`` (op commutative, e free of f) -> (op, e)."""
  su = B.self_update(f, st.args, st.value)
  return None if su is None or su[0] not in _SCATTER_OPS else (su[0], su[1])


ONEHOT_BINS = 64  # values of the data-dependent dim of an N-D scatter done as a one-hot sum


def _onehot_update(fp: L.FuncPlan) -> ir.Expr | None:
  """An N-D Func whose one update is a scatter-add ``f[.., idx(r, ..), ..] += e(r, ..)`` with
  every other index its own pure var (the bilateral grid's splat ``hist[c, z(r), gy, gx]``),
  a small static RDom and few values along the scattered dim, as one pure definition:
  ``init + sum_r select(idx(r) == v, e(r), 0)``. The kernel then computes each output block
  from its own inputs (a one-hot sum per point: no atomics, no scatter), and out-of-range
  indices contribute nothing, as XLA's scatter drops them. None if ``fp`` is not of that form.
  """
  f = fp.func
  if f.ndim < 2 or len(fp.stages) != 2:
    return None
  st = fp.stages[1]
  su = _self_update(f, st)
  if su is None or su[0] != "add" or st.rdom is None:
    return None
  names = [v.name for v in f.args]
  dd = None
  for j, a in enumerate(st.args):
    if isinstance(a, ir.Var) and a.name == names[j]:
      continue
    if dd is not None or not any(isinstance(n, ir.RVar) for n in ir.walk(a)):
      return None
    dd = j
  if dd is None or fp.region[dd][1] > ONEHOT_BINS:
    return None
  try:
    points = math.prod(B.static_int(e) for _, e in st.rdom.ranges)
  except (TypeError, ValueError):
    return None
  if points > UNROLL_LIMIT:
    return None
  e = ir.cast(f.dtype, su[1])
  hit = ir.select(st.args[dd] == f.args[dd], e, ir.cast(f.dtype, 0))
  return ir.cast(f.dtype, fp.stages[0].value + ir.reduce_sum(hit))


def _classify_rdom_call(c: ir.Call, rvars: list[Any], bounds) -> _Read:
  """A read inside an RDom update: a window of a root buffer at ``r + const`` per dim (in
  layout order), or a 1-D table at a constant index; anything else raises _Unsupported."""
  t = c.target
  if id(t) not in bounds:
    raise _Unsupported(f"read {_short(c)}: {t.name} is not a root buffer")
  lins = [B.linear(a) for a in c.args]
  if any(lin is None for lin in lins):
    raise _Unsupported(f"read {_short(c)} in an RDom update: a data-dependent index (a gather)")
  if all(not lin[0] for lin in lins) and len(c.args) == 1:
    return _Read("scalar", t, index=lins[0][1] - bounds[id(t)][0][0])
  # Per buffer dim: a constant, or an RVar + const; the RVars in the RDom's layout order.
  shift, axes = [], []
  for a, lin in zip(c.args, lins, strict=True):
    ax = [d for d, r in enumerate(rvars) if r is not None and lin[0] == {B.key(r): 1}]
    if lin[0] and not ax:
      raise _Unsupported(
        f"read {_short(c)} in an RDom update: index {_short(a)} must be an RVar + const or a "
        "constant (strided, transposed or mixed indices are gathers)"
      )
    axes.append(ax[0] if ax else -1)
    shift.append(int(lin[1]))
  used = [d for d in axes if d >= 0]
  want = [d for d, r in enumerate(rvars) if r is not None]
  if used != want:
    raise _Unsupported(
      f"read {_short(c)} in an RDom update: must index {[rvars[d].name for d in want]} in that "
      "order, each once (transposed or broadcast reads are not windows)"
    )
  return _Read("buf", t, tuple(shift), axes=tuple(axes))


def _update_block(
  f: ir.Func, st: Any, kind: str, rvars: list[Any], rext: tuple[int, int], dtypes, n_bins: int
) -> tuple[tuple[int, int], dict[str, Any], bool]:
  """RDom block (rows, cols) from the update's splits of its RVars, checked like a Func tile."""
  names = [None if r is None else r.name for r in rvars]
  req: list[int | None] = [None, None]
  tile: dict[str, Any] = {}
  for old, _, inner, fac in st.splits:
    if st.kind(inner) in ("vectorized", "unrolled"):
      continue
    if old not in names or req[names.index(old)] is not None:
      raise NotImplementedError(
        f"Func {f.name}: split of {old!r} in an update: the pallas backend splits each RVar "
        f"of the RDom ({[n for n in names if n]}) at most once"
      )
    req[names.index(old)] = fac
    tile[inner] = fac
  default = not tile
  sub = _sublane(dtypes)
  if default:
    if kind == "gpu":
      # Triton keeps the [bins, cols] one-hot tensor in registers: its compile time grows with
      # it (4096 bins x 128 cols: 103 s for H100), so cap it at 32K elements.
      cols = max(1, min(128, GPU_ONEHOT_LIMIT // _pow2(n_bins)))
      req = [min(_pow2(rext[0]), 8), min(_pow2(rext[1]), cols)]
    else:
      req = [None if rext[0] <= sub else sub, None if rext[1] <= 512 else 512]
    tile = {n or "1": "whole" if b is None else b for n, b in zip(names, req, strict=True)}
  block = []
  for d, (b, e) in enumerate(zip(req, rext, strict=True)):
    if names[d] is None:
      block.append(1)
      continue
    block.append(
      _legal_block(
        kind,
        b,
        e,
        128 if d == 1 else sub,
        f"Func {f.name}: update tile {tile}",
        names[d],
        f"{names[d]}'s block",
      )
    )
  return (block[0], block[1]), tile, default


def _plan_update(fp: L.FuncPlan, kind: str, bounds) -> _UpdateKernel:
  """Updates of a small 1-D Func as kernels: commutative scatters ``f[idx(r)] op= v(r)`` and
  prefix scans ``f[r] = f[r - 1] + e(r)``; raises _Unsupported (with why) otherwise."""
  f = fp.func
  why = f"{len(fp.stages) - 1} update definition(s)"
  if f.ndim != 1:
    raise _Unsupported(
      f"{why} of a {f.ndim}-D Func (only 1-D tables' RDom scatters/scans are kernels)"
    )
  n = fp.region[0][1]
  if n > TABLE_LIMIT:
    raise _Unsupported(f"{why} into {n} bins (> {TABLE_LIMIT}: a one-hot kernel would not fit)")
  if kind == "tpu" and f.dtype.itemsize != 4:
    raise _Unsupported(f"{why}: TPU kernels accumulate 32-bit values, {f.name} is {f.dtype}")
  steps = []
  for j, st in enumerate(fp.stages[1:], start=1):
    where = f"update {j} of {f.name}"
    if st.rdom is None or len(st.rdom.vars) > 2:
      raise _Unsupported(f"{where}: needs a 1-D or 2-D RDom")
    rv = list(st.rdom.vars)
    rvars = [None, rv[0]] if len(rv) == 1 else [rv[1], rv[0]]
    ranges = [(0, 1)] + [(B.static_int(m), B.static_int(e)) for m, e in st.rdom.ranges]
    if len(rv) == 2:
      ranges = [ranges[2], ranges[1]]
    rmin = (ranges[0][0], ranges[1][0])
    rext = (ranges[0][1], ranges[1][1])
    su = _self_update(f, st)
    scan = _xla._prefix_scan(f, st)
    if su is not None and not B.refs(st.args[0], f):
      ukind, (op, value), index = "scatter", su, st.args[0]
    elif scan is not None and len(rv) == 1:
      ukind, op, value, index = "scan", "add", scan[1], None
      limit = SCAN_LIMIT[kind]
      if _pow2(n) * _pow2(rext[1]) > limit:
        raise _Unsupported(
          f"{where}: scan of {rext[1]} points into {n} bins compares more than {limit} pairs"
        )
    else:
      raise _Unsupported(
        f"{where} is neither a commutative scatter f[idx(r)] op= v(r) (op in {_SCATTER_OPS}) "
        "nor a prefix scan f[r] = f[r - 1] + e(r)"
      )
    try:
      exprs = [_unroll(value)] + ([] if index is None else [_unroll(index)])
    except _Unsupported as e:
      raise _Unsupported(f"{where}: {e}") from None
    reads: dict[int, _Read] = {}
    dtypes = [f.dtype]
    for e in exprs:
      for node in ir.walk(e):
        if isinstance(node, ir.Reduce):
          raise _Unsupported(f"{where}: nested inline reduction")
        if isinstance(node, ir.Var):
          raise _Unsupported(f"{where}: reads pure var {node.name}")
        if isinstance(node, ir.Call):
          reads[id(node)] = _classify_rdom_call(node, rvars, bounds)
          if reads[id(node)].kind == "buf":
            dtypes.append(node.target.dtype)
    if ukind == "scan":
      block = (1, _pow2(rext[1]) if kind == "gpu" else _round_up(rext[1], 128))
      tile, default = {rvars[1].name: "whole"}, False
    else:
      block, tile, default = _update_block(
        f, f.definitions[j].schedule, kind, rvars, rext, dtypes, n
      )
    steps.append(
      _UpdateStep(
        ukind,
        op,
        exprs[1] if index is not None else None,
        exprs[0],
        rvars,
        rmin,
        rext,
        reads,
        block,
        tile,
        default,
      )
    )
  return _UpdateKernel(fp, steps)


def _identity(op: str, dtype: np.dtype) -> Any:
  if op == "add":
    return 0
  big = np.iinfo(dtype).max if dtype.kind in "iu" else np.inf
  return -big if op == "max" and dtype.kind != "u" else (0 if op == "max" else big)


_COMBINE = {"add": jnp.add, "max": jnp.maximum, "min": jnp.minimum}
_REDUCE = {"add": jnp.sum, "max": jnp.max, "min": jnp.min}


class _REval:
  """Evaluates an RDom update's expressions over ``dom`` (rows x cols of the RDom layout)."""

  def __init__(self, u: _UpdateStep, kind: str, refs: dict, origin, dom, load):
    self.u, self.kind, self.refs = u, kind, refs
    self.origin, self.dom, self.load = origin, dom, load
    self.memo: dict[int, Any] = {}
    self.intern = _xla._Interner()

  def __call__(self, e: ir.Expr) -> Any:
    key = self.intern(e)
    if key not in self.memo:
      self.memo[key] = self._ev(e)
    return self.memo[key]

  def _scalar(self, t: Any, index: Any, dtype) -> Any:
    ref = self.refs[id(t)]
    if self.kind == "tpu":
      return ref[index].astype(dtype)
    return ref[pl.ds(index, 1)].astype(dtype).reshape(1, 1)

  def _ev(self, e: ir.Expr) -> Any:
    if isinstance(e, ir.Const):
      return e.value if e.weak else np.asarray(e.value, e.dtype)
    if isinstance(e, ir.RVar):
      ax = 1 if e.index == 0 else 0
      return lax.broadcasted_iota(jnp.int32, self.dom, ax) + self.origin[ax]
    if isinstance(e, ir.Param):
      return self._scalar(e, 0, e.dtype)
    if isinstance(e, ir.BinOp):
      return _binop(e.op, self(e.a), self(e.b))
    if isinstance(e, ir.UnOp):
      return ir.UNARY_OPS[e.op](self(e.a))
    if isinstance(e, ir.Select):
      return jnp.where(self(e.cond), self(e.t), self(e.f))
    if isinstance(e, ir.Cast):
      return jnp.asarray(self(e.a)).astype(e.to)
    if isinstance(e, ir.Call):
      r = self.u.reads[id(e)]
      if r.kind == "scalar":
        return self._scalar(r.target, r.index, r.target.dtype)
      return self.load((id(r.target), r.shift, r.axes)).astype(r.target.dtype)
    raise TypeError(f"pallas backend cannot evaluate {e!r} in an RDom update")


def _update_operands(u: _UpdateStep, bufs: dict, params: dict, kind: str, steps: tuple):
  """(order, args) of the scalars and RDom windows an update step reads."""
  order: list[tuple[Any, str]] = []
  args = []
  seen: set = set()
  for r in u.reads.values():
    key = id(r.target) if r.kind == "scalar" else (id(r.target), r.shift, r.axes)
    if key in seen:
      continue
    seen.add(key)
    if r.kind == "scalar":
      a = bufs[key][0].reshape(-1)
      if kind == "tpu":  # SMEM holds 32-bit words
        a = a.astype(jnp.float32 if a.dtype.kind == "f" else jnp.int32)
      order.append((key, "scalar"))
      args.append(a)
      continue
    arr, amin = bufs[id(r.target)]
    lo = [c if d < 0 else u.rmin[d] + c for c, d in zip(r.shift, r.axes, strict=True)]
    size = [1 if d < 0 else steps[d] * u.block[d] for d in r.axes]
    win = _prepare(arr, amin, lo, size)
    order.append((key, "buf"))
    args.append(win.reshape(steps[0] * u.block[0], steps[1] * u.block[1]))
  for e in (u.index, u.value):
    for node in [] if e is None else ir.walk(e):
      if isinstance(node, ir.Param) and id(node) not in seen:
        seen.add(id(node))
        a = jnp.asarray(params[id(node)]).reshape(1)
        if kind == "tpu":
          a = a.astype(jnp.float32 if a.dtype.kind == "f" else jnp.int32)
        order.append((id(node), "scalar"))
        args.append(a)
  return order, args


def _scatter_body(*refs, u: _UpdateStep, f: ir.Func, kind: str, order, n_pad: int, fmin: int):
  """One RDom block: per row, a one-hot compare of its bins against all of f's bins, reduced
  along the row (lanes). TPU: the output block is all of f, resident over the ("arbitrary")
  grid and initialised from f's current values at the first step. GPU: one partial per block."""
  n_in = len(order)
  ins, cur_ref, out_ref, scratch = refs[:n_in], refs[n_in], refs[n_in + 1], refs[n_in + 2 :]
  by_key = {key: r for (key, _), r in zip(order, ins, strict=True)}
  by, bx = u.block
  src = dict(by_key)
  if kind == "tpu":  # rows are loaded at dynamic offsets: only unpacked (32-bit) layouts
    narrow = [key for key, what in order if what == "buf" and by_key[key].dtype.itemsize < 4]
    for key, scr in zip(narrow, scratch, strict=True):
      scr[...] = by_key[key][...].astype(scr.dtype)
      src[key] = scr
  i0 = pl.program_id(0) * by
  j0 = pl.program_id(1) * bx
  dt = f.dtype
  ident = _identity(u.op, dt)
  bins = lax.broadcasted_iota(jnp.int32, (n_pad, 1), 0) + fmin
  lanes = lax.broadcasted_iota(jnp.int32, (1, bx), 1)

  def body(r, acc):
    origin = (u.rmin[0] + i0 + r, u.rmin[1] + j0)
    ev = _REval(u, kind, by_key, origin, (1, bx), lambda key: src[key][pl.ds(r, 1), :])
    idx = jnp.broadcast_to(jnp.asarray(ev(u.index)).astype(jnp.int32), (1, bx))
    val = jnp.broadcast_to(jnp.asarray(ev(u.value)).astype(dt), (1, bx))
    valid = (i0 + r < u.rext[0]) & (j0 + lanes < u.rext[1])  # ragged RDom blocks
    hit = (idx == bins) & valid  # [n_pad, bx]
    part = _REDUCE[u.op](jnp.where(hit, val, jnp.asarray(ident, dt)), axis=1, keepdims=True)
    return _COMBINE[u.op](acc, part)

  acc = lax.fori_loop(0, by, body, jnp.full((n_pad, 1), ident, dt))
  if kind == "gpu":
    out_ref[...] = acc.reshape(1, n_pad, 1)
    return

  @pl.when((pl.program_id(0) == 0) & (pl.program_id(1) == 0))
  def _():
    out_ref[...] = cur_ref[...]

  out_ref[...] = _COMBINE[u.op](out_ref[...], acc)


def _scan_body(*refs, u: _UpdateStep, f: ir.Func, kind: str, order, n_pad: int, fmin: int):
  """``f[i] = f[rmin - 1] + sum(e[j] for rmin <= j <= i)`` for i in the scan's range, as a
  triangular compare-and-sum over all (bin, point) pairs: exact for integers."""
  n_in = len(order)
  ins, cur_ref, base_ref, out_ref = refs[:n_in], refs[n_in], refs[n_in + 1], refs[n_in + 2]
  by_key = {key: r for (key, _), r in zip(order, ins, strict=True)}
  bx = u.block[1]
  dt = f.dtype
  ev = _REval(u, kind, by_key, (0, u.rmin[1]), (1, bx), lambda key: by_key[key][...])
  e = jnp.broadcast_to(jnp.asarray(ev(u.value)).astype(dt), (1, bx))
  lanes = lax.broadcasted_iota(jnp.int32, (1, bx), 1)
  i = lax.broadcasted_iota(jnp.int32, (n_pad, 1), 0) + fmin
  hit = (lanes + u.rmin[1] <= i) & (lanes < u.rext[1])
  s = jnp.sum(jnp.where(hit, e, jnp.zeros((), dt)), axis=1, keepdims=True)
  base = base_ref[0] if kind == "tpu" else base_ref[pl.ds(0, 1)].reshape(1, 1)
  inside = (i >= u.rmin[1]) & (i < u.rmin[1] + u.rext[1])
  out_ref[...] = jnp.where(inside, base.astype(dt) + s, cur_ref[...])


def _run_update(u: _UpdateStep, fp: L.FuncPlan, arr, bufs, params, kind, interpret, num_warps):
  """One update step of a 1-D Func: ``arr`` (its current values) -> the updated values."""
  f = fp.func
  fmin, n = fp.region[0]
  n_pad = _pow2(n) if kind == "gpu" else _round_up(n, 8)
  steps = tuple(-(-e // b) for e, b in zip(u.rext, u.block, strict=True))
  order, args = _update_operands(u, bufs, params, kind, steps)
  smem = pltpu.SMEM if kind == "tpu" else pl.ANY
  cur = jnp.pad(arr, (0, n_pad - n)).reshape(n_pad, 1)
  whole = pl.BlockSpec((n_pad, 1), lambda *_: (0, 0))
  specs = [
    pl.BlockSpec(memory_space=smem)
    if what == "scalar"
    else pl.BlockSpec(u.block, lambda i, j: (i, j))
    for _, what in order
  ]
  static = dict(u=u, f=f, kind=kind, order=order, n_pad=n_pad, fmin=fmin)
  name = f"jaxsched_{f.name}_update"
  if u.kind == "scan":
    base = lax.dynamic_slice_in_dim(arr, u.rmin[1] - 1 - fmin, 1)
    if kind == "tpu":
      base = base.astype(jnp.float32 if base.dtype.kind == "f" else jnp.int32)
    params_c = None
    if not interpret:
      params_c = pltpu.CompilerParams() if kind == "tpu" else _triton_params(num_warps)
    out = pl.pallas_call(
      functools.partial(_scan_body, **static),
      out_shape=jax.ShapeDtypeStruct((n_pad, 1), f.dtype),
      grid=(1, 1),
      in_specs=[*specs, whole, pl.BlockSpec(memory_space=smem)],
      out_specs=whole,
      compiler_params=params_c,
      interpret=interpret,
      name=name,
    )(*args, cur, base)
    return out.reshape(n_pad)[:n]
  scratch = []
  if kind == "tpu":
    for (_, what), a in zip(order, args, strict=True):
      if what == "buf" and a.dtype.itemsize < 4:
        scratch.append(pltpu.VMEM(u.block, jnp.float32 if a.dtype.kind == "f" else jnp.int32))
  params_c = None
  if not interpret:
    if kind == "tpu":  # the accumulator is resident: both grid axes are sequential
      params_c = pltpu.CompilerParams(dimension_semantics=("arbitrary", "arbitrary"))
    else:
      params_c = _triton_params(num_warps)
  if kind == "tpu":
    out_shape = jax.ShapeDtypeStruct((n_pad, 1), f.dtype)
    out_spec = whole
  else:  # Triton programs run in parallel: one partial per RDom block, combined below
    out_shape = jax.ShapeDtypeStruct((steps[0] * steps[1], n_pad, 1), f.dtype)
    out_spec = pl.BlockSpec((1, n_pad, 1), lambda i, j: (i * steps[1] + j, 0, 0))
  out = pl.pallas_call(
    functools.partial(_scatter_body, **static),
    out_shape=out_shape,
    grid=steps,
    in_specs=[*specs, whole],
    out_specs=out_spec,
    scratch_shapes=scratch,
    compiler_params=params_c,
    interpret=interpret,
    name=name,
  )(*args, cur)
  if kind == "gpu":
    red = {"add": jnp.sum, "max": jnp.max, "min": jnp.min}[u.op]
    out = _COMBINE[u.op](red(out, axis=0), cur)
  return out.reshape(n_pad)[:n]


def _triton_params(num_warps: int) -> Any:
  return pl_triton.CompilerParams(num_warps=num_warps, num_stages=1)


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


def _update_detail(k: _UpdateKernel, kind: str) -> str:
  parts = ["initial values (pure definition) by XLA"]
  for j, u in enumerate(k.steps, start=1):
    steps = [-(-e // b) for e, b in zip(u.rext, u.block, strict=True)]
    tile = ("default " if u.default_tile else "") + f"tile {u.tile}"
    if u.kind == "scan":
      parts.append(
        f"update {j}: prefix scan over {u.rext[1]} points as one triangular compare-and-sum "
        f"kernel (block {u.block})"
      )
      continue
    acc = (
      "one resident accumulator over an 'arbitrary' grid"
      if kind == "tpu"
      else "one partial per block, combined by XLA"
    )
    parts.append(
      f"update {j}: scatter-{u.op} (one-hot compare per RDom row) over RDom {tile}, block "
      f"{u.block}, grid {steps}, {acc}"
    )
  return "; ".join(parts)


def _report(lows, kind: str) -> PallasReport:
  rep = []
  for fp, k in lows:
    if isinstance(k, str):
      rep.append(FuncReport(fp.func.name, "xla", k))
      continue
    if isinstance(k, _UpdateKernel):
      rep.append(FuncReport(fp.func.name, "pallas", _update_detail(k, kind)))
      continue
    kids = [kp.func.name for kp, _ in k.children]
    # Dimension semantics exist on TPU only (Triton runs every program in parallel).
    args = k.fp.func.args
    grid = [
      (
        "*".join(args[e].name for e, _ in d) if isinstance(d, tuple) else args[d].name,
        n,
        *((s,) if kind == "tpu" else ()),
      )
      for d, n, s in k.grid
    ]
    tile = ("default " if k.default_tile else "") + f"tile {k.tile}"
    detail = f"{tile}, block {k.block}, grid {grid}"
    if fp.func.ndim == 1:  # _as_row
      detail = f"table of {fp.region[0][1]} entries as a [1, n] row: block {k.block}, grid {grid}"
    if kids:
      detail += f", computes {kids} per block + halo"
    if len(fp.stages) > 1:
      detail += (
        ", its scatter-add update as a one-hot sum over the RDom per output point (no scatter)"
      )
    resampled = sorted(
      {
        r.target.name
        for rd in k.reads.values()
        for r in rd.values()
        if isinstance(r.target, _Derived)
      }
    )
    if resampled:
      detail += f", reads resampled copies {resampled} (prepared by XLA: strided/repeated rows)"
    sel = sorted(
      {r.target.name for rd in k.reads.values() for r in rd.values() if r.call is not None}
    )
    if sel and kind == "gpu":
      detail += f", gathers {sel} at data-dependent indices (Triton pointer loads)"
    elif sel:
      detail += (
        f", upsamples the planes of {sel} in-kernel (one-hot matmuls per plane) and selects "
        "among them by data"
      )
    if k.lut_range:
      tabs = sorted(
        {r.target.name for rd in k.reads.values() for r in rd.values() if r.kind == "lut"}
      )
      detail += f", looks up {tabs} in-kernel (data-dependent index: a compare-select loop)"
    # store_at an outer loop (Halide's sliding window): a carried VMEM window on TPU when the
    # schedule allows it, else overlapped tiling. Say which, with the producer rows computed.
    slid = [c.func.name for c in (fp.group.children if fp.group else []) if c.mode != "tile"]
    if k.slide is not None:
      st = slide_stats(k)
      detail += (
        f"; sliding window (store_at) of {slid} as a carried VMEM window along "
        f"{k.fp.func.args[st['dim']].name!r} (grid axis {st['axis']} 'arbitrary'): per store "
        f"scope {st['window']} rows first, then {st['new']} new rows per step; producer rows "
        f"computed {st['rows']} (overlapped tiling would compute {st['overlapped_rows']})"
      )
      if k.slide_note:
        detail += f" [{k.slide_note}]"
    elif k.row_slide is not None:
      st = row_slide_stats(k)
      detail += (
        f"; sliding window (store_at) of {slid} inside each block: a loop over the block's "
        f"{st['rows']} rows along {k.fp.func.args[st['dim']].name!r} carries the producer's "
        f"last rows, computing {st['computed']} producer rows per block (recomputing per tap "
        f"would compute {st['per_tap']}); blocks run in parallel, each recomputes its halo"
      )
    elif slid:
      detail += (
        f"; sliding window (store_at) of {slid} computed as overlapped tiling: no reuse "
        f"across blocks ({k.slide_note})"
      )
    rep.append(FuncReport(fp.func.name, "pallas", detail))
  return PallasReport(kind, rep)


def slide_stats(k: _Kernel) -> dict[str, int]:
  """Producer rows (along the slid dim) computed by a carried sliding-window kernel ``k``."""
  _, d, axis = k.slide
  lay = _layout(k, "tpu")
  w, n = lay.domain[d], k.block[d]
  steps = k.grid[axis][1]
  scopes = int(np.prod([s for _, s, _ in k.grid[:axis]] or [1]))
  return {
    "dim": d,
    "axis": axis,
    "window": w,
    "new": n,
    "rows": scopes * (w + (steps - 1) * n),
    "overlapped_rows": scopes * steps * w,
  }


def row_slide_stats(k: _Kernel, d: int | None = None) -> dict[str, int]:
  """Producer rows per block of a GPU row slide along ``d`` (default: ``k.row_slide``'s), and
  the count recomputing the producer per tap would take."""
  d = k.row_slide[1] if d is None else d
  wins = _row_windows(k, d)
  n = k.block[d]
  taps = {r.shift for r in k.reads[id(k.value)].values() if r.kind == "child"}
  computed = sum(n + hi - lo for lo, hi in wins.values())
  return {"dim": d, "rows": n, "computed": computed, "per_tap": len(taps) * n}


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
    input_shapes = pipeline.estimated_input_shapes(output_shape, caller="describe()")
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
      if isinstance(k, _UpdateKernel):
        exts = tuple(e for _, e in fp.region)
        arr = _xla._eval_pure(fp, mins, exts, bufs, params)  # initial values
        for u in k.steps:
          arr = _run_update(u, fp, arr, bufs, params, kind, interpret, num_warps)
      elif not isinstance(k, str):
        arr = _run_kernel(k, bufs, params, kind, interpret, num_warps)
        arr = arr.reshape([e for _, e in fp.region])  # a table's [1, n] row back to [n]
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


def _grid_tiles(names: Sequence[str], tgy: int) -> Callable[[Any], None]:
  def sched(g: Any) -> None:
    v = g.vars
    for n in names:
      g.funcs[n].compute_root().split(v["gy"], "gyo", "gyi", tgy)

  sched.__doc__ = f"Grid blurs {list(names)} as kernels, blocks of {tgy} grid rows x all columns."
  return sched


def _ll_tiled(g: Any, ty: int, tx: int) -> None:
  """Every pyramid level root (Halide's breadth-first schedule), full-res stages tiled."""
  _apps.get_app("local_laplacian").schedules["xla"]["root"](g)
  y, x = g.vars["y"], g.vars["x"]
  g.funcs["output"].tile(x, y, "xo", "yo", "xi", "yi", tx, ty)
  g.funcs["inGPyramid0"].tile(x, y, "xo", "yo", "xi", "yi", tx, ty)


def _hist_eq(ty: int, tx: int) -> Callable[[Any], None]:
  def sched(g: Any) -> None:
    v = g.vars
    g.funcs["equalized"].tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    g.funcs["hist"].update(0).split("r.x", "rxo", "rxi", tx).split("r.y", "ryo", "ryi", ty)

  sched.__doc__ = (
    f"hist's RDom and the lookup in {ty}x{tx} blocks (uint8: TPU blocks take 32-row multiples)."
  )
  return sched


# The apps below read through lookup tables, resample (pyramids' 2x / x/2, Bayer planes), select
# levels by data, gather from upsampled grids or reduce with RDom updates: all of it kernels.
_CAMERA_ROOT = ["curve", "g_gr", "r_r", "b_b", "g_gb"]
PALLAS_SCHEDULES.update(
  {
    "histogram_equalize": (
      {
        "default": _roots([]),
        "tiled": _hist_eq(32, 256),
        "tiled_small": _hist_eq(32, 128),
      },
      "tiled",
    ),
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
        "tiled": _grid_tiles(["blurz", "blurx", "blury"], 32),
        "tiled_small": _grid_tiles(["blurz", "blurx", "blury"], 16),
      },
      "tiled",
    ),
    "local_laplacian": (
      {
        "root": lambda g: _apps.get_app("local_laplacian").schedules["xla"]["root"](g),
        "tiled": lambda g: _ll_tiled(g, 16, 128),
        "tiled_small": lambda g: _ll_tiled(g, 8, 128),
      },
      "tiled",
    ),
  }
)


for _name, (_scheds, _default) in PALLAS_SCHEDULES.items():
  for _sname, _fn in _scheds.items():
    _apps.add_schedule(_name, "pallas", _sname, _fn, default=_sname == _default)
