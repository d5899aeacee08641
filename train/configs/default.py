"""Default training configuration (a plain dataclass; `get_config` returns a fresh copy)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Config:
  """Hyperparameters of one training run; recorded as config.json in the workdir."""

  dataset: str = "mnist"  # "mnist" | "cifar10"
  model: str = "hyper"  # see train.train.MODELS[dataset]
  data_dir: str | None = None  # None: bundled MNIST (CIFAR-10 always needs a directory)
  epochs: int = 3
  batch_size: int = 128
  eval_batch_size: int = 1000
  optimizer: str = "adam"  # "adam" | "sgd" (Nesterov momentum)
  lr: float = 3e-3
  lr_schedule: str = "cosine"  # "cosine" | "constant"
  warmup_epochs: float = 0.0
  momentum: float = 0.9
  weight_decay: float = 0.0  # decoupled (AdamW-style for adam; added to grads for sgd)
  augment: bool = False
  seed: int = 0
  # Model hyperparameters (used by the models that take them).
  wrn_depth: int = 16
  wrn_k: int = 4
  mobilenet_alpha: float = 1.0
  kernels: str = "xla"  # MobileNetV1: "xla" | "pallas"
  dropout: float = 0.0
  # Distillation: a teacher run's workdir (its config.json and checkpoints).
  teacher: str | None = None
  temperature: float = 20.0
  alpha: float = 0.9  # weight of the soft-target term
  # Gradual pruning (Zhu & Gupta): sparsity ramps from 0 between these fractions of training.
  prune: str | None = None  # None | "gradual"
  sparsity: float = 0.9
  prune_scope: str = "layer"  # "layer" | "global"
  prune_begin: float = 0.0
  prune_end: float = 0.7
  prune_frequency: int = 100
  # Smoke runs and tests.
  max_train_examples: int | None = None
  max_test_examples: int | None = None
  progress: bool = True  # tqdm bars
  resume: bool = False

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def get_config(**overrides: Any) -> Config:
  """The default config with `overrides` applied (unknown names raise, listing the fields)."""
  fields = {f.name for f in dataclasses.fields(Config)}
  if unknown := set(overrides) - fields:
    raise ValueError(f"unknown config fields {sorted(unknown)}; valid: {sorted(fields)}")
  return Config(**overrides)
