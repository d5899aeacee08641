"""``x @ W`` for a Viterbi-compressed ``W [K, N]``: a Pallas kernel that decodes the mask in-kernel.

Per ``[tile_k, tile_n]`` tile of ``W`` the kernel

1. decodes the mask from the packed input bits: one int32 word per column stream; gate outputs
   for all steps at once are XORs of the word shifted left by each tap distance (bit ``t`` of
   ``word << d`` is ``u[t - d]``), a comparator is evaluated bit-sliced on those words, and mask
   row ``i`` is bit ``i // R`` of output ``i % R``. Only bitwise ops on int32 vectors with static
   shifts along bits, no lane shuffles (Mosaic- and Triton-friendly);
2. finds each kept weight's index in the tile's value segment with an in-tile prefix sum done on
   the matrix unit: ``strict_lower[tk, tk] @ mask`` counts kept weights above in the column and
   ``(ones @ mask) @ strict_upper[tn, tn]`` counts those in earlier columns (0/1 bf16 operands with
   f32 accumulation are exact here: counts <= tile_k <= 256 and <= 2**24);
3. gathers the values (``values[offsets[tile] + index]``), builds the dense tile and multiplies.

Variants: GPU (Triton) and CPU interpret run a 2-D grid over (m, n) blocks looping over K tiles;
TPU (Mosaic) a 3-D grid with the K tiles innermost ("arbitrary"), a VMEM f32 accumulator, the
tile offsets as scalar prefetch and each tile's value window DMA'd from HBM. ``M`` is padded to
``block_m``; ``K`` and ``N`` are padded by the matrix format (padding is never kept).

``jax.grad``: a custom VJP; ``dx = g @ W.T`` and ``dvalues`` = the entries of ``x.T @ g`` at
the kept positions in decode order (the mask is fixed), both on the XLA path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from jaxsched.pallas import config as _config
from jaxsched.pallas import targets as _targets
from jaxsched.sparse._decompressor import ViterbiDecompressor
from jaxsched.sparse._format import ViterbiSparseMatrix

__all__ = ["ViterbiMatmulConfig", "viterbi_matmul", "viterbi_matmul_reference"]

_DTYPES = ("float32", "bfloat16")
_MAX_TILE_K = 256  # in-tile counts must stay exact in bf16 (8 significant bits)


@dataclasses.dataclass(frozen=True, slots=True)
class ViterbiMatmulConfig:
  """Tunables of :func:`viterbi_matmul`. The K/N tiles are the matrix's (``tile_k``, ``tile_n``).

  Attributes:
    block_m: rows of ``x`` / the output per program.
    num_warps: Triton warps per program (GPU only).
    num_stages: Triton pipelining depth of the K-tile loop (GPU only). Only 1: Triton's
      software pipeliner aborts the process ("pipeliner doesn't know how to predicate this
      op") on the data-dependent dots of the decode in this loop (jax 0.10.2, H100).
  """

  block_m: int = dataclasses.field(default=128, metadata={"choices": (8, 16, 32, 64, 128, 256)})
  # 2 warps: Triton fails to compile the kernel for H100 ("Failed to compile Triton kernel").
  num_warps: int = dataclasses.field(default=4, metadata={"choices": (4, 8), "kinds": ("gpu",)})
  num_stages: int = dataclasses.field(default=1, metadata={"choices": (1,), "kinds": ("gpu",)})

  def __post_init__(self):
    _config.validate_choices(self)


# Kernel pieces


def _decode_tile(words, *, vd: ViterbiDecompressor, tile_k: int):
  """words [1, tn] int32 (bit t = input bit t of each column's stream) -> [tile_k, tn] bool."""
  gates = []
  for tap in vd.taps:
    g = jnp.zeros_like(words)
    for d in range(vd.num_ff + 1):
      if (tap >> d) & 1:
        g = g ^ (words << d)  # bit t holds u[t - d]; zeros shift in = cleared register
    gates.append(g)
  r, gb = vd.outputs_per_bit, vd.group_bits
  outs = []
  for o in range(r):
    group = gates[o * gb:(o + 1) * gb]
    if vd.comparator is None:
      outs.append(group[0])
      continue
    # Bit-sliced "value < threshold", MSB first, for all 32 steps at once.
    lt, eq = jnp.zeros_like(words), jnp.full_like(words, -1)
    for b in reversed(range(gb)):
      if (vd.comparator.threshold >> b) & 1:
        lt = lt | (eq & ~group[b])
        eq = eq & group[b]
      else:
        eq = eq & ~group[b]
    outs.append(lt)
  shape = (tile_k, words.shape[1])
  row = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  # lax.div/rem: jnp's floor division lowers through sign(), which Mosaic resolves per chip.
  step, out = jax.lax.div(row, np.int32(r)), jax.lax.rem(row, np.int32(r))
  sel = jnp.broadcast_to(outs[0], shape)
  for o in range(1, r):
    sel = jnp.where(out == o, jnp.broadcast_to(outs[o], shape), sel)
  return (jax.lax.shift_right_logical(sel, step) & 1) == 1


def _dense_tile(words, base, values_ref, *, vd, tile_k, row0, col0, shape, window):
  """Decodes a tile's mask, gathers its values and returns the dense [tile_k, tn] tile.

  ``window`` None: gather ``values_ref[base + index]`` (Triton, interpret). Otherwise ``window``
  is ``[1, cap]`` holding the tile's values from lane ``base`` on, gathered with matmuls.
  """
  tn = words.shape[1]
  mask = _decode_tile(words, vd=vd, tile_k=tile_k)
  rows = row0 + jax.lax.broadcasted_iota(jnp.int32, mask.shape, 0)
  cols = col0 + jax.lax.broadcasted_iota(jnp.int32, mask.shape, 1)
  mask = mask & (rows < shape[0]) & (cols < shape[1])  # padding is never stored
  mf = mask.astype(jnp.bfloat16)
  ik = jax.lax.broadcasted_iota(jnp.int32, (tile_k, tile_k), 0)
  jk = jax.lax.broadcasted_iota(jnp.int32, (tile_k, tile_k), 1)
  lower = (jk < ik).astype(jnp.bfloat16)  # [i, i']: i' above i
  above = jnp.dot(lower, mf, preferred_element_type=jnp.float32)
  if window is not None:
    return _onehot_gather(mask, above, window, base)
  totals = jnp.dot(jnp.ones((tile_k, tile_k), jnp.bfloat16), mf,
                   preferred_element_type=jnp.float32)  # every row: kept per column
  ia = jax.lax.broadcasted_iota(jnp.int32, (tn, tn), 0)
  ja = jax.lax.broadcasted_iota(jnp.int32, (tn, tn), 1)
  upper = (ia < ja).astype(jnp.bfloat16)  # [j', j]: j' left of j
  left = jnp.dot(totals.astype(jnp.bfloat16), upper, preferred_element_type=jnp.float32)
  idx = jnp.where(mask, base + (above + left).astype(jnp.int32), 0)
  vals = values_ref[idx]
  return jnp.where(mask, vals, jnp.zeros_like(vals))


def _onehot_gather(mask, above, window, shift):
  """Mosaic has no general vector gather: build the tile as ``(R * w) @ C.T`` on the MXU.

  For value slot ``p`` of the window, ``C[p, j]`` marks its column (the column whose segment
  ``[colstart_j, colstart_j + cnt_j)`` holds it) and ``R[p, i]`` its row: the number of rows of
  that column whose inclusive kept-count is at most the slot's rank in the column. Only
  iota comparisons, reductions and matmuls, with slots along lanes.
  """
  tk, tn = mask.shape
  cap = window.shape[1]
  mf = mask.astype(jnp.float32)
  cnt_row = jnp.sum(mf, axis=0, keepdims=True)  # [1, tn]
  jj = jax.lax.broadcasted_iota(jnp.int32, (tn, tn), 0)
  jp = jax.lax.broadcasted_iota(jnp.int32, (tn, tn), 1)
  colstart = jnp.sum(jnp.where(jp < jj, cnt_row, 0.0), axis=1, keepdims=True)  # [tn, 1]
  cnt_col = jnp.sum(jnp.where(jp == jj, cnt_row, 0.0), axis=1, keepdims=True)  # [tn, 1]
  p = (jax.lax.broadcasted_iota(jnp.int32, (1, cap), 1) - shift).astype(jnp.float32)
  ct = ((colstart <= p) & (p < colstart + cnt_col)).astype(jnp.float32)  # [tn, cap]
  valid = jnp.sum(ct, axis=0, keepdims=True) > 0  # [1, cap]
  rank = p - jnp.sum(ct * colstart, axis=0, keepdims=True)  # slot's rank in its column
  incl = (above + mf).astype(jnp.bfloat16)  # <= 256: exact in bf16
  g = jnp.dot(incl, ct.astype(jnp.bfloat16), preferred_element_type=jnp.float32)  # [tk, cap]
  row_p = jnp.sum((g <= rank).astype(jnp.float32), axis=0, keepdims=True)  # [1, cap]
  ri = jax.lax.broadcasted_iota(jnp.int32, (tk, cap), 0).astype(jnp.float32)
  rw = jnp.where((ri == row_p) & valid, window.astype(jnp.float32), 0.0)  # [tk, cap]
  return jax.lax.dot_general(rw, ct, (((1,), (1,)), ((), ())),
                             precision=jax.lax.Precision.HIGHEST,
                             preferred_element_type=jnp.float32)  # exact one-hot copy


def _vmm_loop_kernel(x_ref, bits_ref, off_ref, values_ref, o_ref, *, k_tiles, **kw):
  """GPU/interpret variant: one (block_m, tile_n) output block, looping over the K tiles."""
  # x_ref [bm, Kp]; bits_ref [kt, 1, tn]; off_ref [kt, 1]; values_ref [nnz]; o_ref [bm, tn]
  tile_k = kw["tile_k"]
  j = pl.program_id(1)

  def body(kk, acc):
    start = pl.multiple_of(kk * tile_k, tile_k)
    dense = _dense_tile(bits_ref[kk], off_ref[kk, 0], values_ref, row0=start,
                        col0=j * o_ref.shape[1], window=None, **kw)
    x = x_ref[:, pl.ds(start, tile_k)]
    return acc + jnp.dot(x, dense.astype(x.dtype), preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, k_tiles, body, jnp.zeros(o_ref.shape, jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _vmm_grid_kernel(off_ref, x_ref, bits_ref, values_hbm, o_ref, win_ref, acc_ref, *,
                     n_tiles, **kw):
  """TPU variant: K tiles innermost; the tile's value window is DMA'd into VMEM."""
  # off_ref [kt * nt] (SMEM); x_ref [bm, tk]; bits_ref [1, tn]; values_hbm [1, nnz + cap]
  j, kk = pl.program_id(1), pl.program_id(2)

  @pl.when(kk == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  off = off_ref[kk * n_tiles + j]
  start = pl.multiple_of(off & -128, 128)  # lane-aligned DMA; the remainder goes in the index
  pltpu.sync_copy(values_hbm.at[:, pl.ds(start, win_ref.shape[1])], win_ref)
  dense = _dense_tile(bits_ref[...], off - start, None, row0=kk * kw["tile_k"],
                      col0=j * o_ref.shape[1], window=win_ref[...], **kw)
  x = x_ref[...]
  acc_ref[...] += jnp.dot(x, dense.astype(x.dtype), preferred_element_type=jnp.float32)

  @pl.when(kk == pl.num_programs(2) - 1)
  def _store():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _use_grid_variant(kind: str, interpret: Any) -> bool:
  return kind == "tpu" or isinstance(interpret, pltpu.InterpretParams)


def _vmm_call(x, bits, values, offsets, *, fmt, config, target, interpret):
  """Pads x, runs the target's kernel variant and slices. Traced inside the private jit."""
  vd, tile_k, tile_n, shape, cap = fmt
  m = x.shape[0]
  kt, np_ = bits.shape
  nt = np_ // tile_n
  bm = config.block_m
  mp = _config.round_up(m, bm)
  x = jnp.pad(x, ((0, mp - m), (0, kt * tile_k - x.shape[1])))
  words = jax.lax.bitcast_convert_type(bits, jnp.int32).reshape(kt, 1, np_)
  kw = dict(vd=vd, tile_k=tile_k, shape=shape)
  out_shape = jax.ShapeDtypeStruct((mp, np_), x.dtype)
  cost = pl.CostEstimate(
      flops=2 * mp * np_ * kt * tile_k, transcendentals=0,
      bytes_accessed=(mp * kt * tile_k * nt + mp * np_) * x.dtype.itemsize
      + (words.size * 4 + values.size * values.dtype.itemsize) * (mp // bm))
  if _use_grid_variant(target.kind, interpret):
    # [1, nnz + cap]: every tile's fixed-size window stays in bounds (2-D for Mosaic).
    padded = jnp.pad(values, (0, cap)).reshape(1, -1)
    params = None
    if not interpret:
      params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(mp // bm, nt, kt),
        in_specs=[
            pl.BlockSpec((bm, tile_k), lambda i, j, kk, off: (i, kk)),
            pl.BlockSpec((None, 1, tile_n), lambda i, j, kk, off: (kk, 0, j)),
            pl.BlockSpec(memory_space=pl.ANY),
        ],
        out_specs=pl.BlockSpec((bm, tile_n), lambda i, j, kk, off: (i, j)),
        scratch_shapes=[pltpu.VMEM((1, cap), values.dtype), pltpu.VMEM((bm, tile_n), jnp.float32)],
    )
    out = pl.pallas_call(
        functools.partial(_vmm_grid_kernel, n_tiles=nt, **kw),
        out_shape=out_shape, grid_spec=grid_spec, compiler_params=params,
        interpret=interpret, cost_estimate=cost, name="jaxsched_viterbi_matmul",
    )(offsets.reshape(-1), x, words, padded)
  else:
    params = None
    if not interpret and target.kind == "gpu":
      params = pl_triton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
    out = pl.pallas_call(
        functools.partial(_vmm_loop_kernel, k_tiles=kt, **kw),
        out_shape=out_shape,
        grid=(mp // bm, nt),
        in_specs=[
            pl.BlockSpec((bm, kt * tile_k), lambda i, j: (i, 0)),
            pl.BlockSpec((kt, 1, tile_n), lambda i, j: (0, 0, j)),
            pl.BlockSpec((kt, 1), lambda i, j: (0, j)),
            pl.BlockSpec(values.shape, lambda i, j: (0,)),
        ],
        out_specs=pl.BlockSpec((bm, tile_n), lambda i, j: (i, j)),
        compiler_params=params, interpret=interpret, cost_estimate=cost,
        name="jaxsched_viterbi_matmul",
    )(x, words, offsets, values)
  return out[:m, :shape[1]]


def _to_dense(bits, values, offsets, fmt):
  vd, tile_k, tile_n, shape, _ = fmt
  return ViterbiSparseMatrix(bits, values, offsets, shape, vd, tile_k, tile_n).to_dense()


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _vmm(x, bits, values, offsets, fmt, config, target, interpret):
  return _vmm_call(x, bits, values, offsets, fmt=fmt, config=config, target=target,
                   interpret=interpret)


def _vmm_fwd(x, bits, values, offsets, fmt, config, target, interpret):
  out = _vmm(x, bits, values, offsets, fmt, config, target, interpret)
  return out, (x, bits, values, offsets)


def _vmm_bwd(fmt, config, target, interpret, res, g):
  del config, target, interpret
  x, bits, values, offsets = res
  dense, pullback = jax.vjp(lambda v: _to_dense(bits, v, offsets, fmt), values)
  g = g.astype(jnp.float32)
  dx = jnp.dot(g, dense.T.astype(jnp.float32)).astype(x.dtype)
  (dvalues,) = pullback(jnp.dot(x.T.astype(jnp.float32), g).astype(values.dtype))
  zero = lambda a: np.zeros(a.shape, jax.dtypes.float0)
  return dx, zero(bits), dvalues, zero(offsets)


_vmm.defvjp(_vmm_fwd, _vmm_bwd)
_vmm_jit = jax.jit(_vmm, static_argnums=(4, 5, 6, 7))


# Public wrapper


def _validate(shapes: _config.Shapes, dtype: str, *, tile_k: int, tile_n: int) -> dict[str, Any]:
  if len(shapes) != 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
    raise ValueError(f"viterbi_matmul needs x [m, k] and W [k, n], got {shapes=}")
  (m, k), (k2, n) = shapes
  if k != k2:
    raise ValueError(f"viterbi_matmul contraction dims differ: x.shape={shapes[0]}, "
                     f"W.shape={shapes[1]}")
  if min(m, k, n) < 1:
    raise ValueError(f"viterbi_matmul needs non-empty operands, got {shapes=}")
  if dtype not in _DTYPES:
    raise ValueError(f"viterbi_matmul {dtype=} is not supported; valid dtypes: {_DTYPES}")
  if not 1 <= tile_k <= _MAX_TILE_K:
    raise ValueError(f"{tile_k=} must be in [1, {_MAX_TILE_K}] for the kernel's exact in-tile "
                     "prefix sums; re-prune with a smaller tile_k")
  return {"tile_k": tile_k, "tile_n": tile_n}


def _block_dims(shapes: _config.Shapes, **params: Any) -> dict[str, int]:
  del params
  return {"block_m": shapes[0][0]}


def _pow2(v: int) -> bool:
  return v > 0 and v & (v - 1) == 0


def _check(cfg: ViterbiMatmulConfig, shapes: _config.Shapes, dtype: str,
           target: _targets.Target, *, hard_only: bool, tile_k: int, tile_n: int) -> str | None:
  """Why ``cfg`` (with the matrix's tiles) is invalid on ``target`` (None if valid)."""
  (m, k), (_, n) = shapes
  bm = cfg.block_m
  if target.kind == "gpu":
    for name, v in (("tile_k", tile_k), ("tile_n", tile_n)):
      if not _pow2(v) or v < 16:
        return f"Triton needs power-of-two tiles >= 16 for dots: matrix {name}={v}"
    if bm < 16:
      return f"Triton dots need block_m >= 16, got {bm=}"
  if target.kind == "tpu":
    if not _config.tpu_sublane_ok(bm, m, dtype):
      return f"TPU tiling: block_m={bm} must be a multiple of 8 (16 for bf16) (m={m})"
    if tile_n % 128:
      return f"TPU tiling: matrix tile_n={tile_n} must be a multiple of 128"
    if tile_k % 128 and tile_k < k:
      return f"TPU tiling: matrix tile_k={tile_k} must be a multiple of 128 or cover k={k}"
  if hard_only:
    return None
  if not _config.not_oversized(bm, m, _config.choices(ViterbiMatmulConfig)["block_m"]):
    return f"block_m={bm} is larger than needed for m={m}"
  return None


_config.register_op(_config.OpSpec(name="viterbi_matmul", config_cls=ViterbiMatmulConfig,
                                   validate=_validate, check=_check, block_dims=_block_dims))


def viterbi_matmul(
    x: jax.Array,
    m: ViterbiSparseMatrix,
    *,
    config: ViterbiMatmulConfig | None = None,
    interpret: Any = False,
    target: str | _targets.Target | None = None,
    backend: str = "pallas",
) -> jax.Array:
  """``x @ W`` with ``W`` a :class:`ViterbiSparseMatrix` ``[K, N]``.

  Args:
    x: ``[..., K]`` float32 or bfloat16, the dtype of ``m.values``.
    m: the compressed matrix.
    config: tunables; None looks one up (``jaxsched.pallas.config.lookup_config``).
    interpret: Pallas interpret mode: ``True`` or ``pltpu.InterpretParams()``.
    target: target name or Target; None uses the ``compile_for`` target, else the local backend.
    backend: ``"pallas"`` (decode in-kernel) or ``"xla"`` (:func:`viterbi_matmul_reference`).

  Returns:
    ``[..., N]`` in ``x``'s dtype. Differentiable w.r.t. ``x`` and ``m.values``.
  """
  if not isinstance(m, ViterbiSparseMatrix):
    raise TypeError(f"m must be a ViterbiSparseMatrix, got {type(m).__name__}")
  if backend not in ("pallas", "xla"):
    raise ValueError(f"unknown {backend=}; valid backends: ('pallas', 'xla')")
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != m.shape[0]:
    raise ValueError(f"x.shape={x.shape} must end in K={m.shape[0]} (W.shape={m.shape})")
  if jnp.dtype(x.dtype) != jnp.dtype(m.dtype):
    raise ValueError(f"x.dtype={jnp.dtype(x.dtype)} must equal m.values.dtype="
                     f"{jnp.dtype(m.dtype)}")
  if backend == "xla":
    return viterbi_matmul_reference(x, m)
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1])
  shapes = (tuple(x2.shape), tuple(m.shape))
  params = _validate(shapes, jnp.dtype(x.dtype).name, tile_k=m.tile_k, tile_n=m.tile_n)
  tgt = _config.kernel_target(target, interpret)
  cfg = _config.resolve_config("viterbi_matmul", config, shapes, x.dtype, tgt, **params)
  cap = _window(m, tgt, interpret)
  fmt = (m.vd, m.tile_k, m.tile_n, m.shape, cap)
  out = _vmm_jit(x2, m.bits, m.values, m.offsets, fmt, cfg, tgt, interpret)
  return out.reshape(*lead, m.shape[1])


def _window(m: ViterbiSparseMatrix, target: _targets.Target, interpret: Any) -> int:
  """Per-tile value window of the TPU variant: the largest tile count, lane-aligned."""
  if not _use_grid_variant(target.kind, interpret):
    return 0
  count = m.max_tile_nnz
  if count is None:
    if isinstance(m.offsets, jax.core.Tracer):
      count = m.tile_k * m.tile_n  # unknown: a full tile
    else:
      count = int(np.diff(np.append(np.asarray(m.offsets).reshape(-1), m.nnz)).max())
  return _config.round_up(count + 127, 128)  # + the misalignment of the window start


def viterbi_matmul_reference(x: jax.Array, m: ViterbiSparseMatrix) -> jax.Array:
  """XLA path: decode the mask, scatter the values into a dense ``W`` and ``x @ W`` (f32 acc)."""
  w = m.to_dense()
  out = jnp.matmul(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
  return out.astype(x.dtype)
