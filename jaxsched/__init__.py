"""jaxsched: GPU-native JAX — Halide-style pipelines, tunable Pallas kernels, Viterbi sparse
matrices, an AutoTVM-style tuner and Flax NNX models.

Subpackages are imported lazily (``jaxsched.pipelines``, ``jaxsched.pallas``, ...) so that
``import jaxsched`` stays cheap.
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

_SUBPACKAGES = ("pipelines", "pallas", "sparse", "tuning", "models")

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
  if name in _SUBPACKAGES:
    return _import_module(f"jaxsched.{name}")
  raise AttributeError(f"module 'jaxsched' has no attribute {name!r}")
