"""The Pallas pipeline backend: interpret mode vs numpy / the XLA backend, deviceless compiles for
H100 and TPU v5e, tile rules. Grids are tiny (interpret mode costs ~0.14 ms per grid step)."""

import warnings

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
  kernels = {"blur": ["blur_y"], "unsharp": ["kernel", "unsharp"], "harris": ["harris"]}[app]
  assert [r.func for r in rep.funcs if r.how == "pallas"] == kernels  # unsharp: weights table
  assert all(r.how == "pallas" for r in rep.funcs), str(rep)
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
    ("histogram_equalize", "gpu", {}, set()),  # hist, cdf and the lookup are all kernels
    ("histogram_equalize", "tpu", {}, set()),
    # Bayer planes (denoised[2y + dy, 2x + dx]) and the interleave (plane[y // 2, x // 2]) are
    # kernels reading resampled copies; the curve (a 1-D table) is a 1-D kernel.
    ("camera_pipe", "tpu", {}, set()),
    ("camera_pipe", "gpu", {}, set()),
    # The splat hist[c, z(r), gy, gx] += ... is a kernel (a one-hot sum over its 8x8 RDom per
    # grid cell, reading stride-8 phase copies of the input); the trilinear slice gathers the
    # grid on GPU and upsamples its planes with one-hot matmuls on TPU.
    ("bilateral_grid", "gpu", {}, set()),
    ("bilateral_grid", "tpu", {}, set()),
    # gPyramid0 is a kernel: the image broadcast along k, remap[...] looked up in-kernel; the
    # pyramids' 2x down/upsampling read resampled copies; the level lookup lPyramid[y, x, li]
    # selects among the 8 level planes in-kernel.
    ("local_laplacian", "tpu", {"levels": 3}, set()),
    ("local_laplacian", "gpu", {"levels": 3}, set()),
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
  loud = sorted(xla_funcs - {"curve", "remap"})  # 1-D tables are XLA by design, not warned
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a))
  said = " ".join(str(w.message) for w in caught if issubclass(w.category, pb.XlaFallbackWarning))
  assert all(f in said for f in loud) and (said == "") == (not loud)
  if dtype.kind == "f":
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)
  else:
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_lookup_and_broadcast_reads_in_kernel_equal_numpy(kind):
  """A 3-D Func reading a 2-D image (broadcast along k) and a 1-D table by a data-dependent,
  clamped index (out-of-table indices would be clamped, as XLA's gather clamps)."""
  inp = ir.ImageParam(jnp.int32, 2, name="inp")
  i, y, x, k = ir.Var("i"), ir.Var("y"), ir.Var("x"), ir.Var("k")
  t = ir.Func("t")
  t[i] = i * i - 7
  t.bound(i, -3, 20).compute_root()
  c = boundary.repeat_edge(inp)
  out = ir.Func("out")
  out[y, x, k] = c[y, x + 1] * (k + 1) + t[ir.clamp(c[y, x] % 23 - 3 + k, -3, 16)]
  p = Pipeline(out)
  a = np.random.default_rng(34).integers(-50, 50, (11, 21)).astype(np.int32)
  rep = pb.describe(p, (11, 21, 4), input_shapes=[a.shape], target=kind)
  assert [r.how for r in rep.funcs] == ["pallas", "pallas"], str(rep)  # t: a [1, n] row kernel
  assert "table of 20 entries" in rep.funcs[0].detail  # bound(i, -3, 20)
  assert "looks up ['t']" in rep.funcs[1].detail
  got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a, output_shape=(11, 21, 4)))
  ap = np.pad(a, ((0, 0), (0, 1)), mode="edge")[:, 1:].astype(np.int64)
  kk = np.arange(4)
  idx = np.clip(a[..., None] % 23 - 3 + kk, -3, 16)
  np.testing.assert_array_equal(got, ap[..., None] * (kk + 1) + idx * idx - 7)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_resampling_reads_are_kernels_equal_numpy(kind):
  """Strided (2y - 1, 2x + 2, clamped at the edges), floor-divided ((x + 1) // 2 - 1), parity
  (x // 2 - 1 + 2 * (x % 2)) and broadcast (a 2-D buffer read by a [c, y, x] Func) reads of
  root buffers are kernels reading XLA-resampled copies; results equal numpy's."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  y, x, c = ir.Var("y"), ir.Var("x"), ir.Var("c")
  e = boundary.repeat_edge(inp)
  down, up, out = ir.Func("down"), ir.Func("up"), ir.Func("out")
  down[y, x] = e[2 * y - 1, 2 * x] + 3.0 * e[2 * y, 2 * x + 1] - e[2 * y + 1, 2 * x + 2]
  down.compute_root()
  up[y, x] = 0.25 * down[y, x // 2 - 1 + 2 * (x % 2)] + 0.75 * down[(y + 1) // 2 - 1, x // 2]
  up.compute_root()
  out[c, y, x] = up[y, x] * ir.cast(jnp.float32, c + 1) + e[y // 2, x // 2]
  p = Pipeline(out)
  a = _image((19, 45), seed=41)
  h, w = 19, 45
  rep = pb.describe(p, (2, h, w), input_shapes=[a.shape], target=kind)
  assert [r.how for r in rep.funcs] == ["pallas"] * 3, str(rep)
  assert "resampled" in rep.funcs[0].detail, rep.funcs[0].detail
  with warnings.catch_warnings():
    warnings.simplefilter("error", pb.XlaFallbackWarning)
    got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a, output_shape=(2, h, w)))

  a64 = a.astype(np.float64)

  def ea(yy, xx):
    return a64[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

  def dn(yy, xx):
    return ea(2 * yy - 1, 2 * xx) + 3 * ea(2 * yy, 2 * xx + 1) - ea(2 * yy + 1, 2 * xx + 2)

  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  upv = 0.25 * dn(yy, xx // 2 - 1 + 2 * (xx % 2)) + 0.75 * dn((yy + 1) // 2 - 1, xx // 2)
  want = np.stack([upv * (k + 1) + ea(yy // 2, xx // 2) for k in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_data_dependent_small_dim_selects_in_kernel_equal_numpy(kind):
  """``s3[clamp(e(data), 0, 5), y, x + 1]`` into a 6-value dim selects among the 6 planes
  in-kernel; ``s3[2, y, x]`` reads one plane (a constant index into a 3-D buffer). Equal to
  numpy."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  k, y, x = ir.Var("k"), ir.Var("y"), ir.Var("x")
  e = boundary.repeat_edge(inp)
  s3, out = ir.Func("s3"), ir.Func("out")
  s3[k, y, x] = e[y, x] * ir.cast(jnp.float32, k + 1) + ir.cast(jnp.float32, k)
  s3.compute_root()
  out[y, x] = s3[ir.clamp(ir.cast(jnp.int32, e[y, x] * 8.0) - 1, 0, 5), y, x + 1] - s3[2, y, x]
  p = Pipeline(out)
  h, w = 13, 40
  a = _image((h, w), seed=43)
  rep = pb.describe(p, (h, w), input_shapes=[a.shape], target=kind)
  assert [r.how for r in rep.funcs] == ["pallas", "pallas"], str(rep)
  with warnings.catch_warnings():
    warnings.simplefilter("error", pb.XlaFallbackWarning)
    got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a))
  a64 = np.pad(a.astype(np.float64), ((0, 0), (0, 1)), mode="edge")
  ks = np.arange(6)[:, None, None]
  s3v = a64[None] * (ks + 1) + ks  # [6, h, w + 1]
  idx = np.clip((a * np.float32(8.0)).astype(np.int32) - 1, 0, 5)
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  want = s3v[idx, yy, xx + 1] - s3v[2, :, :w]
  assert idx.min() == 0 and idx.max() == 5  # both clamps and every plane are exercised
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_nd_scatter_into_a_small_dim_is_a_one_hot_kernel_equal_numpy(kind):
  """``f[y, x, z(r), c] += v(r)`` over a 3x2 RDom per cell (a bilateral-grid splat: reads of
  ``inp[3y + r.y - 1, 2x + r.x]``, clamped at the edges) is one kernel, equal to numpy."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  y, x, z, c = ir.Var("y"), ir.Var("x"), ir.Var("z"), ir.Var("c")
  e = boundary.repeat_edge(inp)
  r = ir.RDom((0, 2), (0, 3), name="r")
  val = e[3 * y + r.y - 1, 2 * x + r.x]
  zi = ir.cast(jnp.int32, ir.clamp(val, 0.0, 1.0) * 4.0 + 0.5)
  f = ir.Func("f")
  f[y, x, z, c] = ir.cast(jnp.float32, c) * 0.5
  f[y, x, zi, c] += ir.select(c == 0, val, 1.0)
  f.compute_root()
  out = ir.Func("out")
  out[y, x, z, c] = f[y, x, z, c] * 2.0
  p = Pipeline(out)
  a = _image((14, 21), seed=47) * np.float32(1.2) - np.float32(0.1)  # some values clamp
  shape = (5, 11, 5, 2)
  rep = pb.describe(p, shape, input_shapes=[a.shape], target=kind)
  assert [r.how for r in rep.funcs] == ["pallas", "pallas"], str(rep)
  with warnings.catch_warnings():
    warnings.simplefilter("error", pb.XlaFallbackWarning)
    got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a, output_shape=shape))
  want = np.zeros(shape)
  want[..., 1] = 0.5
  for yy in range(5):
    for xx in range(11):
      for ry in range(3):
        for rx in range(2):
          v = float(a[np.clip(3 * yy + ry - 1, 0, 13), np.clip(2 * xx + rx, 0, 20)])
          zz = int(np.float32(min(max(v, 0.0), 1.0)) * np.float32(4.0) + np.float32(0.5))
          want[yy, xx, zz, 0] += v
          want[yy, xx, zz, 1] += 1.0
  np.testing.assert_allclose(got, want * 2.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
@pytest.mark.parametrize("h,w", [(37, 300), (5, 9)])
def test_upsampled_data_dependent_reads_are_in_kernel_equal_numpy(kind, h, w):
  """``g[(y + 1) // 4 + dy, x // 4 + dx, z(data)]`` (a bilateral-grid slice): 6 planes of 4x4
  upsampled copies would be 16x the grid, so the kernel reads the coarse grid itself: a
  pointer gather on GPU, on TPU one-hot upsampling matmuls per plane and a select. Ragged
  blocks on both targets; equal to numpy."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  gy, gx, z, y, x = (ir.Var(n) for n in ("gy", "gx", "z", "y", "x"))
  xo, yo, xi, yi = (ir.Var(n) for n in ("xo", "yo", "xi", "yi"))
  g, out = ir.Func("g"), ir.Func("out")
  # exact in float32: every grid cell differs, so a read off by one cell shows
  g[gy, gx, z] = ir.cast(jnp.float32, gy * 64 + gx + z * z * 1024) * 0.125
  g.compute_root()
  zi = ir.clamp(ir.cast(jnp.int32, inp[y, x] * 6.0), 0, 4)
  e = boundary.repeat_edge(inp)  # a halo read: on TPU the evaluation window outgrows the block
  out[y, x] = (
    g[(y + 1) // 4, x // 4 + 1, zi] * 2.0 + g[(y + 1) // 4 + 1, x // 4, zi + 1] + e[y + 1, x - 3]
  )
  out.tile(x, y, xo, yo, xi, yi, 128, 16)
  p = Pipeline(out)
  a = _image((h, w), seed=53)
  rep = pb.describe(p, (h, w), input_shapes=[a.shape], target=kind)
  assert [r.how for r in rep.funcs] == ["pallas", "pallas"], str(rep)
  how = "gathers ['g']" if kind == "gpu" else "upsamples the planes of ['g'] in-kernel"
  assert how in rep.funcs[-1].detail, rep.funcs[-1].detail
  with warnings.catch_warnings():
    warnings.simplefilter("error", pb.XlaFallbackWarning)
    got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a))
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  idx = np.clip((a * np.float32(6.0)).astype(np.int32), 0, 4)

  def gv(i, j, k):
    return (i * 64 + j + k * k * 1024) * 0.125

  want = gv((yy + 1) // 4, xx // 4 + 1, idx) * 2 + gv((yy + 1) // 4 + 1, xx // 4, idx + 1)
  want += a[np.minimum(yy + 1, h - 1), np.maximum(xx - 3, 0)]
  assert idx.min() == 0 and (idx.max() == 4 or h * w < 100)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _equalize_np(a: np.ndarray) -> np.ndarray:
  cdf = np.cumsum(np.bincount(a.ravel(), minlength=256)).astype(np.int64)
  return (cdf[a] * 255 // a.size).astype(np.uint8)


@pytest.mark.parametrize(
  "kind,sched,shape",
  [
    ("gpu", "tiled_small", (45, 300)),  # RDom blocks 32x128: 2 x 3, ragged in both dims
    ("tpu", "tiled_small", (45, 300)),  # resident accumulator over a 2 x 3 'arbitrary' grid
    ("tpu", "tiled", (7, 5)),  # one block, mostly padding
  ],
)
def test_histogram_equalize_kernels_equal_numpy(kind, sched, shape):
  """RDom scatter (hist), scan (cdf) and LUT gather (equalized) as kernels, exact vs numpy."""
  a = _image(shape, np.uint8, seed=30)
  a[0, :3] = [0, 255, 255]  # the end bins are hit
  g = apps.make("histogram_equalize", sched, backend="pallas")
  rep = pb.describe(g.pipeline, shape, target=kind)
  assert [r.how for r in rep.funcs] == ["pallas"] * 3, str(rep)
  assert "scatter-add" in str(rep.funcs[0]) and "prefix scan" in str(rep.funcs[1])
  with warnings.catch_warnings():
    warnings.simplefilter("error", pb.XlaFallbackWarning)
    out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a))
  np.testing.assert_array_equal(out, _equalize_np(a))


