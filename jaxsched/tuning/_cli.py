"""``jaxsched tune APP|KERNEL``: tune a pipeline app's schedule or a Pallas kernel's config.

Pipeline apps are measured on this machine (the jitted XLA pipeline). Kernels are measured only
when the kernel target is the local accelerator; for any other target (e.g. ``h100`` from a CPU
machine) candidates are compiled deviceless to discard the ones the compiler rejects, the
rejections are recorded, and nothing is timed: timings need the device.

Top-level imports stay light (argparse only): the CLI imports this module on every start.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Any

_KERNEL_FNS = {"matmul": "matmul", "depthwise_conv2d": "depthwise_conv2d",
               "pointwise_conv": "pointwise_conv"}



def _model_kwargs(args: Any) -> dict[str, Any]:
  """Cost-model tuner options from the command line (``run`` checked them)."""
  kwargs: dict[str, Any] = {} if args.min_fit is None else {"min_fit": args.min_fit}
  if args.knob_features:
    kwargs["knob_features"] = True
  return kwargs

def _shape(text: str) -> tuple[int, ...]:
  try:
    dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"--shape {text!r} must be comma-separated ints, e.g. "
                                     "2048,2048") from None
  if not dims or any(d <= 0 for d in dims):
    raise argparse.ArgumentTypeError(f"--shape {text!r} must be positive ints")
  return dims


def configure(p: argparse.ArgumentParser) -> None:
  p.add_argument("name", metavar="APP|KERNEL",
                 help="a pipeline app (blur, harris, local_laplacian, ...) or a Pallas kernel "
                      "(matmul, depthwise_conv2d, pointwise_conv)")
  p.add_argument("--shape", type=_shape, action="append", required=True,
                 help="H,W for apps; for kernels one --shape per operand (e.g. matmul: "
                      "--shape 1024,512 --shape 512,2048)")
  p.add_argument("--trials", type=int, default=64, help="configs to measure (default 64)")
  p.add_argument("--method", default="xgb",
                 help="xgb, mlp, treegru (cost models) or random, grid, ga (default xgb)")
  p.add_argument("--db", default=None,
                 help="tuning database (default $JAXSCHED_TUNING_DB or the user cache dir)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--plot", default=None, metavar="PNG", help="write the tuning curve here")
  p.add_argument("--batch-size", type=int, default=8, help="configs per batch (model refit)")
  p.add_argument("--min-fit", type=int, default=None,
                 help="measurements before the cost model guides the search (default 8; small "
                      "app spaces: --features loop_nest --batch-size 1 --min-fit 3)")
  p.add_argument("--features", default="knobs", choices=("knobs", "loop_nest"),
                 help="apps: cost-model features (loop_nest transfers across apps; slower)")
  p.add_argument("--knob-features", action="store_true",
                 help="apps, --features loop_nest, xgb/mlp: the model also reads the raw knob "
                      "vector (with --transfer the pre-trained base reads the loop nest only)")
  p.add_argument("--transfer", action="store_true",
                 help="pre-train the model on this op's other workloads in the database")
  p.add_argument("--target", default=None,
                 help="kernels: compile target (h100, tpu-v5e; default: the local device)")
  p.add_argument("--dtype", default="float32", help="kernels: operand dtype")
  p.add_argument("--repeats", type=int, default=5, help="timed runs per config (median)")
  p.add_argument("--timeout", type=float, default=120.0, help="seconds per candidate")
  p.add_argument("--in-process", action="store_true",
                 help="measure in this process (no crash/hang isolation; faster start)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(msg: str) -> int:
  print(f"jaxsched tune: error: {msg}", file=sys.stderr)
  return 2


def run(args: argparse.Namespace) -> int:
  # JAX_PLATFORMS is left alone: on a GPU/TPU host, kernels are measured on that device (set
  # JAX_PLATFORMS=cpu on CPU-only hosts to silence the compiler plugins' device probing).
  from jaxsched.pipelines import apps
  from jaxsched.tuning import search

  if args.method not in search.METHODS:
    return _fail(f"unknown --method {args.method!r}; valid: {list(search.METHODS)}")
  if args.trials < 1:
    return _fail(f"--trials={args.trials} must be >= 1")
  if args.min_fit is not None and args.method not in ("xgb", "mlp", "treegru"):
    return _fail(f"--min-fit applies to the cost-model methods (xgb, mlp, treegru), not "
                 f"--method {args.method}")
  if args.knob_features and (args.features != "loop_nest" or args.method not in ("xgb", "mlp")):
    return _fail(f"--knob-features appends the knob vector to loop-nest features for xgb or "
                 f"mlp; got --features {args.features} --method {args.method}")
  if args.min_fit is not None and args.min_fit < 2:
    return _fail(f"--min-fit={args.min_fit} must be >= 2 (a ranking model needs two "
                 "measurements)")
  from jaxsched.pallas import config as kconfig

  kernels = sorted(kconfig.OPS) if kconfig.OPS else sorted(_KERNEL_FNS)
  if args.name in apps.APPS:
    return _tune_app(args)
  if args.name in kernels:
    return _tune_kernel(args)
  return _fail(f"unknown app or kernel {args.name!r}; apps: {sorted(apps.APPS)}; kernels: "
               f"{kernels}")


def _report(result: Any, args: argparse.Namespace, unit_note: str = "") -> None:
  ok = sum(math.isfinite(c) for c in result.costs)
  print(f"measured {len(result.costs)} configs ({result.resumed} resumed from the database, "
        f"{len(result.costs) - ok} failed){unit_note}")
  if result.best_config is None:
    print("no config ran successfully")
  else:
    print(f"best: {result.best_time * 1e3:.3f} ms  {result.best_config}")
  if args.plot:
    from jaxsched.tuning.plot import plot_tuning_curves

    plot_tuning_curves({args.method: [result.costs]}, args.plot,
                       title=f"jaxsched tune {args.name} {args.shape}")
    print(f"wrote {args.plot}")


def _tune_app(args: argparse.Namespace) -> int:
  from jaxsched.tuning import database as dbm
  from jaxsched.tuning import pipeline_space as ps
  from jaxsched.tuning.search import tune

  if len(args.shape) != 1 or len(args.shape[0]) != 2:
    return _fail(f"app {args.name!r} takes one --shape H,W, got {args.shape}")
  shape = args.shape[0]
  try:
    task = ps.pipeline_task(args.name, shape, features=args.features)
  except (ValueError, NotImplementedError) as e:
    return _fail(str(e))
  db = dbm.TuningDatabase(args.db)
  space = task.space
  print(f"tuning {args.name} {shape[0]}x{shape[1]} (XLA backend, {dbm.current_target()}): "
        f"{space.ndim} knobs, {space.size} points; database {db.path}")
  kwargs: dict[str, Any] = _model_kwargs(args)
  if args.method in ("xgb", "mlp", "treegru") and args.features == "loop_nest":
    # Loop-nest features are computed on the host per candidate: anneal fewer, shorter chains.
    kwargs.update(num_chains=32, host_steps=30)
  try:
    result = tune(task, trials=args.trials, method=args.method, db=db, seed=args.seed,
                  batch_size=args.batch_size, transfer=args.transfer, repeats=args.repeats,
                  timeout=args.timeout, isolate=not args.in_process,
                  progress=not args.no_progress, tuner_kwargs=kwargs)
  except ValueError as e:
    return _fail(str(e))
  finally:
    db.close()
  _report(result, args)
  return 0 if result.best_config is not None else 1


# Kernels -----------------------------------------------------------------------------------------


def _kernel_call(op: str, config: Any, target: Any) -> Any:
  import jaxsched.pallas as pallas

  return functools.partial(getattr(pallas, _KERNEL_FNS[op]), config=config, target=target)


def compile_kernel(config: Any, *, op: str, shapes: tuple, dtype: str, target: str) -> None:
  """Deviceless compile of one kernel config for ``target`` (raises ``CompileError``)."""
  import jax

  from jaxsched.pallas import targets

  specs = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]
  targets.compile_for(_kernel_call(op, config, target), *specs, target=target)


def measure_kernel(config: Any, *, op: str, shapes: tuple, dtype: str, target: str) -> Any:
  """``Task.measure_fn`` for kernels on the local accelerator."""
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  arrays = [jax.numpy.asarray(rng.standard_normal(s).astype(np.float32), dtype) for s in shapes]
  fn = jax.jit(_kernel_call(op, config, target))
  return lambda: fn(*arrays)


def _tune_kernel(args: argparse.Namespace) -> int:
  from jaxsched.pallas import config as kconfig
  from jaxsched.pallas import targets
  from jaxsched.tuning import database as dbm
  from jaxsched.tuning.search import tune
  from jaxsched.tuning.space import SearchSpace, Task

  shapes = tuple(tuple(s) for s in args.shape)
  try:
    tgt = targets.resolve_target(args.target)
    configs = kconfig.search_space(args.name, shapes, args.dtype, tgt)
  except (ValueError, TypeError) as e:
    return _fail(str(e))
  if not configs:
    return _fail(f"the search space of {args.name} for {shapes=} {args.dtype} on {tgt.name} is "
                 "empty: every config breaks a target rule")
  space = SearchSpace.from_configs(configs)
  spec = kconfig.OPS[args.name]
  params = spec.validate(shapes, args.dtype)
  workload = dbm.workload_key(args.name, **kconfig.db_workload(args.name, shapes, args.dtype,
                                                               **params))
  record_target = kconfig.db_target(tgt)
  local = targets.resolve_target(None)
  db = dbm.TuningDatabase(args.db)
  print(f"tuning kernel {args.name} {shapes} {args.dtype} for {tgt.name} ({tgt.device}): "
        f"{len(configs)} valid configs by the target rules; database {db.path}")
  try:
    if tgt.kind == "cpu":
      return _fail("Pallas on CPU runs in interpret mode, whose timings say nothing about a "
                   "GPU or TPU; pass --target h100 or --target tpu-v5e to check configs by "
                   "deviceless compilation, or run on the device")
    if local.kind == tgt.kind and local.device == tgt.device:
      task = Task(workload=workload, space=space, op=args.name, shapes=shapes,
                  dtypes=(args.dtype,),
                  measure_fn=functools.partial(measure_kernel, op=args.name, shapes=shapes,
                                               dtype=args.dtype, target=tgt.name))
      result = tune(task, trials=args.trials, method=args.method, db=db, target=record_target,
                    seed=args.seed, batch_size=args.batch_size, repeats=args.repeats,
                    timeout=args.timeout, isolate=not args.in_process,
                    progress=not args.no_progress, tuner_kwargs=_model_kwargs(args))
      _report(result, args)
      return 0 if result.best_config is not None else 1
    return _compile_only(args, space, configs, shapes, tgt, workload, record_target, db)
  finally:
    db.close()


def _compile_only(args, space, configs, shapes, tgt, workload, record_target, db) -> int:
  import numpy as np

  from jaxsched.pallas import targets

  rng = np.random.default_rng(args.seed)
  order = rng.permutation(len(configs))[: args.trials]
  ok = failed = 0
  for i in order:
    cfg = configs[int(i)]
    try:
      compile_kernel(cfg, op=args.name, shapes=shapes, dtype=args.dtype, target=tgt.name)
      ok += 1
    except targets.CompileError as e:
      failed += 1
      db.add(workload=workload, target=record_target, config=space.config_values(cfg),
             time=None, error=f"deviceless compile failed: {e.compiler_message[:500]}",
             op=args.name, shapes=shapes, dtypes=[args.dtype])
  print(f"{tgt.name} is not the local device ({targets.resolve_target(None).name}): compiled "
        f"{len(order)} of {len(configs)} configs deviceless; {ok} compile, {failed} rejected by "
        "the compiler (recorded as failures). NOT TIMED: timings need the device; run this "
        f"command on a {tgt.device} to measure.")
  if args.plot:
    print("--plot skipped: there are no timings to plot")
  return 0


def _register() -> None:
  from jaxsched import cli

  cli.register_command("tune", "tune a pipeline app's schedule or a Pallas kernel's config",
                       configure, run)


_register()
