"""Deviceless ahead-of-time compilation for GPU (Triton) and TPU (Mosaic) targets.

No accelerator is needed: JAX can build a *topology description* of a device it has never seen
and run the real backend compilers against it (libtpu for Mosaic, the CUDA plugin for Triton).
``compile_for`` is how jaxsched proves that a kernel compiles for an H100 or a TPU v5e from a
CPU-only machine, and how the tuner discards configs the compiler rejects (e.g. a block that
needs more shared memory than the SM has) without measuring them.

Example::

  from jaxsched.pallas import targets
  spec = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  exe = targets.compile_for(my_fn, spec, spec, target="h100")

While ``compile_for`` traces ``fn``, :func:`active_target` returns the target, so kernel wrappers
can pick target-specific block rules and compiler params. Wrappers must resolve the target in
plain Python and pass it to their jitted inner function as a *static* argument: jit caches do not
see context variables.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib.resources
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax

__all__ = [
    "CompileError",
    "Target",
    "TARGETS",
    "active_target",
    "available_targets",
    "compile_for",
    "get_target",
    "register_target",
    "resolve_target",
]

KiB = 1024
MiB = 1024 * KiB


class CompileError(RuntimeError):
  """A backend compiler rejected a program. ``compiler_message`` holds its own words."""

  def __init__(self, message: str, *, target: str, compiler_message: str):
    super().__init__(message)
    self.target = target
    self.compiler_message = compiler_message


@dataclasses.dataclass(frozen=True)
class Target:
  """A compilation target and the device facts kernels and cost models need.

  Attributes:
    name: registry name, e.g. ``"h100"``.
    kind: ``"gpu"``, ``"tpu"`` or ``"cpu"`` (the local interpreter).
    platform: JAX platform name used for the topology (``"cuda"``, ``"tpu"``, ``"cpu"``).
    device: human-readable device name.
    topology: topology string passed to ``get_topology_desc`` (TPU) or ``"1x1x1"`` (GPU).
    target_config: package-data file holding a GpuTargetConfig text proto (GPU only).
    cores: SMs (GPU) or TensorCores per chip (TPU).
    hbm_bytes_per_s: peak memory bandwidth.
    peak_flops: peak dense FLOP/s by operand dtype name (for roofline estimates).
    smem_per_block: default shared memory per block, bytes (GPU).
    smem_per_block_optin: opt-in shared memory per block, bytes (GPU; Triton's limit).
    vmem_bytes: physical VMEM per core, bytes (TPU).
    scoped_vmem_bytes: Mosaic's default scoped VMEM limit, bytes (TPU).
    block_rule: the block-shape rule kernels must obey: ``"pow2"`` (Triton: power-of-two
      block dims) or ``"tpu8x128"`` (last two block dims divisible by (8, 128) or equal to the
      full array dims), ``"any"`` for the interpreter.
  """

  name: str
  kind: str
  platform: str
  device: str
  topology: str = ""
  target_config: str | None = None
  cores: int = 1
  hbm_bytes_per_s: float = 0.0
  peak_flops: tuple[tuple[str, float], ...] = ()
  smem_per_block: int | None = None
  smem_per_block_optin: int | None = None
  vmem_bytes: int | None = None
  scoped_vmem_bytes: int | None = None
  block_rule: str = "any"

  def flops(self, dtype: Any) -> float:
    """Peak FLOP/s for matmuls with operands of ``dtype`` (0.0 if unknown)."""
    return dict(self.peak_flops).get(jax.numpy.dtype(dtype).name, 0.0)


# Device facts: H100 SXM from ../shared/targets/h100.pbtxt (132 SMs, 227 KiB opt-in shared memory,
# 3.35 TB/s) and NVIDIA's datasheet (dense tensor-core peaks; f32 dots run as TF32 in Triton by
# default). TPU v5e from Google's published specs (197 TF/s bf16, 819 GB/s HBM2e, one
# TensorCore per chip, 128 MiB VMEM, 16 MiB default scoped VMEM); f32 matmuls run as multi-pass
# bf16 on the MXU, roughly a third of the bf16 rate.
TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
  """Adds a target to the registry (e.g. another GPU described by a GpuTargetConfig)."""
  if target.kind not in ("gpu", "tpu", "cpu"):
    raise ValueError(f"{target.kind=} must be one of 'gpu', 'tpu', 'cpu'")
  TARGETS[target.name] = target
  return target


register_target(
    Target(
        name="h100",
        kind="gpu",
        platform="cuda",
        device="NVIDIA H100 80GB HBM3",
        topology="1x1x1",
        target_config="h100.pbtxt",
        cores=132,
        hbm_bytes_per_s=3.35232e12,
        peak_flops=(("float32", 494.7e12), ("bfloat16", 989.4e12), ("float16", 989.4e12)),
        smem_per_block=48 * KiB,
        smem_per_block_optin=232448,
        block_rule="pow2",
    )
)
register_target(
    Target(
        name="tpu-v5e",
        kind="tpu",
        platform="tpu",
        device="TPU v5 lite",
        topology="v5e:2x2",
        cores=1,
        hbm_bytes_per_s=819e9,
        peak_flops=(("float32", 197e12 / 3), ("bfloat16", 197e12)),
        vmem_bytes=128 * MiB,
        scoped_vmem_bytes=16 * MiB,
        block_rule="tpu8x128",
    )
)
# The local interpreter (Pallas interpret mode on CPU).
CPU = Target(name="cpu", kind="cpu", platform="cpu", device="CPU (Pallas interpret mode)")


def get_target(name: str | Target) -> Target:
  """Returns the registered target called ``name`` (a Target is returned unchanged)."""
  if isinstance(name, Target):
    return name
  if name == "cpu":
    return CPU
  try:
    return TARGETS[name]
  except KeyError:
    raise ValueError(f"unknown target {name!r}; valid targets: {sorted(TARGETS)}") from None


def _plugin_installed(target: Target) -> bool:
  if target.platform == "tpu":
    return importlib.util.find_spec("libtpu") is not None
  if target.platform == "cuda":
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  return False


def available_targets() -> list[str]:
  """Names of the targets this install can compile for (their compiler plugins are present)."""
  return [name for name, t in TARGETS.items() if _plugin_installed(t)]


@functools.cache
def _topology(name: str):
  # Deviceless compilation touches no TPU, so several processes (pytest-xdist workers,
  # concurrent tuners) may load libtpu at once; without this they fight over libtpu's lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # Imported lazily: topologies pulls in backend plugins, which is slow and noisy.
  from jax.experimental import topologies

  target = TARGETS[name]
  if target.platform == "cuda":
    config = importlib.resources.files("jaxsched.pallas").joinpath(
        "target_data", target.target_config
    )
    return topologies.get_topology_desc(
        target.name, "cuda", target_config=config.read_text(), topology=target.topology
    )
  return topologies.get_topology_desc(target.topology, target.platform)


_ACTIVE: contextvars.ContextVar[Target | None] = contextvars.ContextVar(
    "jaxsched_active_target", default=None
)


def active_target() -> Target | None:
  """The target ``compile_for`` is tracing for, or None outside ``compile_for``."""
  return _ACTIVE.get()


@contextlib.contextmanager
def _activate(target: Target) -> Iterator[None]:
  token = _ACTIVE.set(target)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def resolve_target(target: str | Target | None = None) -> Target:
  """The target a kernel should build for.

  Order: the explicit ``target``; else the one ``compile_for`` is tracing for; else the local
  default backend (``"cpu"`` means Pallas interpret mode).
  """
  if target is not None:
    return get_target(target)
  active = active_target()
  if active is not None:
    return active
  backend = jax.default_backend()
  if backend == "cpu":
    return CPU
  kind = "gpu" if backend in ("gpu", "cuda", "rocm") else backend
  device = jax.devices()[0]
  for t in TARGETS.values():  # a registered description of the local device, if any
    if t.kind == kind and t.device == device.device_kind:
      return t
  return Target(name=f"local-{kind}", kind=kind, platform=backend, device=device.device_kind,
                block_rule={"gpu": "pow2", "tpu": "tpu8x128"}.get(kind, "any"))


def compile_for(fn: Callable[..., Any], *arg_specs: Any, target: str | Target) -> Any:
  """Compiles ``fn`` ahead of time for ``target`` without needing the device.

  Args:
    fn: a function of arrays (it is wrapped in ``jax.jit``; pass a ``functools.partial`` for
      static arguments).
    *arg_specs: ``jax.ShapeDtypeStruct``s (or arrays, or pytrees of either) describing the
      arguments; shardings are replaced by a single device of the target topology.
    target: a registered target name (see :func:`available_targets`) or a :class:`Target`.

  Returns:
    The compiled executable (``jax.stages.Compiled``): ``.as_text()``, ``.cost_analysis()``.

  Raises:
    CompileError: lowering or compilation failed; ``.compiler_message`` has the compiler's text.
    ValueError: unknown target, or its compiler plugin is not installed.
  """
  target = get_target(target)
  if target.kind == "cpu":
    raise ValueError("compile_for needs an accelerator target; run CPU code directly")
  if not _plugin_installed(target):
    raise ValueError(
        f"cannot compile for {target.name!r}: its compiler plugin is not installed "
        f"(available: {available_targets()}); install jaxsched[test]"
    )
  try:
    topo = _topology(target.name)
  except Exception as e:  # plugin present but unusable
    raise CompileError(f"no topology for {target.name!r}: {e}", target=target.name,
                       compiler_message=str(e)) from e
  mesh = jax.sharding.Mesh(topo.devices[:1], ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def as_spec(x):
    return jax.ShapeDtypeStruct(jax.numpy.shape(x), jax.numpy.result_type(x), sharding=sharding)

  specs = jax.tree.map(as_spec, arg_specs)
  name = getattr(fn, "__name__", type(fn).__name__)
  with _activate(target):
    traced = jax.jit(fn).trace(*specs)  # Python-level validation errors propagate unchanged
    try:
      return traced.lower().compile()
    except Exception as e:
      msg = str(e)
      raise CompileError(
          f"compiling {name} for {target.name} ({target.device}) failed: {msg}",
          target=target.name, compiler_message=msg,
      ) from e
