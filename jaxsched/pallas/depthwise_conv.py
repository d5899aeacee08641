"""Depthwise 2-D convolution (NHWC, k x k, stride 1 or 2) in Pallas, for Triton and Mosaic.

Layout and semantics match ``lax.conv_general_dilated`` with ``feature_group_count=C`` and a
channel multiplier of 1 (cross-correlation, no kernel flip):

* ``x``: ``[n, h, w, c]``; ``w``: ``[k, k, c]`` or ``[k, k, 1, c]`` (HWIO with I=1, the layout
  ``flax.nnx.Conv(feature_group_count=c)`` uses); float32 or bfloat16, same dtype.
* ``padding="SAME"``: output ``ceil(h / stride)``, padding split as TensorFlow does (the extra
  row/col goes at the bottom/right); ``"VALID"``: output ``(h - k) // stride + 1``.
* f32 accumulation, result in the input dtype.

Halo handling (why the wrapper reshapes): the wrapper zero-pads ``x`` once (the conv padding plus
enough rows/cols for whole tiles) and splits it into ``stride**2`` phases
(``xq[n, p*s + q, i, j, c] = x_pad[n, i*s + p, j*s + q, c]``). Tap (dy, dx) of a stride-s conv
then reads phase ``(dy % s, dx % s)`` at the unit-stride offset ``(dy // s, dx // s)``, so the
kernels only ever read contiguous, overlapping windows:

* GPU (Triton): the phased input stays in ``pl.ANY`` memory; each program loads, per tap, one
  shifted power-of-two ``(tile_h, tile_w, tile_c)`` window with ``pl.ds`` (neighbouring taps hit
  the L1/L2 cache).
* TPU (Mosaic): an ``pl.Element`` block dim gives each grid step the overlapping row window
  ``tile_h + halo`` (Mosaic DMAs it to VMEM and double-buffers it), with the width dim whole: the
  W tile must cover the output width, since the (8, 128) tiling forbids overlapping sublane
  blocks. Taps are static slices of that VMEM window.

``jax.grad``: a custom VJP whose backward is the VJP of :func:`depthwise_conv2d_reference` (XLA's
own convolution transposes), not a Pallas kernel.
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

__all__ = ["DepthwiseConvConfig", "depthwise_conv2d", "depthwise_conv2d_reference"]

_DTYPES = ("float32", "bfloat16")
_PADDINGS = ("SAME", "VALID")
_STRIDES = (1, 2)


@dataclasses.dataclass(frozen=True, slots=True)
class DepthwiseConvConfig:
  """Output tile of :func:`depthwise_conv2d` per program.

  Attributes:
    tile_h: output rows per program.
    tile_w: output columns per program (GPU and interpret; on TPU the W tile always spans the
      whole output width, so tile_w is not used there).
    tile_c: channels per program.
    num_warps: Triton warps per program (GPU only).
  """

  tile_h: int = dataclasses.field(default=8, metadata={"choices": (1, 2, 4, 8, 16, 32)})
  tile_w: int = dataclasses.field(
    default=16, metadata={"choices": (8, 16, 32, 64, 128, 256), "kinds": ("gpu", "cpu")}
  )
  tile_c: int = dataclasses.field(default=128, metadata={"choices": (8, 16, 32, 64, 128, 256)})
  num_warps: int = dataclasses.field(
    default=4, metadata={"choices": (1, 2, 4, 8), "kinds": ("gpu",)}
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
  ) -> DepthwiseConvConfig:
    """The default config for a problem on ``target`` (see ``config.default_config``)."""
    return _config.default_config("depthwise_conv2d", shapes, dtype, target, **params)


# Geometry


@dataclasses.dataclass(frozen=True)
class _Geometry:
  k: int
  s: int
  ho: int
  wo: int
  pad_top: int
  pad_left: int

  @property
  def halo(self) -> int:
    return (self.k - 1) // self.s


def _geometry(x_shape, k: int, stride: int, padding: str) -> _Geometry:
  _, h, w, _ = x_shape
  if padding == "SAME":
    ho, wo = -(-h // stride), -(-w // stride)
    pad_h = max((ho - 1) * stride + k - h, 0)
    pad_w = max((wo - 1) * stride + k - w, 0)
    return _Geometry(k, stride, ho, wo, pad_h // 2, pad_w // 2)
  return _Geometry(k, stride, (h - k) // stride + 1, (w - k) // stride + 1, 0, 0)


# Kernels


def _dw_gpu_kernel(x_ref, w_ref, o_ref, *, k: int, s: int, tile_h: int, tile_w: int, tile_c: int):
  """One (tile_h, tile_w, tile_c) output tile from shifted window loads (Triton/interpret)."""
  # x_ref: [n, s*s, hq, wq, cp] in pl.ANY; w_ref: [kk_pad, tile_c]; o_ref: [tile_h, tile_w, tile_c]
  b, i, j, c = (pl.program_id(d) for d in range(4))
  h0, w0, c0 = i * tile_h, j * tile_w, c * tile_c
  acc = jnp.zeros((tile_h, tile_w, tile_c), jnp.float32)
  for dy in range(k):
    for dx in range(k):
      win = x_ref[
        b,
        (dy % s) * s + dx % s,
        pl.ds(h0 + dy // s, tile_h),
        pl.ds(w0 + dx // s, tile_w),
        pl.ds(c0, tile_c),
      ]
      tap = w_ref[dy * k + dx, :]
      acc += win.astype(jnp.float32) * tap.astype(jnp.float32)[None, None, :]
  o_ref[...] = acc.astype(o_ref.dtype)


def _dw_tpu_kernel(x_ref, w_ref, o_ref, *, k: int, s: int, tile_h: int, wo_pad: int):
  """One (tile_h, wo_pad, tile_c) output tile from a VMEM row window (Mosaic)."""
  # x_ref: [1, s*s, tile_h + halo, wq, tile_c]; w_ref: [k*k, tile_c];
  # o_ref: [tile_h, wo_pad, tile_c]
  acc = jnp.zeros(o_ref.shape, jnp.float32)
  for dy in range(k):
    for dx in range(k):
      win = x_ref[0, (dy % s) * s + dx % s, pl.ds(dy // s, tile_h), pl.ds(dx // s, wo_pad), :]
      tap = w_ref[pl.ds(dy * k + dx, 1), :]  # [1, tile_c]
      acc += win.astype(jnp.float32) * tap.astype(jnp.float32)[None]
  o_ref[...] = acc.astype(o_ref.dtype)


def _phase_split(
  x: jax.Array, geo: _Geometry, hq: int, wq: int, cp: int
) -> jax.Array:
  """Pads ``x`` to ``[n, hq*s, wq*s, cp]`` and splits it into ``s*s`` stride phases."""
  n, h, w, c = x.shape
  s = geo.s
  # Crop rows/cols no output reads (VALID with a remainder), then pad the rest.
  x = x[:, : hq * s - geo.pad_top, : wq * s - geo.pad_left, :]
  h, w = x.shape[1], x.shape[2]
  x = jnp.pad(
    x,
    (
      (0, 0),
      (geo.pad_top, hq * s - geo.pad_top - h),
      (geo.pad_left, wq * s - geo.pad_left - w),
      (0, cp - c),
    ),
  )
  x = x.reshape(n, hq, s, wq, s, cp).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(n, s * s, hq, wq, cp)  # [n, s*s, hq, wq, cp]


def _dw_call(
  x: jax.Array,
  w: jax.Array,
  *,
  stride: int,
  padding: str,
  config: DepthwiseConvConfig,
  target: _targets.Target,
  interpret: Any,
) -> jax.Array:
  n, _, _, c = x.shape
  k = w.shape[0]
  geo = _geometry(x.shape, k, stride, padding)
  th, tc = config.tile_h, config.tile_c
  tpu = target.kind == "tpu" or isinstance(interpret, pltpu.InterpretParams)
  # TPU: one W tile spanning the output width, padded to a sublane multiple.
  tw = _config.round_up(geo.wo, 8) if tpu else config.tile_w
  ho_p, wo_p, cp = (_config.round_up(geo.ho, th), _config.round_up(geo.wo, tw),
                    _config.round_up(c, tc))
  hq, wq = ho_p + geo.halo, wo_p + geo.halo
  xq = _phase_split(x, geo, hq, wq, cp)
  w2 = jnp.pad(w.reshape(k * k, c), ((0, 0), (0, cp - c)))  # [k*k, cp]
  out_shape = jax.ShapeDtypeStruct((n, ho_p, wo_p, cp), x.dtype)
  grid = (n, ho_p // th, wo_p // tw, cp // tc)
  cost = pl.CostEstimate(
    flops=2 * k * k * n * ho_p * wo_p * cp,
    transcendentals=0,
    bytes_accessed=(xq.size + w2.size + n * ho_p * wo_p * cp) * x.dtype.itemsize,
  )
  out_spec = pl.BlockSpec((None, th, tw, tc), lambda b, i, j, ch: (b, i, j, ch))
  if tpu:
    kernel = functools.partial(_dw_tpu_kernel, k=k, s=geo.s, tile_h=th, wo_pad=wo_p)
    in_specs = [
      # Mosaic wants every dim an Element dim once one is; index_map returns element offsets.
      pl.BlockSpec(
        (
          pl.Element(1),
          pl.Element(geo.s * geo.s),
          pl.Element(th + geo.halo),
          pl.Element(wq),
          pl.Element(tc),
        ),
        # A single channel block gets a literal 0 offset: Mosaic must prove lane alignment.
        lambda b, i, j, ch: (b, 0, i * th, 0, ch * tc if cp > tc else 0),
      ),
      pl.BlockSpec((k * k, tc), lambda b, i, j, ch: (0, ch)),
    ]
    params = None
    if not interpret:
      params = pltpu.CompilerParams(dimension_semantics=("parallel",) * 4)
  else:
    kernel = functools.partial(_dw_gpu_kernel, k=k, s=geo.s, tile_h=th, tile_w=tw, tile_c=tc)
    # Triton wants power-of-two blocks: pad the k*k tap rows.
    kk_pad = pl.next_power_of_2(k * k)
    w2 = jnp.pad(w2, ((0, kk_pad - k * k), (0, 0)))
    in_specs = [
      pl.BlockSpec(memory_space=pl.ANY),
      pl.BlockSpec((kk_pad, tc), lambda b, i, j, ch: (0, ch)),
    ]
    params = None
    if not interpret and target.kind == "gpu":
      params = pl_triton.CompilerParams(num_warps=config.num_warps, num_stages=1)
  out = pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_spec,
    compiler_params=params,
    interpret=interpret,
    cost_estimate=cost,
    name="jaxsched_depthwise_conv2d",
  )(xq, w2)
  return out[:, : geo.ho, : geo.wo, :c]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _dw_vjp(x, w, stride, padding, config, target, interpret):
  return _dw_call(
    x, w, stride=stride, padding=padding, config=config, target=target, interpret=interpret
  )


def _dw_fwd(x, w, stride, padding, config, target, interpret):
  return _dw_vjp(x, w, stride, padding, config, target, interpret), (x, w)


def _dw_bwd(stride, padding, config, target, interpret, res, g):
  del config, target, interpret
  x, w = res
  _, vjp = jax.vjp(
    functools.partial(depthwise_conv2d_reference, stride=stride, padding=padding), x, w
  )
  return vjp(g)


_dw_vjp.defvjp(_dw_fwd, _dw_bwd)

_dw_jit = jax.jit(_dw_vjp, static_argnums=(2, 3, 4, 5, 6))


# Validation and target rules


def _validate(
  shapes: _config.Shapes, dtype: str, *, stride: int = 1, padding: str = "SAME"
) -> dict[str, Any]:
  if len(shapes) != 2:
    raise ValueError(f"depthwise_conv2d needs shapes (x.shape, w.shape), got {shapes=}")
  x_shape, w_shape = shapes
  if len(x_shape) != 4:
    raise ValueError(f"depthwise_conv2d x must be NHWC [n, h, w, c], got x.shape={x_shape}")
  c = x_shape[3]
  ok_w = (len(w_shape) == 3 and w_shape[2] == c) or (
    len(w_shape) == 4 and w_shape[2] == 1 and w_shape[3] == c
  )
  if not ok_w or w_shape[0] != w_shape[1]:
    raise ValueError(
      f"depthwise_conv2d w must be [k, k, c] or [k, k, 1, c] with c={c}, got w.shape={w_shape}"
    )
  if min(x_shape) < 1 or w_shape[0] < 1:
    raise ValueError(f"depthwise_conv2d needs non-empty operands, got {shapes=}")
  if dtype not in _DTYPES:
    raise ValueError(f"depthwise_conv2d {dtype=} is not supported; valid dtypes: {_DTYPES}")
  if stride not in _STRIDES:
    raise ValueError(f"depthwise_conv2d {stride=} is not supported; valid strides: {_STRIDES}")
  if not isinstance(padding, str) or padding.upper() not in _PADDINGS:
    raise ValueError(f"depthwise_conv2d {padding=} is not valid; valid paddings: {_PADDINGS}")
  padding = padding.upper()
  k = w_shape[0]
  if padding == "VALID" and (x_shape[1] < k or x_shape[2] < k):
    raise ValueError(
      f"depthwise_conv2d VALID needs h, w >= k: x.shape={x_shape}, kernel size {k=}"
    )
  return {"stride": stride, "padding": padding}


def _block_dims(shapes: _config.Shapes, *, stride: int, padding: str) -> dict[str, int]:
  x_shape, w_shape = shapes
  geo = _geometry(x_shape, w_shape[0], stride, padding)
  return {"tile_h": geo.ho, "tile_w": geo.wo, "tile_c": x_shape[3]}


def _check(
  cfg: DepthwiseConvConfig,
  shapes: _config.Shapes,
  dtype: str,
  target: _targets.Target,
  *,
  hard_only: bool,
  stride: int,
  padding: str,
) -> str | None:
  """Why ``cfg`` is invalid for this depthwise conv on ``target`` (None if valid)."""
  x_shape, w_shape = shapes
  k = w_shape[0]
  geo = _geometry(x_shape, k, stride, padding)
  c = x_shape[3]
  itemsize = jnp.dtype(dtype).itemsize
  th, tw, tc = cfg.tile_h, cfg.tile_w, cfg.tile_c
  if target.kind == "tpu":
    if not _config.tpu_lane_ok(tc, c):
      return f"TPU tiling: tile_c={tc} must be a multiple of 128 or cover c={c}"
  if hard_only:
    return None
  choices = _config.choices(DepthwiseConvConfig)
  for name, blk, ext in (("tile_h", th, geo.ho), ("tile_w", tw, geo.wo), ("tile_c", tc, c)):
    if target.kind == "tpu" and name == "tile_w":
      continue  # unused on TPU
    if not _config.not_oversized(blk, ext, choices[name]):
      return f"{name}={blk} is larger than needed for extent {ext}"
  if target.kind == "gpu":
    # Triton holds the f32 accumulator and one loaded window in registers: keep both within half
    # of the registers the program's warps can hold (255 per thread).
    live = th * tw * tc * 2
    regs = cfg.num_warps * 32 * 128
    if live > regs:
      return f"register estimate {live} > {regs} for num_warps={cfg.num_warps}"
  if target.kind == "tpu" and target.scoped_vmem_bytes:
    wo_p = _config.round_up(geo.wo, 8)
    win = stride * stride * (th + geo.halo) * (wo_p + geo.halo) * tc * itemsize
    vmem = 2 * (win + k * k * tc * itemsize + th * wo_p * tc * itemsize) + 2 * th * wo_p * tc * 4
    if vmem > target.scoped_vmem_bytes:
      return f"VMEM estimate {vmem} B > scoped limit {target.scoped_vmem_bytes} B"
  return None


_config.register_op(
  _config.OpSpec(
    name="depthwise_conv2d",
    config_cls=DepthwiseConvConfig,
    validate=_validate,
    check=_check,
    block_dims=_block_dims,
  )
)


def depthwise_conv2d(
  x: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: str = "SAME",
  config: DepthwiseConvConfig | None = None,
  interpret: Any = False,
  target: str | _targets.Target | None = None,
) -> jax.Array:
  """Depthwise 2-D convolution of NHWC ``x`` with one k x k filter per channel.

  Args:
    x: ``[n, h, w, c]`` float32 or bfloat16.
    w: ``[k, k, c]`` or ``[k, k, 1, c]`` of the same dtype.
    stride: 1 or 2 (both spatial dims).
    padding: ``"SAME"`` or ``"VALID"`` (TensorFlow/XLA conventions).
    config: output tiling; None looks one up for (target kind, shapes, dtype, stride, padding).
    interpret: run in Pallas interpret mode: ``True`` or a ``pltpu.InterpretParams()``.
    target: target name or Target; None uses the target ``compile_for`` is building for, else
      the local backend (CPU requires ``interpret``).

  Returns:
    ``[n, ho, wo, c]`` in ``x``'s dtype.

  Raises:
    ValueError: bad shapes, dtypes, stride or padding; a config breaking the target's block
      rules; CPU without interpret mode.
    TypeError: ``config`` is not a DepthwiseConvConfig.
  """
  x_dtype, w_dtype = jnp.dtype(x.dtype), jnp.dtype(w.dtype)
  if x_dtype != w_dtype:
    raise ValueError(
      f"depthwise_conv2d operands must share a dtype, got x.dtype={x_dtype}, w.dtype={w_dtype}"
    )
  shapes = (tuple(x.shape), tuple(w.shape))
  params = _validate(shapes, x_dtype.name, stride=stride, padding=padding)
  tgt = _config.kernel_target(target, interpret)
  cfg = _config.resolve_config("depthwise_conv2d", config, shapes, x_dtype, tgt, **params)
  k, c = w.shape[0], x.shape[3]
  w = w.reshape(k, k, c)
  return _dw_jit(x, w, params["stride"], params["padding"], cfg, tgt, interpret)


def depthwise_conv2d_reference(
  x: jax.Array, w: jax.Array, *, stride: int = 1, padding: str = "SAME"
) -> jax.Array:
  """Depthwise conv via ``lax.conv_general_dilated(feature_group_count=c)``, f32 accumulation."""
  k, c = w.shape[0], x.shape[3]
  out = jax.lax.conv_general_dilated(
    x,
    w.reshape(k, k, 1, c),
    window_strides=(stride, stride),
    padding=padding.upper(),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=c,
    preferred_element_type=jnp.float32,
  )
  return out.astype(x.dtype)
