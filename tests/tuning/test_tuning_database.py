"""TuningDatabase: records, best, lookup, JSON, corruption, killed and concurrent writers."""

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxsched.tuning import database as dbm

_HELPER = str(Path(__file__).with_name("_tuning_workloads.py"))
_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
WL = dbm.workload_key("matmul", shapes=[(8, 16), (16, 4)], dtypes=["float32", "float32"])


def _writer(path, workload, n, delay):
  return subprocess.Popen(
    [sys.executable, _HELPER, str(path), workload, str(n), str(delay)],
    stdout=subprocess.PIPE, text=True, env=_ENV,
  )


def test_records_best_and_lookup(tmp_path):
  path = tmp_path / "t.sqlite"
  assert dbm.lookup_best_config("matmul", WL, "cpu:x", db=path) is None
  assert not path.exists()  # A lookup never creates the file.
  db = dbm.TuningDatabase(path)
  times = {1: 0.5, 2: None, 3: 0.2, 4: 0.9}
  for b, t in times.items():
    db.add(workload=WL, target="cpu:x", config={"block": b}, time=t,
           error=None if t is not None else "boom", features=[b, 2 * b],
           shapes=[(8, 16), (16, 4)], dtypes=["float32", "float32"])
  db.add(workload=WL, target="gpu:y", config={"block": 4}, time=0.01)
  assert len(db) == 5
  best = db.best(WL, "cpu:x", k=2)
  assert [r.config for r in best] == [{"block": 3}, {"block": 1}]
  assert best[0].shapes == [[8, 16], [16, 4]] and best[0].features == [3.0, 6.0]
  assert best[0].jax_version and best[0].jaxsched_version
  failed = [r for r in db.records(WL, "cpu:x") if not r.ok]
  assert [(r.config, r.error) for r in failed] == [({"block": 2}, "boom")]
  key = {"shapes": [(8, 16), (16, 4)], "dtypes": ["float32", "float32"]}
  assert dbm.lookup_best_config("matmul", key, "cpu:x", db=path) == {"block": 3}
  assert dbm.lookup_best_config("matmul", key, "gpu:y", db=path) == {"block": 4}
  assert dbm.lookup_best_config("conv", key, "cpu:x", db=path) is None
  with pytest.raises(ValueError, match="time=-1"):
    db.add(workload=WL, target="cpu:x", config={}, time=-1.0)


def test_default_path_env_and_json_roundtrip(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXSCHED_TUNING_DB", str(tmp_path / "env.sqlite"))
  assert dbm.default_db_path() == tmp_path / "env.sqlite"
  monkeypatch.delenv("JAXSCHED_TUNING_DB")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  if sys.platform.startswith("linux"):
    assert dbm.default_db_path() == tmp_path / "cache" / "jaxsched" / "tuning.sqlite"
  a = dbm.TuningDatabase(tmp_path / "a.sqlite")
  for i in range(3):
    a.add(workload=WL, target="cpu:x", config={"i": i}, time=0.1 * (i + 1))
  assert a.export_json(tmp_path / "r.json") == 3
  assert json.loads((tmp_path / "r.json").read_text())["records"][0]["config"] == {"i": 0}
  b = dbm.TuningDatabase(tmp_path / "b.sqlite")
  assert b.import_json(tmp_path / "r.json") == 3
  assert b.import_json(tmp_path / "r.json") == 3  # Same keys: replaced, not duplicated.
  assert len(b) == 3
  assert [r.config for r in b.best(WL, "cpu:x", k=3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(dbm.TuningDatabaseError, match="not a jaxsched tuning export"):
    b.import_json(tmp_path / "bad.json")


def test_corrupted_and_foreign_files_get_clear_errors(tmp_path):
  bad = tmp_path / "garbage.sqlite"
  # Seeded noise: deterministic, and never a valid SQLite header.
  bad.write_bytes(random.Random(0).randbytes(4096))
  with pytest.raises(dbm.TuningDatabaseError, match="garbage.sqlite"):
    dbm.TuningDatabase(bad)
  foreign = tmp_path / "foreign.sqlite"
  with sqlite3.connect(foreign) as c:
    c.execute("CREATE TABLE t (x)")
  with pytest.raises(dbm.TuningDatabaseError, match="foreign.sqlite.*foreign SQLite"):
    dbm.TuningDatabase(foreign)
  good = tmp_path / "good.sqlite"
  dbm.TuningDatabase(good).close()
  data = bytearray(good.read_bytes())
  data[:16] = b"not sqlite at al"  # Clobbered header.
  good.write_bytes(bytes(data))
  with pytest.raises(dbm.TuningDatabaseError, match="good.sqlite"):
    dbm.TuningDatabase(good)


def test_killed_writer_loses_no_committed_record(tmp_path):
  path = tmp_path / "k.sqlite"
  dbm.TuningDatabase(path).close()
  proc = _writer(path, WL, 10_000, 0.002)
  # Watchdog: a stuck writer must fail the test, not hang it (jax import is slow under load).
  watchdog = threading.Timer(120, proc.kill)
  watchdog.start()
  done = []
  try:
    for line in proc.stdout:
      done.append(int(line))
      if len(done) == 40:
        break
  finally:
    watchdog.cancel()
  assert done == list(range(40)), "writer died or stalled before committing 40 records"
  proc.kill()  # SIGKILL mid-run: no cleanup, no final commit.
  proc.wait()
  assert proc.returncode != 0
  recs = dbm.TuningDatabase(path).records(WL, "cpu:test")
  got = {r.config["i"] for r in recs}
  assert set(done) <= got
  assert got == set(range(len(got)))  # Only whole records, in order, no gaps.
  assert all(r.time == 1.0 + r.config["i"] for r in recs)


def test_two_concurrent_writer_processes(tmp_path):
  path = tmp_path / "c.sqlite"  # Both processes create the file at once.
  procs = [_writer(path, f"{WL}|p={p}", 300, 0.0) for p in range(2)]
  start = time.time()
  for p in procs:
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
  db = dbm.TuningDatabase(path)
  for p in range(2):
    recs = db.records(f"{WL}|p={p}", "cpu:test")
    assert sorted(r.config["i"] for r in recs) == list(range(300))
  # Generous: each writer imports jax first, and CI runs this on a loaded 2-core machine.
  assert time.time() - start < 55


def test_opening_a_file_another_connection_holds_locked_waits_then_errors_clearly(tmp_path):
  """A file locked by another tuner is contention, not corruption: opening waits for the lock,
  and a lock held past the timeout gets an error saying so (it used to be reported as "not a
  readable jaxsched tuning database"). The race this guards against, two processes switching a
  new file to WAL at once, is exercised by test_two_concurrent_writer_processes."""
  import sqlite3
  import threading

  path = tmp_path / "locked.sqlite"
  other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
  other.execute("BEGIN EXCLUSIVE")
  with pytest.raises(dbm.TuningDatabaseError, match="locked by another connection"):
    dbm.TuningDatabase(path, timeout=0.3)
  threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
  db = dbm.TuningDatabase(path, timeout=20)
  db.add(workload=WL, target="cpu:x", config={"i": 1}, time=1.0)
  assert len(db) == 1
  other.close()
