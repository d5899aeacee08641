"""Measuring candidates: warm-up, repeats, median; crashes and hangs become recorded failures.

Candidates run in a worker process (``multiprocessing`` spawn) that is reused while it behaves,
because a fresh process that imports jax costs ~1-2 s. A candidate that raises is reported with
its traceback; one that kills its process (segfault, ``os._exit``, out of memory) or exceeds the
timeout gets its worker killed and replaced, and is reported as a failure. Tuning continues.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MeasureResult", "Measurer", "retain_freed_memory", "run_candidate"]


@dataclasses.dataclass(frozen=True)
class MeasureResult:
  """Outcome of one candidate: median seconds over ``times``, or ``error``."""

  config: Any
  times: tuple[float, ...] = ()
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None and bool(self.times)

  @property
  def median(self) -> float | None:
    return statistics.median(self.times) if self.ok else None

  @property
  def cost(self) -> float:
    """Median seconds, ``inf`` for a failure (what cost models and tuners consume)."""
    m = self.median
    return float("inf") if m is None else m


def _block(x: Any) -> None:
  # No jax in this process means no jax arrays to wait for (and no ~1 s import for nothing).
  jax = sys.modules.get("jax")
  if jax is not None:
    jax.block_until_ready(x)


def run_candidate(
  measure_fn: Callable[[Any], Callable[[], Any]],
  config: Any,
  *,
  warmup: int,
  repeats: int,
  min_time: float = 0.0,
) -> tuple[float, ...]:
  """Builds the candidate's thunk and times ``repeats`` blocked calls after ``warmup`` calls.

  With ``min_time`` > 0 each timed sample loops the thunk until it takes at least that long (for
  sub-millisecond candidates, where timer noise would dominate) and reports the per-call time.
  """
  thunk = measure_fn(config)
  for _ in range(warmup):
    _block(thunk())
  times = []
  for _ in range(repeats):
    n, start = 0, time.perf_counter()
    while True:
      _block(thunk())
      n += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_time:
        break
    times.append(elapsed / n)
  return tuple(times)


def _sync_dispatch() -> None:
  """Makes jax in this process run CPU executables on the calling thread. jax reads the flag
  when it creates its CPU client, so this must run before the candidate's first computation."""
  import jax  # noqa: PLC0415 - only workers that are asked to pay for the import

  jax.config.update("jax_cpu_enable_async_dispatch", False)


def retain_freed_memory(*, one_arena: bool = False) -> bool:
  """glibc: keep freed memory in this process's heap instead of returning it to the OS (what
  ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do). Returns whether it applied (not
  on other C libraries).

  XLA allocates its outputs on every call; with glibc's defaults a buffer above the mmap
  threshold (128 KB at first, rising with use to at most 32 MB) is fresh zero-filled pages on
  every call, and page faults in a VM cost 2-10 ms a call, swamping the kernel being timed (a
  2048^2 blur: 12 ms vs 2.5 ms), more in some processes than in others.

  ``one_arena``: every thread allocates from the main arena (``M_ARENA_MAX=1``). Worker-thread
  arenas are mmapped heaps of at most 64 MB, so larger blocks they serve are mmapped and given
  back on free whatever the thresholds say; but a single arena slows programs whose threads
  allocate concurrently (Halide's camera pipe: 8.4-11.4 vs 13.3-15.9 ms).
  """
  import ctypes  # noqa: PLC0415

  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
  ok = True
  if one_arena:
    ok &= bool(mallopt(m_arena_max, 1))
  ok &= bool(mallopt(m_mmap_threshold, 1 << 30))
  ok &= bool(mallopt(m_trim_threshold, 2**31 - 1))
  return ok


def _worker_main(
  conn: Any,
  measure_fn: Any,
  opts: dict[str, Any],
  sync_dispatch: bool = False,
  retain_memory: bool = False,
) -> None:
  if retain_memory:
    retain_freed_memory()
  if sync_dispatch:
    _sync_dispatch()
  conn.send(("ready", None))
  while True:
    try:
      msg = conn.recv()
    except EOFError:
      return
    if msg is None:
      return
    try:
      times = run_candidate(measure_fn, msg, **opts)
      conn.send(("ok", times))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the tuner
      conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"))


