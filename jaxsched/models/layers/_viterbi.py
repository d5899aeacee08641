"""NNX dense layer with a Viterbi-compressed kernel (Lee et al., ICLR 2018).

Life cycle: train dense as usual; ``layer.compress(vd, sparsity)`` prunes the kernel with the
Viterbi DP and replaces it by the compressed form (``values`` stay an ``nnx.Param``; the VD
input bits and tile offsets become a non-trainable :class:`ViterbiIndex` variable), then keep
training: gradients reach only the kept values, so the mask is fixed. Serving runs
:func:`jaxsched.sparse.viterbi_matmul` straight from the compressed form.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsched.sparse import (
  ViterbiDecompressor,
  ViterbiMatmulConfig,
  ViterbiSparseMatrix,
  viterbi_matmul,
  viterbi_prune,
)

__all__ = ["ViterbiDense", "ViterbiIndex"]

_KERNELS = ("pallas", "xla")
_DEFAULT_INIT = nnx.initializers.lecun_normal()


class ViterbiIndex(nnx.Variable):
  """Non-trainable index data of a compressed kernel (packed VD input bits, tile offsets)."""


class ViterbiDense(nnx.Module):
  """``y = x @ W + b`` whose ``W [in, out]`` can be compressed into a ViterbiSparseMatrix.

  Args:
    in_features: ``K``.
    out_features: ``N``.
    use_bias: add a bias.
    kernels: ``"pallas"`` (in-kernel decode) or ``"xla"`` (decode + scatter + dot) once
      compressed; the dense phase is a plain ``jnp.dot``.
    interpret: Pallas interpret mode (needed on CPU); ignored by ``"xla"``.
    config: kernel tiling; None looks one up per call.
    param_dtype: dtype the parameters are stored in (float32 or bfloat16).
    kernel_init: initializer of the dense kernel.
    rngs: random streams; ``rngs.params`` initializes the kernel.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    kernels: str = "xla",
    interpret: Any = False,
    config: ViterbiMatmulConfig | None = None,
    param_dtype: Any = jnp.float32,
    kernel_init: Any = _DEFAULT_INIT,
    rngs: nnx.Rngs,
  ):
    if kernels not in _KERNELS:
      raise ValueError(f"{kernels=} is not a valid kernel choice; valid choices: {_KERNELS}")
    self.in_features, self.out_features = in_features, out_features
    self.kernels, self.interpret, self.config = kernels, interpret, config
    self.kernel: nnx.Param | None = nnx.Param(
      kernel_init(rngs.params(), (in_features, out_features), param_dtype)
    )
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
    # Filled in by compress(); declared as data now so NNX tracks them as state then.
    self.values: nnx.Param | None = nnx.data(None)
    self.bits: ViterbiIndex | None = nnx.data(None)
    self.offsets: ViterbiIndex | None = nnx.data(None)
    self.format: tuple | None = None  # static parts of the ViterbiSparseMatrix

  @property
  def compressed(self) -> bool:
    return self.values is not None

  def compress(self, vd: ViterbiDecompressor, sparsity: float, **prune_kwargs: Any) -> dict:
    """Prunes the kernel to ``sparsity`` with ``vd`` and switches to the compressed form.

    Args:
      vd: the Viterbi decompressor.
      sparsity: target fraction of zeros.
      **prune_kwargs: forwarded to :func:`jaxsched.sparse.viterbi_prune` (``tile_k``, ...).

    Returns:
      The pruning statistics (``matrix.stats``).
    """
    if self.compressed:
      raise ValueError("layer is already compressed; build a new layer to re-prune")
    m = viterbi_prune(self.kernel[...], vd=vd, sparsity=sparsity, **prune_kwargs)
    self.values = nnx.Param(m.values)
    self.bits, self.offsets = ViterbiIndex(m.bits), ViterbiIndex(m.offsets)
    self.format = (m.shape, m.vd, m.tile_k, m.tile_n, m.metric, m.info, m.max_tile_nnz)
    self.kernel = None
    return m.stats

  def matrix(self) -> ViterbiSparseMatrix:
    """The compressed kernel as a ViterbiSparseMatrix (for serving or export)."""
    if not self.compressed:
      raise ValueError("layer is not compressed yet; call compress(vd, sparsity) first")
    return ViterbiSparseMatrix(self.bits[...], self.values[...], self.offsets[...], *self.format)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.compressed:
      m = self.matrix()
      y = viterbi_matmul(
        x.astype(m.dtype), m, config=self.config, interpret=self.interpret, backend=self.kernels
      )
    else:
      y = jnp.dot(x, self.kernel[...].astype(x.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y
