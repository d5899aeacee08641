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

__all__ = ["ViterbiConv", "ViterbiDense", "ViterbiIndex"]

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


class ViterbiConv(nnx.Module):
  """NHWC 2-D convolution whose kernel can be Viterbi-compressed, via im2col.

  The kernel is stored as the ``[in_features * kh * kw, out_features]`` matrix of a
  :class:`ViterbiDense` in the feature order of ``lax.conv_general_dilated_patches``
  (input channel slowest, then kernel row, then column); :attr:`kernel_hwio` gives it back as
  an ``[kh, kw, in, out]`` kernel. A 1x1 convolution needs no patches: it is the dense layer
  applied per pixel. Compress, retrain and serve exactly as :class:`ViterbiDense`.

  Args:
    in_features: input channels.
    out_features: output channels.
    kernel_size: ``(kh, kw)`` or an int.
    strides: ``(sh, sw)`` or an int.
    padding: ``"SAME"`` or ``"VALID"``.
    **dense_kwargs: forwarded to :class:`ViterbiDense` (``use_bias``, ``kernels``,
      ``interpret``, ``config``, ``param_dtype``, ``kernel_init``, ``rngs``).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: str = "SAME",
    **dense_kwargs: Any,
  ):
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    st = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if len(ks) != 2 or min(ks) < 1 or len(st) != 2 or min(st) < 1:
      raise ValueError(f"{kernel_size=} and {strides=} must be positive ints or pairs")
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"{padding=} must be 'SAME' or 'VALID'")
    self.kernel_size, self.strides, self.padding = ks, st, padding.upper()
    self.in_features, self.out_features = in_features, out_features
    self.dense = ViterbiDense(in_features * ks[0] * ks[1], out_features, **dense_kwargs)

  @property
  def compressed(self) -> bool:
    return self.dense.compressed

  def compress(self, vd: ViterbiDecompressor, sparsity: float, **prune_kwargs: Any) -> dict:
    """Prunes the im2col kernel with ``vd`` (see :meth:`ViterbiDense.compress`)."""
    return self.dense.compress(vd, sparsity, **prune_kwargs)

  def matrix(self) -> ViterbiSparseMatrix:
    return self.dense.matrix()

  @property
  def kernel_hwio(self) -> jax.Array:
    """The (masked, if compressed) kernel as ``[kh, kw, in, out]``."""
    w = self.matrix().to_dense() if self.compressed else self.dense.kernel[...]
    kh, kw = self.kernel_size
    return w.reshape(self.in_features, kh, kw, self.out_features).transpose(1, 2, 0, 3)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.in_features:
      raise ValueError(f"expected NHWC input with {self.in_features} channels, got {x.shape=}")
    if self.kernel_size == (1, 1) and self.strides == (1, 1):
      patches = x
    else:
      patches = jax.lax.conv_general_dilated_patches(
        x, self.kernel_size, self.strides, self.padding,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
      )  # [n, ho, wo, in * kh * kw], input channel slowest
    n, ho, wo, k = patches.shape
    y = self.dense(patches.reshape(n * ho * wo, k))
    return y.reshape(n, ho, wo, self.out_features)
