"""Bilateral grid (Chen et al. 2007; Halide's ``apps/bilateral_grid``), grayscale in [0, 1].

The image is splatted into a coarse 3-D grid (``s_sigma`` pixels per cell, ``1 / r_sigma``
intensity bins) with an RDom scatter-add, blurred with a 1-4-6-4-1 kernel along z, x and y,
then sliced back with trilinear interpolation (data-dependent z). ``r_sigma`` is static: it
fixes the grid's size.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsched.pipelines import boundary, ir
from jaxsched.pipelines.apps import App, AppGraph
from jaxsched.pipelines.pipeline import Pipeline


def _lerp(a, b, t):
  return a + (b - a) * t


def build(*, s_sigma: int = 8, r_sigma: float = 0.1) -> AppGraph:
  if s_sigma < 2 or not 0 < r_sigma <= 1:
    raise ValueError(f"bilateral_grid: {s_sigma=} must be >= 2 and {r_sigma=} in (0, 1]")
  # Algorithm
  inp = ir.ImageParam(jnp.float32, 2, name="input")
  y, x, z, c = ir.Var("y"), ir.Var("x"), ir.Var("z"), ir.Var("c")
  gy, gx = ir.Var("gy"), ir.Var("gx")
  clamped = boundary.repeat_edge(inp)
  r = ir.RDom((0, s_sigma), (0, s_sigma), name="r")
  half = s_sigma // 2
  val = ir.clamp(clamped[gy * s_sigma + r.y - half, gx * s_sigma + r.x - half], 0.0, 1.0)
  zi = ir.cast(jnp.int32, val * (1.0 / r_sigma) + 0.5)
  # The grid is [c, z, gy, gx] (c=0 sums intensities, c=1 counts): gx minor, as Halide stores
  # its histogram(x, y, z, c) with x innermost. A 2-wide minor c would cost 64x the bytes on TPU
  # (XLA tiles the two minor dims of an array by (8, 128)).
  hist = ir.Func("histogram")
  hist[c, z, gy, gx] = 0.0
  hist[c, zi, gy, gx] += ir.select(c == 0, val, 1.0)
  blurz, blurx, blury = ir.Func("blurz"), ir.Func("blurx"), ir.Func("blury")
  blurz[c, z, gy, gx] = (
    hist[c, z - 2, gy, gx]
    + 4 * hist[c, z - 1, gy, gx]
    + 6 * hist[c, z, gy, gx]
    + 4 * hist[c, z + 1, gy, gx]
    + hist[c, z + 2, gy, gx]
  )
  blurx[c, z, gy, gx] = (
    blurz[c, z, gy, gx - 2]
    + 4 * blurz[c, z, gy, gx - 1]
    + 6 * blurz[c, z, gy, gx]
    + 4 * blurz[c, z, gy, gx + 1]
    + blurz[c, z, gy, gx + 2]
  )
  blury[c, z, gy, gx] = (
    blurx[c, z, gy - 2, gx]
    + 4 * blurx[c, z, gy - 1, gx]
    + 6 * blurx[c, z, gy, gx]
    + 4 * blurx[c, z, gy + 1, gx]
    + blurx[c, z, gy + 2, gx]
  )
  v = ir.clamp(inp[y, x], 0.0, 1.0)
  zv = v * (1.0 / r_sigma)
  zint = ir.cast(jnp.int32, zv)
  zf = zv - zint
  xf = ir.cast(jnp.float32, x % s_sigma) / s_sigma
  yf = ir.cast(jnp.float32, y % s_sigma) / s_sigma
  xi, yi = x // s_sigma, y // s_sigma
  interp = ir.Func("interpolated")

  def g(dy, dx, dz):
    return blury[c, zint + dz, yi + dy, xi + dx]

  interp[y, x, c] = _lerp(
    _lerp(_lerp(g(0, 0, 0), g(0, 1, 0), xf), _lerp(g(1, 0, 0), g(1, 1, 0), xf), yf),
    _lerp(_lerp(g(0, 0, 1), g(0, 1, 1), xf), _lerp(g(1, 0, 1), g(1, 1, 1), xf), yf),
    zf,
  )
  out = ir.Func("bilateral_grid")
  out[y, x] = interp[y, x, 0] / interp[y, x, 1]
  funcs = {
    "histogram": hist,
    "blurz": blurz,
    "blurx": blurx,
    "blury": blury,
    "interpolated": interp,
    "bilateral_grid": out,
  }
  vs = {n: ir.Var(n) for n in ("yo", "xo", "yi", "xi")}
  vs.update(y=y, x=x, gy=gy, gx=gx, z=z, c=c)
  return AppGraph("bilateral_grid", Pipeline(out), funcs, vs)


# Schedule


def inline_z(g: AppGraph) -> None:
  """blurz inlined into blurx; blurx and blury root. (Inlining all three blurs into the
  data-dependent slicing would make 1000 gathers per pixel: not offered.)"""
  g.funcs["blurx"].compute_root()
  g.funcs["blury"].compute_root()


def root(g: AppGraph) -> None:
  for n in ("blurz", "blurx", "blury"):
    g.funcs[n].compute_root()


def _tiled(ty: int, tx: int):
  def sched(g: AppGraph) -> None:
    v = g.vars
    out = g.funcs["bilateral_grid"]
    g.funcs["blurz"].compute_root()
    g.funcs["blurx"].compute_root()
    out.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    g.funcs["blury"].compute_at(out, v["xo"])

  sched.__doc__ = f"Output in {ty}x{tx} tiles, each with the grid cells it needs blurred in y."
  return sched


def sliding(g: AppGraph) -> None:
  """blurz slides down the grid rows as blurx consumes them."""
  v = g.vars
  g.funcs["blurx"].compute_root()
  g.funcs["blury"].compute_root()
  g.funcs["blurz"].store_root().compute_at(g.funcs["blurx"], v["gy"])


APP = App(
  name="bilateral_grid",
  build=build,
  schedules={
    "xla": {
      "inline_z": inline_z,
      "root": root,
      "tiled": _tiled(64, 128),
      "tiled_small": _tiled(16, 32),
      "sliding": sliding,
    }
  },
  default={"xla": "root"},
  description="bilateral grid: RDom splat, 1-4-6-4-1 blurs, trilinear slicing",
)
