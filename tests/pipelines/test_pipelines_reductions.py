"""RDoms, update definitions (scatter, scans, serial recurrences) and inline reductions."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsched.pipelines as pl


def _img(h, w, seed=0):
  return np.random.default_rng(seed).random((h, w), dtype=np.float32)


@settings(max_examples=2)
@given(h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 999))
def test_histogram_scatter_add(h, w, seed):
  img = pl.ImageParam(jnp.float32, 2, name="img")
  i = pl.Var("i")
  r = pl.RDom((0, img.extent(0)), (0, img.extent(1)))
  hist = pl.Func("hist")
  hist[i] = 0
  hist[pl.clamp(pl.cast(jnp.int32, img[r.x, r.y] * 16), 0, 15)] += 1
  a = _img(h, w, seed)
  got = pl.Pipeline(hist).compile()(a, output_shape=(16,))
  want = np.bincount(np.clip((a * 16).astype(np.int64), 0, 15).ravel(), minlength=16)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_prefix_scan_serial_recurrence_and_row_sums():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x, i = pl.Var("y"), pl.Var("x"), pl.Var("i")
  r = pl.RDom((1, img.extent(1) - 1), name="r")
  scan = pl.Func("scan")  # 2-D prefix scan along x, vectorised over y
  scan[y, x] = img[y, x]
  scan[y, r.x] = scan[y, r.x - 1] + img[y, r.x]
  iir = pl.Func("iir")  # not a prefix sum: runs serially in RDom order
  iir[i] = img[0, i]
  iir[r.x] = iir[r.x - 1] * 0.5 + img[0, r.x]
  rs = pl.Func("rowsum")  # pure var on the left plus an RVar: scatter-add per row
  q = pl.RDom((0, img.extent(1)), name="q")
  rs[y] = 0.0
  rs[y] += img[y, q.x]
  a = _img(5, 7, 1)
  np.testing.assert_allclose(pl.Pipeline(scan).compile()(a), np.cumsum(a, axis=1), rtol=1e-5)
  want = [float(a[0, 0])]
  for k in range(1, 7):
    want.append(want[-1] * 0.5 + float(a[0, k]))
  np.testing.assert_allclose(pl.Pipeline(iir).compile()(a, output_shape=(7,)), want, rtol=1e-6)
  np.testing.assert_allclose(pl.Pipeline(rs).compile()(a, output_shape=(5,)), a.sum(1), rtol=1e-5)


def test_order_dependent_update_runs_in_rdom_order():
  # f[r % 3] = f[r % 3] * 2 + r is not a pure scatter-add: last-writer semantics in order.
  img = pl.ImageParam(jnp.float32, 1, name="img")
  i = pl.Var("i")
  r = pl.RDom((0, 10))
  f = pl.Func("f")
  f[i] = img[i]
  f[r.x % 3] = f[r.x % 3] * 2 + pl.cast(jnp.float32, r.x)
  a = np.random.default_rng(2).random(3, dtype=np.float32)
  want = a.astype(np.float64).copy()
  for k in range(10):
    want[k % 3] = want[k % 3] * 2 + k
  np.testing.assert_allclose(pl.Pipeline(f).compile()(a), want, rtol=1e-6)


def test_injective_set_update_transposes():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  r = pl.RDom((0, img.extent(0)), (0, img.extent(1)))
  t = pl.Func("t")
  t[y, x] = -1.0
  t[r.y, r.x] = img[r.x, r.y]
  a = _img(4, 4, 3)
  np.testing.assert_array_equal(pl.Pipeline(t).compile()(a), a.T)


def test_inline_reductions_against_numpy():
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y = pl.Var("y")
  r = pl.RDom((0, img.extent(1)))
  big = pl.RDom((0, 6), (0, img.extent(1)))  # 2-D RDom, large enough not to be unrolled
  fs = {n: pl.Func(n) for n in ("s", "mx", "mn", "am", "amv", "an", "cnt", "win")}
  fs["s"][y] = pl.sum(img[y, r.x])
  fs["mx"][y] = pl.maximum(img[y, r.x])
  fs["mn"][y] = pl.minimum(img[y, r.x] * 2)
  fs["am"][y] = pl.argmax(img[y, r.x])[0]
  fs["amv"][y] = pl.argmax(img[y, r.x])[1]
  fs["an"][y] = pl.argmin(img[big.x, big.y] + pl.cast(jnp.float32, y))[1]
  fs["cnt"][y] = pl.sum(img[y, r.x] > 0.5)
  fs["win"][y] = pl.sum(img[big.x, big.y] * pl.cast(jnp.float32, big.x + y))
  a = _img(6, 9, 4)
  outs = pl.Pipeline(list(fs.values())).compile()(a, output_shape=(6,))
  d = a.astype(np.float64)
  flat_argmin = np.argmin(d.T.ravel())  # RDom order: r.x (rows of a) innermost
  want = [
    d.sum(1),
    d.max(1),
    2 * d.min(1),
    d.argmax(1),
    d.max(1),
    np.full(6, flat_argmin // 6),
    (d > 0.5).sum(1),
    [(d * (np.arange(6)[:, None] + yy)).sum() for yy in range(6)],
  ]
  for o, w, n in zip(outs, want, fs, strict=True):
    np.testing.assert_allclose(np.asarray(o), w, rtol=1e-5, err_msg=n)
  assert outs[3].dtype == jnp.int32 and outs[6].dtype == jnp.int32


def test_reduction_errors():
  img = pl.ImageParam(jnp.float32, 1, name="img")
  i = pl.Var("i")
  r, s = pl.RDom((0, 3)), pl.RDom((0, 4))
  with pytest.raises(ValueError, match="needs an expression that uses an RDom"):
    pl.sum(img[i])
  with pytest.raises(ValueError, match="mixes RDoms"):
    pl.sum(img[r.x] + img[s.x])
  f = pl.Func("f")
  with pytest.raises(ValueError, match="pure definition uses RVars"):
    f[i] = img[r.x]
  f[i] = 0.0
  with pytest.raises(ValueError, match="uses several RDoms"):
    f[r.x] = img[s.x]
  g = pl.Func("g")
  g[i] = 0
  g[pl.cast(jnp.int32, img[r.x] * 100)] += 1
  with pytest.raises(ValueError, match=r"update 0 of Func g writes dim 0 at an unbounded index"):
    pl.Pipeline(g).compile()(np.ones(3, np.float32), output_shape=(4,))
  with pytest.raises(IndexError, match=r"RDom .* has 1 dims; index 1 is out of range"):
    r.y  # noqa: B018


def test_rdom_where_restricts_inline_reductions():
  """``RDom.where``: excluded points are skipped by sum, maximum and argmax (predicates on RVars
  and on pure vars, accumulated with and)."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  r = pl.RDom((-2, 5), name="r")
  r.where(r.x != 0).where(r.x + x > 0)  # no centre tap; no taps left of column 1 - x
  c = pl.boundary.repeat_edge(img)
  s, m, am = pl.Func("s"), pl.Func("m"), pl.Func("am")
  s[y, x] = pl.sum(c[y, x + r.x])
  m[y, x] = pl.maximum(c[y, x + r.x] * pl.cast(jnp.float32, r.x))
  am[y, x] = pl.argmax(c[y, x + r.x])[0]
  a = _img(5, 9, seed=4)
  ap = np.pad(a.astype(np.float64), ((0, 0), (2, 2)), mode="edge")
  ok = np.array([[(t != 0) and (t + xx > 0) for t in range(-2, 3)] for xx in range(9)])  # [x, t]
  taps = np.stack([ap[:, 2 + t : 2 + t + 9] for t in range(-2, 3)], axis=-1)  # [y, x, t]
  want_s = np.where(ok[None], taps, 0).sum(-1)
  want_m = np.where(ok[None], taps * np.arange(-2, 3), -np.inf).max(-1)
  want_am = np.argmax(np.where(ok[None], taps, -np.inf), axis=-1) - 2
  np.testing.assert_allclose(pl.Pipeline(s).compile()(a), want_s, rtol=1e-6)
  np.testing.assert_allclose(pl.Pipeline(m).compile()(a), want_m, rtol=1e-6)
  np.testing.assert_array_equal(pl.Pipeline(am).compile()(a), want_am)


