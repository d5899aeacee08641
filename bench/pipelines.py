"""Benchmark jaxsched pipelines (XLA backend) against Halide, plain jnp and OpenCV.

One process, 2048x2048 by default. For each app: jaxsched's default schedule and the best of
its named schedules, Halide with a manual schedule and with the Mullapudi2016 and Adams2019
autoschedulers (pip ``halide``, through :mod:`bench.halide_peers`, the same Halide code the
Halide oracle tests use), plain jitted jnp and OpenCV where they have a counterpart. Prints
median ms and the ratio to Halide's best; an autoscheduler that fails for an app gets its reason
in the table instead of a time. The Halide compile time (schedule + JIT) of every schedule is
printed once per app (Adams2019 takes minutes on bilateral_grid and local_laplacian; skip it with
``--schedules manual mullapudi2016``).

All candidates of an app run interleaved (one call of each per round, ``--reps`` rounds), so a
burst of load from other processes hits them alike; the ratio uses medians of the same rounds.
Also printed: the fastest round (closest to an idle machine), the median process CPU time per
call, and the load average. Halide callables write into an output array allocated once before
timing (as Halide's own benchmarks do); jaxsched, jnp and OpenCV return fresh arrays.

Before timing, jaxsched's output (default schedule) is compared with every Halide candidate's on
the benchmark input; a mismatch raises :class:`OutputMismatchError` (``--mismatch warn`` only
prints it). The two implementations are written independently, so the check pins the apps'
conventions; where they differ, the bench adapts inputs and parameters (see :data:`PEERS`):

- unsharp: both at ``sigma = 1.0``, since Halide's peer uses radius ``ceil(3 sigma)`` and
  jaxsched's default radius is 3 (jaxsched's default ``sigma = 1.5`` has no Halide equal; the
  work per pixel, 7 taps, is the same).
- histogram_equalize: Halide's ``histogram_u8`` peer is jaxsched's (uint8 in, ``cdf[v] * 255 //
  n`` as uint8 out) and must match exactly.
- local_laplacian: Halide's peer clamps the output to [0, 1], jaxsched's does not (random input
  leaves [0, 1]); jaxsched's output is compared after clipping.
- camera_pipe: Halide's ``camera_pipe_grbg`` peer is jaxsched's algorithm (GRBG, hot-pixel
  clipping, uint8 gamma LUT) and must match exactly; it takes the uint16 raw as float32 and
  returns the uint8 values as float32 (more bytes than jaxsched moves, which favours jaxsched).
  halide_peers' other ``camera_pipe`` (RGGB, float curve) is not used here.

Timing hygiene (both on by default, both printed in the header): ``--settle`` pauses 20 ms
before each timed call, so worker threads still spinning after the previous candidate's parallel
job (XLA's, Halide's and OpenCV's pools all spin a while) do not steal a core; ``--allocator
retain`` makes glibc keep freed memory (``mallopt``, for the whole process) so that per-call
16 MB buffers do not cost fresh page faults, which in this VM swamp the kernels (blur 12 ms vs
2.5 ms). ``--allocator default --settle 0`` measures glibc's defaults back to back.
``--burst N`` makes each candidate's turn N back-to-back calls and times the last: a call in a
loop, with the candidate's own worker threads awake. XLA splits each parallel loop into one
fixed part per core, so a call after an idle pause waits for the sleeping core to wake (harris
4.7 ms back to back, 7.9 ms median after a 20 ms pause); Halide's work-stealing loops do not.

  JAX_PLATFORMS=cpu python bench/pipelines.py [--size 2048] [--reps 10] [--apps blur harris]
      [--schedules manual mullapudi2016 adams2019] [--mismatch raise|warn]
      [--settle 0.02] [--burst 1] [--allocator retain|retain-one-arena|default]
      [--async-dispatch]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.pipelines import apps
from jaxsched.tuning.measure import retain_freed_memory

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
  from bench import halide_peers
except ImportError as e:  # no pip halide: the bench still runs without the Halide columns
  print(f"Halide columns disabled: {e}")
  halide_peers = None

APP_NAMES = [
  "blur",
  "harris",
  "unsharp",
  "histogram_equalize",
  "bilateral_grid",
  "local_laplacian",
  "camera_pipe",
]
HALIDE_SCHEDULES = ("manual", "mullapudi2016", "adams2019")
# Halide's peer takes radius ceil(3 sigma): sigma 1.0 matches jaxsched's radius 3 (module doc).
UNSHARP_SIGMA = 1.0
# jaxsched build kwargs of the benchmarked apps (defaults unless a Halide convention needs more).
JAXSCHED_KWARGS: dict[str, dict[str, Any]] = {"unsharp": {"radius": 3, "sigma": UNSHARP_SIGMA}}


class OutputMismatchError(AssertionError):
  """jaxsched and a Halide candidate disagree on the benchmark input."""


def timeit(fn: Callable[[], object], reps: int) -> float:
  """Median wall time in ms over ``reps`` runs after one warm-up."""
  jax.block_until_ready(fn())
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return float(np.median(ts) * 1e3)


# Pause before each timed call: XLA's, Halide's and OpenCV's worker threads spin for a while
# after a parallel job, and would otherwise steal a core from whichever candidate runs next
# (seen: jaxsched's blur at 5.8 ms median right after OpenCV, 2.3 ms with the pause).
SETTLE_S = 0.02


def interleaved(
  fns: dict[str, Callable[[], object]], reps: int, settle: float = SETTLE_S, burst: int = 1
) -> dict[str, dict[str, float]]:
  """Per candidate: median and min wall ms, median CPU ms, over ``reps`` interleaved rounds
  (``settle`` seconds of pause before each candidate's turn). With ``burst > 1`` a turn is
  ``burst`` back-to-back calls of which the last is timed: a call in a loop, with the
  candidate's own worker threads awake (XLA splits a parallel loop into one fixed part per
  core, so the first call after an idle pause waits for a sleeping core to wake; Halide's
  work-stealing loop does not)."""
  for fn in fns.values():  # warm-up (compilation) and a second call for caches
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  wall: dict[str, list[float]] = {k: [] for k in fns}
  cpu: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      if settle:
        time.sleep(settle)
      for _ in range(burst - 1):
        jax.block_until_ready(fn())
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


def jnp_unsharp(x, sigma=UNSHARP_SIGMA, radius=3):
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


def _float_mismatch(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
  """float32 agreement up to rounding (summation order differs between schedules)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    return False, f"shape {got.shape} != Halide's {want.shape}"
  scale = float(np.max(np.abs(want))) or 1.0
  err = np.abs(got - want)
  bad = err > 1e-4 * np.abs(want) + 1e-5 * scale
  msg = f"max |diff| {err.max():.2e} (max |out| {scale:.3g})"
  if bad.any():
    idx = tuple(int(v) for v in np.argwhere(bad)[0])
    msg += f", {int(bad.sum())} elements off, first at {idx}: {got[idx]} vs {want[idx]}"
  return not bad.any(), msg


