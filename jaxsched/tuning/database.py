"""Persistent tuning records in SQLite, and the cheap best-config lookup kernels consult.

One row per measured config: workload key, target (device kind), shapes, dtypes, jaxsched and jax
versions, the config as canonical JSON, its features, and the median time in seconds (or the
error string of a failed candidate). The file is opened in WAL mode with a busy timeout, and every
record is committed on its own, so concurrent tuners can share a file and a killed tuner loses no
finished record.

This module imports neither jax nor the tuner, so kernels can call :func:`lookup_best_config` at
trace time for ``config=None``.

Default location: ``$JAXSCHED_TUNING_DB``, else ``<user cache dir>/jaxsched/tuning.sqlite``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
  "Record",
  "TuningDatabase",
  "TuningDatabaseError",
  "current_target",
  "default_db_path",
  "lookup_best_config",
  "workload_key",
]

_SCHEMA_VERSION = 1
_APP_ID = 0x4A585344  # "JXSD": marks the file as a jaxsched tuning database.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  op TEXT NOT NULL,
  workload TEXT NOT NULL,
  target TEXT NOT NULL,
  shapes TEXT NOT NULL,
  dtypes TEXT NOT NULL,
  jaxsched_version TEXT NOT NULL,
  jax_version TEXT NOT NULL,
  config TEXT NOT NULL,
  features TEXT,
  time REAL,
  error TEXT,
  timestamp REAL NOT NULL,
  UNIQUE (workload, target, config, jaxsched_version, jax_version)
);
CREATE INDEX IF NOT EXISTS records_lookup ON records (op, workload, target, time);
"""


class TuningDatabaseError(RuntimeError):
  """The tuning database file is unreadable, corrupted, or not a jaxsched database."""


def default_db_path() -> Path:
  """``$JAXSCHED_TUNING_DB``, else the platform's user cache dir + ``jaxsched/tuning.sqlite``."""
  env = os.environ.get("JAXSCHED_TUNING_DB")
  if env:
    return Path(env).expanduser()
  if sys.platform == "win32":
    base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
  elif sys.platform == "darwin":
    base = Path.home() / "Library" / "Caches"
  else:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
  return base / "jaxsched" / "tuning.sqlite"


def current_target() -> str:
  """The local device kind, e.g. ``"gpu:NVIDIA H100 80GB HBM3"`` or ``"cpu:<cpu model>"``."""
  import jax

  dev = jax.devices()[0]
  kind = dev.device_kind
  if dev.platform == "cpu":
    # "cpu" alone would mix records of different machines; the CPU model tells them apart.
    try:
      with open("/proc/cpuinfo") as f:
        for line in f:
          if line.startswith("model name"):
            kind = line.split(":", 1)[1].strip()
            break
    except OSError:
      pass
  return f"{dev.platform}:{kind}"


def _canonical(obj: Any) -> str:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def workload_key(
  op: str,
  *,
  shapes: Sequence[Sequence[int]] = (),
  dtypes: Sequence[str] = (),
  **params: Any,
) -> str:
  """Canonical workload key: ``op|shapes=...|dtypes=...|k=v`` (params sorted by name)."""
  if not op or "|" in op:
    raise ValueError(f"{op=} must be a non-empty name without '|'")
  parts = [
    op,
    "shapes=" + _canonical([list(map(int, s)) for s in shapes]),
    "dtypes=" + _canonical([str(d) for d in dtypes]),
  ]
  parts += [f"{k}={_canonical(params[k])}" for k in sorted(params)]
  return "|".join(parts)


@dataclasses.dataclass(frozen=True)
class Record:
  """One measured config. ``time`` is the median in seconds, ``None`` if it failed (``error``)."""

  op: str
  workload: str
  target: str
  config: dict[str, Any]
  time: float | None
  error: str | None = None
  features: list[float] | None = None
  shapes: list[list[int]] = dataclasses.field(default_factory=list)
  dtypes: list[str] = dataclasses.field(default_factory=list)
  jaxsched_version: str = ""
  jax_version: str = ""
  timestamp: float = 0.0

  @property
  def ok(self) -> bool:
    return self.time is not None and self.error is None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_COLUMNS = (
  "op, workload, target, shapes, dtypes, jaxsched_version, jax_version, config, features, time, "
  "error, timestamp"
)


