"""Registry of standard pipeline apps (Halide's generator habit: algorithm, then schedules).

``make("harris", schedule="tiled")`` builds fresh Funcs, applies the named schedule for a
backend and returns an :class:`AppGraph`; ``APPS[name].schedules[backend]`` lists the choices.
Every build tags its Pipeline with ``pipeline.workload = Workload(app name, build kwargs)``, so
``make(name).compile(schedule="tuned")`` can ask a schedule provider for a schedule.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from jaxsched.pipelines.pipeline import Pipeline
from jaxsched.pipelines.schedule_providers import Workload


@dataclasses.dataclass
class AppGraph:
  """One built instance of an app: its Funcs, Vars and Pipeline."""

  name: str
  pipeline: Pipeline
  funcs: dict[str, Any]
  vars: dict[str, Any]
  output_shape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None

  def compile(
    self, backend: str = "xla", *, schedule: str | None = None, **options: Any
  ) -> Callable[..., Any]:
    """The compiled pipeline (see ``Pipeline.compile``); the output shape defaults to the app's
    rule. ``schedule="tuned"`` replaces this graph's schedule by the tuned (else default) one
    per traced shape."""
    fn = self.pipeline.compile(backend, schedule=schedule, **options)
    rule = self.output_shape
    if rule is None:
      return fn

    def run(*images: Any, output_shape: Any = None, **params: Any):
      if output_shape is None:
        output_shape = rule(tuple(images[0].shape))
      return fn(*images, output_shape=output_shape, **params)

    run.schedules = fn.schedules
    return run


Schedule = Callable[[AppGraph], None]


@dataclasses.dataclass(frozen=True)
class App:
  """An algorithm (``build(**kwargs) -> AppGraph``) with named schedules per backend."""

  name: str
  build: Callable[..., AppGraph]
  schedules: dict[str, dict[str, Schedule]]
  default: dict[str, str]
  description: str = ""

  def __post_init__(self):
    for backend, name in self.default.items():
      if name not in self.schedules.get(backend, {}):
        raise ValueError(
          f"app {self.name}: default schedule {name!r} for backend {backend!r} "
          f"is not among {sorted(self.schedules.get(backend, {}))}"
        )
    if not getattr(self.build, "_tags_workload", False):
      object.__setattr__(self, "build", _tag_workload(self.name, self.build))


def _tag_workload(name: str, build: Callable[..., AppGraph]) -> Callable[..., AppGraph]:
  """``build`` that records ``Workload(name, kwargs)`` on the built Pipeline (for providers)."""

  @functools.wraps(build)
  def tagged(**kwargs: Any) -> AppGraph:
    g = build(**kwargs)
    g.pipeline.workload = Workload(name, dict(kwargs))
    return g

  tagged._tags_workload = True
  return tagged


APPS: dict[str, App] = {}


def register_app(app: App, *, overwrite: bool = False) -> App:
  """Add ``app`` to :data:`APPS` (returns it)."""
  if app.name in APPS and not overwrite:
    raise ValueError(f"app {app.name!r} is already registered")
  APPS[app.name] = app
  return app


def get_app(name: str) -> App:
  try:
    return APPS[name]
  except KeyError:
    raise ValueError(f"unknown app {name!r}; registered apps: {sorted(APPS)}") from None


def add_schedule(
  app_name: str, backend: str, name: str, fn: Schedule, *, default: bool = False
) -> None:
  """Register another schedule for an app (e.g. the Pallas backend adds its own)."""
  app = get_app(app_name)
  app.schedules.setdefault(backend, {})[name] = fn
  if default:
    app.default[backend] = name


def make(name: str, schedule: str = "default", *, backend: str = "xla", **kwargs: Any) -> AppGraph:
  """Build app ``name`` and apply ``schedule`` (``"default"``: the backend's default)."""
  app = get_app(name)
  scheds = app.schedules.get(backend)
  if not scheds:
    raise ValueError(
      f"app {name!r} has no schedules for backend {backend!r}; it has {sorted(app.schedules)}"
    )
  if schedule == "default":
    schedule = app.default[backend]
  if schedule not in scheds:
    raise ValueError(
      f"app {name!r} has no schedule {schedule!r} for backend {backend!r}; "
      f"choices: {sorted(scheds)}"
    )
  g = app.build(**kwargs)
  scheds[schedule](g)
  return g


from jaxsched.pipelines.apps import (  # noqa: E402
  bilateral_grid,
  blur,
  camera_pipe,
  harris,
  histogram_equalize,
  local_laplacian,
  unsharp,
)

for _m in (bilateral_grid, blur, camera_pipe, harris, histogram_equalize, local_laplacian, unsharp):
  register_app(_m.APP)

__all__ = ["APPS", "App", "AppGraph", "add_schedule", "get_app", "make", "register_app"]
