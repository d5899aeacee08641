"""Schedules: validation errors, results independent of schedule, the lowered loop nest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched.pipelines as pl
from jaxsched.pipelines import apps, lower
from jaxsched.pipelines.lower import whole_dims


def _three_stage():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  a, b, out = pl.Func("a"), pl.Func("b"), pl.Func("out")
  a[y, x] = c[y, x - 1] * 0.25 + c[y, x + 1] * 0.75
  b[y, x] = a[y - 1, x] - a[y + 2, x] * 0.5
  out[y, x] = b[y, x // 2 * 2] + a[y, x]
  vs = {n: pl.Var(n) for n in ("xo", "yo", "xi", "yi", "t")}
  return img, a, b, out, y, x, vs


def _ref(v):
  p = np.pad(v.astype(np.float64), 3, mode="edge")
  a = p[:, 2:-4] * 0.25 + p[:, 4:-2] * 0.75  # rows -3..h+2, cols 0..w-1
  h, w = v.shape
  b = a[2 : 2 + h] - a[5 : 5 + h] * 0.5
  return b[:, (np.arange(w) // 2) * 2] + a[3 : 3 + h]


SCHEDULES = {
  "inline": lambda a, b, out, y, x, v: None,
  "root_hints": lambda a, b, out, y, x, v: (
    a.compute_root().vectorize(x, 8).parallel(y),
    b.compute_root().split(y, v["yo"], v["yi"], 3).reorder(v["yi"], x, v["yo"]).unroll(v["yi"]),
    out.fuse(x, y, v["t"]).parallel(v["t"]),
  ),
  "tiles": lambda a, b, out, y, x, v: (
    out.tile(x, y, v["xo"], v["yo"], v["xi"], v["yi"], 4, 3),
    a.compute_at(out, v["xo"]),
    b.compute_at(out, v["xo"]),
  ),
  "tiles_mixed_levels": lambda a, b, out, y, x, v: (  # run at the outer loop, yo
    out.tile(x, y, v["xo"], v["yo"], v["xi"], v["yi"], 4, 3),
    a.compute_at(out, v["yo"]),
    b.compute_at(out, v["xo"]),
  ),
  "rows": lambda a, b, out, y, x, v: (
    out.split(y, v["yo"], v["yi"], 5),
    a.compute_at(out, v["yo"]).vectorize(x),
    b.compute_at(out, v["yo"]),
  ),
  "sliding": lambda a, b, out, y, x, v: (
    out.split(y, v["yo"], v["yi"], 4),
    a.store_at(out, v["yo"]).compute_at(out, v["yi"]),
    b.store_at(out, v["yo"]).compute_at(out, v["yi"]),
  ),
  "sliding_root": lambda a, b, out, y, x, v: (
    a.store_root().compute_at(out, y),
    b.compute_at(out, y),
  ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_never_changes_results(name):
  img, a, b, out, y, x, v = _three_stage()
  SCHEDULES[name](a, b, out, y, x, v)
  data = np.random.default_rng(7).random((11, 9), dtype=np.float32)
  got = pl.Pipeline(out).compile()(data)
  np.testing.assert_allclose(np.asarray(got), _ref(data), rtol=1e-5, atol=1e-6)


def test_schedule_errors_name_func_var_and_value():
  img, a, b, out, y, x, v = _three_stage()
  with pytest.raises(ValueError, match=r"split: Func a .* no loop var 'z'; its loops are \['y', "):
    a.split(pl.Var("z"), v["xo"], v["xi"], 4)
  with pytest.raises(ValueError, match="split of Func a var x: factor=0 must be a positive int"):
    a.split(x, v["xo"], v["xi"], 0)
  with pytest.raises(ValueError, match="factor=-2"):
    a.vectorize(x, -2)
  with pytest.raises(TypeError, match="tile takes 6 or 8 arguments"):
    out.tile(x, y, 4)
  with pytest.raises(ValueError, match="repeated vars"):
    out.reorder(x, x)
  with pytest.raises(ValueError, match="cannot be computed inside itself"):
    a.compute_at(a, x)
  with pytest.raises(ValueError, match=r"Func a has 0 updates; update\(0\) is invalid"):
    a.update(0)
  with pytest.raises(ValueError, match="bound: Func a has no pure var 'q'"):
    a.bound("q", 0, 4)
  data = np.ones((6, 5), np.float32)

  def compile_err(setup, exc, pattern):
    img, a, b, out, y, x, v = _three_stage()
    setup(a, b, out, y, x, v)
    with pytest.raises(exc, match=pattern):
      pl.Pipeline(out).compile()(data)

  # a is not called by b's consumer... compute a at a Func that does not call it.
  compile_err(
    lambda a, b, out, y, x, v: (b.compute_root(), a.compute_at(b, x), out.compute_root()),
    ValueError,
    r"compute_at: Func a is computed at Func b but also used by \['out'\]",
  )
  compile_err(
    lambda a, b, out, y, x, v: (b.compute_root(), b.compute_at(out, v["yo"])),
    ValueError,
    r"Func out has no loop var 'yo' .*its loops are \['y', 'x'\]",
  )
  compile_err(
    lambda a, b, out, y, x, v: a.compute_at(pl.Func("other"), x),
    ValueError,
    "not a \\(non-inline\\) stage of this pipeline",
  )
  compile_err(
    lambda a, b, out, y, x, v: (a.compute_root(), a.bound(x, 0, 3)),
    ValueError,
    r"Func a.bound\('x', 0, 3\) is too small: region \[0, 4\] is required",
  )
  compile_err(
    lambda a, b, out, y, x, v: (a.compute_root(), a.store_at(out, y)),
    ValueError,
    "store_at.* needs a compute_at",
  )
  compile_err(
    lambda a, b, out, y, x, v: (
      b.compute_root(),
      a.store_at(out, x).compute_at(out, y),
    ),
    ValueError,
    r"Func a is stored at Func out's loop 'x', inside the loop 'y' it is computed at",
  )


def test_compute_at_non_consumer():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  f, g, h = pl.Func("f"), pl.Func("g"), pl.Func("h")
  f[y, x] = img[y, x] * 2
  g[y, x] = img[y, x] + 1
  h[y, x] = f[y, x] + g[y, x]
  g.compute_root()
  f.compute_at(g, x)
  with pytest.raises(ValueError, match=r"compute_at: Func g does not call Func f .*\['h'\]"):
    pl.Pipeline(h).compile()(np.ones((3, 3), np.float32))


def test_loop_nest_tiled_and_sliding_features():
  nest = apps.make("harris", "tiled").pipeline.lower((256, 512))
  text = str(nest)
  assert "for yo in [0, 2) tile:" in text and "for xo in [0, 2) tile:" in text
  comps = {n.func: n for _, n in nest.nodes() if isinstance(n, pl.Compute)}
  # Gradients over a 128x256 tile plus a 1-pixel halo on each side.
  assert comps["Ix"].shape == (130, 258)
  assert comps["Ix"].recompute == pytest.approx(130 * 258 * 4 / (258 * 514))
  assert comps["harris"].points == 256 * 512 and comps["harris"].recompute == 1.0
  assert set(comps["harris"].inlined) >= {"Sxx", "Ixx", "Syy"}
  feats = nest.features()
  assert feats["tile_iterations"] == 4 and feats["max_recompute"] > 1
  assert feats["bytes_written"] > 0 and feats["flops"] > feats["points"]

  slide = apps.make("blur", "sliding").pipeline.lower((200, 50))
  comps = {n.func: n for _, n in slide.nodes() if isinstance(n, pl.Compute)}
  # blur_x rows: 4 strips of 64 (the last shifted inwards); each strip needs 66 rows, each
  # computed once: 3 at the first step, then one new row per step.
  assert comps["blur_x"].shape == (1, 50)
  assert comps["blur_x"].points == 4 * 66 * 50
  realizes = [n for _, n in slide.nodes() if isinstance(n, pl.Realize)]
  assert [r.shape for r in realizes] == [(200, 50), (66, 50)]


def test_update_stage_schedule_and_hints_in_loop_nest():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  i = pl.Var("i")
  r = pl.RDom((0, img.extent(0)), (0, img.extent(1)), name="r")
  h = pl.Func("h")
  h[i] = 0
  h[pl.clamp(pl.cast(jnp.int32, img[r.x, r.y] * 4), 0, 3)] += 1
  h.update(0).vectorize(r.x, 4).parallel(r.y)
  h.vectorize(i)
  nest = pl.Pipeline(h).lower((4,), input_shapes=[(8, 16)])
  loops = {n.var: n for _, n in nest.nodes() if isinstance(n, pl.Loop)}
  assert loops["i"].kind == "vectorized" and loops["r.y"].kind == "parallel"
  assert loops["r.x_vi"].kind == "vectorized" and loops["r.x_vi"].extent == 4
  assert loops["r.x_vo"].extent == 2
  with pytest.raises(ValueError, match="no shape for ImageParam img"):
    pl.Pipeline(h).lower((4,))


def test_backend_registry_and_every_app_lowers():
  with pytest.raises(ValueError, match="already registered"):
    pl.register_backend("xla", lambda *a, **k: None)
  with pytest.raises(TypeError, match="not callable"):
    pl.register_backend("mine", 3)
  assert "xla" in pl.available_backends()
  with pytest.raises(ValueError, match=r"the xla backend takes no options, got \['target'\]"):
    apps.make("blur").compile(target="gpu")(np.ones((4, 4), np.float32))
  for name, app in apps.APPS.items():
    for sched in app.schedules["xla"]:
      g = apps.make(name, sched)
      shapes = [(64, 96)] * len(g.pipeline.images)
      out = g.output_shape((64, 96)) if g.output_shape else (64, 96)
      nest = g.pipeline.lower(out, input_shapes=shapes)
      feats = nest.features()
      assert feats["points"] > 0 and feats["bytes_read"] > 0, (name, sched)
      assert str(nest).startswith("realize"), (name, sched)


def _chain():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  a, b, out = pl.Func("a"), pl.Func("b"), pl.Func("out")
  a[y, x] = c[y, x - 1] + c[y, x + 1] * 2.0
  b[y, x] = a[y - 1, x] * 0.5 + a[y + 1, x]
  out[y, x] = b[y, x] - b[y, x + 2] * 0.25
  return img, a, b, out, y, x


def _chain_ref(v):
  h, w = v.shape
  d = v.astype(np.float64)

  def c(yy, xx):
    return d[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

  def a(yy, xx):
    return c(yy, xx - 1) + c(yy, xx + 1) * 2.0

  def b(yy, xx):
    return a(yy - 1, xx) * 0.5 + a(yy + 1, xx)

  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return b(yy, xx) - b(yy, xx + 2) * 0.25


def _tile(out, x, y, backend):
  """Tiles ``out`` (4x3 on XLA, 8x128 Pallas blocks); returns (xo, yo)."""
  xo, yo, xi, yi = (pl.Var(n) for n in ("xo", "yo", "xi", "yi"))
  tx, ty = (4, 3) if backend == "xla" else (128, 8)
  out.tile(x, y, xo, yo, xi, yi, tx, ty)
  return xo, yo


def _run(out, backend, data):
  """``out`` on "xla" or "pallas-gpu" / "pallas-tpu" (interpret mode)."""
  import jaxsched.pallas  # noqa: F401  (registers the pallas backend)

  if backend == "xla":
    return np.asarray(pl.Pipeline(out).compile()(data))
  return np.asarray(pl.Pipeline(out).compile("pallas", target=backend[7:], interpret=True)(data))


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_nested_compute_at_is_computed_per_outer_tile(backend):
  """``a.compute_at(b, y)`` with ``b.compute_at(out, xo)``: a nested compute_at is computed at
  its outermost consumer's tile (one level of tile loops); results equal numpy."""
  img, a, b, out, y, x = _chain()
  xo, _ = _tile(out, x, y, backend)
  b.compute_at(out, xo)
  a.compute_at(b, y)
  data = np.random.default_rng(8).random((11, 9), dtype=np.float32)
  np.testing.assert_allclose(_run(out, backend, data), _chain_ref(data), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_compute_at_a_func_with_scatter_updates(backend):
  """A histogram (pure init + scatter update) computed per tile of its consumer: every tile
  recomputes the same whole-image histogram, so results equal numpy's. A non-scatter update
  still cannot be computed at a tile, with a message saying which."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x, i = pl.Var("y"), pl.Var("x"), pl.Var("i")
  r = pl.RDom((0, img.extent(1)), (0, img.extent(0)), name="r")
  h, out = pl.Func("h"), pl.Func("out")
  h[i] = 0
  h[pl.clamp(pl.cast(jnp.int32, img[r.y, r.x] * 8.0), 0, 7)] += 1
  out[y, x] = img[y, x] * pl.cast(
    jnp.float32, h[pl.clamp(pl.cast(jnp.int32, img[y, x] * 8.0), 0, 7)]
  )
  xo, yo = _tile(out, x, y, backend)
  h.compute_at(out, xo)
  data = np.random.default_rng(9).random((11, 9), dtype=np.float32)
  bins = np.clip((data * np.float32(8.0)).astype(np.int64), 0, 7)
  hist = np.bincount(bins.ravel(), minlength=8)
  np.testing.assert_allclose(_run(out, backend, data), data * hist[bins], rtol=1e-6)


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_compute_at_a_func_with_scans(backend):
  """Order-dependent updates (a serial scan down the rows, a prefix sum along them, and a
  1-D recurrence) computed at a tile of their consumer: as in Halide, each tile computes the
  scanned dims whole (here both dims of ``g``; ``f`` only along x, per tile along y)."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x, i = pl.Var("y"), pl.Var("x"), pl.Var("i")
  h, w = 11, 9
  c = pl.boundary.repeat_edge(img)
  q, s = pl.RDom((1, h - 1), name="q"), pl.RDom((1, w - 1), name="s")
  g, f, t, out = pl.Func("g"), pl.Func("f"), pl.Func("t"), pl.Func("out")
  g[y, x] = pl.sin(c[y, x])
  g[q.x, x] = g[q.x - 1, x] * 0.5 + g[q.x, x]  # not an add of g: the serial path
  g[y, s.x] = g[y, s.x - 1] + g[y, s.x]  # a prefix sum
  f[y, x] = c[y, x]
  f[y, s.x] = f[y, s.x - 1] * 0.75 + f[y, s.x]
  t[i] = pl.cast(jnp.float32, i)
  k = pl.RDom((1, 7), name="k")
  t[k.x] = t[k.x - 1] * 2.0 - t[k.x]
  idx = pl.clamp(pl.cast(jnp.int32, img[y, x] * 8.0), 0, 7)
  out[y, x] = g[y, x] + g[y, x - 1] + f[y + 1, x] + t[idx]
  xo, _ = _tile(out, x, y, backend)
  for fn in (g, f, t):
    fn.compute_at(out, xo)
  data = np.random.default_rng(14).random((h, w), dtype=np.float32)
  d = data.astype(np.float64)
  gg = np.sin(d)
  for r in range(1, h):
    gg[r] = gg[r - 1] * 0.5 + gg[r]
  gg = np.cumsum(gg, axis=1)
  ff = d.copy()
  for r in range(1, w):
    ff[:, r] = ff[:, r - 1] * 0.75 + ff[:, r]
  tt = np.arange(8, dtype=np.float64)
  for r in range(1, 8):
    tt[r] = tt[r - 1] * 2.0 - tt[r]
  xm = np.clip(np.arange(w) - 1, 0, None)
  yp = np.clip(np.arange(h) + 1, None, h - 1)
  want = gg + gg[:, xm] + ff[yp] + tt[np.clip((data * np.float32(8.0)).astype(np.int64), 0, 7)]
  np.testing.assert_allclose(_run(out, backend, data), want, rtol=1e-5, atol=1e-5)
  assert whole_dims(g) == (0, 1) and whole_dims(f) == (1,) and whole_dims(t) == (0,)


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_compute_at_a_func_with_pointwise_updates(backend):
  """Updates that read the Func only at the point they write (``f[y, x] = f[y, x] * 2 + ..``,
  and a serial, order-dependent RDom update into the point) are tile-local: computed per tile
  of the consumer (with its halo), results equal numpy's."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  r = pl.RDom((0, 3), name="r")
  f, out = pl.Func("f"), pl.Func("out")
  f[y, x] = pl.sin(c[y, x])
  f[y, x] = f[y, x] * 2.0 + c[y + 1, x]
  f[y, x] = pl.max(f[y, x] * 0.5, c[y, x + r.x])
  out[y, x] = f[y, x] + f[y + 1, x - 1]
  xo, _ = _tile(out, x, y, backend)
  f.compute_at(out, xo)
  data = np.random.default_rng(10).random((11, 9), dtype=np.float32)
  h, w = data.shape
  d = data.astype(np.float64)

  def a(yy, xx):
    return d[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]

  def fv(yy, xx):
    v = np.sin(a(yy, xx)) * 2.0 + a(yy + 1, xx)
    for k in range(3):
      v = np.maximum(v * 0.5, a(yy, xx + k))
    return v

  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  want = fv(yy, xx) + fv(yy + 1, xx - 1)
  np.testing.assert_allclose(_run(out, backend, data), want, rtol=1e-5, atol=1e-6)


def test_updates_whose_where_reads_other_points():
  """An RDom.where predicate reading the Func at a neighbour: computed at a tile, the dim it
  reads along is computed whole; read beyond the region the update covers (the last column's
  right neighbour), it raises, naming the update, the dim and the ranges."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x, yo, yi = pl.Var("y"), pl.Var("x"), pl.Var("yo"), pl.Var("yi")
  data = np.random.default_rng(12).random((9, 7), dtype=np.float32)
  want = data.astype(np.float64)
  for k in range(2):
    want = np.where(want[:, np.minimum(np.arange(7) + 1, 6)] > 0.5, want + k, want)
  for clamp_read, at in ((True, True), (True, False), (False, True), (False, False)):
    f, out, r = pl.Func("f"), pl.Func("out"), pl.RDom((0, 2), name="r")
    f[y, x] = img[y, x]
    r.where(f[y, pl.min(x + 1, 6) if clamp_read else x + 1] > 0.5)
    f[y, x] = f[y, x] + 1.0 * pl.cast(jnp.float32, r.x)
    out[y, x] = f[y, x] * 2.0
    out.split(y, yo, yi, 4)
    if at:
      f.compute_at(out, yo)
    else:
      f.compute_root()
    fn = pl.Pipeline(out).compile()
    if clamp_read:
      np.testing.assert_allclose(np.asarray(fn(data)), want * 2.0, rtol=1e-6)
    else:
      with pytest.raises(
        NotImplementedError,
        match=r"update 1 of Func f reads f in dim 1 \(x\) over \[0, 6\], outside the region "
        r"\[0, 5\]",
      ):
        fn(data, output_shape=(9, 6))


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_constant_index_reads_of_a_per_tile_producer(backend):
  """``f[y, 3]`` and ``f[2, x]`` (constant indices) of a producer computed per tile, whose
  window moves with the tile: a dynamic index into it (it raised TracerIntegerConversionError);
  and unsharp's Gaussian ``kernel`` (an inline reduction read at ``kernel[r.x]``) at a tile."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  f, out = pl.Func("f"), pl.Func("out")
  f[y, x] = pl.sin(c[y, x])
  out[y, x] = f[y, x] + f[y, 3] * f[2, x]
  xo, _ = _tile(out, x, y, backend)
  f.compute_at(out, xo)
  data = np.random.default_rng(15).random((9, 10), dtype=np.float32)
  d = np.sin(data.astype(np.float64))
  np.testing.assert_allclose(_run(out, backend, data), d + d[:, 3:4] * d[2:3, :], rtol=1e-5)

  g = apps.get_app("unsharp").build()
  v = g.vars
  g.funcs["unsharp"].split(v["y"], v["yo"], v["yi"], 4 if backend == "xla" else 8)
  g.funcs["kernel"].compute_at(g.funcs["unsharp"], v["yo"])
  data = np.random.default_rng(16).random((13, 11), dtype=np.float32)
  k = np.exp(-(np.arange(-3, 4) ** 2) / (2 * 1.5**2))
  k /= k.sum()
  pad = np.pad(data.astype(np.float64), 3, mode="edge")
  bx = sum(k[j] * pad[:, j : j + 11] for j in range(7))
  by = sum(k[j] * bx[j : j + 13] for j in range(7))
  np.testing.assert_allclose(_run(g.funcs["unsharp"], backend, data), 2 * data - by, atol=1e-5)


def test_update_reading_its_func_at_data_dependent_points():
  """Data-dependent self-reads are gathers into the region (bounds cannot bound an unclamped
  one, which is the user's promise, as for other Funcs), not reads beyond it: no error,
  results equal numpy."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  f, out = pl.Func("f"), pl.Func("out")
  f[y, x] = img[y, x]
  f[y, x] = f[y, x] + f[y, pl.clamp(pl.cast(jnp.int32, img[y, x] * 5.0), 0, 6)]
  f[y, x] = f[y, x] * 0.5 + f[y, pl.cast(jnp.int32, img[y, x] * 5.0)]
  out[y, x] = f[y, x]
  data = np.random.default_rng(17).random((5, 7), dtype=np.float32)
  d = data.astype(np.float64)
  i = np.clip((data * np.float32(5.0)).astype(np.int64), 0, 6)
  want = d + d[np.arange(5)[:, None], i]
  want = want * 0.5 + want[np.arange(5)[:, None], i]
  np.testing.assert_allclose(np.asarray(pl.Pipeline(out).compile()(data)), want, rtol=1e-6)


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_compute_at_a_consumer_with_updates(backend):
  """A producer computed at the tiles of a root consumer whose pure definition reads it and
  whose updates do not (a scatter of row sums into column 0, then a point-wise scaling): the
  updates run over the whole region after the tile loop. A consumer whose update reads the
  producer still gets a clear error."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  r = pl.RDom((0, img.extent(1)), name="r")
  f, g = pl.Func("f"), pl.Func("g")
  f[y, x] = c[y, x] * 2.0 + 1.0
  g[y, x] = f[y, x - 1] + f[y + 1, x + 1]
  g[y, 0] += c[y, r.x]
  g[y, x] = g[y, x] * 0.5
  xo, _ = _tile(g, x, y, backend)
  f.compute_at(g, xo)
  data = np.random.default_rng(12).random((11, 9), dtype=np.float32)
  d = data.astype(np.float64)
  fp = np.pad(d, 1, mode="edge") * 2 + 1  # f over rows/cols -1 .. n
  want = fp[1:-1, :-2] + fp[2:, 2:]
  want[:, 0] += d.sum(1)
  np.testing.assert_allclose(_run(g, backend, data), want * 0.5, rtol=1e-5, atol=1e-6)

  g2 = pl.Func("g2")
  g2[y, x] = f[y, x]
  g2[y, x] = g2[y, x] + f[y, x + 1]
  g2.tile(x, y, *(pl.Var(n) for n in ("xo2", "yo2", "xi2", "yi2")), 4, 3)
  f.compute_at(g2, pl.Var("xo2"))
  with pytest.raises(NotImplementedError, match="Func f at Func g2, whose update definitions read"):
    pl.Pipeline(g2).compile()(data)


def _extern_chain():
  """``out[y, x] = e[y - 1, x] + e[y + 1, x] + e[y, x + 1]`` with ``e = 2 sin(img)``
  (edge-clamped) an extern Func that records the region shapes it is asked for."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  shapes = []

  def sine(arr, origin, shape):
    shapes.append(tuple(shape))
    padded = jnp.pad(arr, 1, mode="edge")
    win = jax.lax.dynamic_slice(padded, (origin[0] + 1, origin[1] + 1), shape)
    return 2.0 * jnp.sin(win)

  e = pl.Func.define_extern(sine, [img], dtype=jnp.float32, ndim=2, name="e")
  out = pl.Func("out")
  out[y, x] = e[y - 1, x] + e[y + 1, x] + e[y, x + 1]
  return e, out, y, x, shapes


def _extern_ref(data, out_shape):
  e = 2.0 * np.sin(np.pad(data.astype(np.float64), 1, mode="edge"))  # e[i, j] at [i + 1, j + 1]
  h, w = out_shape
  return e[0:h, 1 : w + 1] + e[2 : h + 2, 1 : w + 1] + e[1 : h + 1, 2 : w + 2]


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_extern_func_computed_per_tile_and_as_a_sliding_window(backend):
  """An extern Func at a tile of its consumer (its JAX function gets each tile's window, at a
  traced origin) and stored per strip with one new row per step; both equal numpy."""
  data = np.random.default_rng(10).random((11, 9), dtype=np.float32)
  e, out, y, x, shapes = _extern_chain()
  xo, _ = _tile(out, x, y, backend)
  e.compute_at(out, xo)
  if backend == "xla":
    got = _run(out, backend, data)
  else:  # the consumer then runs on XLA between the kernels, and says so
    from jaxsched.pallas.pipeline_backend import XlaFallbackWarning

    with pytest.warns(XlaFallbackWarning, match="compute_at producer e is an extern Func"):
      got = _run(out, backend, data)
  np.testing.assert_allclose(got, _extern_ref(data, (11, 9)), rtol=1e-5, atol=1e-5)
  if backend == "xla":  # 3x4 tiles plus a row above and below and a column to the right
    assert shapes == [(5, 5)], shapes
  e, out, y, x, shapes = _extern_chain()
  yo, yi = pl.Var("yo"), pl.Var("yi")
  out.split(y, yo, yi, 4)
  e.store_at(out, yo).compute_at(out, yi)
  np.testing.assert_allclose(
    np.asarray(pl.Pipeline(out).compile()(data)), _extern_ref(data, (11, 9)), rtol=1e-5,
    atol=1e-5
  )
  assert (1, 10) in shapes, shapes  # one new row per step


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
def test_nested_split_inside_a_tile_is_a_hint(backend):
  """A split of a tile's inner var (``xi -> xio, xii``) orders the work inside the tile: the
  producers computed at ``xo`` give numpy's result."""
  img, a, b, out, y, x = _chain()
  xo, _ = _tile(out, x, y, backend)
  xio, xii = pl.Var("xio"), pl.Var("xii")
  out.split(pl.Var("xi"), xio, xii, 2).vectorize(xii)
  b.compute_at(out, xo)
  a.compute_root()
  data = np.random.default_rng(11).random((11, 9), dtype=np.float32)
  np.testing.assert_allclose(_run(out, backend, data), _chain_ref(data), rtol=1e-5, atol=1e-6)


def _tiles(nest, func):
  """``(tile loops outermost first as (var, extent), shape)`` of each Compute of ``func``."""
  found, path = [], []

  def walk(nodes):
    for n in nodes:
      if isinstance(n, lower.Compute):
        if n.func == func:
          found.append((list(path), n.shape))
        continue
      tile = isinstance(n, lower.Loop) and n.kind == "tile"
      if tile:
        path.append((n.var, n.extent))
      walk(n.children)
      if tile:
        path.pop()

  walk(nest.roots)
  return found


def _loops(*names):
  return (pl.Var(n) for n in names)


# Halide's tutorial idioms, each with `b` computed (or stored) at a loop of `out` made by them;
# `out` reads `b` at [y, x] and [y, x + 2], so b's window is the tile plus two columns.
def _nested_at(out, a, b, y, x):  # a second tiling level
  yo, yi, yio, yii = _loops("yo", "yi", "yio", "yii")
  out.split(y, yo, yi, 6).split(yi, yio, yii, 3)
  b.compute_at(out, yio)


def _fused_tiles(out, a, b, y, x):  # tiles fused into one parallel loop (Halide lesson 8)
  xo, yo, xi, yi, t = _loops("xo", "yo", "xi", "yi", "t")
  out.tile(x, y, xo, yo, xi, yi, 4, 3).fuse(xo, yo, t).parallel(t)
  b.compute_at(out, t)


def _sliding_in_strips(out, a, b, y, x):  # a sliding window inside each strip
  yo, yi, yio, yii = _loops("yo", "yi", "yio", "yii")
  out.split(y, yo, yi, 8).split(yi, yio, yii, 2)
  b.compute_inline()
  a.store_at(out, yo).compute_at(out, yio)  # 2 new rows of a per step, 10 stored per strip


def _fused_then_split(out, a, b, y, x):  # chunks of the flattened image: bounding boxes
  t, to, ti = _loops("t", "to", "ti")
  out.fuse(x, y, t).split(t, to, ti, 20)
  b.compute_at(out, to)


def _ragged_nested(out, a, b, y, x):  # 7-row strips in 3-row tiles: the last shifted inwards
  yo, yi, yio, yii = _loops("yo", "yi", "yio", "yii")
  out.split(y, yo, yi, 7).split(yi, yio, yii, 3)
  b.compute_at(out, yio)


def _inner_outside(out, a, b, y, x):  # an inner loop outside its outer loop: strided tiles
  xo, yo, xi, yi = _loops("xo", "yo", "xi", "yi")
  out.tile(x, y, xo, yo, xi, yi, 4, 3).reorder(xo, yi, xi, yo)  # loops yo, xi, yi, xo
  b.compute_at(out, xi)


@pytest.mark.parametrize(
  ("sched", "tiles", "tile", "window"),
  [
    (_nested_at, [("yo", 2), ("yio", 2)], (3, 9), (3, 11)),
    (_fused_tiles, [("t", 12)], (3, 4), (3, 6)),
    (_sliding_in_strips, [("yo", 2), ("yio", 4)], (2, 9), (2, 11)),  # a's new rows
    (_fused_then_split, [("to", 5)], (3, 9), (3, 11)),
    (_ragged_nested, [("yo", 2), ("yio", 3)], (3, 9), (3, 11)),
    # x in {xi, 4 + xi, 5 + xi} (the last x tile shifted inwards): a box of 6 columns
    (_inner_outside, [("yo", 4), ("xi", 4)], (3, 6), (3, 8)),
  ],
)
def test_tiles_from_nested_splits_and_fused_loops(sched, tiles, tile, window):
  """Producers computed (or stored) at a loop made by nested splits or fuses: each step's
  tile is the box of points its loops cover (exact for splits, the bounding box of a fused
  range, a ragged tail shifted inwards), and results equal numpy."""
  img, a, b, out, y, x = _chain()
  a.compute_root()
  sched(out, a, b, y, x)
  data = np.random.default_rng(12).random((11, 9), dtype=np.float32)
  np.testing.assert_allclose(_run(out, "xla", data), _chain_ref(data), rtol=1e-5, atol=1e-6)
  nest = pl.Pipeline(out).lower((11, 9))
  assert _tiles(nest, "out") == [(tiles, tile)]
  ((p_loops, p_shape),) = _tiles(nest, "a" if sched is _sliding_in_strips else "b")
  assert (p_loops, p_shape) == (tiles, window)


def _two_producers():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  p, q, out = pl.Func("p"), pl.Func("q"), pl.Func("out")
  p[y, x] = c[y, x - 1] + c[y, x + 1] * 2.0
  q[y, x] = c[y - 1, x] * 3.0 - c[y + 1, x]
  out[y, x] = p[y - 1, x] + p[y + 1, x] * 0.5 + q[y, x - 1] - q[y, x + 1] * 0.25
  return img, p, q, out, y, x


def _two_producers_ref(v):
  d = np.pad(v.astype(np.float64), 2, mode="edge")
  h, w = v.shape

  def at(dy, dx):  # the edge-repeated input shifted by (dy, dx)
    return d[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]

  def p(dy):
    return at(dy, -1) + at(dy, 1) * 2.0

  def q(dx):
    return at(-1, dx) * 3.0 - at(1, dx)

  # p and q at out's halo read the repeated edge of the input, not of p and q: p[y - 1] at
  # y = 0 is p at row -1, which reads input row clamp(-1) = 0.
  return p(-1) + p(1) * 0.5 + q(-1) - q(1) * 0.25


def test_store_levels_mixed_across_producers():
  """Producers of one consumer at different loops with one stored outside: all are computed
  at the outermost compute loop and the stored one slides at its store level; a store level
  inside that loop is the tile itself. Results equal numpy."""
  data = np.random.default_rng(13).random((13, 10), dtype=np.float32)
  img, p, q, out, y, x = _two_producers()
  xo, yo, xi, yi = _loops("xo", "yo", "xi", "yi")
  out.tile(x, y, xo, yo, xi, yi, 4, 3)  # loops yo, xo, yi, xi
  p.compute_at(out, xo)
  q.store_at(out, yo).compute_at(out, yi)
  np.testing.assert_allclose(_run(out, "xla", data), _two_producers_ref(data), rtol=1e-5, atol=1e-5)
  nest = pl.Pipeline(out).lower((13, 10))
  assert _tiles(nest, "out") == [([("yo", 5), ("xo", 3)], (3, 4))]
  assert _tiles(nest, "p") == [([("yo", 5), ("xo", 3)], (5, 4))]
  assert [t[0] for t in _tiles(nest, "q")] == [[("yo", 5), ("xo", 3)]]
  realized = [(d, n.func) for d, n in nest.nodes() if isinstance(n, lower.Realize)]
  # q stored per step of yo (outside the xo loop), p per tile
  assert realized == [(0, "out"), (2, "q"), (4, "p")], realized


@pytest.mark.parametrize(
  "updated, backend", [("producer", "xla"), ("producer", "pallas-tpu"), ("consumer", "xla")]
)
def test_store_at_with_update_definitions(updated, backend):
  """``p.store_at(q, yo).compute_at(q, yi)`` with an update on one side. On the producer it is
  a hint (a sliding window carries pure values only): ``p`` is computed whole per step of
  ``yi``. On a root consumer whose pure definition alone reads ``p``, ``p`` slides (one new
  row a step) and ``q``'s update then runs over the whole region. numpy's results."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  yo, yi = _loops("yo", "yi")
  c = pl.boundary.repeat_edge(img)
  p, q = pl.Func("p"), pl.Func("q")
  p[y, x] = c[y, x] * 3.0
  if updated == "producer":
    p[y, x] = p[y, x] * 2.0 - c[y, x]
  q[y, x] = p[y - 1, x] + p[y + 1, x] * 0.5
  if updated == "consumer":
    q[y, x] = q[y, x] * 2.0 + c[y, x]
  q.split(y, yo, yi, 8)
  p.store_at(q, yo).compute_at(q, yi)
  data = np.random.default_rng(21).random((37, 20), dtype=np.float32)
  d = np.pad(data.astype(np.float64), ((1, 1), (0, 0)), mode="edge")
  pp = d * 5.0 if updated == "producer" else d * 3.0
  want = pp[:-2] + pp[2:] * 0.5
  if updated == "consumer":
    want = want * 2.0 + data
  np.testing.assert_allclose(_run(q, backend, data), want, rtol=1e-5, atol=1e-5)
  tiles = _tiles(pl.Pipeline(q).lower((37, 20)), "p")
  if updated == "producer":  # whole per step: a slide would compute it once per yo
    assert [[v for v, _ in loops] for loops, _ in tiles] == [["yo", "yi"]]
  else:  # slides: one new row per step of yi
    assert tiles == [([("yo", 5), ("yi", 8)], (1, 20))]


def test_store_at_a_nested_consumer_is_a_tile_of_the_outer_one():
  """``a.store_at(b, y).compute_at(b, y)`` with ``b`` computed per tile of ``out``: ``b``'s
  loops are not executed (it is computed per tile), so ``a`` is too: numpy's result."""
  img, a, b, out, y, x = _chain()
  yo, yi = _loops("yo", "yi")
  out.split(y, yo, yi, 4)
  b.compute_at(out, yo)
  a.store_at(b, y).compute_at(b, y)
  data = np.random.default_rng(14).random((11, 9), dtype=np.float32)
  np.testing.assert_allclose(_run(out, "xla", data), _chain_ref(data), rtol=1e-5, atol=1e-6)
  nest = pl.Pipeline(out).lower((11, 9))
  assert _tiles(nest, "a") == [([("yo", 3)], (6, 11))]
