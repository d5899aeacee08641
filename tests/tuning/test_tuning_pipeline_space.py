"""Pipeline schedule spaces: knobs, validity, applying configs, tasks, tuned lookups."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsched.pallas import config as kconfig
from jaxsched.pipelines import apps
from jaxsched.tuning import database as dbm
from jaxsched.tuning import pipeline_space as ps

TARGET = "cpu:test-machine"


def blur_reference(img: np.ndarray) -> np.ndarray:
  p = np.pad(img.astype(np.float64), 1, mode="edge")
  bx = (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 3  # [h + 2, w]
  return (bx[:-2] + bx[1:-1] + bx[2:]) / 3


def harris_reference(img: np.ndarray, k: float = 0.04) -> np.ndarray:
  h, w = img.shape
  p = np.pad(img.astype(np.float64), 2, mode="edge")

  def c(dy, dx):  # Clamped input over y in [-1, h], x in [-1, w].
    return p[1 + dy : h + 3 + dy, 1 + dx : w + 3 + dx]

  iy = (-c(-1, -1) - 2 * c(-1, 0) - c(-1, 1) + c(1, -1) + 2 * c(1, 0) + c(1, 1)) / 12
  ix = (-c(-1, -1) - 2 * c(0, -1) - c(1, -1) + c(-1, 1) + 2 * c(0, 1) + c(1, 1)) / 12

  def box(a):
    return sum(a[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] for dy in (-1, 0, 1)
               for dx in (-1, 0, 1))

  sxx, syy, sxy = box(ix * ix), box(iy * iy), box(ix * iy)
  return sxx * syy - sxy * sxy - k * (sxx + syy) ** 2


def _image(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_blur_space_knobs_and_choices():
  space = ps.schedule_space("blur", (40, 300))
  assert space.space.names == ("blur_x", "split_y", "split_x", "at")
  assert space.space.choices[0] == ("inline", "root", "at")
  # Split factors at or beyond the image are not offered.
  assert space.space.choices[1] == (0, 8, 16, 32)
  assert space.space.choices[2] == (0, 64, 128, 256)


@pytest.mark.parametrize("config, needle", [
  ({"blur_x": "at", "split_y": 0, "split_x": 0, "at": "yo"}, "split_y > 0"),
  ({"blur_x": "at", "split_y": 8, "split_x": 0, "at": "xo"}, "split_x > 0"),
  ({"blur_x": "at", "split_y": 8, "split_x": 64, "at": "yo"}, "split_x=64"),
  ({"blur_x": "root", "split_y": 8, "split_x": 0, "at": "yo"}, "canonical"),
  ({"blur_x": "inline", "split_y": 0}, "lacks knobs"),
])
def test_blur_invalid_configs_say_why(config, needle):
  space = ps.schedule_space("blur", (64, 200))
  why = space.why_invalid(config)
  assert why is not None and needle in why
  assert not space.space.is_valid(config)


def test_blur_valid_configs_are_the_distinct_schedules():
  space = ps.schedule_space("blur", (64, 200))
  valid = [space.space.knobs_to_config(k) for k in space.space.iter_valid()]
  # inline, root, and "at": strips (3 split_y) + tiles (3 x 2) + sliding (3).
  assert len(valid) == 2 + 3 + 3 * 2 + 3
  assert space.default_config() in valid


@pytest.mark.parametrize("config", [
  {"blur_x": "inline", "split_y": 0, "split_x": 0, "at": "yo"},
  {"blur_x": "at", "split_y": 16, "split_x": 64, "at": "xo"},
  {"blur_x": "at", "split_y": 8, "split_x": 0, "at": "yi"},
])
def test_blur_configs_compute_the_blur(config):
  img = _image((37, 150), seed=1)
  g = ps.schedule_space("blur", (37, 150)).build(config)
  np.testing.assert_allclose(np.asarray(g.compile()(img)), blur_reference(img), rtol=1e-5,
                             atol=1e-6)


def test_measure_fn_runs_the_scheduled_pipeline():
  config = {"blur_x": "root", "split_y": 0, "split_x": 0, "at": "yo"}
  task = ps.pipeline_task("blur", (24, 70))
  out = np.asarray(task.measure_fn(config)())
  img = np.random.default_rng(0).random((24, 70)).astype(np.float32)  # measure_fn's input
  np.testing.assert_allclose(out, blur_reference(img), rtol=1e-5, atol=1e-6)


def test_harris_tiled_config_computes_harris():
  config = {n: "inline" for n in ps.schedule_space("harris", (40, 96)).funcs}
  config.update(Ix="at", Iy="at", split_y=16, split_x=64, at="xo")
  g = apps.get_app("harris").build()
  ps.apply_schedule(g, config, shape=(40, 96))
  img = _image((40, 96), seed=2)
  out = np.asarray(g.compile()(img))
  ref = harris_reference(img)
  np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())


def test_harris_consumer_rule():
  space = ps.schedule_space("harris", (64, 64))
  config = {n: "inline" for n in space.funcs}
  # Ix at the output while its consumer Ixx is computed at root: the lowering could not do it.
  config.update(Ix="at", Ixx="root", split_y=8, split_x=0, at="yo")
  why = space.why_invalid(config)
  assert why is not None and "Ixx" in why


@settings(max_examples=6)  # Each example lowers harris: ~0.3 s.
@given(st.integers(0, 2**62))
def test_harris_valid_configs_lower(seed):
  space = ps.schedule_space("harris", (64, 96))
  rng = np.random.default_rng(seed)
  knobs = space.space.sample(rng, 1, max_tries=5000)[0]
  config = space.space.knobs_to_config(knobs)
  assert space.why_invalid(config) is None
  feats = space.features(config)
  assert feats.shape == (12,) and np.all(np.isfinite(feats)) and np.all(feats >= 0)
  tree = space.tree(config)
  assert tree.features.shape[0] > 1


def test_pyramid_families_are_grouped_and_never_fully_inlined():
  space = ps.schedule_space("local_laplacian", (64, 64))
  assert "gPyramid*" in space.funcs and len(space.funcs["gPyramid*"]) == 8
  choices = dict(zip(space.space.names, space.space.choices, strict=True))
  assert "inline" not in choices["gPyramid*"]  # 16x the work per inlined level
  assert "inline" in choices["lPyramid*"]


def test_errors_name_the_choices():
  with pytest.raises(ValueError, match="blur"):
    ps.schedule_space("no_such_app", (64, 64))
  with pytest.raises(ValueError, match="xla"):
    ps.pipeline_task("blur", (64, 64), backend="cuda")
  with pytest.raises(ValueError, match="loop_nest"):
    ps.pipeline_task("blur", (64, 64), features="magic")
  with pytest.raises(ValueError, match="shape"):
    ps.pipeline_task("blur", (64, 0))
  bad = {"blur_x": "at", "split_y": 0, "split_x": 0, "at": "yo"}
  with pytest.raises(ValueError, match="split_y"):
    ps.apply_schedule(apps.get_app("blur").build(), bad, shape=(64, 64))


@pytest.mark.parametrize("app", ["blur", "unsharp", "harris", "bilateral_grid"])
def test_default_config_is_valid(app):
  """All-inline where it is valid (blur), else the first valid config (the bilateral grid's
  all-inline slice exceeds the inlining limit)."""
  space = ps.schedule_space(app, (64, 64))
  config = space.default_config()
  assert space.why_invalid(config) is None, (config, space.why_invalid(config))
  if app == "blur":
    assert config["blur_x"] == "inline"


def test_task_records_loop_nest_features():
  task = ps.pipeline_task("blur", (32, 80), features="loop_nest")
  assert task.workload == ps.pipeline_workload("blur", (32, 80))
  assert task.op_name == "blur" and task.shapes == ((32, 80),)
  root = {"blur_x": "root", "split_y": 0, "split_x": 0, "at": "yo"}
  inline = dict(root, blur_x="inline")
  f = task.features(np.stack([task.space.config_to_knobs(c) for c in (root, inline)]))
  assert f.shape == (2, 12)
  # Materialising blur_x adds a stage and its storage: features must tell the two apart.
  assert f[0, 0] > f[1, 0] and f[0, 7] > f[1, 7]


def test_treegru_transfer_from_the_database_lowers_other_shapes(tmp_path):
  """Records of blur at other shapes become a TreeGRU prior of trees lowered at the
  recorded shape (not the new task's), so the model is pre-trained before any measurement."""
  from jaxsched.tuning.search import ModelTuner, load_prior

  root = {"blur_x": "root", "split_y": 0, "split_x": 0, "at": "yo"}
  inline = dict(root, blur_x="inline")
  db = dbm.TuningDatabase(tmp_path / "t.sqlite")
  for shape, scale in (((24, 40), 1.0), ((48, 96), 4.0)):
    src = ps.pipeline_task("blur", shape, features="loop_nest")
    for c, t in ((root, 2e-3), (inline, 1e-3)):
      feats = src.features(src.space.config_to_knobs(c)[None])[0]
      db.add(workload=src.workload, target=TARGET, config=c, time=t * scale, op="blur",
             features=[float(v) for v in feats], shapes=[list(shape)])
  task = ps.pipeline_task("blur", (32, 80), features="loop_nest")
  prior = load_prior(db, task, TARGET)
  assert prior is not None and len(prior.trees) == 4
  want = ps.pipeline_task("blur", (48, 96), features="loop_nest").tree_fn(inline)
  got = [t for t, g in zip(prior.trees, prior.groups, strict=True) if g == max(prior.groups)]
  assert any(np.array_equal(t.features, want.features) for t in got)
  assert not any(
    np.array_equal(t.features, task.tree_fn(inline).features) for t in prior.trees
  )
  assert ModelTuner(task, "treegru", prior=prior).model.fitted


def _add(db, workload, config, t):
  db.add(workload=workload, target=TARGET, config=config, time=t, op=workload.split("|")[0])


def test_tuned_schedule_picks_the_recorded_best(tmp_path):
  shape = (48, 160)
  workload = ps.pipeline_workload("blur", shape)
  rng = np.random.default_rng(3)
  space = ps.schedule_space("blur", shape)
  valid = [space.space.knobs_to_config(k) for k in space.space.iter_valid()]
  times = rng.uniform(1e-3, 2e-3, len(valid))
  path = tmp_path / "tune.sqlite"
  with dbm.TuningDatabase(path) as db:
    for c, t in zip(valid, times, strict=True):
      _add(db, workload, c, float(t))
    # A faster record that is not a valid config today (stale space) is skipped.
    _add(db, workload, {"blur_x": "at", "split_y": 0, "split_x": 0, "at": "yo"}, 1e-6)
    # Another shape's and another machine's records do not leak in.
    _add(db, ps.pipeline_workload("blur", (64, 64)), valid[0], 1e-7)
    db.add(workload=workload, target="cpu:other", config=valid[1], time=1e-7, op="blur")
  best = valid[int(np.argmin(times))]
  assert ps.tuned_schedule("blur", shape, db=path, target=TARGET) == best
  g = ps.make_tuned("blur", shape, db=str(path), target=TARGET)
  assert g.schedule_source == "tuned"
  img = _image(shape, seed=4)
  np.testing.assert_allclose(np.asarray(g.compile()(img)), blur_reference(img), rtol=1e-5,
                             atol=1e-6)
  # Nothing recorded for this shape on this target: the app's default schedule.
  assert ps.tuned_schedule("blur", (50, 50), db=path, target=TARGET) is None
  assert ps.make_tuned("blur", (50, 50), db=path, target=TARGET).schedule_source == "default"
  missing = tmp_path / "none.sqlite"
  assert ps.tuned_schedule("blur", shape, db=missing, target=TARGET) is None
  assert not missing.exists()


def test_kernel_config_none_consults_the_database(tmp_path, monkeypatch):
  path = tmp_path / "k.sqlite"
  monkeypatch.setenv("JAXSCHED_TUNING_DB", str(path))
  shapes = ((96, 64), (64, 160))
  default = kconfig.lookup_config("matmul", shapes, "float32", "h100")
  space = kconfig.search_space("matmul", shapes, "float32", "h100")
  rng = np.random.default_rng(5)
  picks = [space[i] for i in rng.choice(len(space), 6, replace=False) if space[i] != default][:5]
  times = rng.uniform(1e-4, 1e-3, len(picks))
  workload = dbm.workload_key("matmul", **kconfig.db_workload("matmul", shapes, "float32"))
  target = kconfig.db_target("h100")
  assert target == "gpu:NVIDIA H100 80GB HBM3"
  with dbm.TuningDatabase(path) as db:
    for c, t in zip(picks, times, strict=True):
      db.add(workload=workload, target=target, op="matmul", time=float(t),
             config={f: getattr(c, f) for f in c.__dataclass_fields__})
    db.add(workload=workload, target="tpu:TPU v5 lite", op="matmul", time=1e-9,
           config={f: getattr(default, f) for f in default.__dataclass_fields__})
  best = picks[int(np.argmin(times))]
  assert kconfig.lookup_config("matmul", shapes, "float32", "h100") == best
  from jaxsched.pallas import targets

  got = kconfig.resolve_config("matmul", None, shapes, "float32", targets.get_target("h100"))
  assert got == best
  # Other shapes are untouched by these records.
  other = ((64, 64), (64, 64))
  assert kconfig.lookup_config("matmul", other, "float32", "h100") == kconfig.default_config(
    "matmul", other, "float32", "h100")


def test_kernel_stale_database_record_falls_back(tmp_path, monkeypatch):
  path = tmp_path / "k.sqlite"
  monkeypatch.setenv("JAXSCHED_TUNING_DB", str(path))
  shapes = ((64, 64), (64, 128))
  workload = dbm.workload_key("matmul", **kconfig.db_workload("matmul", shapes, "float32"))
  with dbm.TuningDatabase(path) as db:
    db.add(workload=workload, target=kconfig.db_target("h100"), op="matmul", time=1e-6,
           config={"block_m": 17, "block_n": 128, "block_k": 64, "num_warps": 4,
                   "num_stages": 3})
  assert kconfig.lookup_config("matmul", shapes, "float32", "h100") == kconfig.default_config(
    "matmul", shapes, "float32", "h100")


def test_tuned_schedule_with_non_json_build_arguments(tmp_path):
  """Build arguments that are not JSON values (a dtype) reach the app unchanged: the space cache
  is keyed by their canonical JSON but built from the objects (it used to round-trip them)."""
  import jax.numpy as jnp

  shape = (24, 40)
  kw = {"dtype": jnp.float16}
  space = ps.PipelineSpace("blur", shape, **kw)
  config = next(
    c for c in (space.space.knobs_to_config(k) for k in space.space.iter_valid())
    if c != space.default_config()
  )
  path = tmp_path / "fp16.sqlite"
  with dbm.TuningDatabase(path) as db:
    _add(db, ps.pipeline_workload("blur", shape, **kw), config, 1e-3)
  assert ps.tuned_schedule("blur", shape, db=path, target=TARGET, **kw) == config
  g = ps.make_tuned("blur", shape, db=str(path), target=TARGET, **kw)
  assert g.schedule_source == "tuned" and g.pipeline.images[0].dtype == np.float16
