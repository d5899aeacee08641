"""Per-model defaults for CIFAR-10 runs (`python -m train.cifar`)."""

from __future__ import annotations

from typing import Any

from train.configs.default import Config, get_config

# SGD with Nesterov momentum, cosine decay and random crop/flip, as in the WRN paper's recipe.
_SGD = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, augment=True, epochs=200)
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
  "wrn": dict(_SGD, wrn_depth=40, wrn_k=2, batch_size=128),
  "hyperwrn": dict(_SGD, wrn_depth=40, wrn_k=2, batch_size=128, lr=0.05),
  "mobilenet": dict(_SGD, mobilenet_alpha=1.0, batch_size=128, weight_decay=4e-5),
}


def get_cifar_config(model: str, **overrides: Any) -> Config:
  """The CIFAR-10 defaults for `model`, then `overrides`."""
  if model not in MODEL_DEFAULTS:
    raise ValueError(f"unknown {model=}; valid choices: {sorted(MODEL_DEFAULTS)}")
  return get_config(dataset="cifar10", model=model, **{**MODEL_DEFAULTS[model], **overrides})