def test_histogram_equalize_vmap_equals_numpy():
  """A batch grid axis in front of the resident accumulator's: one histogram per image."""
  b = np.stack([_image((45, 150), np.uint8, seed=s) for s in (35, 36)])
  fn = apps.make("histogram_equalize", "tiled_small", backend="pallas").compile(
    "pallas", target="tpu", interpret=True
  )
  out = np.asarray(jax.vmap(fn)(b))
  np.testing.assert_array_equal(out, np.stack([_equalize_np(x) for x in b]))


def test_histogram_equalize_interpret_params_equals_numpy():
  """TPU-faithful interpreter: resident accumulator, widened VMEM rows, SMEM table."""
  a = _image((40, 130), np.uint8, seed=31)
  g = apps.make("histogram_equalize", "tiled_small", backend="pallas")
  out = np.asarray(g.compile("pallas", interpret=pltpu.InterpretParams())(a))
  np.testing.assert_array_equal(out, _equalize_np(a))


def _update_pipeline(op: str, rdims: int):
  """f[i] = init; f[idx(r)] op= v(r) over a 1-D or 2-D RDom of an int32 image."""
  inp = ir.ImageParam(jnp.int32, 2, name="inp")
  i = ir.Var("i")
  if rdims == 2:
    r = ir.RDom((0, inp.extent(1)), (0, inp.extent(0)), name="r")
    v, w = inp[r.y, r.x], r.x
  else:
    r = ir.RDom((2, 70), name="r")  # row 1 of the image, columns 2..71
    v, w = inp[1, r.x] + inp[1, r.x + 1], r.x
  f = ir.Func("f")
  f[i] = i - 5
  key = ir.cast(jnp.int32, v % 37) - 3  # bins -3..33 of f's [-4, 40): some never hit
  if op == "add":
    f[key] += v * 2 - w
  elif op == "max":
    f[key] = ir.max_(f[key], v - w)
  else:
    f[key] = ir.min_(f[key], v - w)
  f.bound(i, -4, 44)
  f.compute_root()
  y, x = ir.Var("y"), ir.Var("x")
  out = ir.Func("out")
  out[y, x] = f[ir.clamp(inp[y, x] % 50 - 4, -4, 39)]  # a LUT read of the updated table
  return Pipeline(out)


