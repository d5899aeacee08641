"""Schedule provider registry: ``Pipeline.compile(schedule=name)`` asks a provider by name.

A provider picks the schedule of a known workload at concrete shapes, e.g. the tuner's
``"tuned"`` provider reads the tuning database. It is
``fn(workload, *, image_shapes, backend) -> ScheduleChoice``: given the pipeline's
:class:`Workload` (app name and build arguments), the concrete input image shapes and the backend
name, it returns a freshly built, scheduled :class:`~jaxsched.pipelines.Pipeline` of the same
algorithm and what it chose. ``Pipeline.compile`` calls it when a shape is first traced (the
shapes are static there, so it composes with ``jax.jit`` and ``jax.vmap``).

The IR never imports providers: those living in other subpackages are named here as module
strings and imported on first use, so ``schedule="tuned"`` works without importing the tuner.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
  from jaxsched.pipelines.pipeline import Pipeline


class Workload(NamedTuple):
  """What a Pipeline computes, for schedule providers: a registered app and its build arguments.

  Apps set it on the Pipelines they build (``apps.make("blur").pipeline.workload ==
  Workload("blur", {})``); a user-built Pipeline has ``workload=None`` unless set by hand.
  """

  app: str
  build_kwargs: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ScheduleChoice:
  """A provider's answer: the scheduled pipeline to run and where its schedule came from.

  Attributes:
    pipeline: a fresh Pipeline of the workload, scheduled (its images, params and outputs must
      match the caller's: images by position, params by name).
    source: where the schedule came from, e.g. ``"tuned"`` (a database record) or ``"default"``
      (the app's default schedule for the backend).
    config: the tuned schedule config (``None`` for a named schedule).
    schedule: the app schedule's name (``None`` for a tuned config).
  """

  pipeline: Pipeline
  source: str
  config: Mapping[str, Any] | None = None
  schedule: str | None = None

  def info(self) -> dict[str, Any]:
    """``{"source", "schedule", "config"}``: what compiled functions report per shape."""
    config = None if self.config is None else dict(self.config)
    return {"source": self.source, "schedule": self.schedule, "config": config}


ScheduleProvider = Callable[..., ScheduleChoice]

_SCHEDULE_PROVIDERS: dict[str, ScheduleProvider] = {}

# Providers living in other subpackages register themselves when this module is imported.
_PROVIDER_MODULES = {"tuned": "jaxsched.tuning.pipeline_space"}


def register_schedule_provider(name: str, fn: ScheduleProvider, *, overwrite: bool = False) -> None:
  """Register ``fn`` as schedule provider ``name`` (``Pipeline.compile(schedule=name)``)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"schedule provider name must be a non-empty string, got {name!r}")
  if not callable(fn):
    raise TypeError(f"schedule provider {name!r}: {fn!r} is not callable")
  current = _SCHEDULE_PROVIDERS.get(name)
  if current is not None and current is not fn and not overwrite:
    raise ValueError(
      f"schedule provider {name!r} is already registered (pass overwrite=True to replace)"
    )
  _SCHEDULE_PROVIDERS[name] = fn


def available_schedule_providers() -> list[str]:
  """Names ``Pipeline.compile(schedule=...)`` accepts (registered or importable on demand)."""
  return sorted(set(_SCHEDULE_PROVIDERS) | set(_PROVIDER_MODULES))


def get_schedule_provider(name: str) -> ScheduleProvider:
  """The provider called ``name``, importing its module on first use; unknown names list all."""
  if name not in _SCHEDULE_PROVIDERS and name in _PROVIDER_MODULES:
    importlib.import_module(_PROVIDER_MODULES[name])  # Registers it.
  try:
    return _SCHEDULE_PROVIDERS[name]
  except (KeyError, TypeError):  # TypeError: an unhashable name.
    raise ValueError(
      f"unknown schedule {name!r}; registered schedule providers: "
      f"{available_schedule_providers()} (or schedule=None: the Funcs' own schedule)"
    ) from None
