"""The pipeline language: expressions, Var, RVar/RDom, Func, ImageParam and Param.

Index order follows array axes (``f[y, x]`` for an image of shape ``(H, W)``), unlike Halide.
Expression dtypes follow JAX's type promotion exactly: every node's dtype is what the same
``jax.numpy`` operation would produce on operands of those dtypes, with Python scalars weakly
typed (``u8_image + 1`` stays uint8, ``u8_image + 1.0`` is float32, ``i32 / i32`` is float32).
``Var``s and ``RVar``s are int32.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.pipelines import schedule as _schedule

_ids = itertools.count()

# Elementwise operations by name; the XLA backend and dtype inference share this table.
BINARY_OPS: dict[str, Callable[[Any, Any], Any]] = {
  "add": jnp.add,
  "sub": jnp.subtract,
  "mul": jnp.multiply,
  "truediv": jnp.true_divide,
  "floordiv": jnp.floor_divide,
  "mod": jnp.mod,
  "pow": jnp.power,
  "lt": jnp.less,
  "le": jnp.less_equal,
  "gt": jnp.greater,
  "ge": jnp.greater_equal,
  "eq": jnp.equal,
  "ne": jnp.not_equal,
  "and": jnp.bitwise_and,
  "or": jnp.bitwise_or,
  "xor": jnp.bitwise_xor,
  "max": jnp.maximum,
  "min": jnp.minimum,
}
UNARY_OPS: dict[str, Callable[[Any], Any]] = {
  "neg": jnp.negative,
  "not": jnp.invert,
  "abs": jnp.abs,
  "sqrt": jnp.sqrt,
  "exp": jnp.exp,
  "log": jnp.log,
  "sin": jnp.sin,
  "cos": jnp.cos,
  "tan": jnp.tan,
  "tanh": jnp.tanh,
  "floor": jnp.floor,
  "ceil": jnp.ceil,
  "round": jnp.round,
}


_INFIX = {
  "add": "+",
  "sub": "-",
  "mul": "*",
  "truediv": "/",
  "floordiv": "//",
  "mod": "%",
  "pow": "**",
  "lt": "<",
  "le": "<=",
  "gt": ">",
  "ge": ">=",
  "eq": "==",
  "ne": "!=",
  "and": "&",
  "or": "|",
  "xor": "^",
}


@functools.lru_cache(maxsize=4096)
def _infer(op: str, *operands: tuple[np.dtype, bool]) -> tuple[np.dtype, bool]:
  """(dtype, weak) of ``op`` applied to operands, exactly as JAX would promote them."""
  structs = [jax.ShapeDtypeStruct((), d, weak_type=w) for d, w in operands]
  fn = BINARY_OPS.get(op) or UNARY_OPS.get(op)
  if op == "select":
    fn = jnp.where
  out = jax.eval_shape(fn, *structs)
  return np.dtype(out.dtype), bool(out.weak_type)


class Expr:
  """A node of the expression tree. Build with operators; never instantiate directly."""

  __slots__ = ()
  __hash__ = object.__hash__  # identity: ``==`` builds an expression

  @property
  def dtype(self) -> np.dtype:
    raise NotImplementedError

  @property
  def weak(self) -> bool:
    return False

  def _sig(self) -> tuple[np.dtype, bool]:
    return (self.dtype, self.weak)

  def __bool__(self):
    raise TypeError(
      "a pipeline Expr has no truth value: use select(cond, a, b) instead of if/else, and "
      "& | ~ (or logical_and/logical_or/logical_not) instead of and/or/not"
    )

  # Arithmetic.
  def __add__(self, o):
    return _bin("add", self, o)

  def __radd__(self, o):
    return _bin("add", o, self)

  def __sub__(self, o):
    return _bin("sub", self, o)

  def __rsub__(self, o):
    return _bin("sub", o, self)

  def __mul__(self, o):
    return _bin("mul", self, o)

  def __rmul__(self, o):
    return _bin("mul", o, self)

  def __truediv__(self, o):
    return _bin("truediv", self, o)

  def __rtruediv__(self, o):
    return _bin("truediv", o, self)

  def __floordiv__(self, o):
    return _bin("floordiv", self, o)

  def __rfloordiv__(self, o):
    return _bin("floordiv", o, self)

  def __mod__(self, o):
    return _bin("mod", self, o)

  def __rmod__(self, o):
    return _bin("mod", o, self)

  def __pow__(self, o):
    return _bin("pow", self, o)

  def __rpow__(self, o):
    return _bin("pow", o, self)

  def __neg__(self):
    return _un("neg", self)

  def __pos__(self):
    return self

  def __abs__(self):
    return _un("abs", self)

  def __invert__(self):
    return _un("not", self)

  # Comparisons and logic.
  def __lt__(self, o):
    return _bin("lt", self, o)

  def __le__(self, o):
    return _bin("le", self, o)

  def __gt__(self, o):
    return _bin("gt", self, o)

  def __ge__(self, o):
    return _bin("ge", self, o)

  def __eq__(self, o):  # type: ignore[override]
    return _bin("eq", self, o)

  def __ne__(self, o):  # type: ignore[override]
    return _bin("ne", self, o)

  def __and__(self, o):
    return _bin("and", self, o)

  def __rand__(self, o):
    return _bin("and", o, self)

  def __or__(self, o):
    return _bin("or", self, o)

  def __ror__(self, o):
    return _bin("or", o, self)

  def __xor__(self, o):
    return _bin("xor", self, o)


class Const(Expr):
  """A literal. Python scalars are weakly typed, as in JAX."""

  __slots__ = ("value", "_dtype", "_weak")

  def __init__(self, value: Any, dtype: Any = None, weak: bool = False):
    if dtype is None:
      arr = jnp.asarray(value)
      dtype, weak = arr.dtype, isinstance(value, bool | int | float)
      if isinstance(value, bool):
        weak = False
    self.value = value
    self._dtype = np.dtype(dtype)
    self._weak = weak

  @property
  def dtype(self):
    return self._dtype

  @property
  def weak(self):
    return self._weak

  def __repr__(self):
    return repr(self.value)


class Var(Expr):
  """A pure dimension variable (int32). Vars are matched by name in schedules."""

  __slots__ = ("name",)

  def __init__(self, name: str | None = None):
    self.name = name if name is not None else f"v{next(_ids)}"

  @property
  def dtype(self):
    return np.dtype(np.int32)

  def __repr__(self):
    return self.name


class RVar(Expr):
  """One dimension of an RDom (int32)."""

  __slots__ = ("rdom", "index")

  def __init__(self, rdom: RDom, index: int):
    self.rdom = rdom
    self.index = index

  @property
  def name(self) -> str:
    return f"{self.rdom.name}.{'xyzw'[self.index] if self.index < 4 else self.index}"

  @property
  def dtype(self):
    return np.dtype(np.int32)

  def __repr__(self):
    return self.name


class RDom:
  """A reduction domain: ``RDom((min, extent), ...)``; dims ``r[0], r[1]`` or ``r.x, r.y``.

  Mins and extents are ints or expressions of image extents (``img.extent(0)``); they must be
  static once image shapes are known. Iteration order is ``r[0]`` innermost, as in Halide.
  """

  def __init__(self, *ranges: tuple[Any, Any], name: str | None = None):
    if len(ranges) == 1 and isinstance(ranges[0], list):
      ranges = tuple(ranges[0])
    if not ranges:
      raise ValueError("RDom needs at least one (min, extent) range")
    for i, rng in enumerate(ranges):
      if not (isinstance(rng, tuple | list) and len(rng) == 2):
        raise ValueError(f"RDom range {i} must be a (min, extent) pair, got {rng!r}")
      if isinstance(rng[1], int) and rng[1] <= 0:
        raise ValueError(f"RDom range {i}: extent={rng[1]} must be positive")
    self.ranges = [(_wrap(a), _wrap(b)) for a, b in ranges]
    self.name = name if name is not None else f"r{next(_ids)}"
    self.vars = [RVar(self, i) for i in range(len(ranges))]
    self.predicates: list[Expr] = []

  def where(self, predicate: Any) -> RDom:
    """Restrict the domain to the points where ``predicate`` holds (Halide's ``RDom::where``).

    Predicates accumulate (logical and) and apply to every use of this RDom: an update
    definition leaves ``f`` unchanged at excluded points, an inline reduction skips them
    (``sum`` of none is 0, ``maximum`` of none the dtype's lowest value). Call it before
    using the RDom in a definition, as in Halide. Bounds inference stays conservative (the
    whole box).
    """
    predicate = _wrap(predicate)
    if predicate.dtype != np.bool_:
      raise TypeError(
        f"RDom {self.name}.where: the predicate must be boolean (a comparison or a logical "
        f"combination), got {predicate!r} of dtype {predicate.dtype}"
      )
    self.predicates.append(predicate)
    return self

  def __len__(self):
    return len(self.vars)

  def __getitem__(self, i: int) -> RVar:
    if not 0 <= i < len(self.vars):
      raise IndexError(f"RDom {self.name} has {len(self.vars)} dims; index {i} is out of range")
    return self.vars[i]

  x = property(lambda self: self[0])
  y = property(lambda self: self[1])
  z = property(lambda self: self[2])
  w = property(lambda self: self[3])

  def __repr__(self):
    return f"RDom({self.name}, {self.ranges})"


class Param(Expr):
  """A scalar runtime argument, passed to the compiled function by keyword ``name=``."""

  __slots__ = ("name", "_dtype", "default")

  def __init__(self, dtype: Any, name: str | None = None, default: Any = None):
    self._dtype = np.dtype(dtype)
    self.name = name if name is not None else f"p{next(_ids)}"
    self.default = default

  @property
  def dtype(self):
    return self._dtype

  def __repr__(self):
    return self.name


class Extent(Expr):
  """The (static) extent of an ImageParam dimension, known once the image's shape is."""

  __slots__ = ("image", "dim")

  def __init__(self, image: ImageParam, dim: int):
    self.image = image
    self.dim = dim

  @property
  def dtype(self):
    return np.dtype(np.int32)

  def __repr__(self):
    return f"{self.image.name}.extent({self.dim})"


class Call(Expr):
  """A load from an ImageParam or a call to a Func."""

  __slots__ = ("target", "args")

  def __init__(self, target: Func | ImageParam, args: Sequence[Expr]):
    self.target = target
    self.args = tuple(args)

  @property
  def dtype(self):
    return self.target.dtype

  def __repr__(self):
    return f"{self.target.name}[{', '.join(map(repr, self.args))}]"

  # ``f[i] += v`` evaluates ``f[i]`` then ``__iadd__``; returning a plain Expr lets
  # ``Func.__setitem__`` receive ``f[i] + v`` as the update.


class BinOp(Expr):
  __slots__ = ("op", "a", "b", "_sig_cache")

  def __init__(self, op: str, a: Expr, b: Expr):
    self.op, self.a, self.b = op, a, b
    self._sig_cache = _infer(op, a._sig(), b._sig())

  @property
  def dtype(self):
    return self._sig_cache[0]

  @property
  def weak(self):
    return self._sig_cache[1]

  def __repr__(self):
    sym = _INFIX.get(self.op)
    if sym is None:
      return f"{self.op}({self.a!r}, {self.b!r})"
    return f"({self.a!r} {sym} {self.b!r})"


class UnOp(Expr):
  __slots__ = ("op", "a", "_sig_cache")

  def __init__(self, op: str, a: Expr):
    self.op, self.a = op, a
    self._sig_cache = _infer(op, a._sig())

  @property
  def dtype(self):
    return self._sig_cache[0]

  @property
  def weak(self):
    return self._sig_cache[1]

  def __repr__(self):
    return f"{self.op}({self.a!r})"


class Select(Expr):
  __slots__ = ("cond", "t", "f", "_sig_cache")

  def __init__(self, cond: Expr, t: Expr, f: Expr):
    self.cond, self.t, self.f = cond, t, f
    self._sig_cache = _infer("select", cond._sig(), t._sig(), f._sig())

  @property
  def dtype(self):
    return self._sig_cache[0]

  @property
  def weak(self):
    return self._sig_cache[1]

  def __repr__(self):
    return f"select({self.cond!r}, {self.t!r}, {self.f!r})"


class Cast(Expr):
  """A conversion; float -> int truncates toward zero (C, Halide and ``astype`` semantics)."""

  __slots__ = ("to", "a")

  def __init__(self, to: Any, a: Expr):
    self.to, self.a = np.dtype(to), a

  @property
  def dtype(self):
    return self.to

  def __repr__(self):
    return f"cast({self.to}, {self.a!r})"


class Reduce(Expr):
  """An inline reduction over the RDom of the RVars in ``body``."""

  __slots__ = ("op", "rdom", "body", "component")

  def __init__(self, op: str, rdom: RDom, body: Expr, component: int = 0):
    self.op, self.rdom, self.body, self.component = op, rdom, body, component

  @property
  def dtype(self):
    if self.op in ("argmax", "argmin"):
      return np.dtype(np.int32) if self.component < len(self.rdom) else self.body.dtype
    if self.op == "sum" and self.body.dtype == np.bool_:
      return np.dtype(np.int32)
    return self.body.dtype

  @property
  def weak(self):
    return self.body.weak and self.op not in ("argmax", "argmin")

  def __repr__(self):
    return f"{self.op}<{self.rdom.name}>({self.body!r})"


def _wrap(v: Any) -> Expr:
  if isinstance(v, Expr):
    return v
  if isinstance(v, bool | int | float | np.generic | np.ndarray | jax.Array):
    if isinstance(v, np.ndarray | jax.Array) and np.ndim(v) != 0:
      raise TypeError(f"only scalars can appear in expressions, got an array of shape {v.shape}")
    if isinstance(v, bool | int | float):
      return Const(v)
    return Const(np.asarray(v).item(), np.asarray(v).dtype, weak=False)
  if isinstance(v, Func | ImageParam):
    raise TypeError(f"{v.name} must be called with indices (e.g. {v.name}[y, x]) in an expression")
  raise TypeError(f"cannot use {v!r} of type {type(v).__name__} in a pipeline expression")


def _bin(op: str, a: Any, b: Any) -> Expr:
  return BinOp(op, _wrap(a), _wrap(b))


def _un(op: str, a: Any) -> Expr:
  return UnOp(op, _wrap(a))


# ----------------------------------------------------------------------------- functions


def select(cond: Any, true_value: Any, false_value: Any, *more: Any) -> Expr:
  """``select(c, a, b)`` or Halide's chained ``select(c0, a0, c1, a1, ..., default)``."""
  if more:
    if len(more) % 2:
      raise ValueError(f"chained select needs an odd number of arguments, got {3 + len(more)}")
    return select(cond, true_value, select(false_value, *more))
  c = _wrap(cond)
  if c.dtype != np.bool_:
    raise TypeError(f"select condition must be boolean, got {c.dtype} ({c!r})")
  return Select(c, _wrap(true_value), _wrap(false_value))


def max_(a: Any, b: Any, *more: Any) -> Expr:
  """Elementwise maximum (exported as ``max``)."""
  out = _bin("max", a, b)
  for m in more:
    out = _bin("max", out, m)
  return out


def min_(a: Any, b: Any, *more: Any) -> Expr:
  """Elementwise minimum (exported as ``min``)."""
  out = _bin("min", a, b)
  for m in more:
    out = _bin("min", out, m)
  return out


def clamp(a: Any, lo: Any, hi: Any) -> Expr:
  """``min(max(a, lo), hi)``."""
  return _bin("min", _bin("max", a, lo), hi)


def cast(dtype: Any, a: Any) -> Expr:
  """Convert ``a`` to ``dtype`` (``cast(jnp.int32, e)``; float -> int truncates)."""
  return Cast(dtype, _wrap(a))


def _math(op: str) -> Callable[[Any], Expr]:
  def fn(a: Any) -> Expr:
    return _un(op, a)

  fn.__name__ = op
  fn.__doc__ = f"Elementwise ``jnp.{op}``."
  return fn


abs_ = _math("abs")
sqrt = _math("sqrt")
exp = _math("exp")
log = _math("log")
sin = _math("sin")
cos = _math("cos")
tan = _math("tan")
tanh = _math("tanh")
floor = _math("floor")
ceil = _math("ceil")
round_ = _math("round")


def pow_(a: Any, b: Any) -> Expr:
  """Elementwise power."""
  return _bin("pow", a, b)


def logical_and(a: Any, b: Any) -> Expr:
  return _bin("and", a, b)


def logical_or(a: Any, b: Any) -> Expr:
  return _bin("or", a, b)


def logical_not(a: Any) -> Expr:
  return _un("not", a)


def free_rvars(e: Expr) -> list[RVar]:
  """RVars of ``e`` not bound by an inner inline reduction, in first-seen order."""
  out: dict[int, RVar] = {}

  def visit(n: Expr, bound: frozenset):
    if isinstance(n, RVar):
      if id(n.rdom) not in bound:
        out.setdefault(id(n), n)
    elif isinstance(n, Reduce):
      visit(n.body, bound | {id(n.rdom)})
    else:
      for c in children(n):
        visit(c, bound)

  visit(e, frozenset())
  return list(out.values())


def _reduce(op: str, body: Any, components: int | None = None) -> Any:
  body = _wrap(body)
  rv = free_rvars(body)
  if not rv:
    raise ValueError(f"inline reduction {op}() needs an expression that uses an RDom: {body!r}")
  rdoms = {id(r.rdom): r.rdom for r in rv}
  if len(rdoms) > 1:
    raise ValueError(f"inline reduction {op}() mixes RDoms {[r.name for r in rdoms.values()]}")
  rdom = rv[0].rdom
  if components is None:
    return Reduce(op, rdom, body)
  return tuple(Reduce(op, rdom, body, i) for i in range(len(rdom) + 1))


def reduce_sum(e: Any) -> Expr:
  """Inline sum over the RDom used in ``e`` (exported as ``sum``)."""
  return _reduce("sum", e)


def reduce_product(e: Any) -> Expr:
  """Inline product over the RDom used in ``e`` (exported as ``product``)."""
  return _reduce("product", e)


def maximum(e: Any) -> Expr:
  """Inline maximum over the RDom used in ``e``."""
  return _reduce("max", e)


def minimum(e: Any) -> Expr:
  """Inline minimum over the RDom used in ``e``."""
  return _reduce("min", e)


def argmax(e: Any) -> tuple[Expr, ...]:
  """``(r0, r1, ..., value)`` of the first maximum in RDom order, as Halide's ``argmax``."""
  return _reduce("argmax", e, components=True)


def argmin(e: Any) -> tuple[Expr, ...]:
  """``(r0, r1, ..., value)`` of the first minimum in RDom order."""
  return _reduce("argmin", e, components=True)


def children(e: Expr) -> tuple[Expr, ...]:
  if isinstance(e, BinOp):
    return (e.a, e.b)
  if isinstance(e, UnOp | Cast):
    return (e.a,)
  if isinstance(e, Select):
    return (e.cond, e.t, e.f)
  if isinstance(e, Call):
    return e.args
  if isinstance(e, Reduce):
    return (e.body,)
  return ()


def rebuild(e: Expr, kids: Sequence[Expr]) -> Expr:
  """``e`` with its children replaced."""
  if isinstance(e, BinOp):
    return BinOp(e.op, *kids)
  if isinstance(e, UnOp):
    return UnOp(e.op, kids[0])
  if isinstance(e, Cast):
    return Cast(e.to, kids[0])
  if isinstance(e, Select):
    return Select(*kids)
  if isinstance(e, Call):
    return Call(e.target, kids)
  if isinstance(e, Reduce):
    return Reduce(e.op, e.rdom, kids[0], e.component)
  return e


def walk(e: Expr):
  """All nodes of ``e`` (pre-order, including inside reductions)."""
  stack = [e]
  while stack:
    n = stack.pop()
    yield n
    stack.extend(children(n))


# ----------------------------------------------------------------------------- Func & images


class ImageParam:
  """A pipeline input: ``ImageParam(dtype, ndim, name=...)``; load with ``img[y, x]``."""

  def __init__(self, dtype: Any, ndim: int, name: str | None = None):
    if not isinstance(ndim, int) or ndim < 1:
      raise ValueError(f"ImageParam {ndim=} must be a positive int")
    self.dtype = np.dtype(dtype)
    self.ndim = ndim
    self.name = name if name is not None else f"img{next(_ids)}"
    self.order = next(_ids)
    self.estimate: tuple[int, ...] | None = None

  def __getitem__(self, args: Any) -> Call:
    args = args if isinstance(args, tuple) else (args,)
    if len(args) != self.ndim:
      raise ValueError(
        f"ImageParam {self.name} has ndim={self.ndim}, indexed with {len(args)} args"
      )
    return Call(self, [_wrap(a) for a in args])

  def extent(self, dim: int) -> Expr:
    """The extent of axis ``dim`` (static at trace time)."""
    if not 0 <= dim < self.ndim:
      raise ValueError(f"ImageParam {self.name}: {dim=} out of range for ndim={self.ndim}")
    return Extent(self, dim)

  @property
  def shape(self) -> tuple[Expr, ...]:
    return tuple(self.extent(d) for d in range(self.ndim))

  def set_estimates(self, shape: Sequence[int]) -> ImageParam:
    """Shape used by ``Pipeline.lower()`` when no shape is given (Halide's set_estimates)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != self.ndim:
      raise ValueError(f"ImageParam {self.name}: estimate {shape} must have ndim={self.ndim}")
    self.estimate = shape
    return self

  def __repr__(self):
    return f"ImageParam({self.name}, {self.dtype}, ndim={self.ndim})"


class Definition:
  """One stage of a Func: the pure definition (``index 0``) or an update."""

  def __init__(self, func: Func, index: int, args: tuple[Expr, ...], value: Expr):
    self.func, self.index, self.args, self.value = func, index, args, value
    rv = free_rvars(value)
    for a in args:
      rv += [r for r in free_rvars(a) if all(r is not q for q in rv)]
    rdoms = {id(r.rdom): r.rdom for r in rv}
    if len(rdoms) > 1:
      raise ValueError(
        f"update {index} of Func {func.name} uses several RDoms "
        f"{[r.name for r in rdoms.values()]}; use one RDom per update"
      )
    self.rdom: RDom | None = next(iter(rdoms.values()), None)
    self.schedule = _schedule.Stage(func, index)

  @property
  def is_update(self) -> bool:
    return self.index > 0


class Func:
  """A function over integer coordinates: ``f[y, x] = expr``; later assignments are updates.

  Scheduling methods (``compute_root``, ``tile``, ...) return ``self`` for chaining; see
  :mod:`jaxsched.pipelines.schedule`.
  """

  def __init__(self, name: str | None = None):
    self.name = name if name is not None else f"f{next(_ids)}"
    self.definitions: list[Definition] = []
    self.extern: Any = None
    self._dtype: np.dtype | None = None
    self.sched = _schedule.FuncSchedule(self)

  # -- definition
  @property
  def defined(self) -> bool:
    return bool(self.definitions) or self.extern is not None

  @property
  def args(self) -> tuple[Var, ...]:
    self._need_defined()
    if self.extern is not None:
      return self.extern.vars
    return self.definitions[0].args  # type: ignore[return-value]

  @property
  def ndim(self) -> int:
    return len(self.args)

  @property
  def dtype(self) -> np.dtype:
    self._need_defined()
    return self._dtype  # type: ignore[return-value]

  @property
  def value(self) -> Expr:
    return self.definitions[0].value

  @property
  def updates(self) -> list[Definition]:
    return self.definitions[1:]

  def _need_defined(self):
    if not self.defined:
      raise ValueError(f"Func {self.name} is used before it has a definition")

  def __getitem__(self, args: Any) -> Call:
    args = args if isinstance(args, tuple) else (args,)
    if self.defined and len(args) != self.ndim:
      raise ValueError(f"Func {self.name} has {self.ndim} dims, called with {len(args)} args")
    return Call(self, [_wrap(a) for a in args])

  def __setitem__(self, args: Any, value: Any) -> None:
    args = tuple(_wrap(a) for a in (args if isinstance(args, tuple) else (args,)))
    value = _wrap(value)
    if self.extern is not None:
      raise ValueError(f"Func {self.name} is an extern Func and cannot be (re)defined")
    if not self.definitions:
      self._define_pure(args, value)
    else:
      self._define_update(args, value)

  def _define_pure(self, args: tuple[Expr, ...], value: Expr) -> None:
    if not all(isinstance(a, Var) for a in args) or len({a.name for a in args}) != len(args):
      raise ValueError(
        f"the first (pure) definition of Func {self.name} needs distinct Vars as args, got "
        f"{list(args)}; use an update definition for other left-hand sides"
      )
    names = {a.name for a in args}
    for n in walk(value):
      if isinstance(n, Var) and n.name not in names:
        raise ValueError(f"Func {self.name}: Var {n.name} on the right is not among args {args}")
    if free_rvars(value):
      raise ValueError(
        f"Func {self.name}: the pure definition uses RVars {free_rvars(value)}; wrap them in an "
        "inline reduction (sum, maximum, ...) or use an update definition"
      )
    # A weak literal already carries JAX's default dtype (int32/float32 in 32-bit mode).
    self._dtype = value.dtype
    self.definitions.append(Definition(self, 0, args, value))

  def _define_update(self, args: tuple[Expr, ...], value: Expr) -> None:
    pure = self.args
    if len(args) != len(pure):
      raise ValueError(f"update of Func {self.name}: {len(args)} args, expected {len(pure)}")
    used = {n.name for e in (*args, value) for n in walk(e) if isinstance(n, Var)}
    pos = {v.name: i for i, v in enumerate(pure)}
    for name in used:
      if name not in pos:
        raise ValueError(f"update of Func {self.name} uses Var {name}, not one of its args {pure}")
      i = pos[name]
      if not (isinstance(args[i], Var) and args[i].name == name):
        raise ValueError(
          f"update of Func {self.name}: pure Var {name} must appear bare as argument {i} of the "
          f"left-hand side, got {list(args)}"
        )
    self.definitions.append(Definition(self, len(self.definitions), args, value))

  @classmethod
  def define_extern(
    cls,
    fn: Callable[..., jax.Array],
    inputs: Sequence[ImageParam],
    *,
    dtype: Any,
    ndim: int,
    name: str | None = None,
  ) -> Func:
    """A Func whose values come from ``fn(*input_arrays, origin, shape)``.

    ``fn`` receives the full input arrays, the region origin and the region shape (a tuple of
    ints), and must return an array of exactly that shape. It is computed at root by default;
    ``compute_at`` (and ``store_at``) call it per tile or per sliding-window step, where the
    origin's entries may be traced int32 scalars (read with ``jax.lax.dynamic_slice``).
    """
    f = cls(name)
    f.extern = _Extern(fn, tuple(inputs), tuple(Var(f"{f.name}_d{i}") for i in range(ndim)))
    f._dtype = np.dtype(dtype)
    f.sched.compute = ("root",)
    return f

  # -- schedule (delegates; every method returns self)
  def update(self, i: int = 0) -> _schedule.Stage:
    """The schedule of update stage ``i``."""
    if not 0 <= i < len(self.updates):
      raise ValueError(f"Func {self.name} has {len(self.updates)} updates; update({i}) is invalid")
    return self.definitions[i + 1].schedule

  def _stage(self) -> _schedule.Stage:
    self._need_defined()
    if self.extern is not None:
      raise ValueError(f"extern Func {self.name} has no loops to schedule")
    return self.definitions[0].schedule

  def split(self, var, outer, inner, factor: int) -> Func:
    self._stage().split(var, outer, inner, factor)
    return self

  def tile(self, *args) -> Func:
    self._stage().tile(*args)
    return self

  def reorder(self, *vars_) -> Func:
    self._stage().reorder(*vars_)
    return self

  def fuse(self, inner, outer, fused) -> Func:
    self._stage().fuse(inner, outer, fused)
    return self

  def parallel(self, var, factor: int | None = None) -> Func:
    self._stage().parallel(var, factor)
    return self

  def vectorize(self, var, factor: int | None = None) -> Func:
    self._stage().vectorize(var, factor)
    return self

  def unroll(self, var, factor: int | None = None) -> Func:
    self._stage().unroll(var, factor)
    return self

  def bound(self, var, min_: int, extent: int) -> Func:
    self.sched.bound(var, min_, extent)
    return self

  def compute_inline(self) -> Func:
    self.sched.compute_inline()
    return self

  def compute_root(self) -> Func:
    self.sched.compute_root()
    return self

  def compute_at(self, f: Func, var) -> Func:
    self.sched.compute_at(f, var)
    return self

  def store_root(self) -> Func:
    self.sched.store_root()
    return self

  def store_at(self, f: Func, var) -> Func:
    self.sched.store_at(f, var)
    return self

  def __repr__(self):
    return f"Func({self.name})"


class _Extern:
  def __init__(self, fn, inputs, vars_):
    self.fn, self.inputs, self.vars = fn, inputs, vars_