def _update_np(a: np.ndarray, op: str, rdims: int) -> np.ndarray:
  f = np.arange(-4, 40, dtype=np.int64) - 5
  if rdims == 2:
    vs, ws = a.ravel().astype(np.int64), np.tile(np.arange(a.shape[1]), a.shape[0])
  else:
    vs = a[1, 2:72].astype(np.int64) + a[1, 3:73]
    ws = np.arange(2, 72)
  for v, w in zip(vs, ws, strict=True):
    k = v % 37 - 3 + 4
    f[k] = {"add": f[k] + v * 2 - w, "max": max(f[k], v - w), "min": min(f[k], v - w)}[op]
  return f[np.clip(a % 50 - 4, -4, 39) + 4]


@pytest.mark.parametrize(
  "op,rdims,kind", [("add", 2, "tpu"), ("max", 2, "gpu"), ("min", 1, "tpu"), ("add", 1, "gpu")]
)
def test_rdom_update_kernels_equal_numpy(op, rdims, kind):
  a = np.random.default_rng(32).integers(-100, 1000, (19, 75)).astype(np.int32)
  p = _update_pipeline(op, rdims)
  rep = pb.describe(p, a.shape, target=kind)
  assert [r.how for r in rep.funcs] == ["pallas", "pallas"], str(rep)
  out = np.asarray(p.compile("pallas", target=kind, interpret=True)(a))
  np.testing.assert_array_equal(out, _update_np(a, op, rdims))


