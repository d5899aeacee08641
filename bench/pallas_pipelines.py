"""Pallas backend for the pipeline apps: deviceless compile status per app x schedule x target.

For every registered app and its two tile configs (``tiled``, ``tiled_small``), lowers the
Pallas schedule with the real Triton (H100) and Mosaic (TPU v5e) compilers through
``targets.compile_for`` and prints a markdown table: how many Funcs are kernels and how many
run as XLA ops (``describe``), whether it compiled, the wall time (tracing included), and the
number of kernel custom calls in the compiled module. Sizes are the test sizes
(``tests/pallas/test_pipeline_backend.py::test_compiles_deviceless``).

Usage: ``python -m bench.pallas_pipelines [--apps blur camera_pipe ...]``
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from jaxsched.pallas import pipeline_backend as pb  # noqa: E402
from jaxsched.pallas import targets  # noqa: E402
from jaxsched.pipelines import apps  # noqa: E402

# As in the deviceless compile test: local_laplacian with 3 levels, bilateral_grid at 32x128.
SPECS = {"bilateral_grid": ((32, 128), {}), "local_laplacian": ((64, 256), {"levels": 3})}
DEFAULT_SPEC = ((64, 256), {})


def compile_row(app: str, sched: str, tgt: str) -> dict:
  """One deviceless compile of ``app``'s Pallas schedule ``sched`` for target ``tgt``."""
  shape, kwargs = SPECS.get(app, DEFAULT_SPEC)
  g = apps.make(app, sched, backend="pallas", **kwargs)
  kind = targets.get_target(tgt).kind
  out_shape = g.output_shape(shape) if g.output_shape else shape
  rep = pb.describe(g.pipeline, out_shape, input_shapes=[shape], target=kind)
  row = {
    "app": app,
    "schedule": sched,
    "target": tgt,
    "input": "x".join(map(str, shape)),
    "kernels": sum(r.how == "pallas" for r in rep.funcs),
    "xla": sum(r.how == "xla" for r in rep.funcs),
  }
  fn = g.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct(shape, g.pipeline.images[0].dtype)
  t = time.perf_counter()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", pb.XlaFallbackWarning)
      text = targets.compile_for(lambda a: fn(a), spec, target=tgt).as_text()
    marker = "__gpu$xla.gpu.triton" if kind == "gpu" else "tpu_custom_call"
    row.update(ok="OK", calls=text.lower().count(marker.lower()))
  except targets.CompileError as e:
    row.update(ok=f"FAILED: {str(e)[:80]}", calls=0)
  row["seconds"] = time.perf_counter() - t
  return row


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--apps", nargs="*", default=sorted(apps.APPS))
  args = ap.parse_args(argv)
  print("| app | schedule | target | input | lowering | compiles | kernel calls | time |")
  print("|---|---|---|---|---|---|---|---|")
  for app in args.apps:
    for sched in ("tiled", "tiled_small"):
      for tgt in ("h100", "tpu-v5e"):
        if tgt not in targets.available_targets():
          continue
        r = compile_row(app, sched, tgt)
        print(
          f"| {r['app']} | {r['schedule']} | {r['target']} | {r['input']} | {r['kernels']} "
          f"kernels + {r['xla']} XLA | {r['ok']} | {r['calls']} | {r['seconds']:.1f} s |",
          flush=True,
        )


if __name__ == "__main__":
  main()
