"""A camera pipeline on a raw GRBG Bayer image (after Halide's ``apps/camera_pipe``).

Hot-pixel suppression, deinterleaving into four half-resolution planes, bilinear demosaic,
a 3x3 colour-correction matrix, and a gamma curve applied through a lookup table (a small
root Func over the 10-bit range). Input: uint16 ``[H, W]`` with values in [0, 1023]; output:
uint8 ``[3, H, W]`` (channels first). ``gamma`` is a runtime Param.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsched.pipelines import boundary, ir
from jaxsched.pipelines.apps import App, AppGraph
from jaxsched.pipelines.pipeline import Pipeline

# Dyadic entries keep the float32 colour correction exact on 10-bit integer inputs.
COLOR_MATRIX = ((1.5, -0.25, -0.25), (-0.125, 1.25, -0.125), (-0.0625, -0.1875, 1.25))


def build(*, gamma: float = 2.2) -> AppGraph:
  # Algorithm
  inp = ir.ImageParam(jnp.uint16, 2, name="raw")
  g_param = ir.Param(jnp.float32, name="gamma", default=gamma)
  y, x, c, i = ir.Var("y"), ir.Var("x"), ir.Var("c"), ir.Var("i")
  clamped = boundary.repeat_edge(inp)
  raw = ir.Func("raw_f")
  raw[y, x] = ir.cast(jnp.float32, clamped[y, x])
  denoised = ir.Func("denoised")  # hot pixels clipped to the max of same-colour neighbours
  nb = ir.max_(raw[y, x - 2], raw[y, x + 2], raw[y - 2, x], raw[y + 2, x])
  denoised[y, x] = ir.min_(raw[y, x], nb)
  planes = {}
  for name, dy, dx in (("g_gr", 0, 0), ("r_r", 0, 1), ("b_b", 1, 0), ("g_gb", 1, 1)):
    f = ir.Func(name)
    f[y, x] = denoised[2 * y + dy, 2 * x + dx]
    planes[name] = f
  g_gr, r_r, b_b, g_gb = planes["g_gr"], planes["r_r"], planes["b_b"], planes["g_gb"]
  dm = {}

  def define(name, expr):
    f = ir.Func(name)
    f[y, x] = expr
    dm[name] = f
    return f

  g_r = define("g_r", (g_gr[y, x] + g_gr[y, x + 1] + g_gb[y - 1, x] + g_gb[y, x]) / 4)
  g_b = define("g_b", (g_gr[y, x] + g_gr[y + 1, x] + g_gb[y, x - 1] + g_gb[y, x]) / 4)
  r_gr = define("r_gr", (r_r[y, x - 1] + r_r[y, x]) / 2)
  r_gb = define("r_gb", (r_r[y, x] + r_r[y + 1, x]) / 2)
  r_b = define("r_b", (r_r[y, x - 1] + r_r[y, x] + r_r[y + 1, x - 1] + r_r[y + 1, x]) / 4)
  b_gr = define("b_gr", (b_b[y - 1, x] + b_b[y, x]) / 2)
  b_gb = define("b_gb", (b_b[y, x] + b_b[y, x + 1]) / 2)
  b_r = define("b_r", (b_b[y - 1, x] + b_b[y - 1, x + 1] + b_b[y, x] + b_b[y, x + 1]) / 4)

  def interleave(name, ee, eo, oe, oo):
    f = ir.Func(name)
    hy, hx = y // 2, x // 2
    f[y, x] = ir.select(
      y % 2 == 0,
      ir.select(x % 2 == 0, ee[hy, hx], eo[hy, hx]),
      ir.select(x % 2 == 0, oe[hy, hx], oo[hy, hx]),
    )
    return f

  red = interleave("red", r_gr, r_r, r_b, r_gb)
  green = interleave("green", g_gr, g_r, g_b, g_gb)
  blue = interleave("blue", b_gr, b_r, b_b, b_gb)
  rgb = (red, green, blue)
  corrected = ir.Func("corrected")  # [c, y, x]
  rows = [
    sum((m * f[y, x] for m, f in zip(row, rgb, strict=True)), start=0.0) for row in COLOR_MATRIX
  ]
  corrected[c, y, x] = ir.select(c == 0, rows[0], c == 1, rows[1], rows[2])
  curve = ir.Func("curve")
  v = ir.cast(jnp.float32, i) / 1023.0
  curve[i] = ir.cast(jnp.uint8, ir.clamp(v ** (1.0 / g_param) * 255.0 + 0.5, 0.0, 255.0))
  out = ir.Func("camera_pipe")
  out[c, y, x] = curve[ir.clamp(ir.cast(jnp.int32, corrected[c, y, x]), 0, 1023)]
  funcs = {
    "denoised": denoised,
    "curve": curve,
    "corrected": corrected,
    "red": red,
    "green": green,
    "blue": blue,
    "camera_pipe": out,
    **planes,
    **dm,
  }
  vs = {n: ir.Var(n) for n in ("yo", "xo", "yi", "xi")}
  vs.update(y=y, x=x, c=c)
  return AppGraph("camera_pipe", Pipeline(out), funcs, vs, output_shape=lambda s: (3, *s))


# Schedule


def inline(g: AppGraph) -> None:
  """Only the curve's lookup table is materialised; channels unrolled."""
  g.funcs["curve"].compute_root()
  g.funcs["camera_pipe"].unroll(g.vars["c"])