def test_rdom_update_kernel_interpret_params_equals_numpy():
  """32-bit rows loaded straight from the VMEM block at dynamic offsets, TPU-faithfully."""
  a = np.random.default_rng(37).integers(-100, 1000, (19, 75)).astype(np.int32)
  out = _update_pipeline("max", 2).compile("pallas", interpret=pltpu.InterpretParams())(a)
  np.testing.assert_array_equal(np.asarray(out), _update_np(a, "max", 2))


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_partial_scan_kernel_equals_numpy(kind):
  """A scan over part of a table (bins before and after it keep their values), reading a
  shifted table and an image row, with a runtime Param."""
  inp = ir.ImageParam(jnp.int32, 2, name="inp")
  gain = ir.Param(jnp.int32, name="gain", default=3)
  i, y, x = ir.Var("i"), ir.Var("y"), ir.Var("x")
  t = ir.Func("t")
  t[i] = i * 7 % 11 - 5
  t.bound(i, 0, 40).compute_root()
  s = ir.RDom((3, 12), name="s")
  f = ir.Func("f")
  f[i] = i * 100
  f[s.x] = f[s.x - 1] + (t[s.x + 4] * gain - inp[2, s.x])
  f.bound(i, -2, 22).compute_root()
  out = ir.Func("out")
  out[y, x] = f[ir.clamp(x - 2, -2, 19)] + y
  p = Pipeline(out)
  rep = pb.describe(p, (3, 24), target=kind)
  assert [r.how for r in rep.funcs] == ["pallas", "pallas", "pallas"], str(rep)  # t: a table
  assert "prefix scan over 12 points" in rep.funcs[1].detail
  a = np.random.default_rng(38).integers(-9, 9, (3, 24)).astype(np.int32)
  got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a, gain=5))
  tt = np.arange(40) * 7 % 11 - 5
  fv = {k: k * 100 for k in range(-2, 20)}
  for k in range(3, 15):
    fv[k] = fv[k - 1] + tt[k + 4] * 5 - int(a[2, k])
  want = (
    np.array([fv[min(max(xx - 2, -2), 19)] for xx in range(24)])[None, :] + np.arange(3)[:, None]
  )
  np.testing.assert_array_equal(got, want)


def test_unsupported_updates_stay_xla_and_say_why():
  """A 2-D Func's scatter, a transposed RDom read and a serial (non-commutative) update."""
  inp = ir.ImageParam(jnp.int32, 2, name="inp")
  i, j = ir.Var("i"), ir.Var("j")
  r = ir.RDom((0, inp.extent(1)), (0, inp.extent(0)), name="r")
  h2 = ir.Func("h2")
  h2[i, j] = 0
  h2[inp[r.y, r.x] % 4, 0] += 1
  h2.bound(i, 0, 4).bound(j, 0, 1).compute_root()
  tr = ir.Func("tr")
  tr[i] = 0
  tr[inp[r.x, r.y] % 4] += 1
  tr.bound(i, 0, 4).compute_root()
  se = ir.Func("se")
  se[i] = 1
  se[inp[r.y, r.x] % 4] = se[inp[r.y, r.x] % 4] * 2 + 1
  se.bound(i, 0, 4).compute_root()
  y, x = ir.Var("y"), ir.Var("x")
  out = ir.Func("out")
  out[y, x] = h2[1, 0] + tr[2] + se[3] + inp[y, x]
  p = Pipeline(out)
  a = np.random.default_rng(33).integers(0, 100, (9, 9)).astype(np.int32)
  rep = {r.func: r for r in pb.describe(p, a.shape, target="tpu").funcs}
  assert rep["h2"].how == "xla" and "2-D Func" in rep["h2"].detail
  assert rep["tr"].how == "xla" and "in that order" in rep["tr"].detail
  assert rep["se"].how == "xla" and "neither a commutative scatter" in rep["se"].detail
  with pytest.warns(pb.XlaFallbackWarning, match="h2.*tr.*se|h2"):
    out = np.asarray(p.compile("pallas", target="tpu", interpret=True)(a))
  np.testing.assert_array_equal(out, np.asarray(p.compile("xla")(a)))


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

# Every registered app, both tile configs, both targets. Specs are small (compile time grows
# with XLA's gathers/scatters between the kernels, not with the kernels): local_laplacian with
# 3 pyramid levels, bilateral_grid at 32x128 (its XLA splat/slice dominate the TPU compile).
_COMPILE_SPECS = {"bilateral_grid": ((32, 128), {}), "local_laplacian": ((64, 256), {"levels": 3})}
_COMPILE = [
  (app, sched, tgt)
  for app in sorted(apps.APPS)
  for sched in ("tiled", "tiled_small")
  for tgt in ("h100", "tpu-v5e")
]


def test_every_app_has_two_tile_configs_and_a_tiled_default():
  for name, app in apps.APPS.items():
    assert {"tiled", "tiled_small"} <= set(app.schedules["pallas"]), name
    assert app.default["pallas"] == "tiled", name


