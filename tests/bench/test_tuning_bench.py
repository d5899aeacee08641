"""bench/tuning.py's pipeline spaces: the groups cover every schedulable Func exactly once."""

import pytest

from bench import tuning as bt
from jaxsched.tuning import pipeline_space as ps


@pytest.mark.parametrize("app", sorted(bt.PIPELINE_SPACES))
def test_pipeline_spaces_build(app):
  # PipelineSpace raises unless the groups cover the app's schedulable Funcs exactly once.
  space = ps._space(app, (64, 64), "xla", {}, bt.PIPELINE_SPACES[app]).space
  assert space.size > 1


def test_local_laplacian_space_has_its_laplacian_levels_apart():
  space = ps._space("local_laplacian", (64, 64), "xla", {}, bt.PIPELINE_SPACES["local_laplacian"])
  sizes = dict(zip(space.space.names, space.space.sizes, strict=True))
  apart = [f"{p}{s}" for p in ("lPyramid", "outLPyramid") for s in ("0", "1")]
  assert all(sizes[k] == 2 for k in [*apart, "lPyramid2-6", "outLPyramid2-7", "remap"])
  assert space.space.size == 2**7  # Gaussian pyramids stay root (one knob each, one choice)
