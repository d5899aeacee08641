"""The Viterbi-compressed sparse matrix format and index-cost accounting.

Layout of ``W [K, N]`` (padded up to ``[K_t * tile_k, N_t * tile_n]``):

- *Streams*: each column segment of ``tile_k`` consecutive rows is one VD stream of
  ``steps = ceil(tile_k / outputs_per_bit)`` input bits starting from a cleared register; stream
  ``(kt, n)`` covers rows ``kt * tile_k + [0, tile_k)`` of column ``n``. Its bits are packed LSB
  first (bit ``t`` is input bit ``t``) into ``bits[kt, n]`` (uint32, so ``steps <= 32``). Row ``i``
  of the segment is mask bit ``i`` of the stream (step ``i // R``, output ``i % R``).
- *Values*: the kept weights in decode order: tiles ``(kt, nt)`` of ``[tile_k, tile_n]`` in
  row-major order, inside a tile column by column (stream by stream), top to bottom.
  ``offsets[kt, nt]`` is where tile ``(kt, nt)`` starts in ``values``.
- *Padding*: rows ``>= K`` and columns ``>= N`` are not part of the matrix: their mask bits are
  forced to 0 (``.mask`` is decoded AND in-bounds) and no value is stored for them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.sparse._decompressor import ViterbiDecompressor

__all__ = ["ViterbiSparseMatrix", "index_cost_report"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: identity equality, like jax.Array
class ViterbiSparseMatrix:
  """A ``[K, N]`` sparse matrix whose mask is stored as Viterbi decompressor input bits.

  Attributes:
    bits: ``[K_t, N_t * tile_n]`` uint32, packed input bits, one word per stream.
    values: ``[nnz]`` kept weights in decode order (see the module docstring).
    offsets: ``[K_t, N_t]`` int32, start of each tile's segment in ``values``.
    shape: ``(K, N)``.
    vd: the decompressor (static).
    tile_k: rows per stream (static).
    tile_n: columns per value tile (static).
    metric: the effective branch metric the DP maximised (static; for :func:`mask_score`).
    info: pruning statistics as ``(name, value)`` pairs (static); see :attr:`stats`.
    max_tile_nnz: the largest number of kept weights in one tile (static; sizes the TPU
      kernel's value window without looking at the data).
  """

  bits: jax.Array
  values: jax.Array
  offsets: jax.Array
  shape: tuple[int, int]
  vd: ViterbiDecompressor
  tile_k: int
  tile_n: int
  metric: Any = None
  info: tuple[tuple[str, float], ...] = ()
  max_tile_nnz: int | None = None

  def tree_flatten(self):
    aux = (self.shape, self.vd, self.tile_k, self.tile_n, self.metric, self.info,
           self.max_tile_nnz)
    return (self.bits, self.values, self.offsets), aux

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  def replace(self, **kwargs) -> ViterbiSparseMatrix:
    """A copy with fields replaced, e.g. ``m.replace(values=new_values)`` after retraining."""
    return dataclasses.replace(self, **kwargs)

  @property
  def steps(self) -> int:
    """Input bits per stream."""
    return -(-self.tile_k // self.vd.outputs_per_bit)

  @property
  def padded_shape(self) -> tuple[int, int]:
    return self.bits.shape[0] * self.tile_k, self.bits.shape[1]

  @property
  def dtype(self):
    return self.values.dtype

  @property
  def nnz(self) -> int:
    return int(self.values.shape[0])

  def padded_mask(self) -> jax.Array:
    """``[K_pad, N_pad]`` bool mask including padding (forced to 0 outside ``shape``)."""
    return _padded_mask(self.bits, self.vd, self.tile_k, self.steps, self.shape)

  @property
  def mask(self) -> jax.Array:
    """``[K, N]`` bool: which weights are kept (decoded from the input bits)."""
    k, n = self.shape
    return self.padded_mask()[:k, :n]

  def to_dense(self) -> jax.Array:
    """``[K, N]`` dense matrix with zeros where pruned. Differentiable w.r.t. ``values``."""
    return _to_dense(self.bits, self.values, self.offsets, self.vd, self.tile_k, self.tile_n,
                     self.shape)

  @property
  def index_bits(self) -> int:
    """Index storage in bits: ``steps`` input bits per stream plus a 32-bit offset per tile."""
    return int(self.bits.size * self.steps + self.offsets.size * 32)

  @property
  def nbytes(self) -> int:
    """Bytes of all stored arrays (packed bits as uint32 words, values, offsets)."""
    return int(self.bits.nbytes + self.values.nbytes + self.offsets.nbytes)

  @property
  def stats(self) -> dict[str, float]:
    """Sparsity, |w| mass kept (and magnitude pruning's at the same sparsity), DP bias."""
    return dict(self.info)


def _tile_order(mask_pad: jax.Array, tile_k: int, tile_n: int) -> jax.Array:
  """Flattens a padded ``[K_pad, N_pad]`` array into decode order."""
  kp, np_ = mask_pad.shape
  t = mask_pad.reshape(kp // tile_k, tile_k, np_ // tile_n, tile_n)
  return t.transpose(0, 2, 3, 1).reshape(-1)


def unpack_bits(words: jax.Array, steps: int) -> jax.Array:
  """``[...]`` uint32 words -> ``[..., steps]`` int32 bits (LSB first)."""
  return ((words[..., None] >> jnp.arange(steps, dtype=jnp.uint32)) & 1).astype(jnp.int32)


def pack_bits(bits: np.ndarray) -> np.ndarray:
  """``[..., steps]`` 0/1 -> ``[...]`` uint32 words (LSB first); ``steps <= 32``."""
  bits = np.asarray(bits, np.uint64)
  return (bits << np.arange(bits.shape[-1], dtype=np.uint64)).sum(-1).astype(np.uint32)


@jax.jit(static_argnames=("vd", "tile_k", "steps", "shape"))
def _padded_mask(bits, vd, tile_k, steps, shape):
  kt, np_ = bits.shape
  m = vd.decode(unpack_bits(bits, steps))[..., :tile_k]  # [K_t, N_pad, tile_k]
  m = m.transpose(0, 2, 1).reshape(kt * tile_k, np_)
  rows = jnp.arange(kt * tile_k)[:, None] < shape[0]
  cols = jnp.arange(np_)[None, :] < shape[1]
  return m & rows & cols


@jax.jit(static_argnames=("vd", "tile_k", "tile_n", "shape"))
def _to_dense(bits, values, offsets, vd, tile_k, tile_n, shape):
  del offsets  # the decode order alone places the values
  k, n = shape
  kt, np_ = bits.shape
  kp, nt = kt * tile_k, np_ // tile_n
  steps = -(-tile_k // vd.outputs_per_bit)
  order = _tile_order(_padded_mask(bits, vd, tile_k, steps, shape), tile_k, tile_n)
  idx = jnp.nonzero(order, size=values.shape[0], fill_value=0)[0]
  flat = jnp.zeros(order.shape, values.dtype).at[idx].set(values)
  dense = flat.reshape(kt, nt, tile_n, tile_k).transpose(0, 3, 1, 2)
  return dense.reshape(kp, np_)[:k, :n]


def _entropy(p: float) -> float:
  if p <= 0.0 or p >= 1.0:
    return 0.0
  return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _relative_index_entries(mask: np.ndarray, gap_bits: int) -> int:
  """Entries (values + filler zeros) of Deep Compression's relative indexing, row-major."""
  pos = np.flatnonzero(mask.reshape(-1))
  if pos.size == 0:
    return 0
  gaps = np.diff(np.concatenate([[-1], pos]))  # >= 1
  span = 2**gap_bits  # a b-bit field encodes gaps 1..2**b
  return int(np.sum(-(-gaps // span)))  # each gap costs ceil(gap / span) entries


def index_cost_report(mask_or_matrix: jax.Array | np.ndarray | ViterbiSparseMatrix) -> dict:
  """Index storage of a sparsity pattern in several formats.

  Formats: ``viterbi`` (only for a :class:`ViterbiSparseMatrix`: its stream bits + tile offsets),
  ``csr`` (int32 column index per nonzero + ``K + 1`` int32 row pointers), ``relative4`` /
  ``relative5`` (Deep Compression relative indexing: a 4/5-bit gap per entry, with a filler zero
  entry whenever a gap exceeds 2**bits; fillers also cost a stored value, reported as
  ``filler_entries``), ``bcoo`` (two int32 indices per nonzero) and ``entropy`` (``K*N*H(d)``
  bits, the bound for i.i.d. masks of density ``d``).

  Args:
    mask_or_matrix: a ``[K, N]`` boolean mask or a :class:`ViterbiSparseMatrix`.

  Returns:
    ``{"shape", "nnz", "density", "formats": {name: {"index_bits", "bits_per_nonzero",
    "bits_per_weight", ...}}}``.
  """
  matrix = mask_or_matrix if isinstance(mask_or_matrix, ViterbiSparseMatrix) else None
  mask = np.asarray(matrix.mask if matrix is not None else mask_or_matrix)
  if mask.ndim != 2:
    raise ValueError(f"mask must be 2-D [K, N], got {mask.shape=}")
  mask = mask.astype(bool)
  k, n = mask.shape
  nnz = int(mask.sum())
  numel = k * n
  density = nnz / numel if numel else 0.0
  bits: dict[str, dict[str, float]] = {}
  if matrix is not None:
    bits["viterbi"] = {"index_bits": matrix.index_bits,
                       "compression_ratio": float(matrix.vd.outputs_per_bit)}
  bits["csr"] = {"index_bits": 32 * nnz + 32 * (k + 1)}
  for b in (4, 5):
    entries = _relative_index_entries(mask, b)
    bits[f"relative{b}"] = {"index_bits": b * entries, "filler_entries": entries - nnz}
  bits["bcoo"] = {"index_bits": 64 * nnz}
  bits["entropy"] = {"index_bits": numel * _entropy(density)}
  for row in bits.values():
    row["bits_per_nonzero"] = row["index_bits"] / nnz if nnz else math.inf
    row["bits_per_weight"] = row["index_bits"] / numel if numel else 0.0
  return {"shape": (k, n), "nnz": nnz, "density": density, "formats": bits}
