"""Measurer: median of repeats; raising, hanging and crashing candidates become failures."""

import time

import pytest
from _tuning_workloads import dispatch_flag, freed_memory_kept, misbehaving

from jaxsched.tuning import Measurer
from jaxsched.tuning.measure import run_candidate


def test_run_candidate_times_each_call():
  calls = []

  def build(config):
    def thunk():
      calls.append(1)
      time.sleep(config["sleep"])

    return thunk

  times = run_candidate(build, {"sleep": 0.01}, warmup=2, repeats=3)
  assert len(calls) == 5 and len(times) == 3
  assert all(0.009 <= t < 0.5 for t in times)


def test_isolated_worker_records_failures_and_continues():
  modes = ["ok", "raise", "hang", "ok", "crash", "ok"]
  with Measurer(misbehaving, warmup=1, repeats=3, timeout=1.5) as m:
    start = time.perf_counter()
    results = m.measure([{"mode": mode} for mode in modes])
    elapsed = time.perf_counter() - start
    started = m.workers_started
  assert [r.ok for r in results] == [True, False, False, True, False, True]
  assert "ValueError: bad tile {'mode': 'raise'}" in results[1].error
  assert "timeout" in results[2].error and "1.5 s" in results[2].error
  assert "crashed (exit code 3)" in results[4].error
  assert all(r.median is not None and r.median < 0.1 for r in results if r.ok)
  assert [r.cost == float("inf") for r in results] == [not r.ok for r in results]
  assert started == 3  # One worker, replaced after the hang and after the crash.
  # Three worker starts (each imports jaxsched) plus one 1.5 s hang: generous for a loaded
  # 2-core CI machine, still far below the 3600 s the hanging candidate would take.
  assert elapsed < 90


def test_workers_dispatch_synchronously_unless_told_otherwise():
  """Workers run jax on the calling thread by default (no dispatch-thread page faults); the
  option restores jax's default. The caller's own jax is left as it was."""
  import jax

  before = jax.config.values["jax_cpu_enable_async_dispatch"]
  with Measurer(dispatch_flag, repeats=1) as m:
    sync = m.measure([{"want": False}, {"want": True}])
  with Measurer(dispatch_flag, repeats=1, sync_dispatch=False) as m:
    default = m.measure([{"want": True}])
  assert [r.ok for r in sync] == [True, False] and default[0].ok, (sync, default)
  assert "jax_cpu_enable_async_dispatch=False, wanted True" in sync[1].error
  assert jax.config.values["jax_cpu_enable_async_dispatch"] == before


def test_workers_keep_freed_memory_unless_told_otherwise():
  """Workers keep freed buffers in their heap by default (a candidate's outputs are not fresh
  pages on every call); the option restores glibc's default of unmapping large blocks."""
  with Measurer(freed_memory_kept, repeats=1, sync_dispatch=False) as m:
    kept = m.measure([{"want": True}, {"want": False}])
  with Measurer(freed_memory_kept, repeats=1, sync_dispatch=False, retain_memory=False) as m:
    default = m.measure([{"want": False}])
  assert [r.ok for r in kept] == [True, False] and default[0].ok, (kept, default)
  assert "freed memory kept=True, wanted False" in kept[1].error


def test_in_process_mode_and_bad_arguments():
  results = Measurer(misbehaving, isolate=False, repeats=2).measure([{"mode": "raise"},
                                                                     {"mode": "ok"}])
  assert not results[0].ok and "bad tile" in results[0].error
  assert results[1].ok and len(results[1].times) == 2
  with pytest.raises(ValueError, match="repeats=0"):
    Measurer(misbehaving, repeats=0)
  with pytest.raises(ValueError, match="timeout=0"):
    Measurer(misbehaving, timeout=0)
  with pytest.raises(ValueError, match="cannot be sent to a worker process"):
    Measurer(lambda c: (lambda: None)).measure([{}])


def test_unguarded_script_gets_a_message_naming_the_main_guard(tmp_path):
  # Spawned workers re-import the main module; without a __main__ guard the worker dies.
  import subprocess
  import sys

  script = tmp_path / "unguarded.py"
  script.write_text(
    "from jaxsched.tuning import Measurer\n"
    "def fn(config):\n"
    "  return lambda: None\n"
    "Measurer(fn, repeats=1, warmup=0).measure([{}])\n"
  )
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "needs an `if __name__ == '__main__':` guard" in out.stderr
