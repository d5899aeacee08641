"""The Pallas pipeline backend: interpret mode vs numpy / the XLA backend, deviceless compiles for
H100 and TPU v5e, tile rules. Grids are tiny (interpret mode costs ~0.14 ms per grid step)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

import jaxsched.pallas  # noqa: F401  (registers the "pallas" backend)
from jaxsched.pallas import pipeline_backend as pb
from jaxsched.pallas import targets
from jaxsched.pipelines import apps, boundary, ir
from jaxsched.pipelines.pipeline import Pipeline

SHAPE = (37, 53)


def _image(shape, dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  if dtype == np.uint8:
    return rng.integers(0, 256, shape).astype(np.uint8)
  if dtype == np.uint16:
    return rng.integers(0, 1024, shape).astype(np.uint16)
  return (rng.random(shape) + 0.1).astype(dtype)


def _blur_np(a: np.ndarray) -> np.ndarray:
  """3x3 separable box blur with repeated edges, float64."""
  p = np.pad(a.astype(np.float64), 1, mode="edge")
  bx = (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 3
  return (bx[:-2] + bx[1:-1] + bx[2:]) / 3


def _blur_graph(schedule):
  g = apps.make("blur", "inline")
  schedule(g)
  return g


def _tiles(ty, tx):
  def sched(g):
    v = g.vars
    g.funcs["blur_y"].tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    g.funcs["blur_x"].compute_at(g.funcs["blur_y"], v["xo"])

  return sched


@pytest.mark.parametrize(
  "kind,ty,tx,shape",
  [
    ("gpu", 16, 32, SHAPE),  # 3 x 2 blocks, ragged in both dims
    ("tpu", 8, 128, SHAPE),  # 5 row blocks, one lane-padded column block
    ("gpu", 8, 8, (1, 1)),
    ("tpu", 8, 128, (5, 300)),  # 3 column blocks of 128 over 300
  ],
)
def test_blur_matches_numpy(kind, ty, tx, shape):
  a = _image(shape, seed=1)
  fn = _blur_graph(_tiles(ty, tx)).compile("pallas", target=kind, interpret=True)
  out = np.asarray(fn(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)


@given(
  h=st.integers(1, 40),
  w=st.integers(1, 70),
  ty=st.sampled_from([1, 4, 16]),
  tx=st.sampled_from([2, 8, 64]),
)
def test_blur_random_sizes_and_tiles_gpu_lowering(h, w, ty, tx):
  """Sizes that are not multiples of the tile (and 1-pixel images) are padded, never wrong."""
  a = _image((h, w), seed=h * 100 + w)
  fn = _blur_graph(_tiles(ty, tx)).compile("pallas", target="gpu", interpret=True)
  np.testing.assert_allclose(np.asarray(fn(a)), _blur_np(a), rtol=1e-5, atol=1e-6)


def test_blur_interpret_params_matches_numpy():
  """TPU-faithful interpreter: catches HBM reads and other code plain interpret accepts."""
  a = _image(SHAPE, seed=2)
  g = apps.make("blur", "tiled", backend="pallas")
  out = np.asarray(g.compile("pallas", interpret=pltpu.InterpretParams())(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("app", ["unsharp", "harris"])
def test_interpret_params_equals_xla(app):
  """SMEM scalars, DMA windows and rotates under the TPU-faithful interpreter."""
  a = _image((21, 35), seed=12)
  ref = np.asarray(apps.make(app).compile("xla")(a))
  g = apps.make(app, "tiled_small", backend="pallas")
  out = np.asarray(g.compile("pallas", interpret=pltpu.InterpretParams())(a))
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
@pytest.mark.parametrize("app", ["blur", "unsharp", "harris"])
def test_default_schedule_equals_xla(app, kind):
  a = _image(SHAPE, seed=3)
  params = {"sigma": 2.0} if app == "unsharp" else {}
  ref = np.asarray(apps.make(app).compile("xla")(a, **params))
  g = apps.make(app, backend="pallas")
  rep = pb.describe(g.pipeline, SHAPE, target=kind)
  assert [r.func for r in rep.funcs if r.how == "pallas"] == [app if app != "blur" else "blur_y"]
  out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a, **params))
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)


def test_root_schedule_is_two_kernels_and_equals_xla():
  a = _image(SHAPE, seed=4)
  g = apps.make("harris", "root", backend="pallas")
  rep = pb.describe(g.pipeline, SHAPE, target="gpu")
  assert [r.how for r in rep.funcs] == ["pallas"] * 3  # Iy, Ix, harris
  ref = np.asarray(apps.make("harris").compile("xla")(a))
  out = np.asarray(g.compile("pallas", target="gpu", interpret=True)(a))
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
  "app,kind,kwargs,xla_funcs",
  [
    ("histogram_equalize", "gpu", {}, {"hist", "cdf", "equalized"}),
    ("camera_pipe", "tpu", {}, {"curve", "g_gr", "r_r", "b_b", "g_gb", "camera_pipe"}),
    ("bilateral_grid", "gpu", {}, {"histogram", "bilateral_grid"}),
    (
      "local_laplacian",
      "tpu",
      {"levels": 3},
      {"remap", "gPyramid0", "gPyramid1", "gPyramid2", "lPyramid0", "lPyramid1", "inGPyramid1"}
      | {"inGPyramid2", "outLPyramid2", "outGPyramid1", "outGPyramid0"},
    ),
  ],
)
def test_other_apps_equal_xla_and_report_xla_stages(app, kind, kwargs, xla_funcs):
  dtype = apps.make(app, **kwargs).pipeline.images[0].dtype
  a = _image((21, 35), dtype, seed=5)
  ref = np.asarray(apps.make(app, **kwargs).compile("xla")(a))
  g = apps.make(app, backend="pallas", **kwargs)
  out_shape = g.output_shape(a.shape) if g.output_shape else a.shape
  rep = pb.describe(g.pipeline, out_shape, input_shapes=[a.shape], target=kind)
  assert set(rep.xla_funcs) == xla_funcs  # gathers and RDom updates are reported, not hidden
  with pytest.warns(pb.XlaFallbackWarning, match=sorted(xla_funcs - {"curve", "remap"})[0]):
    out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a))
  if dtype.kind == "f":
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)
  else:
    np.testing.assert_array_equal(out, ref)


def test_tables_and_params_feed_kernels():
  """A scalar Param and a 1-D root table read at constant indices inside a kernel."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  gain = ir.Param(jnp.float32, name="gain", default=1.0)
  y, x, i = ir.Var("y"), ir.Var("x"), ir.Var("i")
  w = ir.Func("w")
  w[i] = ir.cast(jnp.float32, i * i + 1)
  c = boundary.repeat_edge(inp)
  out = ir.Func("out")
  out[y, x] = gain * (w[0] * c[y, x - 2] + w[3] * c[y + 1, x])
  w.compute_root()
  a = _image((13, 20), seed=6)
  got = Pipeline(out).compile("pallas", target="tpu", interpret=True)(a, gain=1.5)
  p = np.pad(a.astype(np.float64), 2, mode="edge")
  want = 1.5 * (1 * p[2:-2, :-4] + 10 * p[3:-1, 2:-2])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