class Measurer:
  """Runs candidates and returns :class:`MeasureResult` objects.

  Args:
    measure_fn: ``measure_fn(config) -> thunk`` (see :class:`~jaxsched.tuning.space.Task`); with
      ``isolate=True`` it must be picklable (a module-level function).
    warmup: untimed calls first (compilation happens here).
    repeats: timed calls; the median is reported.
    timeout: seconds allowed per candidate (build + warm-up + repeats) before it counts as hung.
    isolate: run candidates in a worker process (default); ``False`` runs them in this process
      (no crash/hang protection; for cheap trusted candidates and tests).
    min_time: see :func:`run_candidate`.
    startup_timeout: seconds allowed for a fresh worker to start (importing jax is slow).
    sync_dispatch: workers run jax's CPU executables on the calling thread
      (``jax_cpu_enable_async_dispatch=False``). With jax's default dispatch threads, glibc
      serves their buffers from per-thread arenas whose heaps are at most 64 MB, so larger
      buffers are mmapped and unmapped on every call (thousands of page faults per call) in
      some processes and not in others: a candidate's time then depends on which worker
      measured it (docs/pipelines.md). Only for ``isolate=True`` (the caller's own process is
      left alone); it imports jax in the worker, so pass False for measure functions without
      jax.
    retain_memory: workers keep freed memory in their heap (:func:`retain_freed_memory`,
      glibc only), so a candidate's output buffers are not fresh pages on every call: the
      conditions ``bench/pipelines.py`` compares schedules under. Without it, page faults
      made the times of two measurements of the same 2048^2 schedules disagree in rank
      (docs/tuning.md). Only for ``isolate=True``.
  """

  def __init__(
    self,
    measure_fn: Callable[[Any], Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 3,
    timeout: float = 30.0,
    isolate: bool = True,
    min_time: float = 0.0,
    startup_timeout: float = 120.0,
    sync_dispatch: bool = True,
    retain_memory: bool = True,
  ):
    if repeats < 1 or warmup < 0:
      raise ValueError(f"{repeats=} must be >= 1 and {warmup=} >= 0")
    if timeout <= 0:
      raise ValueError(f"{timeout=} must be positive")
    self.measure_fn = measure_fn
    self.opts = {"warmup": int(warmup), "repeats": int(repeats), "min_time": float(min_time)}
    self.timeout = float(timeout)
    self.isolate = isolate
    self.startup_timeout = float(startup_timeout)
    self.sync_dispatch = bool(sync_dispatch)
    self.retain_memory = bool(retain_memory)
    self._proc: Any = None
    self._conn: Any = None
    self.workers_started = 0

  # Worker lifecycle ------------------------------------------------------------------------------

  def _start(self) -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
      target=_worker_main,
      args=(child, self.measure_fn, self.opts, self.sync_dispatch, self.retain_memory),
      daemon=True,
    )
    try:
      proc.start()
    except (pickle.PicklingError, AttributeError, TypeError) as e:
      parent.close()
      child.close()
      raise ValueError(
        f"measure_fn={self.measure_fn!r} cannot be sent to a worker process ({e}); pass a "
        "module-level function, or isolate=False to measure in this process"
      ) from e
    child.close()
    self.workers_started += 1
    if not parent.poll(self.startup_timeout):
      proc.kill()
      proc.join()
      raise RuntimeError(f"measure worker did not start within {self.startup_timeout=} s")
    try:
      parent.recv()
    except EOFError:
      proc.join()
      raise RuntimeError(
        f"measure worker died on start-up (exit code {proc.exitcode}); is {self.measure_fn!r} "
        "importable from a fresh process? Workers are spawned and re-import the main module: "
        "a script that measures needs an `if __name__ == '__main__':` guard"
      ) from None
    self._proc, self._conn = proc, parent

  def _kill(self) -> None:
    if self._proc is not None:
      self._proc.kill()
      self._proc.join()
      self._conn.close()
    self._proc = self._conn = None

  def close(self) -> None:
    """Stops the worker process (if any)."""
    if self._proc is not None and self._proc.is_alive():
      try:
        self._conn.send(None)
        self._proc.join(timeout=5)
      except (BrokenPipeError, OSError):
        pass
    self._kill()

  def __enter__(self) -> Measurer:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def __del__(self) -> None:
    try:
      self._kill()
    except Exception:  # noqa: BLE001 - interpreter shutdown
      pass

  # Measuring -------------------------------------------------------------------------------------

  def measure(self, configs: Sequence[Any]) -> list[MeasureResult]:
    """Measures each config in turn; failures are results with ``error`` set."""
    return [self._measure_one(c) for c in configs]

  def _measure_one(self, config: Any) -> MeasureResult:
    if not self.isolate:
      try:
        return MeasureResult(config, run_candidate(self.measure_fn, config, **self.opts))
      except Exception as e:  # noqa: BLE001 - a failing candidate is data, not a tuner crash
        return MeasureResult(config, error=f"{type(e).__name__}: {e}")
    if self._proc is None or not self._proc.is_alive():
      self._kill()
      self._start()
    try:
      self._conn.send(config)
    except (BrokenPipeError, OSError) as e:
      self._kill()
      return MeasureResult(config, error=f"could not send candidate to worker: {e}")
    if not self._conn.poll(self.timeout):
      self._kill()
      return MeasureResult(config, error=f"timeout: no result within {self.timeout:g} s (killed)")
    try:
      status, payload = self._conn.recv()
    except (EOFError, OSError):
      self._proc.join(timeout=5)
      code = self._proc.exitcode
      self._kill()
      return MeasureResult(config, error=f"worker crashed (exit code {code})")
    if status == "ok":
      return MeasureResult(config, tuple(payload))
    return MeasureResult(config, error=str(payload))
