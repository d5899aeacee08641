"""Large order-independent updates: blocked reads merged into one var, scatters in chunks.

``xla._SCATTER_CHUNK`` is lowered so that images of a few dozen pixels take the chunked path
(a loop of full chunks plus a tail); every result is checked against float64 numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched.pipelines as pl
from jaxsched.pipelines import xla


def _splat(s: int, bins: int):
  """A bilateral-grid style splat: cells of s x s pixels, intensity bins, two channels."""
  inp = pl.ImageParam(jnp.float32, 2, name="inp")
  c, z, gy, gx = pl.Var("c"), pl.Var("z"), pl.Var("gy"), pl.Var("gx")
  r = pl.RDom((0, s), (0, s), name="r")
  val = pl.clamp(pl.boundary.repeat_edge(inp)[gy * s + r.y - s // 2, gx * s + r.x - s // 2], 0, 1)
  zi = pl.cast(jnp.int32, val * (bins - 1) + 0.5)
  hist = pl.Func("hist")
  hist[c, z, gy, gx] = 0.0
  hist[c, zi, gy, gx] += pl.select(c == 0, val, 1.0)
  return hist


def _splat_numpy(a: np.ndarray, s: int, bins: int, gh: int, gw: int, g0: int = 0) -> np.ndarray:
  """Cells gy, gx in [g0, g0 + gh) x [g0, g0 + gw), as out[.., gy - g0, gx - g0]."""
  h, w = a.shape
  out = np.zeros((2, bins, gh, gw))
  for gy in range(g0, g0 + gh):
    for gx in range(g0, g0 + gw):
      for ry in range(s):
        for rx in range(s):
          v = float(
            np.clip(
              a[np.clip(gy * s + ry - s // 2, 0, h - 1), np.clip(gx * s + rx - s // 2, 0, w - 1)],
              0,
              1,
            )
          )
          zi = int(np.float32(v) * np.float32(bins - 1) + np.float32(0.5))
          out[0, zi, gy - g0, gx - g0] += v
          out[1, zi, gy - g0, gx - g0] += 1
  return out


@pytest.mark.parametrize("chunk", [0, 150, 400, 1 << 19])
@pytest.mark.parametrize("merge", [True, False])
def test_splat_chunked_and_merged_matches_numpy(monkeypatch, chunk, merge):
  monkeypatch.setattr(xla, "_SCATTER_CHUNK", chunk)
  monkeypatch.setattr(xla, "_MERGE_BLOCKS", merge)
  s, bins, h, w = 4, 5, 23, 18  # cells straddle every edge
  gh, gw = -(-h // s) + 1, -(-w // s) + 1
  hist = _splat(s, bins)
  hist.compute_root()
  c, z, gy, gx = hist.args
  out = pl.Func("out")  # reads cells from -1 on: the histogram's region starts below 0
  out[c, z, gy, gx] = hist[c, z, gy - 1, gx - 1]
  a = np.random.default_rng(0).random((h, w), dtype=np.float32) * 1.2 - 0.1
  got = pl.Pipeline(out).compile()(a, output_shape=(2, bins, gh, gw))
  np.testing.assert_allclose(np.asarray(got), _splat_numpy(a, s, bins, gh, gw, -1), atol=1e-5)


@pytest.mark.parametrize("chunk", [0, 20])
def test_merged_splat_per_tile(monkeypatch, chunk):
  # The scatter computed at a consumer's tiles: the merged var's region starts at the tile's
  # traced origin, and the update is chunked inside the tile loop.
  monkeypatch.setattr(xla, "_SCATTER_CHUNK", chunk)
  s, bins, h, w = 4, 5, 23, 18
  gh, gw = -(-h // s) + 1, -(-w // s) + 1
  hist = _splat(s, bins)
  c, z, gy, gx = hist.args
  out = pl.Func("out")
  out[c, z, gy, gx] = hist[c, z, gy - 1, gx - 1] * 2
  gyo, gyi, gxo, gxi = pl.Var("gyo"), pl.Var("gyi"), pl.Var("gxo"), pl.Var("gxi")
  out.tile(gx, gy, gxo, gyo, gxi, gyi, 2, 3)
  hist.compute_at(out, gxo)
  a = np.random.default_rng(5).random((h, w), dtype=np.float32)
  got = pl.Pipeline(out).compile()(a, output_shape=(2, bins, gh, gw))
  want = 2 * _splat_numpy(a, s, bins, gh, gw, -1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_chunked_splat_under_vmap_and_grad(monkeypatch):
  monkeypatch.setattr(xla, "_SCATTER_CHUNK", 64)
  s, bins, h, w = 4, 5, 12, 16
  gh, gw = h // s, w // s
  fn = pl.Pipeline(_splat(s, bins)).compile()
  rng = np.random.default_rng(1)
  a = rng.random((3, h, w), dtype=np.float32)
  got = jax.vmap(lambda im: fn(im, output_shape=(2, bins, gh, gw)))(a)
  for k in range(3):
    np.testing.assert_allclose(got[k], _splat_numpy(a[k], s, bins, gh, gw), atol=1e-5)
  # d/d inp of sum(wt * hist[0]): each pixel adds wt at its own bin of every cell reading it.
  wt = rng.random((bins, gh, gw))
  g = jax.grad(lambda im: jnp.sum(wt * fn(im, output_shape=(2, bins, gh, gw))[0]))(a[0])
  want = np.zeros((h, w))
  for gy in range(gh):
    for gx in range(gw):
      for ry in range(s):
        for rx in range(s):
          y, x = np.clip(gy * s + ry - s // 2, 0, h - 1), np.clip(gx * s + rx - s // 2, 0, w - 1)
          zi = int(a[0, y, x] * np.float32(bins - 1) + np.float32(0.5))
          want[y, x] += wt[zi, gy, gx]
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5)


def test_merged_blocks_rewrite_reads_as_one_var():
  # The splat's read s*gy + r.y - 2 becomes t + const; gy and r.y elsewhere become t // s and
  # t % s (a bijection of the domain), and unpaired RVars stay.
  hist = _splat(4, 5)
  from jaxsched.pipelines import bounds as B
  from jaxsched.pipelines import lower as L

  upd = hist.updates[0]
  st = L.Stage(tuple(upd.args), upd.value, upd.rdom)
  su = B.self_update(hist, st.args, st.value)
  names = [v.name for v in hist.args]
  pure = [isinstance(a, pl.Var) for a in st.args]
  st2, e2, names2, mins2, exts2, rest = xla._merge_blocks(
    st, su[1], names, [0, 0, -1, -1], [2, 1, 7, 6], pure
  )
  assert rest == 1
  assert names2[:2] == ["c", "z"] and all("~" in n for n in names2[2:])
  assert mins2 == [0, 0, -4, -4] and exts2 == [2, 1, 28, 24]  # t = 4 g + r from 4 * -1 + 0
  assert not any(isinstance(n, pl.RVar) for n in pl.ir.walk(e2))
  # the read of the (inline) repeat_edge Func: each index is t + const, one var per dim
  reads = [n for n in pl.ir.walk(e2) if isinstance(n, pl.ir.Call)]
  lins = [B.linear(a) for n in reads for a in n.args]
  assert reads and all(lin is not None and list(lin[0].values()) == [1] for lin in lins)
  assert [next(iter(lin[0]))[1] for lin in lins[:2]] == names2[2:]


@pytest.mark.parametrize("chunk", [0, 16])
def test_chunked_injective_set_and_where(monkeypatch, chunk):
  # A collision-free "set" update and a masked (RDom.where) scatter-add, both chunked.
  monkeypatch.setattr(xla, "_SCATTER_CHUNK", chunk)
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  r = pl.RDom((0, img.extent(0)), name="r")
  t = pl.Func("t")  # transpose by a set update: f[x, r] = img[r, x]
  t[x, y] = 0.0
  t[x, r.x] = img[r.x, x]
  q = pl.RDom((0, 3), name="q")
  q.where(q.x != 1)
  m = pl.Func("m")  # row-blocked sums of 3 pixels, skipping each block's middle one
  m[y, x] = 0.0
  m[y, x] += img[y, pl.min(3 * x + q.x, img.extent(1) - 1)]
  a = np.random.default_rng(2).random((9, 12), dtype=np.float32)
  np.testing.assert_array_equal(pl.Pipeline(t).compile()(a, output_shape=(12, 9)), a.T)
  cols = np.minimum(3 * np.arange(4)[:, None] + np.array([0, 2])[None, :], 11)
  want = a[:, cols].astype(np.float64).sum(-1)
  np.testing.assert_allclose(pl.Pipeline(m).compile()(a, output_shape=(9, 4)), want, rtol=1e-6)


@pytest.mark.parametrize("chunk", [0, 8])
def test_merged_block_with_offset_rdom_used_elsewhere(monkeypatch, chunk):
  # m[x] += in[4x + q] * (q + 5) over q in [-2, 2): the pair (x, q) is merged, and the bare
  # q in the weight becomes t % 4 - 2.
  monkeypatch.setattr(xla, "_SCATTER_CHUNK", chunk)
  img = pl.ImageParam(jnp.float32, 1, name="img")
  x = pl.Var("x")
  q = pl.RDom((-2, 4), name="q")
  m = pl.Func("m")
  m[x] = 0.0
  m[x] += pl.boundary.repeat_edge(img)[4 * x + q.x] * pl.cast(jnp.float32, q.x + 5)
  a = np.random.default_rng(3).random(21, dtype=np.float32)
  want = [
    sum(float(a[np.clip(4 * i + k, 0, 20)]) * (k + 5) for k in range(-2, 2)) for i in range(6)
  ]
  np.testing.assert_allclose(pl.Pipeline(m).compile()(a, output_shape=(6,)), want, rtol=1e-6)


@pytest.mark.parametrize("chunk", [0, 32])
def test_histogram_chunked_over_its_rdom(monkeypatch, chunk):
  """A scatter-add whose Func dim is data-dependent (nothing in the region to split) runs in
  chunks of its outermost RVar, the last one shorter; an offset RDom min and a where() mask
  included. Equals numpy's bincount."""
  monkeypatch.setattr(xla, "_SCATTER_CHUNK", chunk)
  sizes = []
  real = xla._rdom_chunks

  def spy(rd, points):
    out = real(rd, points)
    if out is not None:
      sizes.extend(int(c.ranges[-1][1].value) for c in out)
    return out

  monkeypatch.setattr(xla, "_rdom_chunks", spy)
  img = pl.ImageParam(jnp.float32, 2, name="img")
  i = pl.Var("i")
  r = pl.RDom((1, img.extent(1) - 1), (2, img.extent(0) - 2), name="r")
  r.where(img[r.y, r.x] < 0.9)
  h = pl.Func("h")
  h[i] = 0
  h[pl.clamp(pl.cast(jnp.int32, img[r.y, r.x] * 8.0), 0, 7)] += 2
  a = np.random.default_rng(4).random((13, 11), dtype=np.float32)
  sub = a[2:, 1:]
  sub = sub[sub < np.float32(0.9)]
  want = 2 * np.bincount(np.clip((sub * np.float32(8.0)).astype(np.int64), 0, 7), minlength=8)
  np.testing.assert_array_equal(pl.Pipeline(h).compile()(a, output_shape=(8,)), want)
  if chunk:  # 11 rows of 10 points: 3 rows (30 <= 32 points) a chunk, then a tail of 2
    assert sizes == [3, 3, 3, 2], sizes
  else:
    assert sizes == []