# Deviceless compilation with the real Triton / Mosaic compilers.

_COMPILE = [
  (app, sched, tgt)
  for app in ("blur", "unsharp", "harris")
  for sched in ("tiled", "tiled_small")
  for tgt in ("h100", "tpu-v5e")
] + [("camera_pipe", "tiled_small", "h100"), ("camera_pipe", "tiled_small", "tpu-v5e")]


@pytest.mark.parametrize("app,sched,tgt", _COMPILE)
def test_compiles_deviceless(app, sched, tgt):
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  g = apps.make(app, sched, backend="pallas")
  kind = targets.get_target(tgt).kind
  fn = g.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct((64, 256), g.pipeline.images[0].dtype)
  # camera_pipe's deinterleave and LUT stages are XLA ops: tracing must say so.
  loud = pytest.warns(pb.XlaFallbackWarning) if app == "camera_pipe" else contextlib.nullcontext()
  with loud:
    exe = targets.compile_for(lambda a: fn(a), spec, target=tgt)
  text = exe.as_text()
  assert ("triton" in text.lower()) if kind == "gpu" else ("tpu_custom_call" in text)


def test_target_mismatch_with_compile_for_is_an_error():
  if "h100" not in targets.available_targets():
    pytest.skip("compiler plugin for h100 not installed")
  fn = apps.make("blur", backend="pallas").compile("pallas", target="tpu")
  spec = jax.ShapeDtypeStruct((16, 128), jnp.float32)
  with pytest.raises(ValueError, match="compiling for 'h100'"):
    targets.compile_for(lambda a: fn(a), spec, target="h100")


# Tile rules and bad options.


@pytest.mark.parametrize(
  "kind,ty,tx,rule,bad",
  [
    ("gpu", 24, 64, "powers of two", 24),
    ("gpu", 16, 96, "powers of two", 96),
    ("tpu", 8, 64, "(8, 128)", 64),  # lane dim: 64 is not a multiple of 128 and < 300
    ("tpu", 12, 128, "(8, 128)", 12),  # sublane dim: 12 is not a multiple of 8 and < 37
  ],
)
def test_illegal_tile_names_rule_func_and_tile(kind, ty, tx, rule, bad):
  fn = _blur_graph(_tiles(ty, tx)).compile("pallas", target=kind, interpret=True)
  with pytest.raises(ValueError) as e:
    fn(_image((37, 300)))
  msg = str(e.value)
  assert rule in msg and "Func blur_y" in msg and f"block {bad}" in msg and "tile {" in msg


def test_tile_covering_the_dim_is_legal_on_tpu():
  a = _image((6, 40), seed=7)
  fn = _blur_graph(_tiles(8, 64)).compile("pallas", target="tpu", interpret=True)
  np.testing.assert_allclose(np.asarray(fn(a)), _blur_np(a), rtol=1e-5, atol=1e-6)


