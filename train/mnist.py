"""Train an MNIST model: `python -m train.mnist --model hyper --epochs 3 --workdir runs/demo`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from train.configs.mnist import MODEL_DEFAULTS, get_mnist_config


def add_common_flags(parser: argparse.ArgumentParser) -> None:
  """Flags shared by the MNIST and CIFAR-10 drivers (None keeps the per-model default)."""
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--batch-size", type=int)
  parser.add_argument("--lr", type=float)
  parser.add_argument("--seed", type=int)
  parser.add_argument(
    "--workdir", help="logs, checkpoints and report.json (default: runs/<dataset>-<model>)"
  )
  parser.add_argument("--teacher", metavar="CKPT", help="workdir of a trained teacher run")
  parser.add_argument("--temperature", type=float, help="distillation temperature T")
  parser.add_argument("--alpha", type=float, help="weight of the soft-target loss")
  parser.add_argument("--prune", choices=["gradual"], help="gradual magnitude pruning")
  parser.add_argument("--sparsity", type=float, help="final sparsity for --prune gradual")
  parser.add_argument("--prune-scope", choices=["layer", "global"])
  parser.add_argument("--optimizer", choices=["adam", "sgd"])
  parser.add_argument("--lr-schedule", choices=["cosine", "constant"])
  parser.add_argument("--weight-decay", type=float)
  parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
  parser.add_argument("--kernels", choices=["xla", "pallas"], help="MobileNetV1 conv kernels")
  parser.add_argument("--mobilenet-alpha", type=float, help="MobileNetV1 width multiplier")
  parser.add_argument("--max-train-examples", type=int, help="truncate the train split")
  parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue from the last checkpoint in --workdir (keep --epochs: the LR schedule spans it)",
  )
  parser.add_argument(
    "--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)"
  )


def overrides(args: argparse.Namespace, names: Sequence[str]) -> dict:
  """Config overrides from the flags that were given."""
  out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
  out["progress"] = not args.no_progress
  out["resume"] = args.resume
  if args.prune_scope:
    out["prune_scope"] = args.prune_scope
  return out


COMMON = (
  "epochs", "batch_size", "lr", "seed", "teacher", "temperature", "alpha", "prune", "sparsity",
  "optimizer", "lr_schedule", "weight_decay", "augment", "kernels", "mobilenet_alpha",
  "max_train_examples", "data_dir",
)  # fmt: skip


def run(config, workdir: str, distributed: bool) -> dict:
  """Trains, then prints the headline numbers of the report."""
  import jax

  if distributed:
    jax.distributed.initialize()
  from train.train import train_and_evaluate

  report = train_and_evaluate(config, workdir)
  keys = ("model", "test_errors", "test_examples", "test_error", "params", "nonzeros")
  extra = ("hyper_generator_params", "hyper_embedding_params", "sparsity", "seconds_per_epoch")
  summary = {k: report[k] for k in keys + extra if k in report}
  print(json.dumps(summary, indent=2))
  print(
    f"{report['model']}: test error {100 * report['test_error']:.2f}% "
    f"({report['test_errors']}/{report['test_examples']}), {report['params']:,} parameters"
    + (
      f" (generator {report['hyper_generator_params']:,} + embedding "
      f"{report['hyper_embedding_params']:,})"
      if "hyper_generator_params" in report
      else ""
    )
  )
  return report


def run_cli(parser: argparse.ArgumentParser, args: argparse.Namespace, config, dataset: str):
  """Runs a driver: missing or corrupt data ends with the loader's message, not a traceback."""
  from train.data import DataError

  workdir = args.workdir or f"runs/{dataset}-{args.model}"
  try:
    return run(config, workdir, args.distributed)
  except DataError as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m train.mnist", description=__doc__)
  parser.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="hyper")
  parser.add_argument("--data-dir", help="directory with the MNIST IDX files (default: bundled)")
  add_common_flags(parser)
  args = parser.parse_args(argv)
  config = get_mnist_config(args.model, **overrides(args, COMMON))
  return run_cli(parser, args, config, "mnist")


if __name__ == "__main__":
  main()
