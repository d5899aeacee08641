"""``Pipeline.compile(schedule="tuned")``: the database's best schedule per shape, else default."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxsched.pipelines as pl
from jaxsched.pipelines import apps
from jaxsched.tuning import database as dbm
from jaxsched.tuning import pipeline_space as ps

sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
import _np_refs as R  # noqa: E402

SHAPE = (24, 40)
SLIDING = {"blur_x": "at", "split_y": 8, "split_x": 0, "at": "yi"}
STRIPS = {"blur_x": "at", "split_y": 16, "split_x": 0, "at": "yo"}


def _image(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture
def db_path(tmp_path, monkeypatch):
  path = tmp_path / "tuning.sqlite"
  monkeypatch.setenv("JAXSCHED_TUNING_DB", str(path))
  return path


def _record(path, app, shape, config, t, *, target=None):
  with dbm.TuningDatabase(path) as db:
    db.add(
      workload=ps.pipeline_workload(app, shape),
      target=target or dbm.current_target(),
      config=config,
      time=t,
      op=app,
    )


def _jaxpr(fn, img):
  return str(jax.make_jaxpr(fn)(img))


def test_tuned_picks_the_fastest_record(db_path):
  default = ps.schedule_space("blur", SHAPE).default_config()
  assert SLIDING != default and STRIPS != default
  _record(db_path, "blur", SHAPE, STRIPS, 2e-3)
  _record(db_path, "blur", SHAPE, SLIDING, 1e-3)  # the faster one
  # Faster records of another shape or machine do not leak in.
  _record(db_path, "blur", (32, 40), STRIPS, 1e-6)
  _record(db_path, "blur", SHAPE, STRIPS, 1e-6, target="cpu:some other machine")
  g = apps.make("blur", "root")  # the graph's own schedule is replaced
  fn = g.compile(schedule="tuned")
  img = _image(SHAPE, seed=1)
  out = np.asarray(fn(img))
  assert fn.schedules == {(SHAPE,): {"source": "tuned", "schedule": None, "config": SLIDING}}
  np.testing.assert_allclose(out, R.blur(img), rtol=1e-5, atol=1e-6)
  # It runs the recorded schedule's program, not the graph's own or the default one.
  got = _jaxpr(fn, img)
  assert got == _jaxpr(ps.schedule_space("blur", SHAPE).build(SLIDING).compile(), img)
  assert got != _jaxpr(apps.make("blur", "root").compile(), img)
  assert got != _jaxpr(apps.make("blur").compile(), img)


def test_tuned_composes_with_jit_and_vmap(db_path):
  _record(db_path, "blur", SHAPE, STRIPS, 1e-3)
  fn = apps.make("blur").compile(schedule="tuned")
  imgs = np.stack([_image(SHAPE, seed=s) for s in (2, 3)])  # [2, h, w]
  out = np.asarray(jax.jit(jax.vmap(fn))(imgs))
  # Inside vmap the pipeline sees one (h, w) image: the per-example shape's record is used.
  assert fn.schedules == {(SHAPE,): {"source": "tuned", "schedule": None, "config": STRIPS}}
  for i in range(2):
    np.testing.assert_allclose(out[i], R.blur(imgs[i]), rtol=1e-5, atol=1e-6)
  # A second shape is looked up on its own first trace (nothing recorded: the default).
  small = _image((20, 30), seed=4)
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(small)), R.blur(small), rtol=1e-5, atol=1e-6)
  assert fn.schedules[((20, 30),)] == {"source": "default", "schedule": "inline", "config": None}
  assert len(fn.schedules) == 2


def test_no_record_uses_the_default_and_matches_params_by_name(db_path):
  # A record of another app only; unsharp's xla default is "root"; sigma is a runtime Param.
  _record(db_path, "blur", SHAPE, STRIPS, 1e-3)
  g = apps.make("unsharp", "tiled_small")
  fn = g.compile(schedule="tuned")
  img = _image(SHAPE, seed=5)
  out = np.asarray(fn(img, sigma=2.0))
  assert fn.schedules == {(SHAPE,): {"source": "default", "schedule": "root", "config": None}}
  np.testing.assert_allclose(out, R.unsharp(img, sigma=2.0, radius=3), rtol=1e-5, atol=1e-5)


def test_schedule_none_keeps_the_funcs_schedule(db_path):
  _record(db_path, "blur", SHAPE, SLIDING, 1e-3)
  fn = apps.make("blur", "root").compile()
  img = _image(SHAPE, seed=6)
  assert _jaxpr(fn, img) == _jaxpr(apps.make("blur", "root").compile(), img)
  assert fn.schedules == {}


def test_bad_inputs_are_named():
  assert "tuned" in pl.available_schedule_providers()
  g = apps.make("blur")
  with pytest.raises(ValueError, match=r"unknown schedule 'fastest'.*\['tuned'"):
    g.compile(schedule="fastest")
  # A hand-built pipeline does not say which app it is.
  inp = pl.ImageParam(np.float32, 2, name="input")
  y, x = pl.Var("y"), pl.Var("x")
  f = pl.Func("f")
  f[y, x] = inp[y, x] * 2
  user = pl.Pipeline(f)
  assert user.workload is None
  with pytest.raises(ValueError, match=r"workload is None.*apps\.make"):
    user.compile(schedule="tuned")
  with pytest.raises(ValueError, match="already registered"):
    pl.register_schedule_provider("tuned", lambda *a, **k: None)


def test_provider_must_match_the_pipeline(db_path):
  # A workload naming another algorithm than the pipeline's is caught at trace time.
  g = apps.make("blur")
  g.pipeline.workload = pl.Workload("harris", {})
  fn = g.compile(schedule="tuned")
  with pytest.raises(ValueError, match=r"does not match this one"):
    fn(_image(SHAPE))


def test_pallas_uses_its_default_schedule(db_path):
  import jaxsched.pallas  # noqa: F401  (registers the pallas backend and its app schedules)

  _record(db_path, "blur", SHAPE, SLIDING, 1e-3)  # an xla record: not for pallas
  fn = apps.make("blur").compile("pallas", schedule="tuned", interpret=True)
  img = _image(SHAPE, seed=7)
  out = np.asarray(fn(img))
  pallas_default = apps.get_app("blur").default["pallas"]
  assert fn.schedules == {
    (SHAPE,): {"source": "default", "schedule": pallas_default, "config": None}
  }
  np.testing.assert_allclose(out, R.blur(img), rtol=1e-5, atol=1e-6)
