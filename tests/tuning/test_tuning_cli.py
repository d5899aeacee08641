"""``jaxsched tune`` end to end, in-process through ``jaxsched.cli.main``."""

import math

import pytest

from jaxsched import cli
from jaxsched.tuning import database as dbm
from jaxsched.tuning import pipeline_space as ps


def _tune(*args):
  return cli.main(["tune", *map(str, args)])


def test_tune_blur_random_records_resumes_and_plots(tmp_path, capsys):
  db_path, png = tmp_path / "t.sqlite", tmp_path / "curve.png"
  code = _tune("blur", "--shape", "64,64", "--trials", 6, "--method", "random", "--db", db_path,
               "--in-process", "--no-progress", "--repeats", 2, "--plot", png)
  out = capsys.readouterr().out
  assert code == 0, out
  assert "measured 6 configs (0 resumed" in out
  workload = ps.pipeline_workload("blur", (64, 64))
  with dbm.TuningDatabase(db_path) as db:
    recs = db.records(workload, dbm.current_target())
  assert len(recs) == 6 and all(r.ok and r.time > 0 for r in recs)
  space = ps.schedule_space("blur", (64, 64))
  assert all(space.why_invalid(r.config) is None for r in recs)
  assert len({dbm.canonical_config(r.config) for r in recs}) == 6  # no config measured twice
  best = min(recs, key=lambda r: r.time)
  assert f"best: {best.time * 1e3:.3f} ms" in out
  assert ps.tuned_schedule("blur", (64, 64), db=db_path) == best.config
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # A second run resumes from the database and measures only the new trials.
  code = _tune("blur", "--shape", "64,64", "--trials", 8, "--method", "grid", "--db", db_path,
               "--in-process", "--no-progress", "--repeats", 2)
  out = capsys.readouterr().out
  assert code == 0 and "measured 8 configs (6 resumed" in out
  with dbm.TuningDatabase(db_path) as db:
    assert len(db.records(workload)) == 8


@pytest.mark.parametrize("args, needles", [
  (["no_such_app", "--shape", "64,64"], ["no_such_app", "blur", "harris", "matmul"]),
  (["blur", "--shape", "64,64", "--method", "annealing"], ["annealing", "xgb", "treegru", "ga"]),
  (["blur", "--shape", "64,64,3"], ["H,W"]),
  (["blur", "--shape", "64,64", "--trials", "0"], ["--trials=0"]),
  (["blur", "--shape", "64,64", "--method", "xgb", "--min-fit", "1"], ["--min-fit=1", ">= 2"]),
  (["blur", "--shape", "64,64", "--method", "random", "--min-fit", "3"], ["--min-fit", "random"]),
  (["matmul", "--shape", "64,64", "--shape", "64,64"], ["interpret", "h100"]),
  (["blur", "--shape", "64,64", "--knob-features"], ["--knob-features", "--features knobs"]),
  (["blur", "--shape", "64,64", "--features", "loop_nest", "--method", "treegru",
    "--knob-features"], ["--knob-features", "--method treegru"]),
  (["matmul", "--shape", "64,64", "--shape", "32,64", "--target", "h100"], ["64"]),
])
def test_bad_input_gets_a_clear_error(tmp_path, capsys, args, needles):
  code = _tune(*args, "--db", tmp_path / "t.sqlite", "--in-process", "--no-progress")
  err = capsys.readouterr().err
  assert code == 2
  for n in needles:
    assert n in err


def test_kernel_for_another_device_compiles_but_does_not_time(tmp_path, capsys):
  db_path = tmp_path / "k.sqlite"
  code = _tune("matmul", "--shape", "128,64", "--shape", "64,128", "--target", "h100",
               "--trials", 2, "--db", db_path, "--no-progress")
  out = capsys.readouterr().out
  assert code == 0, out
  assert "NOT TIMED" in out and "compiled 2 of" in out
  with dbm.TuningDatabase(db_path) as db:
    assert all(not math.isfinite(r.time or math.inf) for r in db.records())


def test_knob_features_reach_the_tuner(tmp_path, capsys, monkeypatch):
  from jaxsched.tuning import search

  made = []
  real = search.ModelTuner.__init__

  def spy(self, *a, **kw):
    made.append(kw.get("knob_features"))
    real(self, *a, **kw)

  monkeypatch.setattr(search.ModelTuner, "__init__", spy)
  code = _tune("blur", "--shape", "32,64", "--trials", 4, "--batch-size", 2, "--method", "xgb",
               "--features", "loop_nest", "--knob-features", "--db", tmp_path / "k.sqlite",
               "--in-process", "--no-progress", "--repeats", 1, "--min-fit", 2)
  out = capsys.readouterr().out
  assert code == 0 and "measured 4 configs" in out, out
  assert made == [True]


def test_model_method_tunes_a_schedule(tmp_path, capsys, method="xgb"):
  db_path = tmp_path / "m.sqlite"
  code = _tune("blur", "--shape", "64,200", "--trials", 10, "--batch-size", 4, "--method", method,
               "--db", db_path, "--in-process", "--no-progress", "--repeats", 1, "--seed", 1,
               "--min-fit", 3)
  out = capsys.readouterr().out
  assert code == 0, out
  with dbm.TuningDatabase(db_path) as db:
    recs = db.records(ps.pipeline_workload("blur", (64, 200)))
  space = ps.schedule_space("blur", (64, 200))
  assert len(recs) == 10 and all(r.ok for r in recs)
  assert all(space.why_invalid(r.config) is None for r in recs)
  assert len({dbm.canonical_config(r.config) for r in recs}) == 10
