"""The ``jaxsched`` command line: ``jaxsched info`` and the subcommands later work adds.

Each subcommand registers a ``(configure_parser, run)`` pair in ``_COMMANDS``; heavy imports
happen inside ``run`` so ``jaxsched --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

_PACKAGES = ("jaxsched", "jax", "jaxlib", "flax", "optax", "chex", "numpy", "libtpu",
             "jax-cuda12-plugin", "halide", "xgboost-cpu")


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _info_parser(p: argparse.ArgumentParser) -> None:
  del p  # no options yet


def _info(args: argparse.Namespace) -> int:
  del args
  # Plugins for deviceless compilation print discovery errors unless JAX is kept on the CPU.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  from jaxsched.pallas import targets

  print(f"python     {platform.python_version()} ({sys.executable})")
  for dist in _PACKAGES:
    print(f"{dist:<18} {_version(dist)}")
  print(f"backend    {jax.default_backend()}")
  for d in jax.devices():
    print(f"device     {d.id}: {d.device_kind} ({d.platform})")
  available = set(targets.available_targets())
  print("compile targets (deviceless AOT):")
  for name, t in targets.TARGETS.items():
    state = "available" if name in available else "plugin not installed"
    mem = (f"smem/block {t.smem_per_block_optin // 1024} KiB" if t.smem_per_block_optin
           else f"VMEM {t.vmem_bytes // 2**20} MiB (scoped {t.scoped_vmem_bytes // 2**20} MiB)")
    print(f"  {name:<8} {t.device:<22} {t.kind}/{t.block_rule:<9} {mem:<32} {state}")
  return 0


_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "info": ("print versions, devices and compile targets", _info_parser, _info),
}


def register_command(name: str, help_text: str, configure: Callable, run: Callable) -> None:
  """Adds a subcommand: ``configure(parser)`` adds its options, ``run(args) -> exit code``."""
  _COMMANDS[name] = (help_text, configure, run)


def _load_plugins() -> None:
  # Subcommands that live with their subsystem register themselves on import.
  for module in ("jaxsched.sparse._cli", "jaxsched.tuning._cli"):
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise


def main(argv: Sequence[str] | None = None) -> int:
  _load_plugins()
  parser = argparse.ArgumentParser(prog="jaxsched", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name, (help_text, configure, run) in _COMMANDS.items():
    p = sub.add_parser(name, help=help_text)
    configure(p)
    p.set_defaults(_run=run)
  args = parser.parse_args(argv)
  return int(args._run(args) or 0)


if __name__ == "__main__":
  sys.exit(main())
