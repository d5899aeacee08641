"""Halide (pip, ``bench.halide_peers``, manual schedules) as an oracle for the jaxsched apps.

The two implementations are written independently; where their conventions differ, the inputs
and outputs are adapted here (as ``bench/pipelines.py`` does before timing):

- unsharp: Halide's radius is ``ceil(3 sigma)``, so both run ``sigma = 1.0`` (radius 3).
- histogram_equalize: jaxsched maps uint8 ``v`` to ``cdf[v] * 255 // n``; Halide takes
  ``v / 255`` as float32 and returns ``cdf[v] / n``, from which ``cdf`` is recovered exactly.
- local_laplacian: Halide clamps the output to [0, 1], jaxsched does not.
- camera_pipe: Halide's ``camera_pipe_grbg`` peer is the same algorithm and must match exactly.
  The older ``camera_pipe`` peer is a different algorithm (jaxsched: GRBG, hot-pixel clipping,
  repeat_edge, uint8 LUT; Halide: RGGB, no hot-pixel step, mirror borders, float curve). Their
  shared part (bilinear demosaic, colour matrix, gamma) is compared on a raw image the
  hot-pixel step leaves unchanged, shifted by one column (GRBG -> RGGB), away from the borders,
  through the LUT's quantisation.

Manual schedules only: the autoschedulers (Adams2019 above all) take seconds to minutes.
"""

import numpy as np
import pytest

from bench import halide_peers as hp  # needs pip halide: a missing install fails, never skips
from jaxsched.pipelines import apps
from jaxsched.pipelines.apps import camera_pipe

SHAPE = (70, 45)  # >= 64 rows: the manual schedules split y by up to 64; odd width


def _image(seed: int = 11) -> np.ndarray:
  return np.random.default_rng(seed).random(SHAPE, dtype=np.float32)


@pytest.mark.parametrize(
  "name,schedule,kwargs,halide_params",
  [
    ("blur", "inline", {}, {}),
    ("harris", "sliding", {}, {}),
    ("unsharp", "root", {"radius": 3, "sigma": 1.0}, {"sigma": 1.0, "amount": 1.0}),
    ("bilateral_grid", "root", {"s_sigma": 8, "r_sigma": 0.1}, {"s_sigma": 8, "r_sigma": 0.1}),
  ],
)
def test_matches_halide(name, schedule, kwargs, halide_params):
  data = _image()
  want = hp.run(name, data, **halide_params)
  got = np.asarray(apps.make(name, schedule, **kwargs).compile()(data))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_histogram_equalize_matches_halide():
  data = np.random.default_rng(11).integers(0, 256, SHAPE, dtype=np.uint8)
  n = data.size
  cdf_over_n = hp.run("histogram", data.astype(np.float32) / np.float32(255))
  cdf = np.rint(cdf_over_n.astype(np.float64) * n).astype(np.int64)
  np.testing.assert_allclose(cdf_over_n * n, cdf, atol=1e-3)  # really integer counts / n
  want = (cdf * 255 // n).astype(np.uint8)
  for schedule in ("default", "tiled"):
    got = np.asarray(apps.make("histogram_equalize", schedule).compile()(data))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_local_laplacian_matches_halide():
  data = _image()
  want = hp.run("local_laplacian", data, levels=8, pyramid_levels=4, alpha=1.0, beta=0.5)
  got = np.asarray(
    apps.make("local_laplacian", "root", levels=4, k_levels=8, alpha=1.0, beta=0.5).compile()(data)
  )
  # Halide clamps the output to [0, 1]; jaxsched does not (the input here leaves the range).
  assert got.min() < 0 or got.max() > 1
  np.testing.assert_allclose(np.clip(got, 0, 1), want, rtol=1e-5, atol=1e-6)


def _smooth_raw(h: int, w: int) -> np.ndarray:
  """GRBG raw: per colour a ramp increasing along x and y, so no pixel is a hot pixel."""
  rng = np.random.default_rng(3)
  y, x = np.mgrid[:h, :w]
  raw = np.zeros((h, w))
  for py in (0, 1):
    for px in (0, 1):
      base, sy, sx = rng.uniform(20, 300), rng.uniform(1, 6), rng.uniform(1, 6)
      site = (y % 2 == py) & (x % 2 == px)
      raw[site] = (base + sy * y + sx * x)[site]
  return np.round(raw).astype(np.uint16)


def _hot_pixel_clip(raw: np.ndarray) -> np.ndarray:
  """jaxsched's hot-pixel step in numpy: min(raw, max of the same-colour 4-neighbours)."""
  p = np.pad(raw.astype(np.int64), 2, mode="edge")
  h, w = raw.shape
  nb = [
    p[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w] for dy, dx in ((0, -2), (0, 2), (-2, 0), (2, 0))
  ]
  return np.minimum(raw, np.max(nb, axis=0))


def test_camera_pipe_shared_stages_match_halide():
  gamma = 2.2
  raw = _smooth_raw(*SHAPE)
  h, w = raw.shape
  # Rows 2..h-3 and columns 2..w-3 (what the compared interior reads) are no hot pixels.
  np.testing.assert_array_equal(_hot_pixel_clip(raw)[2:-2, 2:-2], raw[2:-2, 2:-2])
  got = np.asarray(apps.make("camera_pipe", "tiled", gamma=gamma).compile()(raw))
  assert got.shape == (3, h, w) and got.dtype == np.uint8
  # Dropping the first column turns GRBG into Halide's RGGB; contrast 0 disables its S-curve.
  g = hp.run(
    "camera_pipe",
    raw[:, 1:].astype(np.float32) / np.float32(1023),
    ccm=camera_pipe.COLOR_MATRIX,
    gamma=gamma,
    contrast=0.0,
  )
  got, g = got[:, 3:-3, 3:-3], g[:, 3:-3, 2:-3].astype(np.float64)  # away from both borders
  # jaxsched: LUT[clamp(int(c), 0, 1023)], c the corrected colour in raw units. Recover c from
  # Halide's clamp(c / 1023, 0, 1) ** (1 / gamma) (fast_pow, ~1e-6) and bound its truncation.
  c = g**gamma * 1023

  def lut(i):
    v = np.clip(i, 0, 1023) / 1023
    return np.clip(np.floor(v ** (1 / gamma) * 255 + 0.5), 0, 255)

  lo, hi = lut(np.trunc(c - 0.01)), lut(np.trunc(c + 0.01))
  assert np.all((lo <= got) & (got <= hi)), np.argwhere((got < lo) | (got > hi))[:5]
  assert np.mean(lo == hi) > 0.9  # the bound is exact almost everywhere
  assert np.ptp(got, axis=(1, 2)).min() > 20  # a real range of colours was compared


@pytest.mark.parametrize("schedule", ["tiled", "root", "root_demosaic"])
def test_camera_pipe_matches_halide_grbg_peer_exactly(schedule):
  """jaxsched's camera pipe against Halide's independent version of the same algorithm."""
  raw = np.random.default_rng(12).integers(0, 1024, SHAPE).astype(np.uint16)
  want = hp.run("camera_pipe_grbg", raw.astype(np.float32), gamma=2.2)
  got = np.asarray(apps.make("camera_pipe", schedule).compile()(raw))
  assert got.dtype == np.uint8 and got.shape == want.shape == (3, *SHAPE)
  np.testing.assert_array_equal(got, want.astype(np.uint8))