@pytest.mark.parametrize("app,sched,tgt", _COMPILE)
def test_compiles_deviceless(app, sched, tgt):
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  shape, kwargs = _COMPILE_SPECS.get(app, ((64, 256), {}))
  g = apps.make(app, sched, backend="pallas", **kwargs)
  kind = targets.get_target(tgt).kind
  out_shape = g.output_shape(shape) if g.output_shape else shape
  rep = pb.describe(g.pipeline, out_shape, input_shapes=[shape], target=kind)
  n_kernels = sum(r.how == "pallas" for r in rep.funcs)
  assert n_kernels >= 1, str(rep)
  fn = g.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct(shape, g.pipeline.images[0].dtype)
  # Gathers and updates left to XLA must be announced while tracing (1-D tables excepted).
  loud = [r for r in rep.funcs if r.how == "xla" and not r.detail.startswith("1-D")]
  ctx = pytest.warns(pb.XlaFallbackWarning) if loud else warnings.catch_warnings()
  with ctx:
    if not loud:
      warnings.simplefilter("error", pb.XlaFallbackWarning)
    exe = targets.compile_for(lambda a: fn(a), spec, target=tgt)
  text = exe.as_text()
  if kind == "gpu":
    assert text.lower().count("__gpu$xla.gpu.triton") >= n_kernels
  else:
    assert text.count("tpu_custom_call") >= n_kernels


@pytest.mark.parametrize("tgt", ["h100", "tpu-v5e"])
@pytest.mark.parametrize("op,rdims", [("max", 2), ("min", 1)])
def test_rdom_update_kernels_compile_deviceless(op, rdims, tgt):
  """max/min scatters (lane max/min reductions) and a 1-D RDom with the real compilers."""
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  kind = targets.get_target(tgt).kind
  fn = _update_pipeline(op, rdims).compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct((40, 256), jnp.int32)
  text = targets.compile_for(lambda a: fn(a), spec, target=tgt).as_text()
  assert text.lower().count("__gpu$xla.gpu.triton" if kind == "gpu" else "tpu_custom_call") >= 2


@pytest.mark.parametrize("tgt", ["h100", "tpu-v5e"])
def test_4096_bin_histogram_compiles_deviceless_quickly(tgt):
  """The largest kernel histogram. On GPU the default RDom block shrinks to keep the one-hot
  [bins, cols] tensor at 32K elements (4096 x 128 took 103 s to compile for H100)."""
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  inp = ir.ImageParam(jnp.int32, 2, name="inp")
  i, y, x = ir.Var("i"), ir.Var("y"), ir.Var("x")
  r = ir.RDom((0, inp.extent(1)), (0, inp.extent(0)), name="r")
  h = ir.Func("h")
  h[i] = 0
  h[inp[r.y, r.x] % 4096] += 1
  h.bound(i, 0, 4096).compute_root()
  out = ir.Func("out")
  out[y, x] = h[inp[y, x] % 4096]
  p = Pipeline(out)
  kind = targets.get_target(tgt).kind
  rep = pb.describe(p, (64, 256), target=kind)
  assert rep.funcs[0].how == "pallas" and ("block (8, 8)" in rep.funcs[0].detail) == (kind == "gpu")
  fn = p.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct((64, 256), jnp.int32)
  text = targets.compile_for(lambda a: fn(a), spec, target=tgt).as_text()
  assert text.lower().count("__gpu$xla.gpu.triton" if kind == "gpu" else "tpu_custom_call") >= 2


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


# Sliding window with store_at(out, yo) + compute_at(out, yi): the producer is computed at a loop
# inside the block, so each store scope is one block. GPU: a row loop inside the block carries
# the producer's rows; TPU: overlapped tiling (its carried window slides across blocks, below).
# Results must be exact either way, and describe() must say which (and why).


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
  assert "sliding window" in line and "blur_x" in line and "carried VMEM window" not in line
  if kind == "tpu":
    assert "overlapped tiling" in line and "computed at loop 'yi', inside the block" in line
  else:  # rows of 8: 8 + 2 producer rows per block instead of 3 taps x 8
    assert "inside each block" in line and "computing 10 producer rows per block" in line
    assert "would compute 24" in line and "overlapped tiling" not in line


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


# Carried sliding window (TPU): the producer is stored outside the grid axis it is computed at
# (store_root / store_at an outer loop, compute_at the outer loop of the slid dim), so that grid
# axis runs in order and the producer's window is kept in VMEM scratch between steps.


def _carried(ty, tx):
  def sched(g):
    v = g.vars
    by, bx = g.funcs["blur_y"], g.funcs["blur_x"]
    if tx is None:  # y-only split: one store scope, the window slides down the whole image
      by.split(v["y"], v["yo"], v["yi"], ty)
      bx.store_root().compute_at(by, v["yo"])
    else:  # 2-D tiles, columns outermost: one store scope per column strip, slid down y
      by.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
      by.reorder(v["yo"], v["xo"])
      bx.store_at(by, v["xo"]).compute_at(by, v["yo"])

  return sched