def test_bad_options():
  g = apps.make("blur", backend="pallas")
  a = _image((8, 8))
  with pytest.raises(ValueError, match="interpret"):
    g.compile("pallas", target=None)(a)  # CPU without interpret mode
  with pytest.raises(ValueError, match="unknown target"):
    g.compile("pallas", target="tpu-v99", interpret=True)(a)
  with pytest.raises(ValueError, match="num_warp"):
    g.compile("pallas", target="gpu", interpret=True, num_warp=4)(a)
  with pytest.raises(ValueError, match="num_warps"):
    g.compile("pallas", target="gpu", interpret=True, num_warps=3)(a)


# Composition with JAX transformations.


def test_grad_through_blur_equals_adjoint():
  """Backward pass (the XLA plan's VJP) equals the transpose of the blur's matrix, in numpy."""
  shape = (6, 7)
  a, w = _image(shape, seed=8), _image(shape, seed=9).astype(np.float64)
  fn = _blur_graph(_tiles(4, 4)).compile("pallas", target="gpu", interpret=True)
  got = jax.grad(lambda t: jnp.sum(fn(t) * w.astype(np.float32)))(a)
  basis = np.eye(a.size).reshape(a.size, *shape)
  mat = np.stack([_blur_np(e).ravel() for e in basis], axis=1)  # [out, in]
  np.testing.assert_allclose(np.asarray(got), (mat.T @ w.ravel()).reshape(shape), rtol=1e-5)


def test_multiple_outputs_and_vmap_equal_xla():
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  y, x = ir.Var("y"), ir.Var("x")
  ce = boundary.constant_exterior(inp, 0.5)
  f1, f2, f3 = ir.Func("f1"), ir.Func("f2"), ir.Func("f3")
  f1[y, x] = ce[y - 1, x + 2] * 2 + ir.select(x > 10, 1.0, -1.0)
  f2[y, x] = f1[y + 1, x] - f1[y, x - 1]
  f3[y, x] = f1[y, x] * f1[y, x + 1]
  f1.compute_root()
  p = Pipeline([f2, f3])
  batch = np.stack([_image((19, 45), seed=s) for s in (10, 11)])
  fn = p.compile("pallas", target="tpu", interpret=True)
  got = jax.vmap(fn)(batch)
  for b in range(2):
    want = p.compile("xla")(batch[b])
    for g, r in zip(got, want, strict=True):
      np.testing.assert_allclose(np.asarray(g[b]), np.asarray(r), rtol=1e-6)


def test_unregistered_pallas_backend_says_what_to_import(monkeypatch):
  from jaxsched.pipelines import backends

  monkeypatch.delitem(backends._BACKENDS, "pallas")
  with pytest.raises(ValueError, match=r"import jaxsched\.pallas to register it"):
    apps.make("blur").compile("pallas")


# Sliding window: store_at(out, yo) + compute_at(out, yi). Lowered as overlapped tiling (no
# carried scratch yet): results must still be exact, and describe() must say so.


def _sliding(ty, tx):
  def sched(g):
    v = g.vars
    by, bx = g.funcs["blur_y"], g.funcs["blur_x"]
    if tx is None:  # a true slide: only y is split, so the window slides down yo
      by.split(v["y"], v["yo"], v["yi"], ty)
    else:
      by.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    bx.store_at(by, v["yo"]).compute_at(by, v["yi"])

  return sched


@pytest.mark.parametrize(
  "kind,ty,tx,shape",
  [("gpu", 8, None, (37, 16)), ("gpu", 8, 32, (21, 45)), ("tpu", 8, 128, (19, 130))],
)
def test_sliding_window_blur_equals_numpy_and_xla(kind, ty, tx, shape):
  a = _image(shape, seed=21)
  g = _blur_graph(_sliding(ty, tx))
  out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, np.asarray(g.compile("xla")(a)), rtol=1e-5, atol=1e-6)
  rep = pb.describe(g.pipeline, shape, target=kind)
  line = str(rep.funcs[-1])
  assert "sliding window" in line and "blur_x" in line and "overlapped tiling" in line


def test_sliding_window_interpret_params_matches_numpy():
  a = _image((13, 140), seed=22)
  g = _blur_graph(_sliding(8, 128))
  out = np.asarray(g.compile("pallas", interpret=pltpu.InterpretParams())(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tgt", ["h100", "tpu-v5e"])
@pytest.mark.parametrize("ty,tx", [(16, 128), (8, 128)])
def test_sliding_window_compiles_deviceless(tgt, ty, tx):
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  g = _blur_graph(_sliding(ty, tx))
  kind = targets.get_target(tgt).kind
  fn = g.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct((64, 256), g.pipeline.images[0].dtype)
  text = targets.compile_for(lambda a: fn(a), spec, target=tgt).as_text()
  assert ("triton" in text.lower()) if kind == "gpu" else ("tpu_custom_call" in text)
