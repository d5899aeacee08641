"""jaxsched.pipelines: a Halide-style image pipeline language for JAX.

Algorithms are Funcs over integer coordinates (index order follows array axes: ``f[y, x]``);
schedules are methods on Funcs; ``Pipeline(outputs).compile(backend="xla")`` runs them.
``compile(schedule="tuned")`` instead asks a schedule provider (here: the tuning database) for
an app's schedule per traced shape.
"""

from jaxsched.pipelines import apps, boundary
from jaxsched.pipelines import xla as _xla
from jaxsched.pipelines.backends import available_backends, get_backend, register_backend
from jaxsched.pipelines.ir import (
  Expr,
  Func,
  ImageParam,
  Param,
  RDom,
  RVar,
  Var,
  argmax,
  argmin,
  cast,
  ceil,
  clamp,
  cos,
  exp,
  floor,
  log,
  logical_and,
  logical_not,
  logical_or,
  maximum,
  minimum,
  select,
  sin,
  sqrt,
  tan,
  tanh,
)
from jaxsched.pipelines.ir import abs_ as abs  # noqa: A004
from jaxsched.pipelines.ir import max_ as max  # noqa: A004
from jaxsched.pipelines.ir import min_ as min  # noqa: A004
from jaxsched.pipelines.ir import pow_ as pow  # noqa: A004
from jaxsched.pipelines.ir import reduce_product as product
from jaxsched.pipelines.ir import reduce_sum as sum  # noqa: A004
from jaxsched.pipelines.ir import round_ as round  # noqa: A004
from jaxsched.pipelines.lower import Compute, Loop, LoopNest, Realize
from jaxsched.pipelines.pipeline import Pipeline
from jaxsched.pipelines.schedule_providers import (
  ScheduleChoice,
  Workload,
  available_schedule_providers,
  get_schedule_provider,
  register_schedule_provider,
)


def _xla_backend(plan, images, params, **options):
  if options:
    raise ValueError(f"the xla backend takes no options, got {sorted(options)}")
  return _xla.execute(plan, images, params)


register_backend("xla", _xla_backend, overwrite=True)

__all__ = [
  "Compute",
  "Expr",
  "Func",
  "ImageParam",
  "Loop",
  "LoopNest",
  "Param",
  "Pipeline",
  "RDom",
  "RVar",
  "Realize",
  "ScheduleChoice",
  "Var",
  "Workload",
  "abs",
  "apps",
  "argmax",
  "argmin",
  "available_backends",
  "available_schedule_providers",
  "boundary",
  "cast",
  "ceil",
  "clamp",
  "cos",
  "exp",
  "floor",
  "get_backend",
  "get_schedule_provider",
  "log",
  "logical_and",
  "logical_not",
  "logical_or",
  "max",
  "maximum",
  "min",
  "minimum",
  "pow",
  "product",
  "register_backend",
  "register_schedule_provider",
  "round",
  "select",
  "sin",
  "sqrt",
  "sum",
  "tan",
  "tanh",
]
