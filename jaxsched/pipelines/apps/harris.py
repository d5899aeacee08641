"""Harris corner response on a grayscale image (Halide's ``apps/harris``, gray input).

Sobel gradients (scaled by 1/12), 3x3 box sums of the structure tensor, then
``det - 0.04 * trace**2``; the input is repeat-edged so the output has the input's shape.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsched.pipelines import boundary, ir
from jaxsched.pipelines.apps import App, AppGraph
from jaxsched.pipelines.pipeline import Pipeline


def _box3(f: ir.Func, y: ir.Var, x: ir.Var) -> ir.Expr:
  return sum((f[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)), start=0.0)


def build(*, k: float = 0.04) -> AppGraph:
  # Algorithm
  inp = ir.ImageParam(jnp.float32, 2, name="input")
  y, x = ir.Var("y"), ir.Var("x")
  c = boundary.repeat_edge(inp)
  iy, ix = ir.Func("Iy"), ir.Func("Ix")
  iy[y, x] = (
    -c[y - 1, x - 1]
    - 2 * c[y - 1, x]
    - c[y - 1, x + 1]
    + c[y + 1, x - 1]
    + 2 * c[y + 1, x]
    + c[y + 1, x + 1]
  ) / 12
  ix[y, x] = (
    -c[y - 1, x - 1]
    - 2 * c[y, x - 1]
    - c[y + 1, x - 1]
    + c[y - 1, x + 1]
    + 2 * c[y, x + 1]
    + c[y + 1, x + 1]
  ) / 12
  ixx, iyy, ixy = ir.Func("Ixx"), ir.Func("Iyy"), ir.Func("Ixy")
  ixx[y, x] = ix[y, x] * ix[y, x]
  iyy[y, x] = iy[y, x] * iy[y, x]
  ixy[y, x] = ix[y, x] * iy[y, x]
  sxx, syy, sxy = ir.Func("Sxx"), ir.Func("Syy"), ir.Func("Sxy")
  sxx[y, x] = _box3(ixx, y, x)
  syy[y, x] = _box3(iyy, y, x)
  sxy[y, x] = _box3(ixy, y, x)
  out = ir.Func("harris")
  det = sxx[y, x] * syy[y, x] - sxy[y, x] * sxy[y, x]
  trace = sxx[y, x] + syy[y, x]
  out[y, x] = det - k * trace * trace
  funcs = {
    "Ix": ix,
    "Iy": iy,
    "Ixx": ixx,
    "Iyy": iyy,
    "Ixy": ixy,
    "Sxx": sxx,
    "Syy": syy,
    "Sxy": sxy,
    "harris": out,
  }
  vs = {n: ir.Var(n) for n in ("yo", "xo", "yi", "xi")}
  vs.update(y=y, x=x)
  return AppGraph("harris", Pipeline(out), funcs, vs)


# Schedule


def inline(g: AppGraph) -> None:
  """All inline: XLA fuses one huge loop (recomputes the gradients 9x)."""


def root(g: AppGraph) -> None:
  """Gradients materialised; products and box sums fused into the output."""
  g.funcs["Ix"].compute_root()
  g.funcs["Iy"].compute_root()


def root_all(g: AppGraph) -> None:
  """Gradients and products materialised."""
  for n in ("Ix", "Iy", "Ixx", "Iyy", "Ixy"):
    g.funcs[n].compute_root()


def _tiled(ty: int, tx: int):
  def sched(g: AppGraph) -> None:
    v = g.vars
    out = g.funcs["harris"]
    out.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty).parallel(v["yo"])
    g.funcs["Ix"].compute_at(out, v["xo"])
    g.funcs["Iy"].compute_at(out, v["xo"])

  sched.__doc__ = f"Overlapped {ty}x{tx} tiles: gradients per tile plus a 1-pixel halo."
  return sched


def strips(g: AppGraph) -> None:
  """Row strips of 128 with the gradients computed per strip (the Halide CPU schedule)."""
  v = g.vars
  out = g.funcs["harris"]
  out.split(v["y"], v["yo"], v["yi"], 128).parallel(v["yo"]).vectorize(v["x"], 8)
  g.funcs["Ix"].compute_at(out, v["yo"])
  g.funcs["Iy"].compute_at(out, v["yo"])


def sliding(g: AppGraph) -> None:
  """Sliding window: gradient rows computed once per 64-row strip, one output row a step."""
  v = g.vars
  out = g.funcs["harris"]
  out.split(v["y"], v["yo"], v["yi"], 64)
  for n in ("Ix", "Iy"):
    g.funcs[n].store_at(out, v["yo"]).compute_at(out, v["yi"])


APP = App(
  name="harris",
  build=build,
  schedules={
    "xla": {
      "inline": inline,
      "root": root,
      "root_all": root_all,
      "tiled": _tiled(128, 256),
      "tiled_small": _tiled(32, 64),
      "strips": strips,
      "sliding": sliding,
    }
  },
  # 2048^2 f32, bench/pipelines.py (heap kept, synchronous dispatch), medians of interleaved
  # rounds: root 6.00 vs inline 6.52 ms (2026-11-25 stop 17; stop 16: root best at 4.94 ms),
  # and in two measurements of every schedule in tuner workers root 4.01 / 3.73 ms vs inline
  # 5.00 / 4.99 ms (bench/data/tuning_tables.json). Inline recomputes the gradients at 9 taps
  # (~200 flops a pixel); materialised once, they cost a 2 x 16 MB round trip. Tiles and strips
  # run their loop on one core (11-65 ms).
  default={"xla": "root"},
  description="Harris corner response (grayscale, repeat_edge boundary)",
)
