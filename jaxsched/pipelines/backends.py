"""Backend registry. The IR never imports backends; they plug in by name.

A backend is ``fn(plan, images, params, **options) -> list[jax.Array]``: it receives the
lowered :class:`jaxsched.pipelines.lower.Plan` (regions, tile tables; ``loop_nest(plan)``
gives the loop-nest tree), the input arrays in pipeline order and the scalar params keyed by
``id(param)``, and returns the outputs over ``[0, output_shape)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BackendFn = Callable[..., list[Any]]

_BACKENDS: dict[str, BackendFn] = {}


def register_backend(name: str, fn: BackendFn, *, overwrite: bool = False) -> None:
  """Register ``fn`` as backend ``name`` (``Pipeline.compile(backend=name)``)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"backend name must be a non-empty string, got {name!r}")
  if not callable(fn):
    raise TypeError(f"backend {name!r}: {fn!r} is not callable")
  if name in _BACKENDS and not overwrite and _BACKENDS[name] is not fn:
    raise ValueError(f"backend {name!r} is already registered (pass overwrite=True to replace)")
  _BACKENDS[name] = fn


# Backends living in other subpackages register themselves on import (the IR never imports them).
_PROVIDERS = {"pallas": "jaxsched.pallas"}


def get_backend(name: str) -> BackendFn:
  """The backend called ``name``; unknown names list the registered ones."""
  try:
    return _BACKENDS[name]
  except KeyError:
    hint = f" (import {_PROVIDERS[name]} to register it)" if name in _PROVIDERS else ""
    raise ValueError(
      f"unknown backend {name!r}{hint}; registered backends: {sorted(_BACKENDS)}"
    ) from None


def available_backends() -> list[str]:
  return sorted(_BACKENDS)
