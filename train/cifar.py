"""Train a CIFAR-10 model: `python -m train.cifar --model wrn --data-dir DIR --workdir runs/wrn`.

CIFAR-10 is not bundled: --data-dir must hold the python-pickle batches (data_batch_1..5,
test_batch) or cifar-10-python.tar.gz.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from train.configs.cifar import MODEL_DEFAULTS, get_cifar_config
from train.mnist import COMMON, add_common_flags, overrides, run_cli


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m train.cifar", description=__doc__)
  parser.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="wrn")
  parser.add_argument("--data-dir", required=True, help="directory with the CIFAR-10 batches")
  parser.add_argument("--depth", dest="wrn_depth", type=int, help="WRN depth (6n + 4)")
  parser.add_argument("--width", dest="wrn_k", type=int, help="WRN width multiplier k")
  add_common_flags(parser)
  args = parser.parse_args(argv)
  config = get_cifar_config(args.model, **overrides(args, (*COMMON, "wrn_depth", "wrn_k")))
  return run_cli(parser, args, config, "cifar")


if __name__ == "__main__":
  main()
