"""Halide (pip) as an oracle: blur, harris and histogram equalisation on the same inputs."""

import halide as hl  # a test dependency: a missing install fails loudly, never skips
import numpy as np
import pytest

from bench.pipelines import halide_app  # the Halide versions of the apps
from jaxsched.pipelines import apps


def _halide_realize(name, data):
  inp, out, manual = halide_app(hl, name)
  manual()
  inp.set(hl.Buffer(data))
  buf = hl.Buffer(np.empty(data.shape, data.dtype))
  hl.Pipeline(out).realize(buf)
  return np.asarray(buf)


@pytest.mark.parametrize(
  "name,schedule", [("blur", "inline"), ("harris", "sliding"), ("histogram_equalize", "default")]
)
def test_matches_halide(name, schedule):
  rng = np.random.default_rng(11)  # >= 64 rows: the manual schedules split y by 32 and 64
  if name == "histogram_equalize":
    data = rng.integers(0, 256, (70, 45), dtype=np.uint8)
  else:
    data = rng.random((70, 45), dtype=np.float32)
  want = _halide_realize(name, data)
  got = np.asarray(apps.make(name, schedule).compile()(data))
  if name == "histogram_equalize":
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
