"""3x3 separable box blur with repeated edges (Halide's ``apps/blur``)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxsched.pipelines import boundary, ir
from jaxsched.pipelines.apps import App, AppGraph
from jaxsched.pipelines.pipeline import Pipeline


def build(*, dtype=jnp.float32) -> AppGraph:
  # Algorithm
  inp = ir.ImageParam(dtype, 2, name="input")
  y, x = ir.Var("y"), ir.Var("x")
  clamped = boundary.repeat_edge(inp)
  blur_x = ir.Func("blur_x")
  blur_y = ir.Func("blur_y")
  blur_x[y, x] = (clamped[y, x - 1] + clamped[y, x] + clamped[y, x + 1]) / 3
  blur_y[y, x] = (blur_x[y - 1, x] + blur_x[y, x] + blur_x[y + 1, x]) / 3
  vs = {n: ir.Var(n) for n in ("yo", "xo", "yi", "xi")}
  vs.update(y=y, x=x)
  return AppGraph("blur", Pipeline(blur_y), {"blur_x": blur_x, "blur_y": blur_y}, vs)


# Schedule


def inline(g: AppGraph) -> None:
  """Everything fused by XLA into one loop nest (recomputes blur_x 3x)."""


def root(g: AppGraph) -> None:
  g.funcs["blur_x"].compute_root()


def _tiled(ty: int, tx: int):
  def sched(g: AppGraph) -> None:
    v = g.vars
    g.funcs["blur_y"].tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    g.funcs["blur_x"].compute_at(g.funcs["blur_y"], v["xo"])

  sched.__doc__ = f"Overlapped {ty}x{tx} tiles: blur_x computed per tile plus halo."
  return sched


def strips(g: AppGraph) -> None:
  """Row strips of 256: blur_x per strip (Halide's classic CPU blur schedule)."""
  v = g.vars
  g.funcs["blur_y"].split(v["y"], v["yo"], v["yi"], 256).parallel(v["yo"]).vectorize(v["x"], 8)
  g.funcs["blur_x"].compute_at(g.funcs["blur_y"], v["yo"])


def sliding(g: AppGraph) -> None:
  """Sliding window down strips of 64 rows: each blur_x row computed once per strip."""
  v = g.vars
  g.funcs["blur_y"].split(v["y"], v["yo"], v["yi"], 64)
  g.funcs["blur_x"].store_at(g.funcs["blur_y"], v["yo"]).compute_at(g.funcs["blur_y"], v["yi"])


APP = App(
  name="blur",
  build=build,
  schedules={
    "xla": {
      "inline": inline,
      "root": root,
      "tiled": _tiled(128, 256),
      "tiled_small": _tiled(32, 64),
      "strips": strips,
      "sliding": sliding,
    }
  },
  # 2048^2 f32 on the shared 2-core CPU (load 3-4), medians of 15 interleaved rounds (bench/
  # pipelines.py): inline 3.4-7 ms (min 3.4; Halide manual 3.1), root ~4-15 ms, tiled/strips/
  # sliding 25-45 ms (XLA while loops run small single-threaded bodies).
  default={"xla": "inline"},
  description="3x3 separable box blur, repeat_edge boundary",
)
