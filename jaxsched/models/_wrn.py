"""Wide residual networks (Zagoruyko & Komodakis 2016) and their hypernetwork version."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsched.models._hyper import HyperConv, HyperGenerator

__all__ = ["HyperWRN", "WRN"]


def _norm(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(n, momentum=0.9, epsilon=1e-5, rngs=rngs)


class _Block(nnx.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut."""

  def __init__(self, cin: int, cout: int, stride: int, conv, dropout: float, rngs: nnx.Rngs):
    self.bn1 = _norm(cin, rngs)
    self.conv1 = conv(cin, cout, stride)
    self.bn2 = _norm(cout, rngs)
    self.conv2 = conv(cout, cout, 1)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.shortcut = (
      nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
      if cin != cout or stride != 1
      else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    o = nnx.relu(self.bn1(x))
    y = self.conv1(o)
    y = nnx.relu(self.bn2(y))
    if self.dropout is not None:
      y = self.dropout(y)
    y = self.conv2(y)
    # The projection shortcut reads the pre-activated input, as in the reference WRN code.
    return y + (x if self.shortcut is None else self.shortcut(o))


class _WRNBase(nnx.Module):
  def _build(self, depth, k, num_classes, in_channels, dropout, conv, rngs):
    if depth < 10 or (depth - 4) % 6:
      raise ValueError(f"{depth=} must be 6n + 4 with n >= 1 (e.g. 16, 22, 28, 40)")
    if k < 1:
      raise ValueError(f"{k=} must be >= 1")
    n = (depth - 4) // 6
    widths = (16 * k, 32 * k, 64 * k)
    self.depth, self.k = depth, k
    self.stem = nnx.Conv(in_channels, 16, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
    blocks, cin = [], 16
    for g, w in enumerate(widths):
      for b in range(n):
        stride = 2 if (g > 0 and b == 0) else 1
        blocks.append(_Block(cin, w, stride, conv, dropout, rngs))
        cin = w
    self.blocks = nnx.List(blocks)
    self.bn = _norm(cin, rngs)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps images [b, h, w, c] to logits [b, num_classes]."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    x = nnx.relu(self.bn(x))
    return self.head(jnp.mean(x, axis=(1, 2)))


class WRN(_WRNBase):
  """WRN-depth-k for CIFAR: 3x3 convs without bias, BN, pre-activation blocks.

  Args:
    depth: 6n + 4 (n blocks per group).
    k: Width multiplier (group widths 16k, 32k, 64k).
    num_classes: Output logits.
    in_channels: Input image channels.
    dropout: Dropout between the two convs of a block (0 disables it).
    rngs: NNX random streams.
  """

  def __init__(
    self,
    depth: int = 16,
    k: int = 4,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    dropout: float = 0.0,
    rngs: nnx.Rngs,
  ):
    def conv(cin, cout, stride):
      return nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)

    self._build(depth, k, num_classes, in_channels, dropout, conv, rngs)


class HyperWRN(_WRNBase):
  """WRN whose block 3x3 kernels are tiled from 16x16 basic kernels made by one shared generator.

  As in Ha et al. (2017): each 3x3x16x16 block has its own N_z = 64 embedding; the stem, the 1x1
  shortcut projections, BN and the classifier stay ordinary.

  Args:
    depth: 6n + 4.
    k: Width multiplier.
    num_classes: Output logits.
    in_channels: Input image channels.
    z_dim: Embedding size N_z.
    dropout: Dropout between the two convs of a block.
    rngs: NNX random streams.
  """

  def __init__(
    self,
    depth: int = 16,
    k: int = 4,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    z_dim: int = 64,
    dropout: float = 0.0,
    rngs: nnx.Rngs,
  ):
    self.generator = HyperGenerator(
      z_dim=z_dim, in_features=16, out_features=16, kernel_size=3, rngs=rngs
    )

    def conv(cin, cout, stride):
      return HyperConv(
        cin,
        cout,
        3,
        z_dim=z_dim,
        block_in=16,
        block_out=16,
        generator=self.generator,
        strides=stride,
        use_bias=False,
        rngs=rngs,
      )

    self._build(depth, k, num_classes, in_channels, dropout, conv, rngs)
