"""Every app x {inline, root, two tilings, sliding window} equals its float64 numpy reference."""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jaxsched.pipelines import apps

sys.path.insert(0, str(Path(__file__).parent))
import _np_refs as R  # noqa: E402

SCHEDULES = {
  "blur": ["inline", "root", "tiled", "tiled_small", "sliding"],
  "harris": ["inline", "root", "tiled", "tiled_small", "sliding"],
  "unsharp": ["inline", "root", "tiled", "tiled_small", "sliding"],
  # Fully inlining the grid blurs into the data-dependent slicing is not offered (1000 gathers a
  # pixel); inline_z inlines the z blur.
  "bilateral_grid": ["inline_z", "root", "tiled", "tiled_small", "sliding"],
}
# Tolerances relative to the output's scale: float32 evaluation vs float64 references.
RTOL = {"blur": 2e-6, "harris": 2e-5, "unsharp": 5e-6, "bilateral_grid": 5e-6}


def _image(h, w, seed):
  return np.random.default_rng(seed).random((h, w), dtype=np.float32) + 0.25


def _reference(name, a):
  if name == "blur":
    return R.blur(a)
  if name == "harris":
    return R.harris(a)
  if name == "bilateral_grid":
    return R.bilateral_grid(a)
  return R.unsharp(a, 1.5, 3)


def _check_all(name, h, w, seed):
  a = _image(h, w, seed)
  if name == "bilateral_grid":  # intensities in [0, 1), as the app expects
    a = a - np.float32(0.25)
  want = _reference(name, a)
  scale = max(1e-3, float(np.abs(want).max()))
  # A 1-pixel image is smaller than every tile and strip: the tiling and sliding logic is
  # what it exercises (inline and the large tiles are covered at the other size).
  scheds = SCHEDULES[name] if h * w > 1 else SCHEDULES[name][1:2] + SCHEDULES[name][3:]
  for sched in scheds:
    got = np.asarray(apps.make(name, sched).compile()(a))
    assert got.shape == (h, w) and got.dtype == np.float32, sched
    err = float(np.abs(got - want).max()) / scale
    assert err < RTOL[name], f"{name}/{sched} at {(h, w)}: relative error {err}"


# Generated sizes always span several 32x64 tiles and two 64-row strips without being
# multiples of them (and are smaller than one 128x256 tile); plus a 1-pixel image.
@pytest.mark.parametrize("name", sorted(set(SCHEDULES) - {"bilateral_grid"}))
@settings(max_examples=1)
@given(h=st.integers(65, 95), w=st.integers(65, 127), seed=st.integers(0, 2**16))
@example(h=1, w=1, seed=0)
def test_app_schedules_match_numpy(name, h, w, seed):
  _check_all(name, h, w, seed)


@settings(max_examples=1)
@given(h=st.integers(2, 40), w=st.integers(2, 40), seed=st.integers(0, 2**16))
@example(h=1, w=1, seed=0)
def test_bilateral_grid_schedules_match_numpy(h, w, seed):
  _check_all("bilateral_grid", h, w, seed)


@settings(max_examples=1)
@given(h=st.integers(9, 40), w=st.integers(9, 40), seed=st.integers(0, 2**16))
@example(h=1, w=1, seed=0)
def test_local_laplacian_matches_numpy(h, w, seed):
  a = _image(h, w, seed) - np.float32(0.25)
  want = R.local_laplacian(a, 3, alpha=0.7, beta=0.9)
  for sched in ("root", "fused") if h > 1 else ("fused",):
    got = np.asarray(
      apps.make("local_laplacian", sched, levels=3).compile()(a, alpha=0.7, beta=0.9)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=sched)


@settings(max_examples=1)
@given(h=st.integers(17, 40), w=st.integers(33, 60), seed=st.integers(0, 2**16))
@example(h=1, w=1, seed=0)
def test_camera_pipe_exact(h, w, seed):
  a = np.random.default_rng(seed).integers(0, 1024, (h, w)).astype(np.uint16)
  a.flat[0] = 1023  # a hot pixel
  want = R.camera_pipe(a)
  scheds = (
    ("inline", "root", "root_demosaic", "tiled", "tiled_small", "sliding") if h > 1 else ("tiled_small", "sliding")
  )
  for sched in scheds:
    got = np.asarray(apps.make("camera_pipe", sched).compile()(a))
    np.testing.assert_array_equal(got, want, err_msg=sched)