@pytest.mark.parametrize(
  "ty,tx,shape,interp",
  [
    (8, None, (37, 130), True),
    (8, 128, (29, 300), True),
    (16, 128, (35, 140), "params"),
  ],
)
def test_carried_sliding_window_equals_numpy_and_xla(ty, tx, shape, interp):
  a = _image(shape, seed=23)
  g = _blur_graph(_carried(ty, tx))
  ip = pltpu.InterpretParams() if interp == "params" else True
  out = np.asarray(g.compile("pallas", target="tpu", interpret=ip)(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, np.asarray(g.compile("xla")(a)), rtol=1e-5, atol=1e-6)
  line = str(pb.describe(g.pipeline, shape, target="tpu").funcs[-1])
  assert "carried VMEM window along 'y'" in line and "computed as overlapped tiling" not in line
  assert f"('y', {-(-shape[0] // ty)}, 'arbitrary')" in line  # the slid axis is sequential


def test_carried_sliding_window_gpu_slides_inside_each_block():
  a = _image((29, 140), seed=24)
  g = _blur_graph(_carried(8, 128))
  fn = g.compile("pallas", target="gpu", interpret=True)
  np.testing.assert_allclose(np.asarray(fn(a)), _blur_np(a), rtol=1e-5, atol=1e-6)
  line = str(pb.describe(g.pipeline, (29, 140), target="gpu").funcs[-1])
  assert "inside each block" in line and "each recomputes its halo" in line, line
  assert "scan" in str(jax.make_jaxpr(fn)(a))  # the row loop is in the kernel


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_row_slide_with_taps_across_rows_equals_numpy(kind):
  """A producer read at shifts in both dims (y - 1..y + 1 and x - 1..x + 1): the GPU row loop
  carries one window of rows per x shift. Ragged blocks; equal to numpy."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  y, x, yo, yi, xo, xi = (ir.Var(n) for n in ("y", "x", "yo", "yi", "xo", "xi"))
  e = boundary.repeat_edge(inp)
  p, out = ir.Func("p"), ir.Func("out")
  p[y, x] = ir.sin(e[y, x]) + e[y, x + 1] * 0.5
  out[y, x] = p[y - 1, x - 1] + 2.0 * p[y + 1, x + 1] - p[y, x + 1] + p[y + 1, x - 1] * 0.25
  out.tile(x, y, xo, yo, xi, yi, 128, 8)
  p.store_at(out, xo).compute_at(out, yi)
  pipe = Pipeline(out)
  h, w = 21, 150
  a = _image((h, w), seed=59)
  got = np.asarray(pipe.compile("pallas", target=kind, interpret=True)(a))
  q = np.pad(a.astype(np.float64), 2, mode="edge")
  pv = np.sin(q[:, :-1]) + q[:, 1:] * 0.5  # p over rows -2..h+1, cols -2..w (q has 4 extra)

  def pp(dy, dx):
    return pv[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]

  want = pp(-1, -1) + 2.0 * pp(1, 1) - pp(0, 1) + pp(1, -1) * 0.25
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  line = str(pb.describe(pipe, (h, w), target=kind).funcs[-1])
  if kind == "gpu":  # x shift -1: rows -1..1, +1: rows 0..1: (8 + 2) + (8 + 1); 4 taps x 8
    assert "computing 19 producer rows per block" in line and "would compute 32" in line, line


def test_carried_sliding_window_says_when_it_overrides_parallel():
  def sched(g):
    v = g.vars
    by, bx = g.funcs["blur_y"], g.funcs["blur_x"]
    by.split(v["y"], v["yo"], v["yi"], 8).parallel(v["yo"])
    bx.store_root().compute_at(by, v["yo"])

  g = _blur_graph(sched)
  line = str(pb.describe(g.pipeline, (37, 130), target="tpu").funcs[-1])
  assert "carried VMEM window" in line and "('y', 5, 'arbitrary')" in line
  assert "was scheduled parallel" in line, line
  gpu = str(pb.describe(g.pipeline, (37, 130), target="gpu").funcs[-1])
  assert "('y', 5)" in gpu and "arbitrary" not in gpu, gpu  # no dimension semantics on GPU


@pytest.mark.parametrize("ty,tx,shape", [(8, None, (37, 130)), (8, 128, (29, 300))])
def test_carried_sliding_window_reuses_rows(ty, tx, shape):
  # Producer rows computed per store scope must be the scope's output rows + the halo window
  # (not blocks x (block + halo)). Independent count: blur_y reads blur_x at y-1..y+1, which
  # reads the input at y (no y halo), so the window is block + 2 rows rounded up to 8.
  g = _blur_graph(_carried(ty, tx))
  p = g.pipeline.plan(shape, [shape])
  shapes = {id(i): tuple(shape) for i in p.images}
  _, k = pb._lowerings(p, shapes, "tpu")[-1]
  assert k.slide is not None
  st = pb.slide_stats(k)
  window = -(-(ty + 2) // 8) * 8
  steps = -(-shape[0] // ty)
  scopes = 1 if tx is None else -(-shape[1] // tx)
  assert st["window"] == window and st["new"] == ty
  assert st["rows"] == scopes * (steps * ty + window - ty)
  assert st["overlapped_rows"] == scopes * steps * window
  assert st["rows"] < st["overlapped_rows"]
  line = str(pb.describe(g.pipeline, shape, target="tpu").funcs[-1])
  assert f"producer rows computed {st['rows']}" in line


def test_carried_sliding_window_under_vmap():
  batch = np.stack([_image((21, 130), seed=s) for s in (25, 26)])
  g = _blur_graph(_carried(8, None))
  got = np.asarray(jax.vmap(g.compile("pallas", target="tpu", interpret=True))(batch))
  for b in range(2):
    np.testing.assert_allclose(got[b], _blur_np(batch[b]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "tgt,ty,tx",
  [
    ("h100", 8, None),
    ("h100", 16, 128),
    ("tpu-v5e", 8, None),
    ("tpu-v5e", 16, 128),
    ("tpu-v5e", 8, 128),
  ],
)
def test_carried_sliding_window_compiles_deviceless(tgt, ty, tx):
  """TPU: the carried VMEM window; GPU: the row loop inside each block."""
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  kind = targets.get_target(tgt).kind
  g = _blur_graph(_carried(ty, tx))
  fn = g.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct((64, 256), g.pipeline.images[0].dtype)
  how = "carried VMEM window" if kind == "tpu" else "inside each block"
  assert how in str(pb.describe(g.pipeline, (64, 256), target=kind))
  text = targets.compile_for(lambda a: fn(a), spec, target=tgt).as_text()
  assert ("tpu_custom_call" in text) if kind == "tpu" else ("__gpu$xla.gpu.triton" in text.lower())


def _dimension_semantics(fn, shape):
  """The dimension_semantics of each pallas_call in ``fn``'s jaxpr (TPU compiler params)."""

  def walk(j):
    for e in j.eqns:
      if e.primitive.name == "pallas_call":
        yield tuple(e.params["compiler_params"].dimension_semantics)
      for v in e.params.values():
        inner = getattr(v, "jaxpr", None)
        if inner is not None:
          yield from walk(getattr(inner, "jaxpr", inner))

  return list(walk(jax.make_jaxpr(fn)(np.zeros(shape, np.float32)).jaxpr))


def test_tpu_dimension_semantics_reach_the_pallas_call():
  # blur's default: tiles with yo parallel, xo serial -> ('parallel', 'arbitrary')
  fn = apps.make("blur", backend="pallas").compile("pallas", target="tpu")
  assert _dimension_semantics(fn, (64, 256)) == [("parallel", "arbitrary")]

  def sched(g):  # yo parallel, but a carried window slides along it: 'arbitrary'
    v = g.vars
    g.funcs["blur_y"].split(v["y"], v["yo"], v["yi"], 8).parallel(v["yo"])
    g.funcs["blur_x"].store_root().compute_at(g.funcs["blur_y"], v["yo"])

  fn = _blur_graph(sched).compile("pallas", target="tpu")
  assert _dimension_semantics(fn, (40, 256)) == [("arbitrary",)]


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_bilateral_slice_kernel_and_gpu_row_slide_under_vmap(kind):
  """The in-kernel slice (gather / upsampling matmuls) and the GPU row loop under jax.vmap."""
  batch = np.stack([_image((21, 35), seed=s) for s in (61, 62)])
  xla = apps.make("bilateral_grid").compile("xla")
  g = apps.make("bilateral_grid", backend="pallas")
  got = np.asarray(jax.vmap(g.compile("pallas", target=kind, interpret=True))(batch))
  for b in range(2):
    np.testing.assert_allclose(got[b], np.asarray(xla(batch[b])), rtol=2e-5, atol=2e-6)
  if kind == "gpu":
    batch = np.stack([_image((29, 140), seed=s) for s in (63, 64)])
    fn = _blur_graph(_carried(8, 128)).compile("pallas", target="gpu", interpret=True)
    got = np.asarray(jax.vmap(fn)(batch))
    for b in range(2):
      np.testing.assert_allclose(got[b], _blur_np(batch[b]), rtol=1e-5, atol=1e-6)


def test_bilateral_slice_kernel_fits_tpu_vmem_and_compiles_at_a_real_size():
  """At 2048x2048 for v5e: the in-kernel slice keeps many plane-sized temporaries in scoped
  VMEM, so its default TPU block is 32x256 (64x256 needed 19.9 MB of the 16 MB limit); windows
  start at (8, 128) multiples, so several lane blocks compile; and the grid is stored with a
  wide minor dim (as [gy, gx, z, c], XLA's (8, 128) tiling of the 2-wide c made the build ask
  for 34 GB of HBM)."""
  if "tpu-v5e" not in targets.available_targets():
    pytest.skip("compiler plugin for tpu-v5e not installed")
  g = apps.make("bilateral_grid", backend="pallas")
  shape = (2048, 2048)
  line = str(pb.describe(g.pipeline, shape, target="tpu").funcs[-1])
  assert "block (32, 256)" in line and "('x', 8" in line, line
  fn = g.compile("pallas", target="tpu")
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  assert "tpu_custom_call" in targets.compile_for(lambda a: fn(a), spec, target="tpu-v5e").as_text()


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_upsampled_reads_keep_inf_and_nan_cells(kind):
  """A grid with +inf, -inf and NaN cells: each covers only its own 4x4 pixels (the TPU
  matmuls would spread 0 * inf = NaN over the whole block if non-finite cells were not
  upsampled separately)."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  gy, gx, z, y, x = (ir.Var(n) for n in ("gy", "gx", "z", "y", "x"))
  xo, yo, xi, yi = (ir.Var(n) for n in ("xo", "yo", "xi", "yi"))
  g, out = ir.Func("g"), ir.Func("out")
  fx = ir.cast(jnp.float32, gx)
  # 1 / 0 = +inf at gx == 3, -inf at gx == 6 (as -1 / 0), 0 / 0 = NaN at gx == 8 and gy == 1
  num = ir.select(gx == 6, -1.0, ir.select((gx == 8) & (gy == 1), 0.0, 1.0))
  den = ir.select((gx == 3) | (gx == 6) | ((gx == 8) & (gy == 1)), 0.0, fx + 1.0)
  g[gy, gx, z] = num / den + ir.cast(jnp.float32, z)
  g.compute_root()
  zi = ir.clamp(ir.cast(jnp.int32, inp[y, x] * 6.0), 0, 4)
  out[y, x] = g[y // 4, x // 4, zi]
  out.tile(x, y, xo, yo, xi, yi, 128, 16)
  p = Pipeline(out)
  h, w = 16, 40
  a = _image((h, w), seed=67)
  got = np.asarray(p.compile("pallas", target=kind, interpret=True)(a))
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  cy, cx = yy // 4, xx // 4
  num = np.where(cx == 6, -1.0, np.where((cx == 8) & (cy == 1), 0.0, 1.0))
  den = np.where((cx == 3) | (cx == 6) | ((cx == 8) & (cy == 1)), 0.0, cx + 1.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    want = num / den + np.clip((a * np.float32(6.0)).astype(np.int32), 0, 4)
  assert np.isposinf(want).sum() == 16 * 4 and np.isneginf(want).sum() == 16 * 4
  assert np.isnan(want).sum() == 16
  np.testing.assert_allclose(got, want, rtol=1e-6)  # NaN positions must match too


def test_gpu_row_slide_only_where_it_saves_producer_rows():
  """``p[y - 1, x - 1] + p[y + 1, x + 1]``: each x shift is read at one row, so a row loop
  would compute as many producer rows as recomputing per tap: overlapped tiling, with why."""
  inp = ir.ImageParam(jnp.float32, 2, name="inp")
  y, x, yo, yi, xo, xi = (ir.Var(n) for n in ("y", "x", "yo", "yi", "xo", "xi"))
  e = boundary.repeat_edge(inp)
  p, out = ir.Func("p"), ir.Func("out")
  p[y, x] = e[y, x] * 2.0
  out[y, x] = p[y - 1, x - 1] + p[y + 1, x + 1]
  out.tile(x, y, xo, yo, xi, yi, 128, 8)
  p.store_at(out, xo).compute_at(out, yi)
  a = _image((21, 150), seed=71)
  line = str(pb.describe(Pipeline(out), a.shape, target="gpu").funcs[-1])
  assert "overlapped tiling" in line and "16 producer rows per block" in line, line
  assert "no reuse to gain" in line
  got = np.asarray(Pipeline(out).compile("pallas", target="gpu", interpret=True)(a))
  q = np.pad(a.astype(np.float64), 1, mode="edge") * 2.0
  np.testing.assert_allclose(got, q[:-2, :-2] + q[2:, 2:], rtol=1e-6)


# Halide's parallel tiles: tile(...).fuse(xo, yo, t).parallel(t) is one grid axis over the blocks
# of both dims (block indices t // nx, t % nx).


def _fused_tiles(ty, tx):
  def sched(g):
    v = g.vars
    t = ir.Var("t")
    by = g.funcs["blur_y"]
    by.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], tx, ty)
    by.fuse(v["xo"], v["yo"], t).parallel(t)
    g.funcs["blur_x"].compute_at(by, t)

  return sched


@pytest.mark.parametrize("kind,ty,tx,shape", [("gpu", 8, 16, (21, 45)), ("tpu", 8, 128, (19, 300))])
def test_fused_tile_loops_are_one_grid_axis(kind, ty, tx, shape):
  a = _image(shape, seed=23)
  g = _blur_graph(_fused_tiles(ty, tx))
  out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)
  rep = str(pb.describe(g.pipeline, shape, target=kind).funcs[-1])
  ny, nx = -(-shape[0] // ty), -(-shape[1] // tx)
  axis = ("y*x", ny * nx, "parallel") if kind == "tpu" else ("y*x", ny * nx)
  assert f"grid [{axis}]" in rep, rep


def test_fusing_a_block_loop_with_one_inside_the_block_is_refused():
  g = _blur_graph(lambda g: None)
  v = g.vars
  by = g.funcs["blur_y"]
  by.tile(v["x"], v["y"], v["xo"], v["yo"], v["xi"], v["yi"], 16, 8).fuse(v["xi"], v["yo"], "t")
  with pytest.raises(NotImplementedError, match=r"fuse\('xi', 'yo'\) joins a loop over blocks"):
    g.compile("pallas", target="gpu", interpret=True)(_image((16, 32)))


@pytest.mark.parametrize("tgt", ["h100", "tpu-v5e"])
def test_fused_tile_loops_compile_deviceless(tgt):
  if tgt not in targets.available_targets():
    pytest.skip(f"compiler plugin for {tgt} not installed")
  kind = targets.get_target(tgt).kind
  g = _blur_graph(_fused_tiles(8, 128 if kind == "tpu" else 32))
  fn = g.compile("pallas", target=kind)
  spec = jax.ShapeDtypeStruct((64, 256), g.pipeline.images[0].dtype)
  text = targets.compile_for(lambda a: fn(a), spec, target=tgt).as_text()
  assert ("triton" in text.lower()) if kind == "gpu" else ("tpu_custom_call" in text)


def _two_levels(slide):
  def sched(g):
    v = g.vars
    yio, yii = ir.Var("yio"), ir.Var("yii")
    by, bx = g.funcs["blur_y"], g.funcs["blur_x"]
    by.split(v["y"], v["yo"], v["yi"], 16).split(v["yi"], yio, yii, 8)
    if slide:
      bx.store_at(by, v["yo"])
    bx.compute_at(by, yio)

  return sched


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
@pytest.mark.parametrize("slide", [False, True])
def test_second_tiling_level_inside_the_block_is_a_hint(kind, slide):
  """``split(y, yo, yi, 16).split(yi, yio, yii, 8)``: the block is the first level's 16 rows;
  producers computed (or slid) at ``yio`` are computed per block, as at any loop inside it."""
  a = _image((37, 20), seed=24)
  g = _blur_graph(_two_levels(slide))
  out = np.asarray(g.compile("pallas", target=kind, interpret=True)(a))
  np.testing.assert_allclose(out, _blur_np(a), rtol=1e-5, atol=1e-6)
  rep = str(pb.describe(g.pipeline, (37, 20), target=kind).funcs[-1])
  assert "block (16," in rep and "computes ['blur_x'] per block + halo" in rep, rep


def test_splitting_the_loop_over_blocks_is_refused():
  g = _blur_graph(lambda g: None)
  v = g.vars
  yoo, yoi = ir.Var("yoo"), ir.Var("yoi")
  g.funcs["blur_y"].split(v["y"], v["yo"], v["yi"], 8).split(v["yo"], yoo, yoi, 2)
  g.funcs["blur_x"].compute_at(g.funcs["blur_y"], yoi)
  with pytest.raises(NotImplementedError, match=r"split of the loop over blocks 'yo'"):
    g.compile("pallas", target="gpu", interpret=True)(_image((32, 16)))