def _clipped_mismatch(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
  got = np.asarray(got)
  ok, msg = _float_mismatch(np.clip(got, 0, 1), want)
  return ok, f"jaxsched range [{got.min():.3f}, {got.max():.3f}] clipped to [0, 1]; {msg}"


def _uint8_mismatch(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
  """jaxsched's uint8 output against Halide's uint8 values (held in float32 or uint8), exactly."""
  got = np.asarray(got)
  if got.dtype != np.uint8 or got.shape != want.shape:
    return False, f"jaxsched returned {got.dtype} {got.shape}, expected uint8 {want.shape}"
  off = int(np.count_nonzero(got != want.astype(np.uint8)))
  return off == 0, f"{off} of {got.size} values differ"


@dataclasses.dataclass(frozen=True)
class HalidePeer:
  """How a jaxsched app maps onto its :mod:`bench.halide_peers` app.

  Attributes:
    app: the halide_peers app name.
    params: halide_peers parameters that make it the jaxsched app's algorithm.
    to_halide: the bench input (jaxsched's convention) -> the Halide peer's input.
    compare: ``(jaxsched out, Halide out) -> (equal, description)``.
  """

  app: str
  params: Mapping[str, Any]
  to_halide: Callable[[np.ndarray], np.ndarray]
  compare: Callable[[np.ndarray, np.ndarray], tuple[bool, str]]


def _f32(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(a, np.float32)


PEERS: dict[str, HalidePeer] = {
  "blur": HalidePeer("blur", {}, _f32, _float_mismatch),
  "harris": HalidePeer("harris", {}, _f32, _float_mismatch),
  "unsharp": HalidePeer("unsharp", {"sigma": UNSHARP_SIGMA, "amount": 1.0}, _f32, _float_mismatch),
  "histogram_equalize": HalidePeer("histogram_u8", {}, np.ascontiguousarray, _uint8_mismatch),
  "bilateral_grid": HalidePeer(
    "bilateral_grid", {"s_sigma": 8, "r_sigma": 0.1}, _f32, _float_mismatch
  ),
  "local_laplacian": HalidePeer(
    "local_laplacian",
    {"levels": 8, "pyramid_levels": 8, "alpha": 1.0, "beta": 1.0},
    _f32,
    _clipped_mismatch,
  ),
  "camera_pipe": HalidePeer("camera_pipe_grbg", {"gamma": 2.2}, _f32, _uint8_mismatch),
}


class HalideCandidates(NamedTuple):
  """The Halide side of one app, keyed ``"halide <schedule>"`` (compile times by schedule)."""

  fns: dict[str, Callable[[], object]]  # zero-argument; each writes into a preallocated output
  outputs: dict[str, np.ndarray]  # their outputs on the benchmark input
  failures: dict[str, str]  # why an autoscheduler failed
  compile_s: dict[str, float]  # schedule + JIT seconds


def halide_candidates(name: str, data: np.ndarray, schedules: tuple[str, ...]) -> HalideCandidates:
  """Compiles the Halide peers of app ``name`` for ``data`` (in jaxsched's input convention)."""
  peer = PEERS[name]
  img = peer.to_halide(data)
  fns, outs, failures, compile_s = {}, {}, {}, {}
  for sched in schedules:
    key = f"halide {sched}"
    t = time.perf_counter()
    try:
      fn = halide_peers.compile_app(peer.app, img.shape, schedule=sched, **peer.params)
    except halide_peers.ScheduleUnavailableError as e:
      failures[key] = str(e).splitlines()[0]
      continue
    finally:
      compile_s[sched] = time.perf_counter() - t
    out = fn(img)  # allocated once; every timed call writes into it
    outs[key] = out.copy()
    fns[key] = lambda fn=fn, img=img, out=out: fn(img, out)
  return HalideCandidates(fns, outs, failures, compile_s)


def check_against_halide(
  name: str, got: np.ndarray, outs: dict[str, np.ndarray], mismatch: str = "raise"
) -> list[str]:
  """Prints how jaxsched's output compares with each Halide output; raises on a mismatch.

  Args:
    name: the jaxsched app.
    got: jaxsched's output on the benchmark input.
    outs: Halide outputs by candidate name.
    mismatch: ``"raise"`` (:class:`OutputMismatchError`) or ``"warn"`` (print only).

  Returns:
    The candidates that mismatch (empty when all agree).
  """
  if mismatch not in ("raise", "warn"):
    raise ValueError(f"{mismatch=} must be 'raise' or 'warn'")
  peer = PEERS[name]
  got = np.asarray(got)
  bad = []
  for k, want in outs.items():
    ok, msg = peer.compare(got, want)
    status = "ok" if ok else "MISMATCH"
    print(f"  check jaxsched vs {k}: {status}, {msg}")
    if not ok:
      bad.append(k)
  if bad and mismatch == "raise":
    raise OutputMismatchError(f"{name}: jaxsched's output differs from {bad} (see above)")
  return bad


# ----------------------------------------------------------------------------- OpenCV


def opencv_fn(name: str, data: np.ndarray):
  try:
    import cv2
  except ImportError:
    return None
  if name == "blur":
    return lambda: cv2.blur(data, (3, 3), borderType=cv2.BORDER_REPLICATE)
  if name == "unsharp":
    return lambda: (
      2 * data - cv2.GaussianBlur(data, (7, 7), UNSHARP_SIGMA, borderType=cv2.BORDER_REPLICATE)
    )
  if name == "harris":
    return lambda: cv2.cornerHarris(data, 3, 3, 0.04, borderType=cv2.BORDER_REPLICATE)
  if name == "histogram_equalize":
    return lambda: cv2.equalizeHist(data)
  return None


# ----------------------------------------------------------------------------- main


def bench_input(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
  """The benchmark input in jaxsched's convention for app ``name``."""
  if name == "histogram_equalize":
    return rng.integers(0, 256, (size, size), dtype=np.uint8)
  if name == "camera_pipe":
    return rng.integers(0, 1024, (size, size)).astype(np.uint16)
  return rng.random((size, size), dtype=np.float32)


def run(
  size: int,
  reps: int,
  names: list[str],
  schedules: tuple[str, ...] = HALIDE_SCHEDULES,
  mismatch: str = "raise",
  settle: float = SETTLE_S,
  burst: int = 1,
) -> list[dict]:
  """Benchmarks ``names`` at ``size`` x ``size``; prints a table per app and returns the rows.

  Raises:
    OutputMismatchError: with ``mismatch="raise"``, when jaxsched and a Halide candidate differ.
  """
  rng = np.random.default_rng(0)
  rows = []
  for name in names:
    data = bench_input(name, size, rng)
    x = jnp.asarray(data)
    fns: dict[str, Callable[[], object]] = {}
    app = apps.get_app(name)
    kwargs = JAXSCHED_KWARGS.get(name, {})
    for sched in app.schedules["xla"]:
      fn = apps.make(name, sched, **kwargs).compile()
      fns[f"jaxsched {sched}"] = lambda fn=fn, x=x: fn(x)
    default = f"jaxsched {app.default['xla']}"
    print(f"\n{name} ({size}x{size})")
    failures: dict[str, str] = {}
    if halide_peers is not None and schedules:
      hl_fns, hl_outs, failures, compile_s = halide_candidates(name, data, schedules)
      print(
        "  halide schedule + JIT compile: "
        + ", ".join(f"{s} {t:.1f} s" for s, t in compile_s.items())
      )
      check_against_halide(name, np.asarray(fns[default]()), hl_outs, mismatch)
      fns.update(hl_fns)
    if name in JNP:
      jf = jax.jit(JNP[name])
      fns["plain jnp"] = lambda jf=jf, x=x: jf(x)
    cv = opencv_fn(name, data)
    if cv is not None:
      fns["opencv"] = cv
    load0 = os.getloadavg()[0]
    stats = interleaved(fns, reps, settle, burst)
    load1 = os.getloadavg()[0]
    times = {k: v["median"] for k, v in stats.items()}
    best_js = min((k for k in times if k.startswith("jaxsched")), key=times.get)
    hal = {k: v for k, v in times.items() if k.startswith("halide")}
    best_hl = min(hal.values()) if hal else float("nan")
    hal_min = min((v["min"] for k, v in stats.items() if k.startswith("halide")), default=np.nan)
    print(
      f"  {reps} interleaved rounds, load {load0:.1f}->{load1:.1f}; "
      f"default = {default}, best jaxsched = {best_js}"
    )
    print(f"  {'':28s} {'median':>9s}  {'ratio':>7s} {'min':>9s}  {'ratio':>7s} {'cpu':>9s}")
    for k, v in sorted(stats.items(), key=lambda kv: kv[1]["median"]):
      print(
        f"  {k:28s} {v['median']:9.2f}  {v['median'] / best_hl:6.2f}x {v['min']:9.2f}  "
        f"{v['min'] / hal_min:6.2f}x {v['cpu']:9.2f}"
      )
    for k, reason in failures.items():
      print(f"  {k:28s} unavailable: {reason[:160]}")
    rows.append(
      {
        "app": name,
        "times": times,
        "stats": stats,
        "default": default,
        "best": best_js,
        "halide_best": best_hl,
        "halide_failures": failures,
        "load": (load0, load1),
      }
    )
  return rows


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", type=int, default=2048)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--apps", nargs="*", default=APP_NAMES, choices=APP_NAMES)
  ap.add_argument(
    "--schedules",
    nargs="*",
    default=list(HALIDE_SCHEDULES),
    choices=HALIDE_SCHEDULES,
    help="Halide schedules to compile and time (none: no Halide columns)",
  )
  ap.add_argument("--mismatch", default="raise", choices=("raise", "warn"))
  ap.add_argument(
    "--settle", type=float, default=SETTLE_S, help="seconds of pause before each candidate's turn"
  )
  ap.add_argument(
    "--burst",
    type=int,
    default=1,
    help="back-to-back calls per candidate turn, the last one timed (1: one cold call)",
  )
  ap.add_argument(
    "--allocator",
    default="retain",
    choices=("retain", "retain-one-arena", "default"),
    help="retain: glibc keeps freed memory (see retain_freed_memory); retain-one-arena: the "
    "same with one malloc arena for all threads; default: glibc's defaults",
  )
  ap.add_argument(
    "--async-dispatch",
    action="store_true",
    help="run jaxsched's XLA executables on JAX's CPU dispatch threads (JAX's default)",
  )
  args = ap.parse_args()
  if args.allocator.startswith("retain"):
    retain_freed_memory(one_arena=args.allocator == "retain-one-arena")
  # XLA CPU allocates an executable's buffers on the thread that runs it. On JAX's dispatch
  # threads (per-thread malloc arenas) blocks above 64 MB are fresh mmapped pages every call:
  # in about half of the processes the camera pipe took ~8,200 minor page faults a call and
  # ran at 21-27 ms instead of 14-16 ms (2026-11-25: 3 of 6 processes; with synchronous
  # dispatch 0 of 8). Halide runs on its own threads either way.
  jax.config.update("jax_cpu_enable_async_dispatch", bool(args.async_dispatch))
  if args.burst < 1:
    ap.error(f"--burst {args.burst} must be >= 1")
  print(
    f"allocator={args.allocator} settle={args.settle}s burst={args.burst} "
    f"async_dispatch={args.async_dispatch}"
  )
  run(
    args.size, args.reps, args.apps, tuple(args.schedules), args.mismatch, args.settle, args.burst
  )


if __name__ == "__main__":
  main()