def root(g: AppGraph) -> None:
  """Denoised raw and the four half-resolution planes materialised."""
  g.funcs["curve"].compute_root()
  g.funcs["camera_pipe"].unroll(g.vars["c"])
  for n in ("denoised", "g_gr", "r_r", "b_b", "g_gb"):
    g.funcs[n].compute_root()


_DEMOSAIC = ("g_r", "g_b", "r_gr", "r_gb", "r_b", "b_gr", "b_gb", "b_r")


def root_demosaic(g: AppGraph) -> None:
  """``root`` plus the eight interpolated half-resolution planes of the demosaic.

  With them inline, the output's three channels each recompute the demosaic taps (the colour
  matrix reads all of red, green and blue, and XLA evaluates each output element on its own);
  materialised, each is computed once and the output reads three values per pixel.
  """
  root(g)
  for n in _DEMOSAIC:
    g.funcs[n].compute_root()


def _tiled(ty: int, tx: int):
  def sched(g: AppGraph) -> None:
    v = g.vars
    out = g.funcs["camera_pipe"]
    g.funcs["curve"].compute_root()
    out.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty).unroll(v["c"])
    g.funcs["denoised"].compute_at(out, v["xo"])

  sched.__doc__ = f"Output in {ty}x{tx} tiles with the denoised raw computed per tile + halo."
  return sched


def sliding(g: AppGraph) -> None:
  """The denoised raw slides down the image as output rows are produced."""
  v = g.vars
  out = g.funcs["camera_pipe"]
  g.funcs["curve"].compute_root()
  out.split(v["y"], v["yo"], v["yi"], 32).unroll(v["c"])
  g.funcs["denoised"].store_at(out, v["yo"]).compute_at(out, v["yi"])


APP = App(
  name="camera_pipe",
  build=build,
  schedules={
    "xla": {
      "inline": inline,
      "root": root,
      "root_demosaic": root_demosaic,
      "tiled": _tiled(64, 128),
      "tiled_small": _tiled(16, 32),
      "sliding": sliding,
    }
  },
  # 2048^2 on the shared 2-core CPU, medians of 7 interleaved rounds: root 14.5 ms, tiled 66 ms,
  # tiled_small 84 ms, sliding 121 ms, inline 277 ms. Root evaluates the output per Bayer phase
  # (parity selects folded, half-resolution planes read as slices) and materialises the gamma
  # curve once; tiles have traced origins, so their parity is not static and they keep the
  # selects (docs/pipelines.md). root_demosaic vs root, bench/pipelines.py --apps camera_pipe
  # --reps 15 (2026-11-25): 13.9 vs 15.3 ms medians; 9.3 vs 13.6 ms after the output's twelve
  # phase/channel pieces were concatenated in one view (stop 18, xla._assemble).
  default={"xla": "root_demosaic"},
  description="raw Bayer -> hot pixels, demosaic, colour matrix, gamma curve (uint8 RGB)",
)
