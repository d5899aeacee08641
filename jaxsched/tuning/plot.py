"""Tuning curves: best time so far vs number of trials, one line per method."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["best_so_far", "plot_tuning_curves"]


def best_so_far(costs: Sequence[float]) -> np.ndarray:
  """Running minimum of costs in trial order (failures = ``inf`` until the first success)."""
  c = np.asarray(costs, np.float64)
  c = np.where(np.isfinite(c), c, np.inf)
  return np.minimum.accumulate(c) if c.size else c


def plot_tuning_curves(
  curves: Mapping[str, Sequence[Sequence[float]]],
  path: str | os.PathLike[str],
  *,
  title: str = "tuning curve",
  unit: str = "ms",
  reference: float | None = None,
) -> None:
  """Writes a PNG of best time vs trials per method.

  Args:
    curves: ``{method: [costs of run 1, costs of run 2, ...]}``, costs in seconds in trial order
      (one run per seed); each line is the median over runs of the best-so-far, with a min-max band.
    path: output PNG path.
    title: plot title.
    unit: ``"ms"``, ``"us"`` or ``"s"`` for the y axis.
    reference: a horizontal reference time in seconds (e.g. the best known config).
  """
  scales = {"s": 1.0, "ms": 1e3, "us": 1e6}
  if unit not in scales:
    raise ValueError(f"unknown {unit=}; valid: {sorted(scales)}")
  if not curves:
    raise ValueError("curves is empty: nothing to plot")
  import matplotlib

  matplotlib.use("Agg")  # Headless: no display needed to write a PNG.
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method, runs in curves.items():
    runs = [best_so_far(r) for r in runs if len(r)]
    if not runs:
      continue
    n = min(len(r) for r in runs)
    arr = np.stack([r[:n] for r in runs]) * scales[unit]  # [runs, trials]
    x = np.arange(1, n + 1)
    with np.errstate(invalid="ignore"):
      med = np.median(arr, axis=0)
    (line,) = ax.plot(x, med, label=f"{method} ({len(runs)} run{'s' * (len(runs) > 1)})")
    if len(runs) > 1:
      ax.fill_between(x, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
  if reference is not None and math.isfinite(reference):
    ax.axhline(reference * scales[unit], color="k", ls="--", lw=1, label="best known")
  ax.set_xlabel("trials")
  ax.set_ylabel(f"best time so far ({unit})")
  ax.set_yscale("log")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)
