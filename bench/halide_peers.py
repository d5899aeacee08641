"""Halide (pip ``halide`` 21) peers of the jaxsched pipeline apps, for benchmarks and oracle tests.

Each app is one Halide algorithm with three schedules:

- ``"manual"``: a hand schedule in the style of Halide's own ``apps/`` (tile, vectorize, parallel,
  compute_at / store_at sliding windows), adapted to small images so that any shape compiles.
- ``"mullapudi2016"`` and ``"adams2019"``: Halide's autoschedulers, loaded from the plugin ``.so``
  files shipped in the wheel's ``halide/lib64/`` and given the actual input/output shape as
  estimates (``set_estimates``).

Images are numpy arrays indexed like numpy, ``img[y, x]`` (``img[c, y, x]`` for planar colour).
Halide buffers made from numpy reverse the axis order, so in the Halide code below ``x`` is the
last (column) axis, ``y`` the row axis and ``c`` the leading channel axis.

App parameters are compile-time constants: a compiled pipeline is cached per
(app, schedule, input shape, parameters). All arithmetic is float32 unless stated.

Usage::

  from bench import halide_peers as hp
  out = hp.run("blur", img)                                # manual schedule
  out = hp.run("unsharp", img, schedule="adams2019", sigma=2.0)
  seconds = hp.time_app("harris", img, schedule="mullapudi2016")
  hp.benchmark("blur", img)   # {"manual": s, "mullapudi2016": s, "adams2019": s or reason}

If an autoscheduler fails for an app, the reason is recorded in ``FAILURES`` and ``run`` /
``time_app`` raise :class:`ScheduleUnavailableError` with it; ``benchmark`` reports it as a string.
Schedule + compile costs on the shared 2-core host at 2048x2048: manual and Mullapudi2016 0.2-13 s,
Adams2019 2-35 s for the small apps but ~3 min (bilateral_grid) and ~5 min (local_laplacian).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import halide as hl
import numpy as np

__all__ = [
  "APPS",
  "Algorithm",
  "FAILURES",
  "SCHEDULES",
  "App",
  "ScheduleUnavailableError",
  "benchmark",
  "compile_app",
  "register_app",
  "run",
  "time_app",
]

SCHEDULES = ("manual", "mullapudi2016", "adams2019")
_AUTOSCHEDULER_NAMES = {"mullapudi2016": "Mullapudi2016", "adams2019": "Adams2019"}
# Natural float32 vector width on AVX-512 hosts; narrower hosts still compile (Halide splits it).
_VEC = 16


class ScheduleUnavailableError(RuntimeError):
  """An autoscheduler (or the compile after it) failed for this app; the message says why."""


@dataclasses.dataclass
class Algorithm:
  """One freshly built Halide algorithm (what an app's ``build`` returns), scheduled once.

  Attributes:
    inputs: the pipeline's input ``ImageParam`` (one per app).
    output: the output Func.
    out_shape: numpy shape of the output.
    manual: applies the hand schedule to the Funcs of this build.
  """

  inputs: list[hl.ImageParam]
  output: hl.Func
  out_shape: tuple[int, ...]
  manual: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class App:
  """A registered Halide app.

  Attributes:
    name: registry key.
    build: ``build(in_shape, **params) -> Algorithm``; builds fresh Funcs on every call, since a
      schedule (hand or automatic) mutates them.
    defaults: default parameters (all compile-time constants).
    input_ndims: accepted ``image.ndim`` values.
    min_size: smallest accepted extent of the two spatial (last two) axes.
    dtype: input and output element type (``"float32"``, or ``"uint8"`` for byte images).
  """

  name: str
  build: Callable[..., Algorithm]
  defaults: Mapping[str, Any]
  input_ndims: tuple[int, ...] = (2,)
  min_size: int = 1
  dtype: str = "float32"  # of the input image and of the output (numpy names)


APPS: dict[str, App] = {}
FAILURES: dict[tuple, str] = {}
_CACHE: dict[tuple, Callable[[np.ndarray], np.ndarray]] = {}
_PLUGINS_LOADED = False


def register_app(app: App) -> App:
  """Adds ``app`` to :data:`APPS` (replacing an app of the same name) and returns it."""
  APPS[app.name] = app
  return app


# ------------------------------------------------------------------------------------------------
# Helpers shared by the apps.


def _vars(*names: str) -> list[hl.Var]:
  return [hl.Var(n) for n in names]


def _f32(v: float) -> hl.Expr:
  return hl.f32(float(v))


def _fit(factor: int, extent: int) -> int:
  """Largest split factor <= ``factor`` that the extent allows (ShiftInwards needs extent >= f)."""
  return max(1, min(factor, extent))


def _vectorize(f: hl.Func | hl.Stage, v: hl.Var, extent: int) -> None:
  # A vector wider than the image would read/write outside the output; skip it on tiny images.
  if extent >= _VEC:
    f.vectorize(v, _VEC)


def _mirror1(v: hl.Expr, n: int) -> hl.Expr:
  """Index ``v`` reflected once about both ends of ``[0, n)`` without repeating the edge."""
  m = hl.select(v < 0, -v, v > n - 1, 2 * (n - 1) - v, v)
  return hl.clamp(m, 0, n - 1)  # exact bounds for Halide; reaches deeper than 1 pixel clamp


def _spatial(in_shape: Sequence[int]) -> tuple[int, int]:
  return int(in_shape[-2]), int(in_shape[-1])  # (h, w)


# ------------------------------------------------------------------------------------------------
# blur


def _build_blur(in_shape: Sequence[int]) -> Algorithm:
  """3x3 separable box blur with clamped (repeat_edge) borders.

  ``out[y, x] = (1/9) * sum_{dy, dx in {-1, 0, 1}} in[clamp(y + dy), clamp(x + dx)]``, computed as
  ``blur_x = (a + b + c) / 3`` along x then ``blur_y = (a + b + c) / 3`` along y, as in Halide's
  ``apps/blur``.
  """
  h, w = _spatial(in_shape)
  x, y, yo, yi = _vars("x", "y", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 2, "input")
  clamped = hl.BoundaryConditions.repeat_edge(inp)
  blur_x = hl.Func("blur_x")
  blur_y = hl.Func("blur_y")
  blur_x[x, y] = (clamped[x - 1, y] + clamped[x, y] + clamped[x + 1, y]) / 3
  blur_y[x, y] = (blur_x[x, y - 1] + blur_x[x, y] + blur_x[x, y + 1]) / 3

  def manual() -> None:
    # Schedule (Halide's apps/blur CPU schedule): parallel strips of 128 rows; blur_x a sliding
    # window stored per strip and computed one row ahead of blur_y; both vectorized.
    # 2048^2 on the shared 2-core host (load ~2.7): 3.5 ms (Mullapudi2016 4.5, Adams2019 4.7).
    blur_y.split(y, yo, yi, _fit(128, h)).parallel(yo)
    _vectorize(blur_y, x, w)
    blur_x.store_at(blur_y, yo).compute_at(blur_y, yi)
    _vectorize(blur_x, x, w)

  return Algorithm([inp], blur_y, (h, w), manual)


# ------------------------------------------------------------------------------------------------
# unsharp mask


def _gaussian_taps(sigma: float) -> tuple[int, list[float]]:
  radius = max(1, math.ceil(3 * sigma))
  taps = [math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-radius, radius + 1)]
  total = sum(taps)
  return radius, [t / total for t in taps]


def _build_unsharp(in_shape: Sequence[int], *, sigma: float, amount: float) -> Algorithm:
  """Unsharp mask: ``out = in + (in - blurred) * amount``.

  ``blurred`` is a separable Gaussian with clamped (repeat_edge) borders: radius
  ``r = max(1, ceil(3 * sigma))`` and taps ``w_k = exp(-k^2 / (2 sigma^2)) / sum_j exp(-j^2 /
  (2 sigma^2))`` for ``k, j in [-r, r]`` (normalised to sum 1; taps computed in float64, rounded to
  float32). First along y: ``blur_y[y, x] = sum_k w_k in[clamp(y + k), x]``, then along x:
  ``blurred[y, x] = sum_k w_k blur_y[y, clamp(x + k)]`` (clamping the input is enough: blur_y of
  a clamped input is itself constant outside the image).
  """
  if not sigma > 0:
    raise ValueError(f"{sigma=} must be > 0")
  h, w = _spatial(in_shape)
  radius, taps = _gaussian_taps(sigma)
  x, y, yo, yi = _vars("x", "y", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 2, "input")
  clamped = hl.BoundaryConditions.repeat_edge(inp)
  blur_y = hl.Func("blur_y")
  blurred = hl.Func("blurred")
  out = hl.Func("unsharp")
  blur_y[x, y] = sum(
    (_f32(t) * clamped[x, y + k] for k, t in zip(range(-radius, radius + 1), taps, strict=True)),
    start=_f32(0),
  )
  blurred[x, y] = sum(
    (_f32(t) * blur_y[x + k, y] for k, t in zip(range(-radius, radius + 1), taps, strict=True)),
    start=_f32(0),
  )
  out[x, y] = clamped[x, y] + (clamped[x, y] - blurred[x, y]) * _f32(amount)

  def manual() -> None:
    # Schedule: strips of 32 rows in parallel; blur_y one output row at a time (it is all a row
    # of blurred needs), blurred inlined into the output, everything vectorized along x.
    # 2048^2, sigma 1.5, shared 2-core host (load ~2.7): 7.2 ms (Mullapudi 6.8, Adams 6.6).
    out.split(y, yo, yi, _fit(32, h)).parallel(yo)
    _vectorize(out, x, w)
    blur_y.compute_at(out, yi)
    _vectorize(blur_y, x, w)

  return Algorithm([inp], out, (h, w), manual)


# ------------------------------------------------------------------------------------------------
# harris corners


def _build_harris(in_shape: Sequence[int]) -> Algorithm:
  """Harris corner response, as in Halide's ``apps/harris``.

  The input is clamped (repeat_edge) once; nothing downstream is clamped again.

  - ``gray = in`` for a 2-D image, ``0.299 in[0] + 0.587 in[1] + 0.114 in[2]`` for ``(3, h, w)``.
  - Sobel / 12: ``Ix[y, x] = (-g[y-1, x-1] + g[y-1, x+1] - 2 g[y, x-1] + 2 g[y, x+1] - g[y+1, x-1]
    + g[y+1, x+1]) / 12`` and ``Iy`` the same with the roles of x and y swapped (so ``Iy`` has
    ``-`` on row ``y-1`` and ``+`` on row ``y+1``).
  - ``Ixx = Ix^2, Iyy = Iy^2, Ixy = Ix Iy``; ``Sxx, Syy, Sxy`` = their 3x3 box sums (unnormalised,
    taken over ``Ix``/``Iy`` evaluated at out-of-image positions from the clamped gray).
  - ``out = det - 0.04 trace^2`` with ``det = Sxx Syy - Sxy^2`` and ``trace = Sxx + Syy``.
  """
  h, w = _spatial(in_shape)
  color = len(in_shape) == 3
  if color and in_shape[0] != 3:
    raise ValueError(f"harris colour input must be (3, h, w), got {tuple(in_shape)=}")
  x, y, yo, yi = _vars("x", "y", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 3 if color else 2, "input")
  clamped = hl.BoundaryConditions.repeat_edge(inp)
  gray = hl.Func("gray")
  if color:
    gray[x, y] = (
      _f32(0.299) * clamped[x, y, 0]
      + _f32(0.587) * clamped[x, y, 1]
      + _f32(0.114) * clamped[x, y, 2]
    )
  else:
    gray[x, y] = clamped[x, y]
  ix, iy = hl.Func("Ix"), hl.Func("Iy")
  iy[x, y] = (
    gray[x - 1, y - 1] * _f32(-1 / 12)
    + gray[x - 1, y + 1] * _f32(1 / 12)
    + gray[x, y - 1] * _f32(-2 / 12)
    + gray[x, y + 1] * _f32(2 / 12)
    + gray[x + 1, y - 1] * _f32(-1 / 12)
    + gray[x + 1, y + 1] * _f32(1 / 12)
  )
  ix[x, y] = (
    gray[x - 1, y - 1] * _f32(-1 / 12)
    + gray[x + 1, y - 1] * _f32(1 / 12)
    + gray[x - 1, y] * _f32(-2 / 12)
    + gray[x + 1, y] * _f32(2 / 12)
    + gray[x - 1, y + 1] * _f32(-1 / 12)
    + gray[x + 1, y + 1] * _f32(1 / 12)
  )
  ixx, iyy, ixy = hl.Func("Ixx"), hl.Func("Iyy"), hl.Func("Ixy")
  ixx[x, y] = ix[x, y] * ix[x, y]
  iyy[x, y] = iy[x, y] * iy[x, y]
  ixy[x, y] = ix[x, y] * iy[x, y]
  r = hl.RDom([(-1, 3), (-1, 3)])
  sxx, syy, sxy = hl.Func("Sxx"), hl.Func("Syy"), hl.Func("Sxy")
  sxx[x, y] = hl.sum(ixx[x + r.x, y + r.y])
  syy[x, y] = hl.sum(iyy[x + r.x, y + r.y])
  sxy[x, y] = hl.sum(ixy[x + r.x, y + r.y])
  det = sxx[x, y] * syy[x, y] - sxy[x, y] * sxy[x, y]
  trace = sxx[x, y] + syy[x, y]
  out = hl.Func("harris")
  out[x, y] = det - _f32(0.04) * trace * trace

  def manual() -> None:
    # Schedule (Halide's apps/harris CPU schedule): parallel strips of 32 rows; gray, Ix and Iy
    # as sliding windows stored per strip and computed per output row; the rest inlined.
    # 2048^2 gray, shared 2-core host (load ~2.7): 8.5 ms (Mullapudi 16.8, Adams 23.7).
    out.split(y, yo, yi, _fit(32, h)).parallel(yo)
    _vectorize(out, x, w)
    for f in (gray, ix, iy):
      f.store_at(out, yo).compute_at(out, yi)
      _vectorize(f, x, w)

  return Algorithm([inp], out, (h, w), manual)


# ------------------------------------------------------------------------------------------------
# histogram equalisation


def _build_histogram(in_shape: Sequence[int], *, u8: bool = False) -> Algorithm:
  """Histogram equalisation (RDom reductions), as in ``apps/hist``.

  - Float image in [0, 1] (default): 8-bit bin ``q = clamp(int32(in * 255), 0, 255)`` (the
    product in float32, then truncation); ``out[y, x] = cdf[q[y, x]] / (h * w)`` (float32).
  - ``u8=True`` (jaxsched's ``histogram_equalize``): uint8 image, ``q = in``; ``out[y, x] =
    uint8(cdf[q] * 255 // (h * w))``.
  - ``hist[i] = #{pixels with q == i}`` for ``i in [0, 256)``; ``cdf[i] = sum_{j <= i} hist[j]``.
  """
  h, w = _spatial(in_shape)
  x, y, i, yo, yi = _vars("x", "y", "i", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.UInt(8) if u8 else hl.Float(32), 2, "input")

  def quantise(e: hl.Expr) -> hl.Expr:
    return hl.i32(e) if u8 else hl.clamp(hl.i32(e * _f32(255)), 0, 255)

  r = hl.RDom([(0, w), (0, h)], "r")
  hist = hl.Func("hist")
  hist[i] = 0
  hist[quantise(inp[r.x, r.y])] += 1
  cdf = hl.Func("cdf")
  rb = hl.RDom([(1, 255)], "rb")
  cdf[i] = hist[0]
  cdf[rb.x] = cdf[rb.x - 1] + hist[rb.x]
  out = hl.Func("equalised")
  if u8:
    # int64 product: cdf * 255 overflows int32 beyond 8.4 M pixels.
    out[x, y] = hl.u8(hl.i64(cdf[quantise(inp[x, y])]) * 255 / (h * w))
  else:
    out[x, y] = hl.f32(cdf[quantise(inp[x, y])]) / _f32(h * w)
  # The bins are reached through data-dependent indices: the autoschedulers need their extent.
  hist.set_estimate(i, 0, 256)
  cdf.set_estimate(i, 0, 256)

  def manual() -> None:
    # Schedule: per-strip partial histograms in parallel (rfactor over row strips), summed into
    # hist; the 256-entry scan serial; the remap a parallel, vectorized gather.
    # 2048^2, shared 2-core host (load ~3.8): 10.9 ms (Mullapudi 6.3, Adams 8.5).
    strip = _fit(64, h)
    ryo, ryi = hl.RVar("ryo"), hl.RVar("ryi")
    u = hl.Var("u")
    hist.compute_root()
    intm = hist.update(0).split(r.y, ryo, ryi, strip, hl.TailStrategy.GuardWithIf).rfactor(ryo, u)
    intm.compute_root().update(0).parallel(u)
    _vectorize(intm, i, 256)
    cdf.compute_root()
    out.split(y, yo, yi, _fit(32, h)).parallel(yo)
    _vectorize(out, x, w)

  return Algorithm([inp], out, (h, w), manual)


# ------------------------------------------------------------------------------------------------
# camera pipe

_DEFAULT_CCM = ((1.6, -0.4, -0.2), (-0.3, 1.5, -0.2), (-0.1, -0.5, 1.6))


def _build_camera_pipe(
  in_shape: Sequence[int], *, ccm: Sequence[Sequence[float]], gamma: float, contrast: float
) -> Algorithm:
  """A simplified camera pipe: RGGB Bayer raw ``(h, w)`` in [0, 1] -> planar RGB ``(3, h, w)``.

  1. Borders: the raw image is mirrored one pixel deep without repeating the edge pixel (Halide's
     ``mirror_interior``, numpy's ``pad(mode="reflect")``), which keeps the Bayer parity.
  2. Bilinear demosaic of the RGGB mosaic (R at even row / even column, B at odd / odd, G
     elsewhere). With ``N, S, W, E`` the 4-neighbours, ``cross`` their mean, ``diag`` the mean of
     the 4 diagonal neighbours, ``horiz = (W + E) / 2`` and ``vert = (N + S) / 2``:
     at R sites ``(R, G, B) = (raw, cross, diag)``; at G sites on R rows ``(horiz, raw, vert)``;
     at G sites on B rows ``(vert, raw, horiz)``; at B sites ``(diag, cross, raw)``.
  3. Colour correction: ``rgb' = ccm @ rgb`` (``ccm`` a 3x3 row-major matrix).
  4. Curve (Halide's ``camera_pipe`` curve, without its LUT): ``v = clamp(rgb', 0, 1)``,
     ``g = v ** (1 / gamma)`` (Halide's ``fast_pow``), ``b = 2 - 2 ** (contrast / 100)``,
     ``a = 2 - 2 b``,
     ``out = 1 - (a (1 - g)^2 + b (1 - g))`` if ``g > 0.5`` else ``a g^2 + b g``.
  """
  ccm = np.asarray(ccm, dtype=np.float64)
  if ccm.shape != (3, 3):
    raise ValueError(f"ccm must be 3x3, got {ccm.shape=}")
  if not gamma > 0:
    raise ValueError(f"{gamma=} must be > 0")
  h, w = _spatial(in_shape)
  x, y, c, yo, yi = _vars("x", "y", "c", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 2, "raw")
  # mirror_interior by hand with the compile-time extents: Halide's own version (bounds from the
  # buffer) made an Adams2019 schedule read raw[-1] in Halide 21.
  raw = hl.Func("raw_mirrored")
  raw[x, y] = inp[_mirror1(x, w), _mirror1(y, h)]
  n, s_, w_, e = raw[x, y - 1], raw[x, y + 1], raw[x - 1, y], raw[x + 1, y]
  cross = (n + s_ + w_ + e) * _f32(0.25)
  diag = _f32(0.25) * (
    raw[x - 1, y - 1] + raw[x + 1, y - 1] + raw[x - 1, y + 1] + raw[x + 1, y + 1]
  )
  horiz = (w_ + e) * _f32(0.5)
  vert = (n + s_) * _f32(0.5)
  even_x, even_y = x % 2 == 0, y % 2 == 0
  r_site = even_y & even_x
  gr_site = even_y & ~even_x
  gb_site = ~even_y & even_x
  red, green, blue = hl.Func("red"), hl.Func("green"), hl.Func("blue")
  red[x, y] = hl.select(r_site, raw[x, y], gr_site, horiz, gb_site, vert, diag)
  green[x, y] = hl.select(r_site | ~(gr_site | gb_site), cross, raw[x, y])
  blue[x, y] = hl.select(r_site, diag, gr_site, vert, gb_site, horiz, raw[x, y])
  corrected = hl.Func("corrected")
  rows = [
    _f32(ccm[k, 0]) * red[x, y] + _f32(ccm[k, 1]) * green[x, y] + _f32(ccm[k, 2]) * blue[x, y]
    for k in range(3)
  ]
  corrected[x, y, c] = hl.mux(c, rows)
  # fast_pow: ~10% faster end to end than pow here, max abs error ~1e-6 on [0, 1]. Halide's own
  # camera_pipe avoids a pow per pixel with a LUT instead (which would quantise the curve).
  gv = hl.fast_pow(hl.clamp(corrected[x, y, c], _f32(0), _f32(1)), _f32(1 / gamma))
  b = 2 - 2 ** (contrast / 100)
  a = 2 - 2 * b
  out = hl.Func("camera_pipe")
  out[x, y, c] = hl.select(
    gv > _f32(0.5),
    _f32(1) - (_f32(a) * (1 - gv) * (1 - gv) + _f32(b) * (1 - gv)),
    _f32(a) * gv * gv + _f32(b) * gv,
  )

  def manual() -> None:
    # Schedule: parallel strips of rows, all three channels of a strip together (the demosaic
    # is shared), channels unrolled, x vectorized; demosaic per output row, correction inlined.
    # The mirrored raw is a sliding window of rows: inlined, its data-dependent indices turn
    # every tap into a gather (2.8x slower). 2048^2 raw, shared 2-core host (load ~7): 27 ms
    # (Mullapudi2016 90, Adams2019 34-42).
    out.bound(c, 0, 3).reorder(x, c, y).unroll(c)
    out.split(y, yo, yi, _fit(32, h)).parallel(yo)
    _vectorize(out, x, w)
    for f in (red, green, blue):
      f.compute_at(out, yi)
      _vectorize(f, x, w)
    raw.store_at(out, yo).compute_at(out, yi)
    _vectorize(raw, x, w)

  return Algorithm([inp], out, (3, h, w), manual)


# jaxsched's camera pipe (``jaxsched.pipelines.apps.camera_pipe``), written independently here.
_GRBG_CCM = ((1.5, -0.25, -0.25), (-0.125, 1.25, -0.125), (-0.0625, -0.1875, 1.25))


def _build_camera_pipe_grbg(in_shape: Sequence[int], *, gamma: float) -> Algorithm:
  """Camera pipe on a GRBG Bayer raw, after Halide's ``apps/camera_pipe``.

  Input ``(h, w)`` float32 holding 10-bit integers (the uint16 raw, exactly representable);
  output ``(3, h, w)`` float32 holding uint8 values.

  1. ``raw`` repeat-edged; hot pixels clipped: ``d = min(raw, max(raw[y, x -+ 2], raw[y -+ 2,
     x]))``.
  2. Half-resolution planes: ``g_gr[y, x] = d[2y, 2x]``, ``r_r = d[2y, 2x+1]``, ``b_b = d[2y+1,
     2x]``, ``g_gb = d[2y+1, 2x+1]``; bilinear demosaic of the missing colours at each site
     (averages of 2 or 4 neighbours), interleaved back to full resolution.
  3. Colour matrix ``_GRBG_CCM`` (dyadic: exact on these values), then
     ``curve[clamp(int32(v), 0, 1023)]`` with ``curve[i] = uint8(clamp((i / 1023) ** (1 / gamma)
     * 255 + 0.5, 0, 255))``, a 1024-entry lookup table.
  """
  if gamma <= 0:
    raise ValueError(f"{gamma=} must be > 0")
  h, w = _spatial(in_shape)
  x, y, c, i, yo, yi = _vars("x", "y", "c", "i", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 2, "raw")
  raw = hl.BoundaryConditions.repeat_edge(inp)
  den = hl.Func("denoised")
  nb = hl.max(hl.max(raw[x - 2, y], raw[x + 2, y]), hl.max(raw[x, y - 2], raw[x, y + 2]))
  den[x, y] = hl.min(raw[x, y], nb)
  g_gr, r_r, b_b, g_gb = (hl.Func(n) for n in ("g_gr", "r_r", "b_b", "g_gb"))
  g_gr[x, y] = den[2 * x, 2 * y]
  r_r[x, y] = den[2 * x + 1, 2 * y]
  b_b[x, y] = den[2 * x, 2 * y + 1]
  g_gb[x, y] = den[2 * x + 1, 2 * y + 1]
  q, hf = _f32(0.25), _f32(0.5)
  half = {n: hl.Func(n) for n in ("g_r", "g_b", "r_gr", "r_gb", "r_b", "b_gr", "b_gb", "b_r")}
  half["g_r"][x, y] = (g_gr[x, y] + g_gr[x + 1, y] + g_gb[x, y - 1] + g_gb[x, y]) * q
  half["g_b"][x, y] = (g_gr[x, y] + g_gr[x, y + 1] + g_gb[x - 1, y] + g_gb[x, y]) * q
  half["r_gr"][x, y] = (r_r[x - 1, y] + r_r[x, y]) * hf
  half["r_gb"][x, y] = (r_r[x, y] + r_r[x, y + 1]) * hf
  half["r_b"][x, y] = (r_r[x - 1, y] + r_r[x, y] + r_r[x - 1, y + 1] + r_r[x, y + 1]) * q
  half["b_gr"][x, y] = (b_b[x, y - 1] + b_b[x, y]) * hf
  half["b_gb"][x, y] = (b_b[x, y] + b_b[x + 1, y]) * hf
  half["b_r"][x, y] = (b_b[x, y - 1] + b_b[x + 1, y - 1] + b_b[x, y] + b_b[x + 1, y]) * q

  def interleave(name, ee, eo, oe, oo):
    f = hl.Func(name)
    hx, hy = x / 2, y / 2
    f[x, y] = hl.select(
      y % 2 == 0,
      hl.select(x % 2 == 0, ee[hx, hy], eo[hx, hy]),
      hl.select(x % 2 == 0, oe[hx, hy], oo[hx, hy]),
    )
    return f

  red = interleave("red", half["r_gr"], r_r, half["r_b"], half["r_gb"])
  green = interleave("green", g_gr, half["g_r"], half["g_b"], g_gb)
  blue = interleave("blue", half["b_gr"], half["b_r"], b_b, half["b_gb"])
  corrected = hl.Func("corrected")
  rows = [
    _f32(m[0]) * red[x, y] + _f32(m[1]) * green[x, y] + _f32(m[2]) * blue[x, y] for m in _GRBG_CCM
  ]
  corrected[x, y, c] = hl.mux(c, rows)
  curve = hl.Func("curve")
  v = hl.f32(i) / _f32(1023)
  curve[i] = hl.u8(hl.clamp(hl.pow(v, _f32(1 / gamma)) * _f32(255) + _f32(0.5), 0, 255))
  curve.set_estimate(i, 0, 1024)
  out = hl.Func("camera_pipe_grbg")
  out[x, y, c] = hl.f32(curve[hl.clamp(hl.i32(corrected[x, y, c]), 0, 1023)])

  def manual() -> None:
    # Schedule, in the style of Halide's camera_pipe: the curve a root table; parallel strips of
    # rows, channels unrolled, x vectorized; the hot-pixel stage and the half-resolution
    # demosaic computed per strip (a strip of 32 output rows needs 16 + 1 half rows).
    curve.compute_root()
    out.bound(c, 0, 3).reorder(c, x, y).unroll(c)
    out.split(y, yo, yi, _fit(32, h)).parallel(yo)
    _vectorize(out, x, w)
    den.compute_at(out, yo)
    _vectorize(den, x, w)
    for f in half.values():
      f.compute_at(out, yo)
      _vectorize(f, x, w // 2)

  return Algorithm([inp], out, (3, h, w), manual)


# ------------------------------------------------------------------------------------------------
# bilateral grid


def _build_bilateral_grid(in_shape: Sequence[int], *, s_sigma: int, r_sigma: float) -> Algorithm:
  """Bilateral filter on a bilateral grid, as in Halide's ``apps/bilateral_grid``.

  With ``s = s_sigma`` (int) and ``inv = float32(1 / r_sigma)``:

  - Grid: for cell ``(gy, gx)`` and each ``(ry, rx) in [0, s)^2``, ``v = clamp(in[clamp(gy s + ry -
    s // 2), clamp(gx s + rx - s // 2)], 0, 1)`` (clamped indices = repeat_edge) lands in bin
    ``z = int32(v * inv + 0.5)`` (float32 arithmetic) and adds ``(v, 1)`` to ``grid[gy, gx, z]``.
  - Blur: ``[1, 4, 6, 4, 1]`` (unnormalised) along z, then x, then y; bins outside the data are 0.
  - Slice: ``zv = clamp(in[y, x], 0, 1) * inv``, ``zi = int32(zv)``, ``zf = zv - zi``,
    ``xi = x // s, xf = (x % s) / s`` (same for y); trilinear interpolation of the blurred grid at
    ``(yi + yf, xi + xf, zi + zf)`` for both channels; ``out = value / weight``.
  """
  if not (isinstance(s_sigma, int | np.integer) and s_sigma >= 1):
    raise ValueError(f"{s_sigma=} must be an int >= 1")
  if not r_sigma > 0:
    raise ValueError(f"{r_sigma=} must be > 0")
  s = int(s_sigma)
  h, w = _spatial(in_shape)
  x, y, z, c, xi_, yi_ = _vars("x", "y", "z", "c", "xi", "yi")
  inv = _f32(1 / r_sigma)
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 2, "input")
  clamped = hl.BoundaryConditions.repeat_edge(inp)
  r = hl.RDom([(0, s), (0, s)], "r")
  val = hl.clamp(clamped[x * s + r.x - s // 2, y * s + r.y - s // 2], _f32(0), _f32(1))
  zi = hl.i32(val * inv + _f32(0.5))
  histogram = hl.Func("histogram")
  histogram[x, y, z, c] = _f32(0)
  histogram[x, y, zi, c] += hl.mux(c, [val, _f32(1)])

  def five_tap(f: hl.Func, name: str, axis: int) -> hl.Func:
    def at(d: int) -> hl.Expr:
      args = [x, y, z, c]
      args[axis] = args[axis] + d
      return f[args]

    g = hl.Func(name)
    g[x, y, z, c] = at(-2) + at(-1) * 4 + at(0) * 6 + at(1) * 4 + at(2)
    return g

  blurz = five_tap(histogram, "blurz", 2)
  blurx = five_tap(blurz, "blurx", 0)
  blury = five_tap(blurx, "blury", 1)
  v = hl.clamp(inp[x, y], _f32(0), _f32(1))
  zv = v * inv
  zi = hl.i32(zv)
  zf = zv - hl.f32(zi)
  xf = hl.f32(x % s) / _f32(s)
  yf = hl.f32(y % s) / _f32(s)
  gx, gy = x / s, y / s
  interpolated = hl.Func("interpolated")
  interpolated[x, y, c] = hl.lerp(
    hl.lerp(
      hl.lerp(blury[gx, gy, zi, c], blury[gx + 1, gy, zi, c], xf),
      hl.lerp(blury[gx, gy + 1, zi, c], blury[gx + 1, gy + 1, zi, c], xf),
      yf,
    ),
    hl.lerp(
      hl.lerp(blury[gx, gy, zi + 1, c], blury[gx + 1, gy, zi + 1, c], xf),
      hl.lerp(blury[gx, gy + 1, zi + 1, c], blury[gx + 1, gy + 1, zi + 1, c], xf),
      yf,
    ),
    zf,
  )
  out = hl.Func("bilateral_grid")
  out[x, y] = interpolated[x, y, 0] / interpolated[x, y, 1]
  # z is reached through data-dependent indices: the autoschedulers need its extent.
  nz = int(1 / r_sigma + 0.5) + 1
  for f in (histogram, blurz, blurx, blury):
    f.set_estimate(z, -2, nz + 4).set_estimate(c, 0, 2)

  def manual() -> None:
    # Schedule (Halide's apps/bilateral_grid CPU schedule): grid stages compute_root, parallel
    # over y or z, vectorized along x, channels unrolled; the histogram per row of blurz.
    # 2048^2, s_sigma 8, r_sigma 0.1, shared 2-core host (load ~4.2): 41 ms (Mullapudi 63,
    # Adams 100).
    blurz.compute_root().reorder(c, z, x, y).parallel(y).vectorize(x, 8).unroll(c)
    histogram.compute_at(blurz, y)
    histogram.update(0).reorder(c, r.x, r.y, x, y).unroll(c)
    blurx.compute_root().reorder(c, x, y, z).parallel(z).vectorize(x, 8).unroll(c)
    blury.compute_root().reorder(c, x, y, z).parallel(z).vectorize(x, 8).unroll(c)
    out.split(y, yi_, xi_, _fit(8, h)).parallel(yi_)
    _vectorize(out, x, w)

  return Algorithm([inp], out, (h, w), manual)


# ------------------------------------------------------------------------------------------------
# local laplacian


def _downsample(f: hl.Func, args: list[hl.Var], name: str) -> hl.Func:
  """``[1, 3, 3, 1] / 8`` along x then y, at half resolution (Halide's local_laplacian)."""
  x, y, *rest = args
  dx, d = hl.Func(name + "_x"), hl.Func(name)

  def at_x(g: hl.Func, d: int) -> hl.Expr:
    return g[[2 * x + d, y, *rest]]

  def at_y(g: hl.Func, d: int) -> hl.Expr:
    return g[[x, 2 * y + d, *rest]]

  dx[args] = (at_x(f, -1) + 3 * (at_x(f, 0) + at_x(f, 1)) + at_x(f, 2)) / 8
  d[args] = (at_y(dx, -1) + 3 * (at_y(dx, 0) + at_y(dx, 1)) + at_y(dx, 2)) / 8
  return d


def _upsample(f: hl.Func, args: list[hl.Var], name: str) -> hl.Func:
  """Linear 2x upsampling: ``lerp(f((x + 1) // 2), f((x - 1) // 2), (2 (x % 2) + 1) / 4)``."""
  x, y, *rest = args
  ux, u = hl.Func(name + "_x"), hl.Func(name)
  ux[args] = hl.lerp(
    f[[(x + 1) / 2, y, *rest]], f[[(x - 1) / 2, y, *rest]], hl.f32((x % 2) * 2 + 1) / 4
  )
  u[args] = hl.lerp(
    ux[[x, (y + 1) / 2, *rest]], ux[[x, (y - 1) / 2, *rest]], hl.f32((y % 2) * 2 + 1) / 4
  )
  return u


def _build_local_laplacian(
  in_shape: Sequence[int], *, levels: int, pyramid_levels: int, alpha: float, beta: float
) -> Algorithm:
  """Local Laplacian filter (Paris et al. 2011) as in Halide's ``apps/local_laplacian``, on gray.

  Same names as Halide's generator: ``levels`` = K intensity levels, ``pyramid_levels`` = J. The
  input (float gray in [0, 1]) is clamped (repeat_edge) once; all pyramids are defined everywhere.

  - ``remap(i) = alpha * (i / 256) * exp(-(i / 256)^2 / 2)``.
  - ``g0[k] = beta (gray - l_k) + l_k + remap(idx - 256 k)`` for ``k in [0, K)``, with
    ``l_k = k / (K - 1)`` and ``idx = clamp(int32(gray * (K - 1) * 256), 0, 256 (K - 1))`` (the
    product in float32, then truncation).
  - ``downsample``: ``[1, 3, 3, 1] / 8`` at ``2x - 1 .. 2x + 2`` along x, then along y.
    ``upsample``: ``lerp(f((x + 1) // 2), f((x - 1) // 2), (2 (x % 2) + 1) / 4)`` along x, then y
    (floor division, non-negative modulo).
  - Gaussian pyramids ``gP[j] = down(gP[j - 1])`` (all k) and ``inG[j] = down(inG[j - 1])``
    (``inG[0] = gray``); Laplacian ``lP[j] = gP[j] - up(gP[j + 1])``, ``lP[J - 1] = gP[J - 1]``.
  - ``outL[j] = (1 - lf) lP[j][li] + lf lP[j][li + 1]`` with ``v = inG[j] (K - 1)``,
    ``li = clamp(int32(v), 0, K - 2)``, ``lf = v - li``; ``outG[J - 1] = outL[J - 1]``,
    ``outG[j] = up(outG[j + 1]) + outL[j]``; ``out = clamp(outG[0], 0, 1)``.
  """
  if not (isinstance(levels, int | np.integer) and levels >= 2):
    raise ValueError(f"{levels=} must be an int >= 2")
  if not (isinstance(pyramid_levels, int | np.integer) and 1 <= pyramid_levels <= 12):
    raise ValueError(f"{pyramid_levels=} must be an int in [1, 12]")
  h, w = _spatial(in_shape)
  n_k, n_j = int(levels), int(pyramid_levels)
  x, y, k, i, yo, yi = _vars("x", "y", "k", "i", "yo", "yi")
  # Algorithm
  inp = hl.ImageParam(hl.Float(32), 2, "input")
  gray = hl.BoundaryConditions.repeat_edge(inp)
  remap = hl.Func("remap")
  fx = hl.f32(i) / _f32(256)
  remap[i] = _f32(alpha) * fx * hl.exp(-fx * fx / 2)
  level = hl.f32(k) * _f32(1 / (n_k - 1))
  idx = hl.clamp(hl.i32(gray[x, y] * _f32(n_k - 1) * _f32(256)), 0, (n_k - 1) * 256)
  g_pyr = [hl.Func("gPyramid0")]
  g_pyr[0][x, y, k] = _f32(beta) * (gray[x, y] - level) + level + remap[idx - 256 * k]
  in_g = [hl.Func("inGPyramid0")]
  in_g[0][x, y] = gray[x, y]
  for j in range(1, n_j):
    g_pyr.append(_downsample(g_pyr[j - 1], [x, y, k], f"gPyramid{j}"))
    in_g.append(_downsample(in_g[j - 1], [x, y], f"inGPyramid{j}"))
  l_pyr = [hl.Func(f"lPyramid{j}") for j in range(n_j)]
  l_pyr[n_j - 1][x, y, k] = g_pyr[n_j - 1][x, y, k]
  for j in range(n_j - 1):
    l_pyr[j][x, y, k] = g_pyr[j][x, y, k] - _upsample(g_pyr[j + 1], [x, y, k], f"up_g{j}")[x, y, k]
  out_l = []
  for j in range(n_j):
    v = in_g[j][x, y] * _f32(n_k - 1)
    li = hl.clamp(hl.i32(v), 0, n_k - 2)
    lf = v - hl.f32(li)
    out_l.append(hl.Func(f"outLPyramid{j}"))
    out_l[j][x, y] = (1 - lf) * l_pyr[j][x, y, li] + lf * l_pyr[j][x, y, li + 1]
  out_g: list[hl.Func] = [hl.Func(f"outGPyramid{j}") for j in range(n_j)]
  out_g[n_j - 1][x, y] = out_l[n_j - 1][x, y]
  for j in range(n_j - 2, -1, -1):
    out_g[j][x, y] = _upsample(out_g[j + 1], [x, y], f"up_out{j}")[x, y] + out_l[j][x, y]
  out = hl.Func("local_laplacian")
  out[x, y] = hl.clamp(out_g[0][x, y], _f32(0), _f32(1))
  # k and the remap index are reached through data-dependent indices: estimates for autoschedulers.
  remap.set_estimate(i, -256 * (n_k - 1), 512 * (n_k - 1) + 1)
  for f in g_pyr:
    f.set_estimate(k, 0, n_k)

  def manual() -> None:
    # Schedule (after Halide's local_laplacian CPU schedule): the LUT and all pyramid levels
    # compute_root, parallel over row blocks and vectorized along x; the full-resolution output
    # level fused into the output strips.
    remap.compute_root()
    out.split(y, yo, yi, _fit(64, h)).parallel(yo)
    _vectorize(out, x, w)
    for j in range(n_j):
      in_g[j].compute_root().parallel(y, 8).vectorize(x, 8)
      g_pyr[j].compute_root().reorder_storage(x, k, y).reorder(k, y).parallel(y, 8).vectorize(x, 8)
      if j > 0:
        out_g[j].compute_root().parallel(y, 8).vectorize(x, 8)

  return Algorithm([inp], out, (h, w), manual)


# ------------------------------------------------------------------------------------------------
# Registry.

register_app(App("blur", _build_blur, {}))
register_app(App("unsharp", _build_unsharp, {"sigma": 1.5, "amount": 1.0}))
register_app(App("harris", _build_harris, {}, input_ndims=(2, 3)))
register_app(App("histogram", _build_histogram, {}))
register_app(App("histogram_u8", functools.partial(_build_histogram, u8=True), {}, dtype="uint8"))
register_app(
  App(
    "camera_pipe",
    _build_camera_pipe,
    {"ccm": _DEFAULT_CCM, "gamma": 2.2, "contrast": 50.0},
    min_size=2,
  )
)
register_app(App("camera_pipe_grbg", _build_camera_pipe_grbg, {"gamma": 2.2}, min_size=2))
register_app(
  App(
    "local_laplacian",
    _build_local_laplacian,
    {"levels": 8, "pyramid_levels": 8, "alpha": 1.0, "beta": 1.0},
  )
)
register_app(App("bilateral_grid", _build_bilateral_grid, {"s_sigma": 8, "r_sigma": 0.1}))


# ------------------------------------------------------------------------------------------------
# Compilation, running and timing.


def _load_plugins() -> None:
  global _PLUGINS_LOADED
  if _PLUGINS_LOADED:
    return
  lib = os.path.join(os.path.dirname(hl.__file__), "lib64")
  for name in _AUTOSCHEDULER_NAMES:
    path = os.path.join(lib, f"libautoschedule_{name}.so")
    if not os.path.exists(path):
      raise FileNotFoundError(f"Halide autoscheduler plugin {path=} not found in the halide wheel")
    hl.load_plugin(path)
  _PLUGINS_LOADED = True


def _get_app(app: str) -> App:
  if app not in APPS:
    raise ValueError(f"unknown {app=}; valid apps: {sorted(APPS)}")
  return APPS[app]


def _check_image(spec: App, image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim not in spec.input_ndims:
    raise ValueError(
      f"{spec.name} takes images with ndim in {spec.input_ndims}, got {image.shape=}"
    )
  h, w = _spatial(image.shape)
  if min(h, w) < spec.min_size:
    raise ValueError(f"{spec.name} needs h, w >= {spec.min_size}, got {image.shape=}")
  if spec.dtype != "float32":
    if image.dtype != np.dtype(spec.dtype):
      raise ValueError(f"{spec.name} takes a {spec.dtype} image, got {image.dtype=}")
    return np.ascontiguousarray(image)
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"{spec.name} takes a float image, got {image.dtype=}")
  return np.ascontiguousarray(image, dtype=np.float32)


def _params(spec: App, params: Mapping[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(params) - set(spec.defaults))
  if unknown:
    raise ValueError(f"unknown params {unknown} for {spec.name}; valid: {sorted(spec.defaults)}")
  return {**spec.defaults, **params}


def _freeze(v: Any) -> Any:
  if isinstance(v, list | tuple | np.ndarray):
    return tuple(_freeze(e) for e in np.asarray(v).tolist()) if np.ndim(v) else v
  return v


def compile_app(
  app: str, shape: Sequence[int], *, schedule: str = "manual", **params: Any
) -> Callable[[np.ndarray], np.ndarray]:
  """Builds, schedules and JIT-compiles ``app`` for float32 inputs of ``shape`` (cached).

  Args:
    app: a key of :data:`APPS`.
    shape: numpy shape of the input image.
    schedule: one of :data:`SCHEDULES`.
    **params: app parameters (see the app's docstring); unknown names raise ``ValueError``.

  Returns:
    ``fn(image, out=None) -> np.ndarray``: ``image`` a C-contiguous float32 array of ``shape``;
    writes into ``out`` (C-contiguous float32 of the output shape) or a fresh array.

  Raises:
    ValueError: unknown app, schedule or parameter.
    ScheduleUnavailableError: the autoscheduler or the compile after it failed (also recorded in
      :data:`FAILURES` under ``(app, schedule, shape, params)``).
  """
  spec = _get_app(app)
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown {schedule=}; valid schedules: {list(SCHEDULES)}")
  full = _params(spec, params)
  shape = tuple(int(s) for s in shape)
  key = (app, schedule, shape, tuple(sorted((k, _freeze(v)) for k, v in full.items())))
  if key in _CACHE:
    return _CACHE[key]
  if key in FAILURES:
    raise ScheduleUnavailableError(FAILURES[key])
  alg = spec.build(shape, **full)
  dt, out_shape = np.dtype(spec.dtype), alg.out_shape
  target = hl.get_jit_target_from_environment()
  pipeline = hl.Pipeline(alg.output)
  if schedule == "manual":
    alg.manual()
  else:
    _load_plugins()
    (inp,) = alg.inputs  # every app has one input image
    inp.set_estimates([(0, s) for s in reversed(shape)])
    alg.output.set_estimates([(0, s) for s in reversed(alg.out_shape)])
  try:
    if schedule != "manual":
      # Host parallelism as in Halide's own autoscheduler drivers.
      asp = hl.AutoschedulerParams(
        _AUTOSCHEDULER_NAMES[schedule], {"parallelism": str(os.cpu_count() or 1)}
      )
      pipeline.apply_autoscheduler(target, asp)
    callable_ = pipeline.compile_to_callable(alg.inputs, target)
    if schedule != "manual":
      # Some autoscheduled pipelines fail only when run (e.g. out-of-bounds input reads): try once.
      callable_(
        hl.Buffer(np.full(shape, 0.5, np.float32).astype(dt)), hl.Buffer(np.empty(out_shape, dt))
      )
  except Exception as e:  # noqa: BLE001 - Halide raises several error types; record any of them.
    if schedule == "manual":
      raise
    FAILURES[key] = f"{app}/{schedule} failed for {shape=}: {type(e).__name__}: {e}"
    raise ScheduleUnavailableError(FAILURES[key]) from e

  def fn(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
      out = np.empty(out_shape, dt)
    elif out.shape != out_shape or out.dtype != dt or not out.flags.c_contiguous:
      raise ValueError(f"out must be C-contiguous {dt} of shape {out_shape}, got {out.shape=}")
    callable_(hl.Buffer(image), hl.Buffer(out))
    return out

  _CACHE[key] = fn
  return fn


def run(app: str, image: np.ndarray, *, schedule: str = "manual", **params: Any) -> np.ndarray:
  """Runs ``app`` on ``image`` (numpy order, float) with the given Halide schedule.

  Compiles once per (app, schedule, shape, params) and reuses the compiled callable.

  Args:
    app: a key of :data:`APPS`.
    image: float image; cast to contiguous float32.
    schedule: one of :data:`SCHEDULES`.
    **params: app parameters.

  Returns:
    The app's float32 output as a numpy array.
  """
  spec = _get_app(app)
  image = _check_image(spec, image)
  return compile_app(app, image.shape, schedule=schedule, **params)(image)


def time_app(
  app: str, image: np.ndarray, *, schedule: str = "manual", repeats: int = 10, **params: Any
) -> float:
  """Median wall time in seconds of ``repeats`` runs (after compiling and one warm-up run).

  Like Halide's own benchmarks, the output buffer is allocated once and reused, so neither
  compilation nor allocation (page faults of a fresh 16 MB array) is timed.
  """
  if repeats < 1:
    raise ValueError(f"{repeats=} must be >= 1")
  spec = _get_app(app)
  image = _check_image(spec, image)
  fn = compile_app(app, image.shape, schedule=schedule, **params)
  out = fn(image)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(image, out)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def benchmark(
  app: str,
  image: np.ndarray,
  *,
  schedules: Sequence[str] = SCHEDULES,
  repeats: int = 10,
  **params: Any,
) -> dict[str, float | str]:
  """``time_app`` for each schedule: seconds, or the failure reason (a string) where one failed."""
  results: dict[str, float | str] = {}
  for s in schedules:
    try:
      results[s] = time_app(app, image, schedule=s, repeats=repeats, **params)
    except ScheduleUnavailableError as e:
      results[s] = str(e)
  return results
