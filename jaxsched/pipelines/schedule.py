"""Schedules: where each Func is computed and stored, and how each stage's loops are shaped.

Loop order is written outermost first in ``Stage.loops`` (the default is the argument order,
so the last array axis is innermost, as numpy users expect); ``reorder`` takes its vars
innermost first, as in Halide.

What each directive means per backend (see docs/pipelines.md):

* XLA: ``compute_inline`` substitutes; ``compute_root`` materialises (behind an optimization
  barrier); ``compute_at(f, v)`` computes on tiles of ``f`` (overlapped tiling) in a loop over
  the loops of ``f`` down to ``v``; ``store_at(f, vs)`` + ``compute_at(f, vc)`` with ``vc``
  inside ``vs`` is a sliding window (a scan that computes only the new part each step).
  ``unroll`` of a small pure dim evaluates one index at a time (selects on it fold away);
  ``parallel``, ``vectorize``, other ``unroll``s, and splits and fuses of loops inside the
  tile (or of Funcs without ``compute_at`` producers) are hints only on XLA (recorded in
  ``Pipeline.lower()``).
* ``bound(v, min, extent)`` fixes the computed region of a dim on every backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from jaxsched.pipelines.ir import Func

LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled")


def var_name(v: Any) -> str:
  """Name of a Var/RVar or a string."""
  if isinstance(v, str):
    return v
  name = getattr(v, "name", None)
  if not isinstance(name, str):
    raise TypeError(f"expected a Var or a var name, got {v!r}")
  return name


def _factor(f: Any, what: str, func: str, var: str) -> int:
  if isinstance(f, bool) or not isinstance(f, int) or f <= 0:
    raise ValueError(f"{what} of Func {func} var {var}: factor={f!r} must be a positive int")
  return f


class Stage:
  """Loop structure of one definition (pure or update) of a Func."""

  def __init__(self, func: Func, index: int):
    self.func = func
    self.index = index
    self._loops: list[str] | None = None
    self.kinds: dict[str, str] = {}
    # Splits and fuses in the order applied (a fuse of split vars, a split of a fused var).
    self.transforms: list[tuple] = []  # ("split", old, o, i, f) | ("fuse", inner, outer, fused)

  @property
  def splits(self) -> list[tuple[str, str, str, int]]:
    """``(old, outer, inner, factor)`` of each split, in order."""
    return [t[1:] for t in self.transforms if t[0] == "split"]

  @property
  def fuses(self) -> list[tuple[str, str, str]]:
    """``(inner, outer, fused)`` of each fuse, in order."""
    return [t[1:] for t in self.transforms if t[0] == "fuse"]

  @property
  def loops(self) -> list[str]:
    """Loop var names, outermost first."""
    if self._loops is None:
      from jaxsched.pipelines.ir import Var

      d = self.func.definitions[self.index]
      names = [a.name for a in d.args if isinstance(a, Var)]
      if d.rdom is not None:  # RVars run inside the pure vars, r[0] innermost
        names += [r.name for r in reversed(d.rdom.vars)]
      self._loops = names
    return self._loops

  def _where(self, v: Any, what: str) -> str:
    name = var_name(v)
    if name not in self.loops:
      raise ValueError(
        f"{what}: Func {self.func.name} (stage {self.index}) has no loop var {name!r}; "
        f"its loops are {self.loops}"
      )
    return name

  def split(self, var: Any, outer: Any, inner: Any, factor: int) -> Stage:
    """Split ``var`` into ``outer * factor + inner``; ragged tails shift inwards."""
    name = self._where(var, "split")
    o, i = var_name(outer), var_name(inner)
    f = _factor(factor, "split", self.func.name, name)
    for new in (o, i):
      if new in self.loops and new != name:
        raise ValueError(f"split of Func {self.func.name}: new var name {new!r} already a loop")
    if o == i:
      raise ValueError(f"split of Func {self.func.name}: outer and inner are both named {o!r}")
    k = self.loops.index(name)
    self.loops[k : k + 1] = [o, i]
    self.transforms.append(("split", name, o, i, f))
    return self

  def tile(self, *args: Any) -> Stage:
    """``tile(x, y, xo, yo, xi, yi, xfactor, yfactor)`` or ``tile(x, y, xi, yi, xf, yf)``."""
    if len(args) == 6:
      x, y, xi, yi, xf, yf = args
      xo, yo = x, y
    elif len(args) == 8:
      x, y, xo, yo, xi, yi, xf, yf = args
    else:
      raise TypeError(f"tile takes 6 or 8 arguments, got {len(args)}")
    self.split(x, xo, xi, xf)
    self.split(y, yo, yi, yf)
    return self.reorder(xi, yi, xo, yo)

  def reorder(self, *vars_: Any) -> Stage:
    """Reorder the given loops among their current slots; arguments are innermost first."""
    names = [self._where(v, "reorder") for v in vars_]
    if len(set(names)) != len(names):
      raise ValueError(f"reorder of Func {self.func.name}: repeated vars in {names}")
    slots = sorted(self.loops.index(n) for n in names)
    for slot, n in zip(slots, reversed(names), strict=True):
      self.loops[slot] = n
    return self

  def fuse(self, inner: Any, outer: Any, fused: Any) -> Stage:
    """Fuse two loops into one, ``fused = outer * extent(inner) + inner``.

    A fused loop at or outside a ``compute_at`` var is a tile loop (Halide's parallel tiles:
    ``tile(...).fuse(xo, yo, t)``); inside the tile it is a hint on XLA."""
    i, o, f = self._where(inner, "fuse"), self._where(outer, "fuse"), var_name(fused)
    if i == o:
      raise ValueError(f"fuse of Func {self.func.name}: inner and outer are both {i!r}")
    k = min(self.loops.index(i), self.loops.index(o))
    self.loops.remove(i)
    self.loops.remove(o)
    self.loops.insert(k, f)
    self.transforms.append(("fuse", i, o, f))
    return self

  def _mark(self, var: Any, kind: str, factor: int | None) -> Stage:
    name = self._where(var, kind)
    if factor is not None:
      _factor(factor, kind, self.func.name, name)
      inner = f"{name}_{kind[0]}i"
      self.split(name, f"{name}_{kind[0]}o", inner, factor)
      name = inner
    self.kinds[name] = kind
    return self

  def parallel(self, var: Any, factor: int | None = None) -> Stage:
    return self._mark(var, "parallel", factor)

  def vectorize(self, var: Any, factor: int | None = None) -> Stage:
    return self._mark(var, "vectorized", factor)

  def unroll(self, var: Any, factor: int | None = None) -> Stage:
    return self._mark(var, "unrolled", factor)

  def kind(self, name: str) -> str:
    return self.kinds.get(name, "serial")


class FuncSchedule:
  """Compute and storage levels and fixed bounds of a Func."""

  def __init__(self, func: Func):
    self.func = func
    self.compute: tuple = ("inline",)
    self.store: tuple | None = None
    self.bounds: dict[str, tuple[int, int]] = {}

  def compute_inline(self) -> None:
    self.compute, self.store = ("inline",), None

  def compute_root(self) -> None:
    self.compute = ("root",)

  def compute_at(self, f: Any, var: Any) -> None:
    self._check_level(f, var, "compute_at")
    self.compute = ("at", f, var_name(var))

  def store_root(self) -> None:
    self.store = ("root",)

  def store_at(self, f: Any, var: Any) -> None:
    self._check_level(f, var, "store_at")
    self.store = ("at", f, var_name(var))

  def bound(self, var: Any, min_: int, extent: int) -> None:
    name = var_name(var)
    if self.func.defined and name not in [a.name for a in self.func.args]:
      raise ValueError(
        f"bound: Func {self.func.name} has no pure var {name!r}; its vars are "
        f"{[a.name for a in self.func.args]}"
      )
    if not isinstance(min_, int) or not isinstance(extent, int) or extent <= 0:
      raise ValueError(
        f"bound of Func {self.func.name} var {name}: {min_=}, {extent=} must be ints with a "
        "positive extent"
      )
    self.bounds[name] = (min_, extent)

  def _check_level(self, f: Any, var: Any, what: str) -> None:
    from jaxsched.pipelines.ir import Func

    if not isinstance(f, Func):
      raise TypeError(f"{what} of Func {self.func.name}: expected a Func, got {f!r}")
    if f is self.func:
      raise ValueError(f"{what}: Func {self.func.name} cannot be computed inside itself")
    var_name(var)