def test_rdom_where_restricts_updates():
  """A histogram of the bright pixels only (a scatter that stays a scatter) and an
  order-dependent recurrence over the even points only (serial): excluded points leave the
  Func unchanged."""
  import jaxsched.pallas  # noqa: F401  (registers the pallas backend)
  from jaxsched.pallas import pipeline_backend as pb

  img = pl.ImageParam(jnp.uint8, 2, name="img")
  i = pl.Var("i")
  r = pl.RDom((0, img.extent(1)), (0, img.extent(0)), name="r")
  r.where(img[r.y, r.x] >= 128)
  hist = pl.Func("hist")
  hist[i] = 0
  hist[pl.cast(jnp.int32, img[r.y, r.x]) // 16] += 1
  a = np.random.default_rng(6).integers(0, 256, (13, 17), dtype=np.uint8)
  want = np.bincount(a[a >= 128].astype(np.int64) // 16, minlength=16)
  p = pl.Pipeline(hist)
  np.testing.assert_array_equal(p.compile()(a, output_shape=(16,)), want)
  for kind in ("gpu", "tpu"):  # the masked update stays a scatter-add kernel on Pallas
    rep = pb.describe(p, (16,), input_shapes=[a.shape], target=kind)
    assert rep.funcs[0].how == "pallas" and "scatter-add" in rep.funcs[0].detail, str(rep)
    got = p.compile("pallas", target=kind, interpret=True)(a, output_shape=(16,))
    np.testing.assert_array_equal(np.asarray(got), want)

  q = pl.RDom((1, 9), name="q")
  q.where(q.x % 2 == 0)
  f = pl.Func("f")
  f[i] = pl.cast(jnp.float32, i)
  f[q.x] = f[q.x - 1] * 2.0 + 1.0  # reads the previous point: order matters
  got_f = pl.Pipeline(f).compile()(output_shape=(10,))
  want_f = np.arange(10, dtype=np.float64)
  for t in range(1, 10):
    if t % 2 == 0:
      want_f[t] = want_f[t - 1] * 2 + 1
  np.testing.assert_allclose(got_f, want_f)


def test_rdom_where_needs_a_boolean():
  r = pl.RDom((0, 4), name="r")
  with pytest.raises(TypeError, match=r"RDom r\.where: the predicate must be boolean"):
    r.where(r.x + 1)
