"""Benchmark jaxsched pipelines (XLA backend) against Halide, plain jnp and OpenCV.

One process, 2048x2048 float32 (uint8 for histogram equalisation) by default. For each app:
jaxsched's default schedule and the best of its named schedules, Halide with a manual schedule
and with the Mullapudi2016 and Adams2019 autoschedulers (pip ``halide``), plain jitted jnp and
OpenCV where it has a counterpart. Prints median ms and the ratio to Halide's best.

All candidates of an app run interleaved (one call of each per round, ``--reps`` rounds), so a
burst of load from other processes hits them alike; the ratio uses medians of the same rounds.
Also printed: the fastest round (closest to an idle machine), the median process CPU time per
call, and the load average.

  JAX_PLATFORMS=cpu python bench/pipelines.py [--size 2048] [--reps 10] [--apps blur harris]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.pipelines import apps

APP_NAMES = [
  "blur",
  "harris",
  "unsharp",
  "histogram_equalize",
  "bilateral_grid",
  "local_laplacian",
  "camera_pipe",
]
HALIDE_APPS = ("blur", "harris", "unsharp", "histogram_equalize")


def timeit(fn: Callable[[], object], reps: int) -> float:
  """Median wall time in ms over ``reps`` runs after one warm-up."""
  jax.block_until_ready(fn())
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return float(np.median(ts) * 1e3)


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, dict[str, float]]:
  """Per candidate: median and min wall ms, median CPU ms, over ``reps`` interleaved rounds."""
  for fn in fns.values():  # warm-up (compilation) and a second call for caches
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  wall: dict[str, list[float]] = {k: [] for k in fns}
  cpu: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      wall[k].append((time.perf_counter() - t) * 1e3)
      cpu[k].append((time.process_time() - c) * 1e3)
  return {
    k: {
      "median": float(np.median(wall[k])),
      "min": float(np.min(wall[k])),
      "cpu": float(np.median(cpu[k])),
    }
    for k in fns
  }


# ----------------------------------------------------------------------------- plain jnp


def _edge(x, r):
  return jnp.pad(x, r, mode="edge")


def jnp_blur(x):
  p = _edge(x, 1)
  bx = (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 3
  return (bx[:-2] + bx[1:-1] + bx[2:]) / 3


def jnp_harris(x, k=0.04):
  h, w = x.shape
  p = _edge(x, 2)

  def at(dy, dx):
    return p[1 + dy : 1 + dy + h + 2, 1 + dx : 1 + dx + w + 2]

  iy = (-at(-1, -1) - 2 * at(-1, 0) - at(-1, 1) + at(1, -1) + 2 * at(1, 0) + at(1, 1)) / 12
  ix = (-at(-1, -1) - 2 * at(0, -1) - at(1, -1) + at(-1, 1) + 2 * at(0, 1) + at(1, 1)) / 12

  def box(q):
    return sum(
      q[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    )

  sxx, syy, sxy = box(ix * ix), box(iy * iy), box(ix * iy)
  return sxx * syy - sxy * sxy - k * (sxx + syy) ** 2


def jnp_unsharp(x, sigma=1.5, radius=3):
  i = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  w = jnp.exp(-(i * i) / (2 * sigma * sigma))
  w = w / w.sum()
  h, wd = x.shape
  p = _edge(x, radius)
  bx = sum(w[j] * p[:, j : j + wd] for j in range(2 * radius + 1))
  by = sum(w[j] * bx[j : j + h, :] for j in range(2 * radius + 1))
  return 2 * x - by


def jnp_histeq(x):
  hist = jnp.zeros(256, jnp.int32).at[x.astype(jnp.int32).ravel()].add(1)
  cdf = jnp.cumsum(hist)
  return (cdf[x.astype(jnp.int32)] * 255 // x.size).astype(jnp.uint8)


JNP = {
  "blur": jnp_blur,
  "harris": jnp_harris,
  "unsharp": jnp_unsharp,
  "histogram_equalize": jnp_histeq,
}


# ----------------------------------------------------------------------------- Halide


def _halide():
  try:
    import halide as hl
  except ImportError:
    return None
  lib = os.path.join(os.path.dirname(hl.__file__), "lib64")
  for n in ("mullapudi2016", "adams2019"):
    path = os.path.join(lib, f"libautoschedule_{n}.so")
    if os.path.exists(path):
      hl.load_plugin(path)
  return hl


def halide_app(hl, name: str):
  """(input ImageParam, output Func, manual schedule fn) in Halide's x, y order."""
  x, y = hl.Var("x"), hl.Var("y")
  yi = hl.Var("yi")
  if name == "histogram_equalize":
    inp = hl.ImageParam(hl.UInt(8), 2, "input")
  else:
    inp = hl.ImageParam(hl.Float(32), 2, "input")
  c = hl.BoundaryConditions.repeat_edge(inp)
  if name == "blur":
    bx, by = hl.Func("blur_x"), hl.Func("blur_y")
    bx[x, y] = (c[x - 1, y] + c[x, y] + c[x + 1, y]) / 3
    by[x, y] = (bx[x, y - 1] + bx[x, y] + bx[x, y + 1]) / 3

    def manual():
      by.split(y, y, yi, 32).parallel(y).vectorize(x, 8)
      bx.store_at(by, y).compute_at(by, yi).vectorize(x, 8)

    return inp, by, manual
  if name == "harris":
    ix, iy = hl.Func("Ix"), hl.Func("Iy")
    iy[x, y] = (
      -c[x - 1, y - 1]
      - 2 * c[x, y - 1]
      - c[x + 1, y - 1]
      + c[x - 1, y + 1]
      + 2 * c[x, y + 1]
      + c[x + 1, y + 1]
    ) / 12
    ix[x, y] = (
      -c[x - 1, y - 1]
      - 2 * c[x - 1, y]
      - c[x - 1, y + 1]
      + c[x + 1, y - 1]
      + 2 * c[x + 1, y]
      + c[x + 1, y + 1]
    ) / 12
    ixx, iyy, ixy = hl.Func("Ixx"), hl.Func("Iyy"), hl.Func("Ixy")
    ixx[x, y] = ix[x, y] * ix[x, y]
    iyy[x, y] = iy[x, y] * iy[x, y]
    ixy[x, y] = ix[x, y] * iy[x, y]

    def box(f):
      b = hl.Func()
      b[x, y] = sum(f[x + dx, y + dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
      return b

    sxx, syy, sxy = box(ixx), box(iyy), box(ixy)
    out = hl.Func("harris")
    det = sxx[x, y] * syy[x, y] - sxy[x, y] * sxy[x, y]
    tr = sxx[x, y] + syy[x, y]
    out[x, y] = det - hl.f32(0.04) * tr * tr

    def manual():
      out.split(y, y, yi, 32).parallel(y).vectorize(x, 8)
      iy.store_at(out, y).compute_at(out, yi).vectorize(x, 8)
      ix.store_at(out, y).compute_at(out, yi).vectorize(x, 8)

    return inp, out, manual
  if name == "unsharp":
    sigma, radius = 1.5, 3
    i = np.arange(-radius, radius + 1)
    w = np.exp(-(i * i) / (2 * sigma * sigma))
    w = (w / w.sum()).astype(np.float32)
    bx, by, out = hl.Func("blur_x"), hl.Func("blur_y"), hl.Func("unsharp")
    bx[x, y] = sum(float(w[j]) * c[x + int(i[j]), y] for j in range(len(i)))
    by[x, y] = sum(float(w[j]) * bx[x, y + int(i[j])] for j in range(len(i)))
    out[x, y] = 2 * c[x, y] - by[x, y]

    def manual():
      out.split(y, y, yi, 32).parallel(y).vectorize(x, 8)
      bx.store_at(out, y).compute_at(out, yi).vectorize(x, 8)

    return inp, out, manual
  if name == "histogram_equalize":
    i = hl.Var("i")
    r = hl.RDom([(0, inp.width()), (0, inp.height())])
    hist, cdf, out = hl.Func("hist"), hl.Func("cdf"), hl.Func("equalized")
    hist[i] = 0
    hist[hl.cast(hl.Int(32), inp[r.x, r.y])] += 1
    s = hl.RDom([(1, 255)])
    cdf[i] = hist[i]
    cdf[s.x] = cdf[s.x - 1] + hist[s.x]
    n = inp.width() * inp.height()
    out[x, y] = hl.cast(hl.UInt(8), cdf[hl.cast(hl.Int(32), inp[x, y])] * 255 / n)
    hist.set_estimates([(0, 256)])  # for the autoschedulers

    def manual():
      hist.compute_root()
      cdf.compute_root()
      out.split(y, y, yi, 64).parallel(y).vectorize(x, 16)

    return inp, out, manual
  raise ValueError(f"no Halide version of {name!r}")


def halide_fns(hl, name: str, data: np.ndarray) -> dict[str, Callable[[], object]]:
  """Compiled Halide pipelines (manual and autoscheduled) as zero-argument callables."""
  h, w = data.shape
  target = hl.get_jit_target_from_environment()
  out_dtype = np.uint8 if name == "histogram_equalize" else np.float32
  res = {}
  for sched in ("manual", "Mullapudi2016", "Adams2019"):
    try:
      inp, out, manual = halide_app(hl, name)
      inp.set_estimates([(0, w), (0, h)])
      out.set_estimates([(0, w), (0, h)])
      p = hl.Pipeline(out)
      if sched == "manual":
        manual()
      else:
        p.apply_autoscheduler(target, hl.AutoschedulerParams(sched, {"parallelism": "2"}))
      p.compile_jit(target)
      inp.set(hl.Buffer(data))
      buf = hl.Buffer(np.empty((h, w), out_dtype))
      res[f"halide {sched}"] = lambda p=p, buf=buf: p.realize(buf)
    except Exception as e:  # report and go on: one failing scheduler must not stop the run
      print(f"  halide {sched} failed for {name}: {str(e).splitlines()[0][:100]}")
  return res


# ----------------------------------------------------------------------------- OpenCV


def opencv_fn(name: str, data: np.ndarray):
  try:
    import cv2
  except ImportError:
    return None
  if name == "blur":
    return lambda: cv2.blur(data, (3, 3), borderType=cv2.BORDER_REPLICATE)
  if name == "unsharp":
    return lambda: 2 * data - cv2.GaussianBlur(data, (7, 7), 1.5, borderType=cv2.BORDER_REPLICATE)
  if name == "harris":
    return lambda: cv2.cornerHarris(data, 3, 3, 0.04, borderType=cv2.BORDER_REPLICATE)
  if name == "histogram_equalize":
    return lambda: cv2.equalizeHist(data)
  return None


# ----------------------------------------------------------------------------- main


def run(size: int, reps: int, names: list[str]) -> list[dict]:
  rng = np.random.default_rng(0)
  hl = _halide()
  rows = []
  for name in names:
    if name == "histogram_equalize":
      data = rng.integers(0, 256, (size, size), dtype=np.uint8)
    elif name == "camera_pipe":
      data = rng.integers(0, 1024, (size, size)).astype(np.uint16)
    else:
      data = rng.random((size, size), dtype=np.float32)
    x = jnp.asarray(data)
    fns: dict[str, Callable[[], object]] = {}
    app = apps.get_app(name)
    for sched in app.schedules["xla"]:
      fn = apps.make(name, sched).compile()
      fns[f"jaxsched {sched}"] = lambda fn=fn, x=x: fn(x)
    if name in JNP:
      jf = jax.jit(JNP[name])
      fns["plain jnp"] = lambda jf=jf, x=x: jf(x)
    if hl is not None and name in HALIDE_APPS:
      fns.update(halide_fns(hl, name, data))
    cv = opencv_fn(name, data)
    if cv is not None:
      fns["opencv"] = cv
    load0 = os.getloadavg()[0]
    stats = interleaved(fns, reps)
    load1 = os.getloadavg()[0]
    times = {k: v["median"] for k, v in stats.items()}
    default = f"jaxsched {app.default['xla']}"
    best_js = min((k for k in times if k.startswith("jaxsched")), key=times.get)
    hal = {k: v for k, v in times.items() if k.startswith("halide")}
    best_hl = min(hal.values()) if hal else float("nan")
    hal_min = min((v["min"] for k, v in stats.items() if k.startswith("halide")), default=np.nan)
    print(
      f"\n{name} ({size}x{size}, {reps} interleaved rounds, load {load0:.1f}->{load1:.1f}); "
      f"default = {default}, best jaxsched = {best_js}"
    )
    print(f"  {'':28s} {'median':>9s}  {'ratio':>7s} {'min':>9s}  {'ratio':>7s} {'cpu':>9s}")
    for k, v in sorted(stats.items(), key=lambda kv: kv[1]["median"]):
      print(
        f"  {k:28s} {v['median']:9.2f}  {v['median'] / best_hl:6.2f}x {v['min']:9.2f}  "
        f"{v['min'] / hal_min:6.2f}x {v['cpu']:9.2f}"
      )
    rows.append(
      {
        "app": name,
        "times": times,
        "stats": stats,
        "default": default,
        "best": best_js,
        "halide_best": best_hl,
        "load": (load0, load1),
      }
    )
  return rows


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", type=int, default=2048)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--apps", nargs="*", default=APP_NAMES, choices=APP_NAMES)
  args = ap.parse_args()
  run(args.size, args.reps, args.apps)


if __name__ == "__main__":
  main()
