"""Viterbi-based pruning: choose VD input bits whose decoded mask keeps the important weights.

The objective is ``score(mask) = sum_i gain_i * mask_i`` with per-weight gains from a *metric*.
Because every mask bit is produced by one step of a shift register, the best input sequence of a
stream is found exactly by a Viterbi DP over the ``2**num_ff`` register states: a ``lax.scan``
over steps, vectorised over states and over independent streams.

Default metric (:class:`TanhMargin`): ``gain = tanh((|w| - theta) / scale) - bias`` where
``theta`` is the magnitude-pruning threshold for the target sparsity (the ``sparsity`` quantile
of ``|w|``) and ``scale`` is the standard deviation of ``|w|``. Keeping a weight above the
threshold earns up to +1, keeping one below it costs up to -1; tanh saturates so a few huge
weights cannot dominate a stream. ``bias`` is found by bisection so that the realised sparsity
hits the target (the number of kept weights is monotone in the bias).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.sparse._decompressor import ViterbiDecompressor
from jaxsched.sparse._format import ViterbiSparseMatrix, pack_bits

__all__ = ["BiasedMetric", "TanhMargin", "mask_score", "viterbi_prune"]

# Streams per DP call are capped so the survivor array stays near this many bytes.
_SURVIVOR_BYTES = 1 << 25
# Streams sampled to bisect the bias before the full encode.
_SAMPLE_STREAMS = 1024


@dataclasses.dataclass(frozen=True)
class TanhMargin:
  """``gain(w) = tanh((|w| - threshold) / scale) - bias``."""

  threshold: float
  scale: float
  bias: float = 0.0

  def __call__(self, w: jax.Array) -> jax.Array:
    return jnp.tanh((jnp.abs(w) - self.threshold) / self.scale) - self.bias

  def with_bias(self, bias: float) -> TanhMargin:
    return dataclasses.replace(self, bias=float(bias))

  @classmethod
  def for_sparsity(cls, w: jax.Array, sparsity: float) -> TanhMargin:
    """Threshold = the magnitude-pruning threshold of ``w`` at ``sparsity``; scale = std|w|."""
    a = np.abs(np.asarray(w, np.float64)).reshape(-1)
    threshold = float(np.quantile(a, sparsity)) if a.size else 0.0
    scale = float(a.std()) or 1.0
    return cls(threshold=threshold, scale=scale)


@dataclasses.dataclass(frozen=True)
class BiasedMetric:
  """A user metric with the bisected sparsity bias subtracted: ``metric(w) - bias``."""

  metric: Callable[[jax.Array], jax.Array]
  bias: float = 0.0

  def __call__(self, w: jax.Array) -> jax.Array:
    return jnp.asarray(self.metric(w), jnp.float32) - self.bias

  def with_bias(self, bias: float) -> BiasedMetric:
    return dataclasses.replace(self, bias=float(bias))


def mask_score(w: jax.Array, mask: jax.Array, *, metric: Callable | None = None) -> float:
  """The objective the Viterbi pruner maximises: ``sum(metric(w) * mask)`` (float64 sum).

  Args:
    w: ``[K, N]`` weights.
    mask: ``[K, N]`` bool, True = kept.
    metric: per-weight gain function; default :class:`TanhMargin` at the mask's own sparsity.
      Pass ``matrix.metric`` to score against exactly what :func:`viterbi_prune` optimised.
  """
  w, mask = jnp.asarray(w), np.asarray(mask, bool)
  if w.shape != mask.shape:
    raise ValueError(f"{w.shape=} and {mask.shape=} must match")
  if metric is None:
    metric = TanhMargin.for_sparsity(w, 1.0 - float(mask.mean()))
  gains = np.asarray(metric(w), np.float64)
  return float(np.sum(gains * mask))


def _viterbi_dp(gains: jax.Array, table: jax.Array, *, num_ff: int) -> jax.Array:
  """Best input bits per stream. gains [B, S, R] f32; table [2**(k+1), R] f32 -> [B, S] int32."""
  b, s, _ = gains.shape
  n = 2**num_ff
  score0 = jnp.full((b, n), -jnp.inf, jnp.float32).at[:, 0].set(0.0)  # cleared register

  def forward(score, g):  # score [B, n]; g [B, R]
    branch = g @ table.T  # [B, 2n]: gain of each window w = u_t | (state << 1)
    cand = jnp.repeat(score, 2, axis=1) + branch  # score[w >> 1] + branch[w]
    cand = cand.reshape(b, 2, n)  # [:, hi, s'] with w = s' + hi * n, hi = dropped oldest bit
    return jnp.max(cand, axis=1), cand[:, 1] > cand[:, 0]

  score, surv = jax.lax.scan(forward, score0, gains.transpose(1, 0, 2))  # surv [S, B, n]
  last = jnp.argmax(score, axis=1).astype(jnp.int32)

  def backward(state, sv):  # state after this step [B]
    hi = jnp.take_along_axis(sv, state[:, None], axis=1)[:, 0].astype(jnp.int32)
    prev = (state | (hi << num_ff)) >> 1
    return prev, state & 1

  _, bits = jax.lax.scan(backward, last, surv, reverse=True)
  return bits.T  # [B, S]


_viterbi_dp_jit = jax.jit(_viterbi_dp, static_argnames=("num_ff",))


def _encode(gains: np.ndarray, table: jax.Array, num_ff: int, bias: float) -> np.ndarray:
  """Runs the DP over all streams in equal-size chunks. gains [B, S, R] -> bits [B, S]."""
  b, s, _ = gains.shape
  chunk = max(1, min(b, _SURVIVOR_BYTES // (s * 2**num_ff)))
  chunk = 1 << (chunk.bit_length() - 1)  # few distinct shapes -> few compiles
  out = []
  for start in range(0, b, chunk):
    g = gains[start:start + chunk]
    pad = chunk - g.shape[0]
    if pad and start:
      g = np.concatenate([g, np.zeros((pad, s, g.shape[2]), g.dtype)])
    valid = g.shape[0] - pad if start else g.shape[0]
    gb = jnp.asarray(g) - jnp.asarray(bias * (g != 0), jnp.float32)
    out.append(_viterbi_dp_jit(gb, table, num_ff=num_ff)[:valid])
  return np.asarray(jnp.concatenate(out)) if len(out) > 1 else np.asarray(out[0])


def _stream_gains(gains_pad: np.ndarray, tile_k: int, steps: int, r: int) -> np.ndarray:
  """[K_pad, N_pad] -> [K_t * N_pad, steps, R] (rows of a stream, zero-padded to steps * R)."""
  kp, np_ = gains_pad.shape
  g = gains_pad.reshape(kp // tile_k, tile_k, np_).transpose(0, 2, 1)
  g = np.pad(g, [(0, 0), (0, 0), (0, steps * r - tile_k)])
  return np.ascontiguousarray(g.reshape(-1, steps, r))


def _default_tile_k(outputs_per_bit: int) -> int:
  return 1 << (min(256, 32 * outputs_per_bit).bit_length() - 1)


def viterbi_prune(
    w: jax.Array,
    *,
    vd: ViterbiDecompressor,
    sparsity: float,
    metric: Callable[[jax.Array], jax.Array] | None = None,
    tile_k: int | None = None,
    tile_n: int = 128,
    tolerance: float = 0.01,
    seed: int = 0,
) -> ViterbiSparseMatrix:
  """Prunes ``w [K, N]`` to ``sparsity`` with a mask the VD can generate.

  Each column segment of ``tile_k`` rows is an independent VD stream (cleared register); all
  streams are encoded in parallel by one vectorised DP. The gain of every mask bit is
  ``metric(w) - bias``; ``bias`` is bisected (first on a random sample of streams, then on the
  whole matrix if needed) until the realised sparsity is within ``tolerance`` of ``sparsity``.
  Padding (rows/columns beyond ``K``/``N`` up to the tile grid) has zero gain and is never kept.

  Args:
    w: ``[K, N]`` floating-point weights.
    vd: the decompressor.
    sparsity: target fraction of zeros in ``[0, 1)``.
    metric: per-weight gain ``metric(w) -> [K, N]`` (higher = more worth keeping); default
      :class:`TanhMargin` at ``sparsity``.
    tile_k: rows per stream; ``ceil(tile_k / vd.outputs_per_bit) <= 32``. Default: the largest
      power of two ``<= min(256, 32 * outputs_per_bit)``.
    tile_n: columns per value tile (the kernel's N block).
    tolerance: allowed ``|realised - sparsity|``; a warning is issued if it cannot be met
      (tiny matrices: one weight may be more than 1%).
    seed: picks the sampled streams for the bias search.

  Returns:
    A :class:`ViterbiSparseMatrix` with ``metric`` set to the effective (biased) metric.
  """
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"w must be floating point, got {w.dtype=}")
  if w.ndim != 2:
    raise ValueError(f"w must be 2-D [K, N], got {w.shape=}")
  if not isinstance(vd, ViterbiDecompressor):
    raise TypeError(f"vd must be a ViterbiDecompressor, got {vd!r}")
  if not 0.0 <= sparsity < 1.0:
    raise ValueError(f"{sparsity=} must be in [0, 1)")
  r = vd.outputs_per_bit
  tile_k = _default_tile_k(r) if tile_k is None else tile_k
  steps = -(-tile_k // r)
  if tile_k < 1 or steps > 32:
    raise ValueError(f"{tile_k=} must be in [1, {32 * r}] (32 input bits per stream with "
                     f"outputs_per_bit={r})")
  if tile_n < 1:
    raise ValueError(f"{tile_n=} must be positive")
  k, n = w.shape
  if k == 0 or n == 0:
    raise ValueError(f"w must be non-empty, got {w.shape=}")
  kp, np_ = -(-k // tile_k) * tile_k, -(-n // tile_n) * tile_n

  base = TanhMargin.for_sparsity(w, sparsity) if metric is None else BiasedMetric(metric)
  gains = np.zeros((kp, np_), np.float32)
  gains[:k, :n] = np.asarray(base(w), np.float32)
  if not np.all(np.isfinite(gains)):
    raise ValueError("metric(w) must be finite (w has NaN/inf or the metric overflowed)")
  # Padding has gain 0 and is left unbiased (the bias is applied only where the gain is
  # nonzero), so it never affects the objective; its mask bits are dropped afterwards.
  real = np.zeros((kp, np_), bool)
  real[:k, :n] = True
  gains[~real] = 0.0
  sg = _stream_gains(gains, tile_k, steps, r)
  rs = (_stream_gains(real.astype(np.float32), tile_k, steps, r) > 0).reshape(len(sg), -1)
  # A real gain of exactly 0 must still be biased: nudge it off zero.
  sg[rs.reshape(sg.shape) & (sg == 0)] = np.float32(1e-30)
  table = jnp.asarray(vd.output_table(), jnp.float32)
  out_table = vd.output_table()

  def realised(bits, rows_real):
    m = _decode_np(bits, out_table, vd.num_ff)
    return 1.0 - float(m[rows_real].mean())

  rng = np.random.default_rng(seed)
  b = sg.shape[0]
  if b > _SAMPLE_STREAMS:
    idx = rng.choice(b, _SAMPLE_STREAMS, replace=False)
    s_g, s_r = sg[idx], rs[idx]
  else:
    s_g, s_r = sg, rs
  # Bracket: a larger bias keeps fewer weights.
  scale = float(np.abs(s_g).max()) + 1.0
  lo, hi = -scale, scale
  bias = 0.0
  for _ in range(24):
    bias = 0.5 * (lo + hi)
    sp = realised(_encode(s_g, table, vd.num_ff, bias), s_r)
    if abs(sp - sparsity) <= 0.1 * tolerance:  # tight: the sample is cheap, the full DP is not
      break
    if sp < sparsity:
      lo = bias
    else:
      hi = bias
  bits = _encode(sg, table, vd.num_ff, bias)
  sp = realised(bits, rs)
  for _ in range(12):  # refine on the full matrix if the sample misled us
    if abs(sp - sparsity) <= 0.5 * tolerance:
      break
    if sp < sparsity:
      lo = bias
    else:
      hi = bias
    bias = 0.5 * (lo + hi)
    bits = _encode(sg, table, vd.num_ff, bias)
    sp = realised(bits, rs)
  if abs(sp - sparsity) > tolerance:
    warnings.warn(f"realised sparsity {sp:.4f} is not within {tolerance=} of {sparsity=} "
                  f"(shape {w.shape}: the mask granularity or the VD cannot do better)",
                  stacklevel=2)

  kt = kp // tile_k
  words = pack_bits(bits).reshape(kt, np_)
  mask_pad = _decode_np(bits, out_table, vd.num_ff)[:, :tile_k]  # [B, tile_k]
  mask_pad = mask_pad.reshape(kt, np_, tile_k).transpose(0, 2, 1).reshape(kp, np_) & real
  w_pad = np.zeros((kp, np_), np.asarray(w).dtype)
  w_pad[:k, :n] = np.asarray(w)
  nt = np_ // tile_n

  def tile_order(a):
    return a.reshape(kt, tile_k, nt, tile_n).transpose(0, 2, 3, 1).reshape(kt, nt, -1)

  mo = tile_order(mask_pad)
  values = tile_order(w_pad)[mo]
  counts = mo.sum(-1).reshape(-1)
  offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).reshape(kt, nt).astype(np.int32)

  a = np.abs(np.asarray(w, np.float64))
  nnz = int(mask_pad.sum())
  total = float(a.sum()) or 1.0
  kept = float(a[mask_pad[:k, :n]].sum()) / total
  flat = a.reshape(-1)
  top = np.partition(flat, flat.size - nnz)[flat.size - nnz:] if nnz else flat[:0]
  magnitude = float(top.sum()) / total  # the nnz largest |w|: magnitude pruning's mass
  info = (
      ("sparsity", 1.0 - nnz / (k * n)),
      ("target_sparsity", float(sparsity)),
      ("kept_mass", kept),
      ("magnitude_kept_mass", magnitude),
      ("kept_mass_ratio", kept / magnitude if magnitude else 1.0),
      ("bias", float(bias)),
  )
  return ViterbiSparseMatrix(
      bits=jnp.asarray(words), values=jnp.asarray(values), offsets=jnp.asarray(offsets),
      shape=(k, n), vd=vd, tile_k=tile_k, tile_n=tile_n, metric=base.with_bias(bias), info=info,
      max_tile_nnz=int(counts.max()))


def _decode_np(bits: np.ndarray, table: np.ndarray, num_ff: int) -> np.ndarray:
  """Host-side decode via the output table: bits [B, S] -> mask [B, S * R] bool."""
  b, s = bits.shape
  window = np.zeros((b, s), np.int64)
  for d in range(num_ff + 1):
    shifted = np.zeros((b, s), np.int64)
    shifted[:, d:] = bits[:, :s - d] if d < s else 0
    window |= shifted << d
  return table[window].reshape(b, s * table.shape[1])

