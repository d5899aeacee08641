"""Edge-flat regions: root Funcs of a clamped image computed only where they vary.

A pyramid level of a ``repeat_edge`` image is constant beyond a box a few points outside the
image; planning cuts such Funcs to their box and clamps their consumers' reads, which must not
change any result. References are float64 numpy with explicit index arithmetic.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched.pipelines as pl

W4 = np.array([1.0, 3.0, 3.0, 1.0]) / 8  # taps at 2x - 1 .. 2x + 2


def _down(f, name):
  y, x = pl.Var("y"), pl.Var("x")
  dx, dy = pl.Func(name + "_dx"), pl.Func(name)
  dx[y, x] = (f[y, 2 * x - 1] + 3 * (f[y, 2 * x] + f[y, 2 * x + 1]) + f[y, 2 * x + 2]) / 8
  dy[y, x] = (dx[2 * y - 1, x] + 3 * (dx[2 * y, x] + dx[2 * y + 1, x]) + dx[2 * y + 2, x]) / 8
  return dy


def _pyramid(boundary, base: str = "affine"):
  """out = g0 + g1[y // 2, x // 2] + g2[y // 4, x // 4], every level root."""
  img = pl.ImageParam(jnp.float32, 2, name="img")
  y, x = pl.Var("y"), pl.Var("x")
  c = getattr(pl.boundary, boundary)(img)
  g0 = pl.Func("g0")
  if base == "affine":
    g0[y, x] = 2 * c[y, x] + 1
  elif base == "lut":  # a data-dependent read of a table, as the local Laplacian's remap
    i = pl.Var("i")
    lut = pl.Func("lut")
    lut[i] = pl.cast(jnp.float32, i) * pl.cast(jnp.float32, i) * 0.1
    lut.compute_root()
    g0[y, x] = c[y, x] + lut[pl.clamp(pl.cast(jnp.int32, c[y, x] * 7), 0, 7)]
  else:  # x used directly: not flat along x
    g0[y, x] = c[y, x] + pl.cast(jnp.float32, x) * 0.25
  g1 = _down(g0, "g1")
  g2 = _down(g1, "g2")
  out = pl.Func("out")
  out[y, x] = g0[y, x] + g1[y // 2, x // 2] + g2[y // 4, x // 4]
  for f in (g0, g1, g2):
    f.compute_root()
  return out, (g0, g1, g2)


def _index(i, n, boundary):
  if boundary == "repeat_edge":
    return np.clip(i, 0, n - 1)
  # mirror_image: -1 -> 0, -2 -> 1, n -> n - 1 (numpy's "symmetric")
  p = np.mod(i, 2 * n)
  return np.where(p < n, p, 2 * n - 1 - p)


def _reference(data, boundary, base):
  d = data.astype(np.float64)
  h, w = d.shape

  def level(j, yy, xx):
    if j == 0:
      v = d[_index(yy, h, boundary), _index(xx, w, boundary)]
      if base == "affine":
        return 2 * v + 1
      if base == "lut":
        k = np.clip((v.astype(np.float32) * np.float32(7)).astype(np.int32), 0, 7)
        return v + k.astype(np.float64) ** 2 * 0.1
      return v + xx * 0.25
    return sum(
      W4[a] * W4[b] * level(j - 1, 2 * yy + a - 1, 2 * xx + b - 1)
      for a in range(4)
      for b in range(4)
    )

  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return level(0, yy, xx) + level(1, yy // 2, xx // 2) + level(2, yy // 4, xx // 4)


def _run(out, backend, data):
  import jaxsched.pallas  # noqa: F401  (registers the pallas backend)

  p = pl.Pipeline(out)
  if backend == "xla":
    return np.asarray(p.compile()(data))
  return np.asarray(p.compile("pallas", target=backend[7:], interpret=True)(data))


def _regions(out, shape):
  p = pl.Pipeline(out).plan(shape, [shape])
  return {fp.func.name: fp.region for fp in p.order}


@pytest.mark.parametrize("backend", ["xla", "pallas-gpu", "pallas-tpu"])
@pytest.mark.parametrize("base", ["affine", "lut"])
def test_pyramid_of_a_clamped_image_is_cut_to_where_it_varies(backend, base):
  """Levels of a repeat_edge image are computed inside their flat box (g0 on the image
  itself, not on the 2^levels-wide halo bounds inference asks for); results equal numpy,
  including the points read through the clamped edges."""
  shape = (13, 18)
  out, _ = _pyramid("repeat_edge", base)
  data = np.random.default_rng(3).random(shape, dtype=np.float32)
  np.testing.assert_allclose(
    _run(out, backend, data), _reference(data, "repeat_edge", base), rtol=1e-5, atol=1e-5
  )
  regions = _regions(out, shape)
  assert regions["g0"] == [(0, 13), (0, 18)]
  # g1 is flat below -1 and from (n + 1) // 2 on: taps 2x - 1 .. 2x + 2 all on one clamped side
  assert regions["g1"] == [(-1, 9), (-1, 11)]


@pytest.mark.parametrize("backend", ["xla", "pallas-tpu"])
def test_mirrored_or_position_dependent_funcs_are_not_cut(backend):
  """A mirrored image is not constant past its edges, and a Func of ``x`` itself is not flat
  along x: those regions keep their full halo (a cut would change the results)."""
  shape = (11, 14)
  data = np.random.default_rng(4).random(shape, dtype=np.float32)
  out, _ = _pyramid("mirror_image")
  np.testing.assert_allclose(
    _run(out, backend, data), _reference(data, "mirror_image", "affine"), rtol=1e-5, atol=1e-5
  )
  assert _regions(out, shape)["g0"] == [(-3, 18), (-3, 22)]  # the whole halo
  out, _ = _pyramid("repeat_edge", "position")
  np.testing.assert_allclose(
    _run(out, backend, data),
    _reference(data, "repeat_edge", "position"),
    rtol=1e-5,
    atol=1e-5,
  )
  assert _regions(out, shape)["g0"] == [(0, 11), (-3, 22)]  # cut along y only


def test_clamped_strided_slices_equal_clipped_indexing():
  """``xla._clamped_slice`` (edge repeats around a strided slice, what clamped reads such as
  ``clamp(2 x - 1, lo, hi)`` lower to) equals numpy indexing at clipped indices, for windows
  starting and ending on either side of the clamp bounds."""
  from jaxsched.pipelines.xla import _clamped_slice

  arr = np.arange(12.0)
  for lo, hi in [(0, 11), (0, 0), (3, 7), (5, 5), (2, 11)]:
    for step in (1, 2, 3):
      for s in range(-8, 16, 3):
        for ext in (1, 2, 5, 8):
          want = arr[np.clip(s + step * np.arange(ext), lo, hi)]
          got = np.asarray(_clamped_slice(jnp.asarray(arr), 0, s, ext, lo, hi, step))
          np.testing.assert_array_equal(got, want, err_msg=f"{lo=} {hi=} {step=} {s=} {ext=}")