def _row_to_record(row: Sequence[Any]) -> Record:
  op, workload, target, shapes, dtypes, jsv, jv, config, features, t, error, ts = row
  return Record(
    op=op,
    workload=workload,
    target=target,
    config=json.loads(config),
    time=t,
    error=error,
    features=json.loads(features) if features else None,
    shapes=json.loads(shapes),
    dtypes=json.loads(dtypes),
    jaxsched_version=jsv,
    jax_version=jv,
    timestamp=ts,
  )


def _versions() -> tuple[str, str]:
  from importlib import metadata

  try:
    jsv = metadata.version("jaxsched")
  except metadata.PackageNotFoundError:
    jsv = "unknown"
  try:
    jv = metadata.version("jax")
  except metadata.PackageNotFoundError:
    jv = "unknown"
  return jsv, jv


class TuningDatabase:
  """SQLite-backed store of tuning records.

  Args:
    path: database file; ``None`` uses :func:`default_db_path`. Parent dirs are created.
    timeout: seconds to wait for a lock held by another writer before failing.

  Raises:
    TuningDatabaseError: if the file exists but is not a (compatible) jaxsched tuning database.
  """

  def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
    self.path = Path(path).expanduser() if path is not None else default_db_path()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._lock = threading.Lock()
    try:
      self._conn = sqlite3.connect(
        self.path, timeout=timeout, isolation_level=None, check_same_thread=False
      )
      self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
      self._init_schema_retrying(timeout)
    except sqlite3.DatabaseError as e:
      if getattr(self, "_conn", None) is not None:
        self._conn.close()
      if isinstance(e, sqlite3.OperationalError) and "locked" in str(e).lower():
        raise TuningDatabaseError(
          f"{str(self.path)!r} stayed locked by another connection for {timeout} s; retry, or "
          "pass a longer timeout"
        ) from e
      raise TuningDatabaseError(
        f"{str(self.path)!r} is not a readable jaxsched tuning database ({e}); "
        "move or delete the file, or pass another path"
      ) from e
    self.jaxsched_version, self.jax_version = _versions()

  def _init_schema_retrying(self, timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite does not always call the
    # busy handler for it: two tuners opening a fresh file at once can get "database is
    # locked" here (seen 2 in 30 with six processes), which is contention, not corruption.
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
      try:
        self._init_schema()
        return
      except sqlite3.OperationalError as e:
        msg = str(e).lower()
        if ("locked" not in msg and "busy" not in msg) or time.monotonic() + delay > deadline:
          raise
      time.sleep(delay)
      delay = min(2 * delay, 0.5)

  def _init_schema(self) -> None:
    c = self._conn
    # WAL: readers never block the writer and a crash cannot leave a half-written record.
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = NORMAL")
    # Check-and-create under the write lock, so two tuners creating the file cannot race.
    c.execute("BEGIN IMMEDIATE")
    try:
      app_id = c.execute("PRAGMA application_id").fetchone()[0]
      tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
      tables.discard("sqlite_sequence")
      if tables and app_id != _APP_ID:
        raise sqlite3.DatabaseError(f"foreign SQLite database (tables {sorted(tables)})")
      version = c.execute("PRAGMA user_version").fetchone()[0]
      if tables and version != _SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version}, expected {_SCHEMA_VERSION}")
      if not tables:
        for stmt in _SCHEMA.split(";"):
          if stmt.strip():
            c.execute(stmt)
        c.execute(f"PRAGMA application_id = {_APP_ID}")
        c.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
      c.execute("SELECT count(*) FROM records").fetchone()  # Touch the table: detects corruption.
      c.execute("COMMIT")
    except BaseException:
      if c.in_transaction:
        c.execute("ROLLBACK")
      raise

  def close(self) -> None:
    self._conn.close()

  def __enter__(self) -> TuningDatabase:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    try:
      with self._lock:
        return self._conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as e:
      if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        raise
      raise TuningDatabaseError(f"tuning database {str(self.path)!r}: {e}") from e

  # Writing ---------------------------------------------------------------------------------------

  def add(
    self,
    *,
    workload: str,
    target: str,
    config: Mapping[str, Any],
    time: float | None,
    error: str | None = None,
    features: Sequence[float] | None = None,
    op: str | None = None,
    shapes: Sequence[Sequence[int]] = (),
    dtypes: Sequence[str] = (),
  ) -> None:
    """Stores one measured config (committed immediately; a re-measure replaces the old row)."""
    if time is None and error is None:
      raise ValueError(f"a record needs a time or an error, got {time=} {error=}")
    if time is not None and not (math.isfinite(time) and time >= 0):
      raise ValueError(f"{time=} must be a finite non-negative number of seconds")
    feats = None if features is None else _canonical([float(x) for x in features])
    self._insert(
      [
        (
          op if op is not None else workload.split("|", 1)[0],
          workload,
          target,
          _canonical([list(map(int, s)) for s in shapes]),
          _canonical([str(d) for d in dtypes]),
          self.jaxsched_version,
          self.jax_version,
          _canonical(dict(config)),
          feats,
          None if time is None else float(time),
          error,
          _now(),
        )
      ]
    )

  def _insert(self, rows: list[tuple[Any, ...]]) -> None:
    sql = f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES ({', '.join('?' * 12)})"
    try:
      with self._lock:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
          self._conn.executemany(sql, rows)
          self._conn.execute("COMMIT")
        except BaseException:
          if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
          raise
    except sqlite3.DatabaseError as e:
      raise TuningDatabaseError(f"tuning database {str(self.path)!r}: {e}") from e

  # Reading ---------------------------------------------------------------------------------------

  def records(
    self,
    workload: str | None = None,
    target: str | None = None,
    *,
    op: str | None = None,
    ok_only: bool = False,
  ) -> list[Record]:
    """Records matching the given filters, in insertion order."""
    where, params = _where(workload=workload, target=target, op=op)
    if ok_only:
      where.append("time IS NOT NULL")
    sql = f"SELECT {_COLUMNS} FROM records"
    if where:
      sql += " WHERE " + " AND ".join(where)
    return [_row_to_record(r) for r in self._execute(sql + " ORDER BY id", params)]

  def measured_configs(self, workload: str, target: str) -> set[str]:
    """Canonical JSON of every config already measured (ok or failed) for this workload."""
    rows = self._execute(
      "SELECT config FROM records WHERE workload = ? AND target = ?", (workload, target)
    )
    return {r[0] for r in rows}

  def best(self, workload: str, target: str, *, k: int = 1) -> list[Record]:
    """The ``k`` fastest successful records for a workload on a target (fastest first)."""
    rows = self._execute(
      f"SELECT {_COLUMNS} FROM records WHERE workload = ? AND target = ? AND time IS NOT NULL "
      "ORDER BY time ASC, id ASC LIMIT ?",
      (workload, target, int(k)),
    )
    return [_row_to_record(r) for r in rows]

  def workloads(self, *, op: str | None = None, target: str | None = None) -> list[str]:
    where, params = _where(op=op, target=target)
    sql = "SELECT DISTINCT workload FROM records"
    if where:
      sql += " WHERE " + " AND ".join(where)
    return [r[0] for r in self._execute(sql + " ORDER BY workload", params)]

  def __len__(self) -> int:
    return int(self._execute("SELECT count(*) FROM records")[0][0])

  # JSON ------------------------------------------------------------------------------------------

  def export_json(self, path: str | os.PathLike[str], **filters: Any) -> int:
    """Writes the (filtered) records to a JSON file; returns how many."""
    recs = self.records(**filters)
    payload = {"format": "jaxsched-tuning", "version": _SCHEMA_VERSION}
    payload["records"] = [r.to_json() for r in recs]
    Path(path).write_text(json.dumps(payload, indent=1))
    return len(recs)

  def import_json(self, path: str | os.PathLike[str]) -> int:
    """Adds the records of a JSON export (same key -> replaced); returns how many."""
    try:
      payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise TuningDatabaseError(f"cannot read tuning records from {str(path)!r}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != "jaxsched-tuning":
      raise TuningDatabaseError(f"{str(path)!r} is not a jaxsched tuning export")
    rows = []
    for i, r in enumerate(payload.get("records", [])):
      try:
        rows.append(
          (
            r["op"],
            r["workload"],
            r["target"],
            _canonical(r.get("shapes", [])),
            _canonical(r.get("dtypes", [])),
            r.get("jaxsched_version", ""),
            r.get("jax_version", ""),
            _canonical(r["config"]),
            None if r.get("features") is None else _canonical(r["features"]),
            r.get("time"),
            r.get("error"),
            r.get("timestamp", _now()),
          )
        )
      except (KeyError, TypeError) as e:
        raise TuningDatabaseError(f"record {i} of {str(path)!r} is malformed: {e!r}") from e
    self._insert(rows)
    return len(rows)


def _where(**filters: Any) -> tuple[list[str], list[Any]]:
  where, params = [], []
  for col, val in filters.items():
    if val is not None:
      where.append(f"{col} = ?")
      params.append(val)
  return where, params


def _now() -> float:
  return time.time()


_OPEN: dict[Path, TuningDatabase] = {}
_OPEN_LOCK = threading.Lock()


def lookup_best_config(
  op: str,
  key: str | Mapping[str, Any],
  target: str,
  *,
  db: str | os.PathLike[str] | TuningDatabase | None = None,
) -> dict[str, Any] | None:
  """The fastest recorded config for ``op`` on ``target``, or ``None`` (no file, no record).

  Cheap enough for a kernel wrapper: no jax import, one indexed query on a cached connection,
  and no file is created when the database does not exist.

  Args:
    op: op or app name (e.g. ``"matmul"``, ``"blur"``).
    key: the full workload key, or the ``workload_key`` arguments without ``op``
      (e.g. ``{"shapes": [[1024, 1024]], "dtypes": ["float32"]}``).
    target: device kind as stored, e.g. :func:`current_target`.
    db: database path or instance; default :func:`default_db_path`.
  """
  workload = key if isinstance(key, str) else workload_key(op, **dict(key))
  if isinstance(db, TuningDatabase):
    database = db
  else:
    path = Path(db).expanduser() if db is not None else default_db_path()
    if not path.exists():
      return None
    with _OPEN_LOCK:
      database = _OPEN.get(path)
      if database is None:
        database = _OPEN[path] = TuningDatabase(path)
  rows = database._execute(
    "SELECT config FROM records WHERE op = ? AND workload = ? AND target = ? "
    "AND time IS NOT NULL ORDER BY time ASC, id ASC LIMIT 1",
    (op, workload, target),
  )
  return json.loads(rows[0][0]) if rows else None


def as_database(db: str | os.PathLike[str] | TuningDatabase | None) -> TuningDatabase:
  """Opens ``db`` unless it already is a :class:`TuningDatabase`."""
  return db if isinstance(db, TuningDatabase) else TuningDatabase(db)


def canonical_config(config: Mapping[str, Any]) -> str:
  """The canonical JSON a config is stored under (for resume checks)."""
  return _canonical(dict(config))


def records_to_arrays(records: Iterable[Record]) -> tuple[list[list[float]], list[float]]:
  """Features and costs (failed -> ``inf``) of records that carry features."""
  feats, costs = [], []
  for r in records:
    if r.features is None:
      continue
    feats.append(r.features)
    costs.append(r.time if r.ok else math.inf)
  return feats, costs