@pytest.mark.parametrize("switch", ["_POLYPHASE", "_MATERIALIZE"])
def test_camera_pipe_lowering_switches_exact(switch, monkeypatch):
  """Polyphase evaluation of the Bayer interleave and real materialisation of root Funcs are
  speed choices (A/B switches): with either off the result is the same exact one."""
  from jaxsched.pipelines import xla

  a = np.random.default_rng(5).integers(0, 1024, (23, 37)).astype(np.uint16)
  want = R.camera_pipe(a)
  for on in (True, False):
    monkeypatch.setattr(xla, switch, on)
    for sched in ("inline", "root", "root_demosaic"):
      got = np.asarray(apps.make("camera_pipe", sched).compile()(a))
      np.testing.assert_array_equal(got, want, err_msg=f"{sched} {switch}={on}")


@pytest.mark.parametrize("flat", [True, False])
def test_bilateral_grid_flat_index_switch_matches_numpy(flat, monkeypatch):
  """The splat (4-D scatter) and slice (4-D gathers) at one linear index, or XLA's N-D
  scatter/gather: both equal the float64 reference."""
  from jaxsched.pipelines import xla

  monkeypatch.setattr(xla, "_FLAT_INDEX", flat)
  a = _image(29, 43, 17) - np.float32(0.25)
  want = _reference("bilateral_grid", a)
  got = np.asarray(apps.make("bilateral_grid", "root").compile()(a))
  err = float(np.abs(got - want).max()) / float(np.abs(want).max())
  assert err < RTOL["bilateral_grid"], f"_FLAT_INDEX={flat}: relative error {err}"


def test_unsharp_sigma_is_a_runtime_param():
  a = _image(13, 17, 3)
  fn = apps.make("unsharp", "root").compile()
  for sigma in (0.7, 2.5):
    got = np.asarray(fn(a, sigma=sigma))
    want = R.unsharp(a, sigma, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=2)
@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**16))
@example(h=1, w=1, seed=0)
def test_histogram_equalize_exact(h, w, seed):
  a = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
  want = R.histogram_equalize(a)
  for sched in ("default", "tiled"):
    got = np.asarray(apps.make("histogram_equalize", sched).compile()(a))
    np.testing.assert_array_equal(got, want)


def test_registry_errors_list_choices():
  with pytest.raises(ValueError, match="registered apps: .*blur"):
    apps.make("nope")
  with pytest.raises(ValueError, match="choices: .*inline"):
    apps.make("blur", "fastest")
  with pytest.raises(ValueError, match=r"no schedules for backend 'cuda9'; it has \[.*'xla'"):
    apps.make("blur", backend="cuda9")
  with pytest.raises(ValueError, match="already registered"):
    apps.register_app(apps.APPS["blur"])


def test_every_app_has_xla_default_and_alternatives():
  for name, app in apps.APPS.items():
    assert app.default["xla"] in app.schedules["xla"], name
    assert len(app.schedules["xla"]) >= 2, name


@pytest.mark.parametrize(
  "switch,mode",
  [
    ("_CORE_IN_PLACE", True),
    ("_CORE_IN_PLACE", False),
    ("_SLAB_WINDOWS", False),
    ("_PEEL_MIN_FRACTION", 0.0),  # peel however thin the interior (small test images)
    ("_PEEL_MIN_FRACTION", 1.1),  # never peel
  ],
)
@pytest.mark.parametrize("name", ["blur", "unsharp", "harris"])
def test_lowering_switches_match_numpy(name, switch, mode, monkeypatch):
  """Peeled cores are padded or written in place, border slabs read edge-padded windows or
  clamped slices (lowering choices for speed, kept as switches for A/B runs): every variant
  must give the reference result."""
  from jaxsched.pipelines import xla

  monkeypatch.setattr(xla, switch, mode)
  a = _image(37, 45, 11)
  want = _reference(name, a)
  got = np.asarray(apps.make(name, "root" if name == "unsharp" else "inline").compile()(a))
  err = float(np.abs(got - want).max()) / float(np.abs(want).max())
  assert err < RTOL[name], f"{name} {switch}={mode}: relative error {err}"
