"""Per-model defaults for MNIST runs (`python -m train.mnist`)."""

from __future__ import annotations

from typing import Any

from train.configs.default import Config, get_config

# Adam with a cosine decay; the convnets train well at 3e-3, the wide MLPs prefer 1e-3.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
  "hyper": dict(lr=3e-3, batch_size=128),
  "conv": dict(lr=3e-3, batch_size=128),
  "mlp800": dict(lr=1e-3, batch_size=128),
  "mlp1200": dict(lr=1e-3, batch_size=128, dropout=0.2),
  "lenet300": dict(lr=1e-3, batch_size=128),
  "lenet5": dict(lr=1e-3, batch_size=128),
  "mobilenet": dict(lr=2e-3, batch_size=128, mobilenet_alpha=0.5),
}


def get_mnist_config(model: str, **overrides: Any) -> Config:
  """The MNIST defaults for `model`, then `overrides`."""
  if model not in MODEL_DEFAULTS:
    raise ValueError(f"unknown {model=}; valid choices: {sorted(MODEL_DEFAULTS)}")
  return get_config(dataset="mnist", model=model, **{**MODEL_DEFAULTS[model], **overrides})
