"""``Pipeline``: compile a set of output Funcs for a backend, realize them, lower them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.pipelines import backends as _backends
from jaxsched.pipelines import ir
from jaxsched.pipelines import lower as L
from jaxsched.pipelines import schedule_providers as _providers


class Pipeline:
  """A set of output Funcs. Inputs are the ImageParams they use, in creation order.

  Args:
    outputs: a Func or a sequence of Funcs.
    inputs: optional explicit order of the ImageParams (positional arguments of the compiled
      function); by default the order in which the ImageParams were created.

  Attributes:
    workload: what the pipeline computes, as a
      :class:`~jaxsched.pipelines.schedule_providers.Workload` ``(app, build_kwargs)``, or
      ``None``. Apps set it; schedule providers (``compile(schedule="tuned")``) need it.
  """

  def __init__(self, outputs: ir.Func | Sequence[ir.Func], inputs: Sequence[Any] | None = None):
    outs = [outputs] if isinstance(outputs, ir.Func) else list(outputs)
    if not outs:
      raise ValueError("Pipeline needs at least one output Func")
    self.outputs = outs
    self.funcs, images, self.params = L.collect(outs)
    if inputs is not None:
      inputs = list(inputs)
      missing = [i.name for i in images if all(i is not j for j in inputs)]
      if missing:
        raise ValueError(f"Pipeline inputs {[i.name for i in inputs]} miss ImageParams {missing}")
      images = inputs
    self.images: list[ir.ImageParam] = images
    names = [p.name for p in self.params]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise ValueError(f"Pipeline has several Params named {dup}; Param names must be unique")
    self.workload: _providers.Workload | None = None

  # -- shapes and plans
  def _out_shapes(self, output_shape, image_shapes) -> list[tuple[int, ...]]:
    if output_shape is None:
      if not image_shapes:
        raise ValueError("output_shape is required: the pipeline has no input images")
      output_shape = image_shapes[0]
      bad = [o.name for o in self.outputs if o.ndim != len(output_shape)]
      if bad:
        raise ValueError(
          f"outputs {bad} do not have the first image's rank ({len(output_shape)}); pass "
          "output_shape"
        )
    shp = tuple(output_shape)
    if all(isinstance(s, int | np.integer) for s in shp):
      shapes = [tuple(int(s) for s in shp)] * len(self.outputs)
    else:
      shapes = [tuple(int(x) for x in s) for s in shp]
      if len(shapes) != len(self.outputs):
        raise ValueError(f"{len(shapes)} output shapes given for {len(self.outputs)} outputs")
    for o, s in zip(self.outputs, shapes, strict=True):
      if len(s) != o.ndim:
        raise ValueError(f"output Func {o.name} has {o.ndim} dims but {s=} was requested")
      if any(x <= 0 for x in s):
        raise ValueError(f"output shape {s} of Func {o.name} must be positive")
    return shapes

  def plan(self, output_shape: Any, image_shapes: Sequence[tuple[int, ...]]) -> L.Plan:
    """The lowered plan (regions, tiles) for concrete shapes."""
    if len(image_shapes) != len(self.images):
      raise ValueError(
        f"pipeline takes {len(self.images)} images {[i.name for i in self.images]}, got "
        f"{len(image_shapes)}"
      )
    shapes = {
      id(i): tuple(int(x) for x in s) for i, s in zip(self.images, image_shapes, strict=True)
    }
    outs = self._out_shapes(output_shape, list(image_shapes))
    return L.plan(self.outputs, outs, shapes, self.funcs, self.images, self.params)

  def lower(
    self, output_shape: Any = None, *, input_shapes: Sequence[tuple[int, ...]] | None = None
  ) -> L.LoopNest:
    """The loop-nest tree for the given shapes (defaults: ImageParam estimates)."""
    if input_shapes is None:
      input_shapes = self.estimated_input_shapes(output_shape, caller="lower()")
    return L.loop_nest(self.plan(output_shape, input_shapes))

  def estimated_input_shapes(
    self, output_shape: Any = None, *, caller: str = "Pipeline"
  ) -> list[tuple[int, ...]]:
    """Image shapes when none are given: each ImageParam's estimate, else ``output_shape`` if
    the ranks agree; a ValueError naming ``caller`` and the image otherwise."""
    shapes = []
    for img in self.images:
      if img.estimate is not None:
        shapes.append(tuple(img.estimate))
      elif output_shape is not None and len(output_shape) == img.ndim:
        shapes.append(tuple(output_shape))
      else:
        raise ValueError(
          f"{caller}: no shape for ImageParam {img.name}; pass input_shapes or call "
          f"{img.name}.set_estimates(shape)"
        )
    return shapes

  # -- execution
  def compile(
    self, backend: str = "xla", *, schedule: str | None = None, **options: Any
  ) -> Callable[..., Any]:
    """``fn(*images, output_shape=None, **params)`` running this pipeline on ``backend``.

    The result is jitted (retraced per shape); it composes with ``jax.jit``, ``jax.vmap`` and
    ``jax.grad`` (w.r.t. float images). The schedule is read when a shape is first traced.

    Args:
      backend: a registered backend (``available_backends()``).
      schedule: ``None``: the schedule set on the Funcs. A schedule provider's name
        (``available_schedule_providers()``, e.g. ``"tuned"``: the tuning database's fastest
        record for these shapes, else the app's default schedule): when a shape is first traced,
        the provider builds a scheduled copy of this pipeline's :attr:`workload` for the input
        image shapes and ``backend``, and that copy runs (images matched by position, params by
        name). Needs ``workload`` (set by ``apps.make``).
      **options: backend options.

    Returns:
      The function. Its ``schedules`` attribute maps the traced image shapes (a tuple of shapes,
      one per image) to what the provider chose, ``{"source": "tuned" | "default" | ...,
      "schedule": name or None, "config": tuned config or None}``; it stays empty for
      ``schedule=None``.

    Raises:
      ValueError: unknown backend or schedule name; ``schedule`` given for a Pipeline without a
        ``workload``.
    """
    run = _backends.get_backend(backend)
    pnames = {p.name: p for p in self.params}
    provider = None
    if schedule is not None:
      provider = _providers.get_schedule_provider(schedule)
      if self.workload is None:
        raise ValueError(
          f"schedule={schedule!r} needs to know what this Pipeline computes, but its workload is "
          "None (only Pipelines built by jaxsched.pipelines.apps carry one); use "
          "apps.make(name).compile(schedule=...), set pipeline.workload = "
          "Workload(app, build_kwargs) for a registered app, or schedule its Funcs and pass "
          "schedule=None"
        )
    # Provider answers per traced image shapes; also the report behind ``fn.schedules``.
    choices: dict[tuple[tuple[int, ...], ...], _providers.ScheduleChoice] = {}
    schedules: dict[tuple[tuple[int, ...], ...], dict[str, Any]] = {}

    def choose(image_shapes: tuple[tuple[int, ...], ...]) -> _providers.ScheduleChoice:
      if image_shapes not in choices:
        choice = provider(self.workload, image_shapes=image_shapes, backend=backend)
        if not isinstance(choice, _providers.ScheduleChoice):
          raise TypeError(
            f"schedule provider {schedule!r} returned {type(choice).__name__}, expected a "
            "ScheduleChoice"
          )
        self._check_same_signature(choice.pipeline, schedule)
        choices[image_shapes] = choice
        schedules[image_shapes] = choice.info()
      return choices[image_shapes]

    def core(images, params, output_shape):
      shapes = tuple(tuple(int(s) for s in i.shape) for i in images)
      pipe = self if provider is None else choose(shapes).pipeline
      p = pipe.plan(output_shape, list(shapes))
      by_name = {q.name: q for q in pipe.params}
      outs = run(p, list(images), {id(by_name[k]): v for k, v in params.items()}, **options)
      return tuple(outs)

    jitted = jax.jit(core, static_argnums=(2,))

    def fn(*images: Any, output_shape: Any = None, **params: Any):
      if len(images) != len(self.images):
        raise ValueError(
          f"expected {len(self.images)} images {[i.name for i in self.images]}, got {len(images)}"
        )
      arrs = []
      for img, a in zip(self.images, images, strict=True):
        a = jnp.asarray(a)
        if a.ndim != img.ndim:
          raise ValueError(f"ImageParam {img.name} has ndim={img.ndim}, got shape {a.shape}")
        if a.dtype != img.dtype:
          raise ValueError(f"ImageParam {img.name} has dtype {img.dtype}, got {a.dtype}")
        if any(s == 0 for s in a.shape):
          raise ValueError(f"ImageParam {img.name} got an empty array of shape {a.shape}")
        arrs.append(a)
      unknown = sorted(set(params) - set(pnames))
      if unknown:
        raise ValueError(f"unknown params {unknown}; this pipeline takes {sorted(pnames)}")
      vals = {}
      for name, prm in pnames.items():
        if name in params:
          v = params[name]
        elif prm.default is not None:
          v = prm.default
        else:
          raise ValueError(f"missing value for Param {name!r} (it has no default)")
        if np.ndim(v) != 0:
          raise ValueError(f"Param {name!r} must be a scalar, got shape {np.shape(v)}")
        vals[name] = jnp.asarray(v, prm.dtype)
      if output_shape is None:
        key = None
      elif all(isinstance(s, int | np.integer) for s in output_shape):
        key = tuple(int(s) for s in output_shape)
      else:
        key = tuple(tuple(int(x) for x in s) for s in output_shape)
      self._out_shapes(key, [a.shape for a in arrs])  # validate eagerly, with a clear error
      outs = jitted(tuple(arrs), vals, key)
      return outs[0] if len(outs) == 1 else outs

    fn.schedules = schedules
    return fn

  def _check_same_signature(self, other: Pipeline, schedule: str) -> None:
    """``other`` (a provider's pipeline) takes and returns what this one does."""

    def sig(p: Pipeline):
      return (
        [(i.ndim, np.dtype(i.dtype)) for i in p.images],
        sorted((q.name, np.dtype(q.dtype)) for q in p.params),
        [(o.ndim, o.name) for o in p.outputs],
      )

    mine, theirs = sig(self), sig(other)
    if mine != theirs:
      raise ValueError(
        f"schedule provider {schedule!r} returned a pipeline for workload {self.workload} that "
        f"does not match this one: (images (ndim, dtype), params, outputs) {theirs} vs {mine}"
      )

  def realize(self, output_shape: Any, *images: Any, **params: Any) -> Any:
    """One-off ``compile("xla")(*images, output_shape=output_shape, **params)``."""
    return self.compile("xla")(*images, output_shape=output_shape, **params)
