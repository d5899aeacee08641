"""Tiled matmul ``a @ b`` in Pallas with f32 accumulation, for Triton (GPU) and Mosaic (TPU).

* dtypes: both operands float32, or both bfloat16. The product accumulates in float32 and the
  result is returned in the operands' dtype (like ``jnp.matmul``); ``matmul_reference`` does the
  same in jnp.
* shapes: any ``[m, k] @ [k, n]``. Operands are zero-padded to block multiples (zero rows/cols of
  k add nothing) and the result is sliced back, so no extent has to divide a block.
* GPU (Triton): a 2-D grid over (m, n) blocks; each program loops over k in ``block_k`` steps,
  which Triton software-pipelines ``num_stages`` deep. f32 dots use Triton's default (TF32)
  input precision, as ``jnp.matmul`` does on GPU.
* TPU (Mosaic): a 3-D grid (m, n, k) with k innermost and "arbitrary", accumulating in a VMEM
  f32 scratch; Mosaic double-buffers the blocks.
* CPU interpret mode runs the GPU variant (fewest grid steps); with
  ``interpret=pltpu.InterpretParams()`` or a TPU target it runs the TPU variant.
* ``jax.grad``: a custom VJP whose backward runs this same kernel on transposed operands
  (``da = g @ b.T``, ``db = a.T @ g``), each with its own config chosen for its shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from jaxsched.pallas import config as _config
from jaxsched.pallas import targets as _targets

__all__ = ["MatmulConfig", "matmul", "matmul_reference"]

_BLOCKS = (16, 32, 64, 128, 256)
_BLOCKS_LANE = (16, 32, 64, 128, 256, 512)
_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, slots=True)
class MatmulConfig:
  """Block sizes of :func:`matmul` (and :func:`~jaxsched.pallas.pointwise_conv`).

  Attributes:
    block_m: rows of ``a`` / the output per program.
    block_n: columns of ``b`` / the output per program.
    block_k: reduction step.
    num_warps: Triton warps per program (GPU only).
    num_stages: Triton software-pipelining depth of the k loop (GPU only).
  """

  block_m: int = dataclasses.field(default=128, metadata={"choices": _BLOCKS})
  block_n: int = dataclasses.field(default=128, metadata={"choices": _BLOCKS_LANE})
  block_k: int = dataclasses.field(default=64, metadata={"choices": _BLOCKS_LANE})
  num_warps: int = dataclasses.field(
    default=4, metadata={"choices": (2, 4, 8), "kinds": ("gpu",)}
  )
  num_stages: int = dataclasses.field(
    default=3, metadata={"choices": (1, 2, 3, 4), "kinds": ("gpu",)}
  )

  def __post_init__(self):
    _config.validate_choices(self)

  @classmethod
  def get_default(
    cls,
    shapes: tuple[tuple[int, ...], ...],
    dtype: Any,
    target: str | _targets.Target | None = None,
    **params: Any,
  ) -> MatmulConfig:
    """The default config for a problem on ``target`` (see ``config.default_config``)."""
    return _config.default_config("matmul", shapes, dtype, target, **params)


# Kernels


def _matmul_loop_kernel(a_ref, b_ref, o_ref, *, block_k: int, k_steps: int):
  """GPU/interpret variant: one (block_m, block_n) output tile, looping over k."""
  # a_ref: [block_m, kp], b_ref: [kp, block_n], o_ref: [block_m, block_n]
  def body(i, acc):
    start = pl.multiple_of(i * block_k, block_k)
    a = a_ref[:, pl.ds(start, block_k)]
    b = b_ref[pl.ds(start, block_k), :]
    return acc + jnp.dot(a, b, preferred_element_type=jnp.float32)

  acc = jnp.zeros(o_ref.shape, jnp.float32)
  acc = jax.lax.fori_loop(0, k_steps, body, acc)
  o_ref[...] = acc.astype(o_ref.dtype)


def _matmul_grid_kernel(a_ref, b_ref, o_ref, acc_ref):
  """TPU variant: k is the innermost grid axis; acc_ref is a VMEM f32 scratch."""
  # a_ref: [block_m, block_k], b_ref: [block_k, block_n], o_ref/acc_ref: [block_m, block_n]
  @pl.when(pl.program_id(2) == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  acc_ref[...] += jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _store():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _pad2(x: jax.Array, rows: int, cols: int) -> jax.Array:
  if x.shape == (rows, cols):
    return x
  return jnp.pad(x, ((0, rows - x.shape[0]), (0, cols - x.shape[1])))


def _use_grid_variant(kind: str, interpret: Any) -> bool:
  return kind == "tpu" or isinstance(interpret, pltpu.InterpretParams)


def _matmul_call(
  a: jax.Array, b: jax.Array, *, config: MatmulConfig, target: _targets.Target, interpret: Any
) -> jax.Array:
  """Pads, runs the target's kernel variant and slices. Traced inside the private jit."""
  m, k = a.shape
  n = b.shape[1]
  bm, bn, bk = config.block_m, config.block_n, config.block_k
  mp, np_, kp = _config.round_up(m, bm), _config.round_up(n, bn), _config.round_up(k, bk)
  a = _pad2(a, mp, kp)
  b = _pad2(b, kp, np_)
  out_shape = jax.ShapeDtypeStruct((mp, np_), a.dtype)
  cost = pl.CostEstimate(
    flops=2 * mp * np_ * kp,
    transcendentals=0,
    bytes_accessed=(mp * kp * (np_ // bn) + kp * np_ * (mp // bm) + mp * np_) * a.dtype.itemsize,
  )
  if _use_grid_variant(target.kind, interpret):
    params = None
    if not interpret:
      params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))
    out = pl.pallas_call(
      _matmul_grid_kernel,
      out_shape=out_shape,
      grid=(mp // bm, np_ // bn, kp // bk),
      in_specs=[
        pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)),
        pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j)),
      ],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
      scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
      cost_estimate=cost,
      name="jaxsched_matmul",
    )(a, b)
  else:
    params = None
    if not interpret and target.kind == "gpu":
      params = pl_triton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
    out = pl.pallas_call(
      functools.partial(_matmul_loop_kernel, block_k=bk, k_steps=kp // bk),
      out_shape=out_shape,
      grid=(mp // bm, np_ // bn),
      in_specs=[
        pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
        pl.BlockSpec((kp, bn), lambda i, j: (0, j)),
      ],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
      compiler_params=params,
      interpret=interpret,
      cost_estimate=cost,
      name="jaxsched_matmul",
    )(a, b)
  if (mp, np_) != (m, n):
    out = out[:m, :n]
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _matmul_vjp(a, b, configs, target, interpret):
  return _matmul_call(a, b, config=configs[0], target=target, interpret=interpret)


def _matmul_fwd(a, b, configs, target, interpret):
  return _matmul_vjp(a, b, configs, target, interpret), (a, b)


def _matmul_bwd(configs, target, interpret, res, g):
  a, b = res
  g = g.astype(a.dtype)
  da = _matmul_call(g, b.T, config=configs[1], target=target, interpret=interpret)
  db = _matmul_call(a.T, g, config=configs[2], target=target, interpret=interpret)
  return da, db


_matmul_vjp.defvjp(_matmul_fwd, _matmul_bwd)

_matmul_jit = jax.jit(_matmul_vjp, static_argnums=(2, 3, 4))


# Public wrapper


def _validate(shapes: _config.Shapes, dtype: str, **params: Any) -> dict[str, Any]:
  if params:
    raise ValueError(f"matmul takes no op params, got {sorted(params)}")
  if len(shapes) != 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
    raise ValueError(f"matmul needs two 2-D operands [m, k] and [k, n], got {shapes=}")
  (m, k), (k2, n) = shapes
  if k != k2:
    raise ValueError(f"matmul contraction dims differ: a.shape={shapes[0]}, b.shape={shapes[1]}")
  if min(m, k, n) < 1:
    raise ValueError(f"matmul needs non-empty operands, got {shapes=}")
  if dtype not in _DTYPES:
    raise ValueError(f"matmul {dtype=} is not supported; valid dtypes: {_DTYPES}")
  return {}


def _block_dims(shapes: _config.Shapes) -> dict[str, int]:
  (m, k), (_, n) = shapes
  return {"block_m": m, "block_n": n, "block_k": k}


def _check(
  cfg: MatmulConfig,
  shapes: _config.Shapes,
  dtype: str,
  target: _targets.Target,
  *,
  hard_only: bool,
) -> str | None:
  """Why ``cfg`` is invalid for ``a @ b`` on ``target`` (None if valid)."""
  (m, k), (_, n) = shapes
  itemsize = jnp.dtype(dtype).itemsize
  bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
  if target.kind == "tpu":
    if not _config.tpu_sublane_ok(bm, m, dtype):
      return f"TPU tiling: block_m={bm} must be a multiple of {8 * (4 // itemsize)} (m={m})"
    for name, blk, ext in (("block_n", bn, n), ("block_k", bk, k)):
      if not _config.tpu_lane_ok(blk, ext):
        dim = name[-1]
        return f"TPU tiling: {name}={blk} must be a multiple of 128 or cover {dim}={ext}"
  if hard_only:
    return None
  choices = _config.choices(MatmulConfig)
  for name, blk, ext in (("block_m", bm, m), ("block_n", bn, n), ("block_k", bk, k)):
    if not _config.not_oversized(blk, ext, choices[name]):
      return f"{name}={blk} is larger than needed for extent {ext}"
  if target.kind == "gpu" and target.smem_per_block_optin:
    smem = _triton_smem_estimate(cfg, itemsize)
    if smem > target.smem_per_block_optin:
      return f"shared memory estimate {smem} B > {target.smem_per_block_optin} B"
  if target.kind == "tpu" and target.scoped_vmem_bytes:
    # Double-buffered a, b and out blocks plus the f32 accumulator.
    vmem = 2 * (bm * bk + bk * bn + bm * bn) * itemsize + bm * bn * 4
    if vmem > target.scoped_vmem_bytes:
      return f"VMEM estimate {vmem} B > scoped limit {target.scoped_vmem_bytes} B"
  return None



def _triton_smem_estimate(cfg: MatmulConfig, itemsize: int) -> int:
  """Shared memory Triton asks for: the k loop keeps ``num_stages`` (a, b) k-slices; the
  epilogue converts the output tile's layout through shared memory, a share of the tile that
  grows with the warps (measured deviceless for H100: f32 256x512, 8 warps requests 262144 B =
  half the tile; 4 warps fits). The two phases reuse the same memory."""
  pipeline = (cfg.block_m * cfg.block_k + cfg.block_k * cfg.block_n) * itemsize * cfg.num_stages
  epilogue = cfg.block_m * cfg.block_n * itemsize * min(cfg.num_warps, 16) // 16
  return max(pipeline, epilogue)


_config.register_op(
  _config.OpSpec(
    name="matmul",
    config_cls=MatmulConfig,
    validate=_validate,
    check=_check,
    block_dims=_block_dims,
  )
)


def matmul(
  a: jax.Array,
  b: jax.Array,
  *,
  config: MatmulConfig | None = None,
  interpret: Any = False,
  target: str | _targets.Target | None = None,
) -> jax.Array:
  """``a @ b`` with a tiled Pallas kernel, accumulating in float32.

  Args:
    a: ``[m, k]`` float32 or bfloat16.
    b: ``[k, n]`` of the same dtype.
    config: block sizes; None looks one up for (target kind, shapes, dtype)
      (see :func:`jaxsched.pallas.config.lookup_config`).
    interpret: run in Pallas interpret mode: ``True`` or a ``pltpu.InterpretParams()``.
    target: target name or Target; None uses the target ``compile_for`` is building for, else
      the local backend (CPU requires ``interpret``).

  Returns:
    ``[m, n]`` in the operands' dtype.

  Raises:
    ValueError: mismatched shapes or dtypes, unsupported dtype, a config breaking the target's
      block rules, or CPU without interpret mode.
    TypeError: ``config`` is not a MatmulConfig.
  """
  a_dtype, b_dtype = jnp.dtype(a.dtype), jnp.dtype(b.dtype)
  if a_dtype != b_dtype:
    raise ValueError(
      f"matmul operands must share a dtype, got a.dtype={a_dtype}, b.dtype={b_dtype}"
    )
  shapes = (tuple(a.shape), tuple(b.shape))
  _validate(shapes, a_dtype.name)
  tgt = _config.kernel_target(target, interpret)
  m, k = shapes[0]
  n = shapes[1][1]
  cfg = _config.resolve_config("matmul", config, shapes, a_dtype, tgt)
  # Backward products have their own shapes: da = g[m, n] @ b.T[n, k]; db = a.T[k, m] @ g[m, n].
  cfg_da = _config.lookup_config("matmul", ((m, n), (n, k)), a_dtype, tgt)
  cfg_db = _config.lookup_config("matmul", ((k, m), (m, n)), a_dtype, tgt)
  return _matmul_jit(a, b, (cfg, cfg_da, cfg_db), tgt, interpret)


def matmul_reference(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b`` in jnp with float32 accumulation, result in the operands' dtype."""
  return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
