"""MobileNetV1 (Howard et al. 2017): depthwise-separable convolutions with a width multiplier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["KERNELS", "MOBILENET_V1_BLOCKS", "MobileNetV1"]

KERNELS = ("xla", "pallas")

# (pointwise output channels at alpha = 1, depthwise stride) for the 13 separable blocks.
MOBILENET_V1_BLOCKS = (
  (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
  (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def _norm(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(n, momentum=0.9, epsilon=1e-3, rngs=rngs)


def _separable_layers(
  kernels: str, interpret: bool, channels: int, out: int, stride: int, rngs: nnx.Rngs
):
  """Depthwise 3x3 and pointwise 1x1 layers (no bias: BN follows each)."""
  if kernels == "pallas":
    # Imported lazily: the XLA path should not pay for importing the Pallas kernels.
    from jaxsched.models.layers import DepthwiseConv, PointwiseConv

    return (
      DepthwiseConv(
        channels,
        3,
        strides=stride,
        use_bias=False,
        kernels="pallas",
        interpret=interpret,
        rngs=rngs,
      ),
      PointwiseConv(
        channels, out, use_bias=False, kernels="pallas", interpret=interpret, rngs=rngs
      ),
    )
  dw = nnx.Conv(
    channels,
    channels,
    (3, 3),
    strides=stride,
    padding="SAME",
    feature_group_count=channels,
    use_bias=False,
    rngs=rngs,
  )
  pw = nnx.Conv(channels, out, (1, 1), use_bias=False, rngs=rngs)
  return dw, pw


class _Separable(nnx.Module):
  def __init__(self, channels, out, stride, kernels, interpret, rngs):
    self.dw, self.pw = _separable_layers(kernels, interpret, channels, out, stride, rngs)
    self.bn_dw = _norm(channels, rngs)
    self.bn_pw = _norm(out, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.bn_dw(self.dw(x)))
    return nnx.relu(self.bn_pw(self.pw(x)))


class MobileNetV1(nnx.Module):
  """MobileNetV1 with width multiplier alpha.

  Stem: 3x3 conv (stride 2, or 1 with `small_inputs` for 32x32 or 28x28 images) to 32*alpha
  channels; 13 depthwise-separable blocks; global average pool; dense classifier. Convs have no
  bias and are followed by BN and ReLU.

  Args:
    alpha: Width multiplier; channel counts are int(c * alpha), at least 8.
    num_classes: Output logits.
    small_inputs: Use a stride-1 stem for small images.
    in_channels: Input image channels.
    kernels: "xla" (nnx.Conv with feature_group_count) or "pallas" (jaxsched's
      DepthwiseConv / PointwiseConv layers).
    interpret: Pallas interpret mode for kernels="pallas"; None picks it on CPU, where
      compiled Pallas does not run.
    rngs: NNX random streams.
  """

  def __init__(
    self,
    alpha: float = 1.0,
    *,
    num_classes: int = 1000,
    small_inputs: bool = False,
    in_channels: int = 3,
    kernels: str = "xla",
    interpret: bool | None = None,
    rngs: nnx.Rngs,
  ):
    if kernels not in KERNELS:
      raise ValueError(f"unknown {kernels=}; valid choices: {KERNELS}")
    if not alpha > 0:
      raise ValueError(f"{alpha=} must be > 0")

    def width(c: int) -> int:
      return max(8, int(c * alpha))

    if interpret is None:
      interpret = jax.default_backend() == "cpu"
    c = width(32)
    self.alpha, self.kernels = alpha, kernels
    self.stem = nnx.Conv(
      in_channels,
      c,
      (3, 3),
      strides=1 if small_inputs else 2,
      padding="SAME",
      use_bias=False,
      rngs=rngs,
    )
    self.bn = _norm(c, rngs)
    blocks = []
    for out, stride in MOBILENET_V1_BLOCKS:
      blocks.append(_Separable(c, width(out), stride, kernels, interpret, rngs))
      c = width(out)
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(c, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps images [b, h, w, in_channels] (or [b, h, w] grayscale) to logits [b, classes]."""
    if x.ndim == 3:
      x = x[..., None]
    x = nnx.relu(self.bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))
