"""The Viterbi decompressor (VD): a shift register with XOR taps used as a mask generator.

Lee et al., "Viterbi-based Pruning for Sparse Matrix with Fixed and High Index Compression
Ratio" (ICLR 2018). A VD has ``num_ff`` flip-flops fed one input bit per step. At step ``t`` its
*window* is ``(u[t], u[t-1], ..., u[t-num_ff])``: the new input bit and the register contents
(zero before the stream starts). Each XOR gate outputs the parity of a fixed subset (its *taps*)
of the window. ``outputs_per_bit`` mask bits leave the VD per input bit, so storing only the input
bits compresses the mask index by a fixed ratio, whatever the sparsity.

Tap rule (deterministic in ``seed``): ``numpy.random.default_rng(seed)`` draws one tap set per gate
as ``1 | (r << 1)`` with ``r`` uniform in ``[0, 2**num_ff)``, without replacement, so every gate
reads the newest input bit (each step's input can flip every output of that step) and no two gates
are equal. With a comparator, draws are repeated until each comparator group of gates is linearly
independent over GF(2). Why the outputs look random: every gate is a nonzero GF(2)-linear form of
the window, so for uniformly random input bits each gate is a fair coin and distinct gates are
pairwise independent; linearly independent groups are jointly uniform, so a comparator group is a
uniform ``bits``-bit number. The VD is a rate-1/R convolutional encoder with random generators.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Comparator", "MAX_NUM_FF", "ViterbiDecompressor"]

# The DP keeps 2**num_ff scores and survivor bits per stream and step: beyond 2**16 states a
# single 128-row stream already needs megabytes and encoding large matrices becomes impractical.
MAX_NUM_FF = 16


@dataclasses.dataclass(frozen=True)
class Comparator:
  """Groups ``bits`` VD gate outputs into a number ``v`` and emits the mask bit ``v < threshold``.

  The expected density of ones is ``threshold / 2**bits`` (plain XOR outputs give 1/2), which lets
  the pruner reach high sparsity without fighting the generator.

  Attributes:
    bits: gates per mask bit (1..8).
    threshold: in ``[1, 2**bits)``.
  """

  bits: int
  threshold: int

  def __post_init__(self):
    if not 1 <= self.bits <= 8:
      raise ValueError(f"comparator {self.bits=} must be in [1, 8]")
    if not 1 <= self.threshold < 2**self.bits:
      raise ValueError(f"comparator {self.threshold=} must be in [1, {2**self.bits}) for "
                       f"{self.bits=}")

  @property
  def density(self) -> float:
    """Expected fraction of ones in the mask for random input bits."""
    return self.threshold / 2**self.bits

  @classmethod
  def for_density(cls, density: float, *, bits: int = 4) -> Comparator:
    """The comparator with ``bits`` bits whose expected density is closest to ``density``."""
    if not 0.0 < density < 1.0:
      raise ValueError(f"{density=} must be in (0, 1)")
    threshold = int(np.clip(round(density * 2**bits), 1, 2**bits - 1))
    return cls(bits=bits, threshold=threshold)


def _gf2_rank(rows: list[int]) -> int:
  rank, rows = 0, list(rows)
  for bit in reversed(range(64)):
    pivot = next((r for r in rows if (r >> bit) & 1), None)
    if pivot is None:
      continue
    rows.remove(pivot)
    rows = [r ^ pivot if (r >> bit) & 1 else r for r in rows]
    rank += 1
  return rank


@dataclasses.dataclass(frozen=True)
class ViterbiDecompressor:
  """A Viterbi decompressor: ``num_ff`` flip-flops, ``outputs_per_bit`` mask bits per input bit.

  Args:
    num_ff: flip-flops in the shift register (the DP has ``2**num_ff`` states).
    outputs_per_bit: mask bits produced per input bit: the index compression ratio.
    seed: selects the XOR tap layout (see the module docstring for the rule).
    comparator: optional :class:`Comparator`; each mask bit then consumes ``comparator.bits``
      gates, so the VD has ``outputs_per_bit * comparator.bits`` XOR gates.
  """

  num_ff: int
  outputs_per_bit: int
  seed: int = dataclasses.field(default=0, kw_only=True)
  comparator: Comparator | None = dataclasses.field(default=None, kw_only=True)

  def __post_init__(self):
    k, r = self.num_ff, self.outputs_per_bit
    if not isinstance(k, int | np.integer) or k < 1:
      raise ValueError(f"num_ff={k!r} must be a positive int")
    if k > MAX_NUM_FF:
      states = 2**k
      # Scores (4 B) + one survivor byte per state and step for a 32-step stream.
      per_stream = states * (4 + 32)
      raise ValueError(
          f"num_ff={k} is too large: the Viterbi DP needs 2^{k} = {states:,} states, i.e. "
          f"{per_stream / 2**20:,.1f} MiB per 32-step stream (max num_ff is {MAX_NUM_FF})")
    if not isinstance(r, int | np.integer) or r < 1:
      raise ValueError(f"outputs_per_bit={r!r} must be a positive int")
    if self.num_gates > 2**k:
      raise ValueError(
          f"{self.num_gates} XOR gates (outputs_per_bit={r} x {self.group_bits} comparator bits) "
          f"need distinct taps but num_ff={k} allows only 2^{k} = {2**k}; raise num_ff")
    if self.comparator is not None and not isinstance(self.comparator, Comparator):
      raise TypeError(f"comparator must be a Comparator or None, got {self.comparator!r}")

  @property
  def group_bits(self) -> int:
    """Gates per mask bit (the comparator width, 1 without a comparator)."""
    return 1 if self.comparator is None else self.comparator.bits

  @property
  def num_gates(self) -> int:
    return self.outputs_per_bit * self.group_bits

  @property
  def num_states(self) -> int:
    return 2**self.num_ff

  @property
  def density(self) -> float:
    """Expected density of ones for random input bits."""
    return 0.5 if self.comparator is None else self.comparator.density

  @property
  def taps(self) -> tuple[int, ...]:
    """Tap set of each gate as an int: bit ``d`` set means the gate reads ``u[t - d]``.

    Gate ``r * group_bits + b`` is bit ``b`` (LSB first) of mask output ``r``.
    """
    return _taps(self.num_ff, self.outputs_per_bit, self.group_bits, self.seed)

  def output_table(self) -> np.ndarray:
    """``[2**(num_ff+1), outputs_per_bit]`` bool: the mask bits each window value produces.

    Window value ``w`` has bit ``d`` equal to ``u[t - d]``.
    """
    windows = np.arange(2 ** (self.num_ff + 1), dtype=np.int64)
    taps = np.asarray(self.taps, dtype=np.int64)
    gates = np.zeros((windows.size, taps.size), np.int64)
    for d in range(self.num_ff + 1):
      gates ^= ((windows[:, None] >> d) & 1) * ((taps[None, :] >> d) & 1)
    return self._combine(gates.reshape(windows.size, self.outputs_per_bit, self.group_bits))

  def _combine(self, gates):
    """[..., R, group_bits] 0/1 gate outputs -> [..., R] bool mask bits."""
    if self.comparator is None:
      return gates[..., 0] == 1
    weights = 2 ** np.arange(self.group_bits)
    value = (gates * weights).sum(-1)
    return value < self.comparator.threshold

  def decode(self, bits: jax.Array) -> jax.Array:
    """Decodes input bits into mask bits; every mask bit is an XOR over a window (parallel).

    Args:
      bits: ``[..., steps]`` input bits (bool or ints in {0, 1}) of independent streams; each
        stream starts from a cleared register.

    Returns:
      ``[..., steps * outputs_per_bit]`` bool mask; step ``t`` produces positions
      ``t * outputs_per_bit + r``.
    """
    bits = jnp.asarray(bits)
    if not (jnp.issubdtype(bits.dtype, jnp.integer) or bits.dtype == jnp.bool_):
      raise TypeError(f"bits must be bool or integer, got {bits.dtype=}")
    return _decode(bits.astype(jnp.int32) & 1, self)


@functools.cache
def _taps(num_ff: int, outputs: int, group: int, seed: int) -> tuple[int, ...]:
  rng = np.random.default_rng(seed)
  for _ in range(1000):
    draws = rng.choice(2**num_ff, size=outputs * group, replace=False)
    taps = [1 | (int(r) << 1) for r in draws]
    groups = [taps[i:i + group] for i in range(0, len(taps), group)]
    if all(_gf2_rank(g) == group for g in groups):
      return tuple(taps)
  raise ValueError(f"could not draw linearly independent comparator groups for {num_ff=}, "
                   f"{outputs=}, {group=}; raise num_ff")


@functools.partial(jax.jit, static_argnames=("vd",))
def _decode(bits: jax.Array, vd: ViterbiDecompressor) -> jax.Array:
  steps = bits.shape[-1]
  gates = []
  for tap in vd.taps:
    g = jnp.zeros_like(bits)
    for d in range(vd.num_ff + 1):
      if (tap >> d) & 1:
        # u[t - d], zero before the stream starts.
        shifted = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(d, 0)])[..., :steps]
        g = g ^ shifted
    gates.append(g)
  gates = jnp.stack(gates, -1).reshape(*bits.shape, vd.outputs_per_bit, vd.group_bits)
  if vd.comparator is None:
    out = gates[..., 0] == 1
  else:
    value = jnp.sum(gates << jnp.arange(vd.group_bits), -1)
    out = value < vd.comparator.threshold
  return out.reshape(*bits.shape[:-1], steps * vd.outputs_per_bit)
