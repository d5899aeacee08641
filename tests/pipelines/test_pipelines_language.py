"""The language: type promotion, expressions, boundary conditions, access patterns, errors."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched.pipelines as pl


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_type_promotion_follows_jax():
  u8 = pl.ImageParam(jnp.uint8, 2, name="u8")
  i16 = pl.ImageParam(jnp.int16, 2, name="i16")
  f32 = pl.ImageParam(jnp.float32, 2, name="f32")
  y, x = pl.Var("y"), pl.Var("x")
  a, b, c = u8[y, x], i16[y, x], f32[y, x]
  cases = {
    "u8+1": (a + 1, lambda A, B, C: A + np.uint8(1)),
    "u8+1.0": (a + 1.0, lambda A, B, C: A.astype(np.float32) + 1.0),
    "u8+i16": (a + b, lambda A, B, C: A.astype(np.int16) + B),
    "i16*f32": (b * c, lambda A, B, C: B.astype(np.float32) * C),
    "i16/i16": (b / (b * 0 + 3), lambda A, B, C: B / np.float32(3)),
    "i16//3": (b // 3, lambda A, B, C: B // np.int16(3)),
    "i16%3": (b % 3, lambda A, B, C: B % np.int16(3)),
    "x+y": (
      x * 2 + y,
      lambda A, B, C: np.add.outer(np.arange(A.shape[0]), 2 * np.arange(A.shape[1])).astype(
        np.int32
      ),
    ),
  }
  funcs = []
  for name, (e, _) in cases.items():
    f = pl.Func(name.replace("+", "p"))
    f[y, x] = e
    funcs.append(f)
  A = _rng().integers(0, 256, (5, 7), dtype=np.uint8)
  B = _rng(1).integers(-300, 300, (5, 7), dtype=np.int16)
  C = _rng(2).random((5, 7), dtype=np.float32)
  outs = pl.Pipeline(funcs, inputs=[u8, i16, f32]).compile()(A, B, C)
  expected_dtypes = {
    "u8+1": jnp.uint8,
    "u8+1.0": jnp.float32,
    "u8+i16": jnp.int16,
    "i16*f32": jnp.float32,
    "i16/i16": jnp.float32,
    "i16//3": jnp.int16,
    "i16%3": jnp.int16,
    "x+y": jnp.int32,
  }
  for (name, (_, ref)), out in zip(cases.items(), outs, strict=True):
    assert out.dtype == expected_dtypes[name], name
    np.testing.assert_allclose(np.asarray(out), ref(A, B, C), rtol=1e-6, err_msg=name)


def test_math_select_clamp_cast_against_numpy():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  v = img[y, x]
  exprs = {
    "sel": pl.select(v > 0.5, v * 2, -v),
    "chain": pl.select(v < 0.2, 1.0, v < 0.6, 2.0, 3.0),
    "clamp": pl.clamp(v * 3 - 1, 0.0, 1.0),
    "cast": pl.cast(jnp.int32, v * 10 - 5),
    "mm": pl.max(v, 0.3) + pl.min(v, 0.7, 0.5),
    "math": pl.sqrt(v) + pl.exp(v) - pl.log(v + 1) + pl.sin(v) * pl.cos(v) + pl.abs(v - 0.5),
    "round": pl.floor(v * 7) + pl.ceil(v * 3) + pl.round(v * 5) + v**2 + pl.pow(v, 3),
    "logic": pl.select((v > 0.2) & ~(v > 0.8) | (v < 0.05), 1, 0),
  }
  funcs = []
  for name, e in exprs.items():
    f = pl.Func(name)
    f[y, x] = e
    funcs.append(f)
  a = _rng(3).random((6, 9), dtype=np.float32)
  d = a.astype(np.float64)
  want = {
    "sel": np.where(d > 0.5, d * 2, -d),
    "chain": np.where(d < 0.2, 1.0, np.where(d < 0.6, 2.0, 3.0)),
    "clamp": np.clip(d * 3 - 1, 0, 1),
    "cast": np.trunc(a * np.float32(10) - np.float32(5)),
    "mm": np.maximum(d, 0.3) + np.minimum(np.minimum(d, 0.7), 0.5),
    "math": np.sqrt(d) + np.exp(d) - np.log(d + 1) + np.sin(d) * np.cos(d) + np.abs(d - 0.5),
    "round": (
      np.floor(a * np.float32(7))
      + np.ceil(a * np.float32(3))
      + np.round(a * np.float32(5))
      + d**2
      + d**3
    ),
    "logic": (((d > 0.2) & ~(d > 0.8)) | (d < 0.05)).astype(np.int32),
  }
  outs = pl.Pipeline(funcs).compile()(a)
  for (name, w), o in zip(want.items(), outs, strict=True):
    np.testing.assert_allclose(np.asarray(o), w, rtol=2e-6, atol=2e-6, err_msg=name)
  assert outs[3].dtype == jnp.int32 and outs[7].dtype == jnp.int32


@pytest.mark.parametrize(
  "bc,mode",
  [
    ("repeat_edge", "edge"),
    ("mirror_image", "symmetric"),
    ("mirror_interior", "reflect"),
    ("constant_exterior", "constant"),
  ],
)
def test_boundary_conditions_match_numpy_pad(bc, mode):
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  wrap = getattr(pl.boundary, bc)
  b = wrap(img, 0.25) if bc == "constant_exterior" else wrap(img)
  f = pl.Func("shifted")
  f[y, x] = b[y - 3, x - 2]
  a = _rng(4).random((4, 5), dtype=np.float32)
  out = pl.Pipeline(f).compile()(a, output_shape=(10, 9))
  kw = {"constant_values": 0.25} if mode == "constant" else {}
  want = np.pad(a, ((3, 3), (2, 2)), mode=mode, **kw)
  np.testing.assert_array_equal(np.asarray(out), want)


def test_strided_upsample_and_data_dependent_access():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x, i = pl.Var("y"), pl.Var("x"), pl.Var("i")
  down, up, lut, look, tr = (pl.Func(n) for n in ("down", "up", "lut", "look", "tr"))
  down[y, x] = img[2 * y + 1, 3 * x] + img[2 * y, x // 2]
  up[y, x] = img[y // 2, (x + 1) // 2]
  lut[i] = i * i % 7
  look[y, x] = lut[pl.clamp(pl.cast(jnp.int32, img[y, x] * 10), 0, 9)]
  tr[y, x] = img[x, y]
  a = _rng(5).random((8, 9), dtype=np.float32)
  o_down = pl.Pipeline(down).compile()(a, output_shape=(3, 3))
  np.testing.assert_allclose(o_down, a[1:7:2, 0:9:3] + a[0:6:2][:, [0, 0, 1]], rtol=1e-6)
  o_up = pl.Pipeline(up).compile()(a, output_shape=(16, 17))
  want_up = a[np.arange(16)[:, None] // 2, (np.arange(17)[None, :] + 1) // 2]
  np.testing.assert_array_equal(o_up, want_up)
  o_look = pl.Pipeline(look).compile()(a)
  k = np.clip((a * 10).astype(np.int32), 0, 9)
  np.testing.assert_array_equal(o_look, (k * k) % 7)
  o_tr = pl.Pipeline(tr).compile()(a, output_shape=(9, 8))
  np.testing.assert_array_equal(o_tr, a.T)


def test_extern_func_and_params():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  gain = pl.Param(jnp.float32, name="gain", default=2.0)
  y, x = pl.Var("y"), pl.Var("x")

  def cumsum_rows(arr, origin, shape):
    full = jnp.cumsum(arr, axis=1)
    return full[origin[0] : origin[0] + shape[0], origin[1] : origin[1] + shape[1]]

  ext = pl.Func.define_extern(cumsum_rows, [img], dtype=jnp.float32, ndim=2, name="cs")
  out = pl.Func("out")
  out[y, x] = ext[y, x] * gain
  a = _rng(6).random((4, 6), dtype=np.float32)
  fn = pl.Pipeline(out).compile()
  np.testing.assert_allclose(fn(a), np.cumsum(a, 1) * 2, rtol=1e-6)
  np.testing.assert_allclose(fn(a, gain=-1.5), np.cumsum(a, 1) * -1.5, rtol=1e-6)


def test_bounds_errors_name_func_access_and_range():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  f = pl.Func("blurx")
  f[y, x] = img[y, x - 1] + img[y, x + 1]
  a = np.ones((4, 5), np.float32)
  with pytest.raises(
    ValueError,
    match=r"Func blurx reads img\[y, \(x - 1\)\]: index 1 ranges "
    r"over \[-1, 3\].*extent 5.*boundary.repeat_edge\(img\)",
  ):
    pl.Pipeline(f).compile()(a)
  # A smaller output is fine.
  g = pl.Func("g")
  g[y, x] = f[y, x + 1]
  np.testing.assert_allclose(pl.Pipeline(g).compile()(a, output_shape=(4, 3)), 2.0)
  # Data-dependent reads of a Func with no bound.
  h, k = pl.Func("h"), pl.Func("k")
  h[y, x] = x * 1.0
  h.compute_root()  # inline, h would just be an expression: no region needed
  k[y, x] = h[y, pl.cast(jnp.int32, img[y, x])]
  with pytest.raises(ValueError, match=r"Func h is accessed with an unbounded index in dim 1"):
    pl.Pipeline(k).compile()(a)


def test_language_errors():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  with pytest.raises(TypeError, match="no truth value"):
    bool(img[y, x] > 0)
  with pytest.raises(TypeError, match="condition must be boolean"):
    pl.select(img[y, x], 1, 2)
  f = pl.Func("f")
  with pytest.raises(ValueError, match="distinct Vars"):
    f[y, y] = 1
  with pytest.raises(ValueError, match="Var z on the right"):
    f[y, x] = pl.Var("z")
  f[y, x] = img[y, x]
  with pytest.raises(ValueError, match="has 2 dims, called with 1"):
    f[y]  # noqa: B018
  with pytest.raises(ValueError, match="ndim=2, indexed with 3"):
    img[y, x, x]  # noqa: B018
  with pytest.raises(ValueError, match="must appear bare as argument 0"):
    f[y + 1, x] = f[y, x] * 2
  with pytest.raises(ValueError, match="used before it has a definition"):
    pl.Func("undefined").dtype  # noqa: B018
  with pytest.raises(ValueError, match=r"extent=0 must be positive"):
    pl.RDom((0, 0))


def test_call_errors():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  p = pl.Param(jnp.float32, name="p")
  y, x = pl.Var("y"), pl.Var("x")
  f = pl.Func("f")
  f[y, x] = img[y, x] * p
  fn = pl.Pipeline(f).compile()
  a = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match="missing value for Param 'p'"):
    fn(a)
  with pytest.raises(ValueError, match=r"unknown params \['q'\]; this pipeline takes \['p'\]"):
    fn(a, p=1.0, q=2.0)
  with pytest.raises(ValueError, match="dtype float32, got int32"):
    fn(np.ones((3, 4), np.int32), p=1.0)
  with pytest.raises(ValueError, match=r"ndim=2, got shape \(3,\)"):
    fn(np.ones(3, np.float32), p=1.0)
  with pytest.raises(ValueError, match="expected 1 images"):
    fn(a, a, p=1.0)
  with pytest.raises(ValueError, match="has 2 dims but s=\\(3,\\) was requested"):
    fn(a, p=1.0, output_shape=(3,))
  with pytest.raises(ValueError, match=r"unknown backend 'tpu9'; registered backends: \[.*'xla'"):
    pl.Pipeline(f).compile("tpu9")
  with pytest.raises(ValueError, match="Func g is used before it has a definition"):
    g, h = pl.Func("g"), pl.Func("h")
    h[y, x] = g[y, x]
    pl.Pipeline(h)


@pytest.mark.parametrize("polyphase", [True, False])
def test_parity_selects_and_mixed_strides_match_numpy(polyphase, monkeypatch):
  """Branches on ``x % 3`` / ``y % 2`` with ``x // 3`` reads (evaluated per residue class, see
  xla._phase_pieces) over a region that starts at an odd, negative min (the consumer reads the
  producer at ``y - 3`` and ``x - 1``), with ``y * x`` terms the phase rewrite must keep."""
  from jaxsched.pipelines import xla

  monkeypatch.setattr(xla, "_POLYPHASE", polyphase)
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = pl.boundary.repeat_edge(img)
  f, out = pl.Func("f"), pl.Func("out")
  f[y, x] = pl.select(
    x % 3 == 0,
    c[y // 2, x // 3] * 2.0,
    x % 3 == 1,
    c[y, (x + 2) // 3] - pl.cast(jnp.float32, y % 2),
    c[(y + 1) // 2, x] + pl.cast(jnp.float32, (y * x) % 5),
  )
  out[y, x] = f[y - 3, x - 1] + f[y, x]
  f.compute_root()
  a = _rng(11).random((13, 16), dtype=np.float32)

  def fr(yy, xx):
    h, w = a.shape
    cl = lambda v, n: np.clip(v, 0, n - 1)  # noqa: E731
    v0 = a[cl(yy // 2, h), cl(xx // 3, w)] * 2.0
    v1 = a[cl(yy, h), cl((xx + 2) // 3, w)] - (yy % 2)
    v2 = a[cl((yy + 1) // 2, h), cl(xx, w)] + (yy * xx) % 5
    return np.where(xx % 3 == 0, v0, np.where(xx % 3 == 1, v1, v2))

  yy, xx = np.meshgrid(np.arange(13), np.arange(16), indexing="ij")
  want = fr(yy - 3, xx - 1) + fr(yy, xx)
  got = pl.Pipeline(out).compile()(a)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_interleaved_pieces_of_unrolled_and_nested_parity_dims_match_numpy():
  """An unrolled channel dim and parity selects on y and x (the camera pipe's output shape:
  pieces concatenated in an interleaved view, xla._assemble) with odd extents, and a select on
  ``(x // 2) % 2`` inside the even phase of ``x % 2``. Integer values, so exact."""
  img = pl.ImageParam(jnp.int32, 2, name="img")
  c, y, x = pl.Var("c"), pl.Var("y"), pl.Var("x")
  e = pl.boundary.repeat_edge(img)
  simple, nested = pl.Func("simple"), pl.Func("nested")
  simple[c, y, x] = pl.select(
    y % 2 == 0,
    pl.select(x % 2 == 0, e[y // 2, x // 2] + c, e[y // 2, x // 2 + 1] * (c + 1)),
    pl.select(x % 2 == 0, e[y, x // 2] - c, e[y // 2 + 1, x] + 7),
  )
  simple.unroll(c)
  nested[y, x] = pl.select(
    x % 2 == 0, pl.select((x // 2) % 2 == 0, e[y, x // 4] * 3, e[y, x // 2] - 5), e[y, x] + 1
  )
  a = _rng(5).integers(-50, 50, (9, 11)).astype(np.int32)
  h, w = a.shape
  cl = lambda v, n: np.clip(v, 0, n - 1)  # noqa: E731
  at = lambda yy, xx: a[cl(yy, h), cl(xx, w)]  # noqa: E731
  cc, yy, xx = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing="ij")
  ey, ex = yy % 2 == 0, xx % 2 == 0
  want = np.where(
    ey,
    np.where(ex, at(yy // 2, xx // 2) + cc, at(yy // 2, xx // 2 + 1) * (cc + 1)),
    np.where(ex, at(yy, xx // 2) - cc, at(yy // 2 + 1, xx) + 7),
  )
  got = pl.Pipeline(simple).compile()(a, output_shape=(3, h, w))
  np.testing.assert_array_equal(got, want)
  yy, xx = yy[0], xx[0]
  want = np.where(
    xx % 2 == 0, np.where(xx % 4 == 0, at(yy, xx // 4) * 3, at(yy, xx // 2) - 5), at(yy, xx) + 1
  )
  np.testing.assert_array_equal(pl.Pipeline(nested).compile()(a), want)


def test_root_func_is_computed_once_not_fused_into_its_consumer(monkeypatch):
  """compute_root means materialised: XLA CPU drops optimization_barrier and would otherwise
  fuse (recompute) an expensive producer into every tap of a stencil consumer."""
  import jax

  from jaxsched.pipelines import xla

  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  p, out = pl.Func("p"), pl.Func("out")
  p[y, x] = pl.sin(img[y, x]) * 3.0
  out[y, x] = p[y, x + 1] + p[y + 2, x + 1] + p[y + 1, x] + p[y + 1, x + 2] + p[y + 1, x + 1]
  p.compute_root()
  a = _rng(2).random((64, 64), dtype=np.float32)
  pp = np.sin(a.astype(np.float64)) * 3.0
  want = pp[:-2, 1:-1] + pp[2:, 1:-1] + pp[1:-1, :-2] + pp[1:-1, 2:] + pp[1:-1, 1:-1]
  for on in (True, False):  # off: what XLA does to a root Func behind only a barrier
    monkeypatch.setattr(xla, "_MATERIALIZE", on)
    fn = pl.Pipeline(out).compile()
    run = jax.jit(lambda v, fn=fn: fn(v, output_shape=(62, 62)))
    hlo = run.lower(a).compile().as_text()
    # The fused computation that writes the output: it must read p, not recompute its sin.
    entry = hlo[hlo.index("\nENTRY") :]
    root = next(ln for ln in entry.splitlines() if ln.lstrip().startswith("ROOT"))
    called = re.search(r"calls=(%[\w.-]+)", root).group(1)
    body = re.search(re.escape(called) + r" \(.*?\n}", hlo, re.S).group(0)
    assert ("sine(" in body) == (not on), f"_MATERIALIZE={on}: output fusion {body[:400]}"
    np.testing.assert_allclose(run(a), want, rtol=1e-5)


def test_bound_makes_a_data_dependent_access_legal_and_clamps_to_it():
  """``f.bound(i, 0, 10)`` fixes the table's region: a data-dependent index bounds inference
  cannot limit is then the user's promise, and reads outside it are clamped to the bound (as
  XLA's gathers clamp), where without the bound it is an error naming the fix."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x, i = pl.Var("y"), pl.Var("x"), pl.Var("i")
  f, out = pl.Func("f"), pl.Func("out")
  f[i] = i * 3 + 1
  out[y, x] = f[pl.cast(jnp.int32, img[y, x] * 20.0) - 2]
  f.compute_root()
  a = _rng(9).random((6, 7), dtype=np.float32)
  with pytest.raises(ValueError, match=r"unbounded index in dim 0 \(i\).*f\.bound\('i'"):
    pl.Pipeline(out).compile()(a)
  f.bound(i, 0, 10)
  got = pl.Pipeline(out).compile()(a)
  idx = np.clip((a * np.float32(20.0)).astype(np.int32) - 2, 0, 9)
  assert idx.min() == 0 and idx.max() == 9  # both ends clamp
  np.testing.assert_array_equal(got, idx * 3 + 1)
  g, out2 = pl.Func("g"), pl.Func("out2")
  g[i] = i * 2
  out2[y, x] = g[x + 5] + img[y, x]
  g.bound(i, 0, 8).compute_root()  # x + 5 provably reaches 11: still an error
  with pytest.raises(ValueError, match=r"g\.bound\('i', 0, 8\) is too small"):
    pl.Pipeline(out2).compile()(a)
