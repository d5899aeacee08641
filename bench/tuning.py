"""Tuner benchmark: cost-model throughput, annealing speed, trials-to-good per method, transfer.

What it measures (all on this machine, CPU):

1. Cost-model throughput: MLP predictions per second (jitted, vmapped, chunked), and the time of
   128 simulated-annealing chains x 500 steps with the MLP as energy (one jitted ``lax.scan``).
2. Trials-to-good on a *synthetic* family of related objectives (6 knobs x 8 choices = 262,144
   configs, known optimum by brute force; "times" are the objective, nothing is run; features =
   the raw knob features, or with ``--descriptor`` knob features + log2 problem size, which
   moves annealing to the host path): for each
   method, the number of trials until the best config is within 5% of the optimum (median over
   seeds; ``inf`` = not reached within the budget).
3. Transfer: the same for a new member of the family, with the model pre-trained on records of
   three related members from the database, vs without.
4. Optionally (``--real``) a real tune of a small blocked matmul in a worker process.

Usage: ``python -m bench.tuning [--seeds 3] [--trials 200] [--plot curves.png] [--real]
[--descriptor]``
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsched.tuning import (  # noqa: E402
  MLPCostModel,
  SearchSpace,
  Task,
  TuningDatabase,
  simulated_annealing,
  tune,
  workload_key,
)
from jaxsched.tuning.measure import MeasureResult  # noqa: E402
from jaxsched.tuning.search import _knob_energy, _padded_feature_table  # noqa: E402

NKNOBS, NCHOICES = 6, 8
SPACE = SearchSpace({f"t{i}": tuple(2**j for j in range(NCHOICES)) for i in range(NKNOBS)})
_GOOD = 1.05  # "Good" = within 5% of the optimum.


def synthetic_time(logk: np.ndarray, shift: float) -> np.ndarray:
  """Run time (s) of a synthetic kernel from log2 knob values ``[..., 6]``; ``shift`` moves the
  optimum (a different problem size of the same op). Interactions couple tile pairs."""
  x = np.asarray(logk, np.float64)
  opt = np.array([2.0, 5.0, 3.0, 1.0, 4.0, 6.0]) + shift * np.array([1, -1, 0.5, 0, 1, -0.5])
  d = x - opt
  q = (0.3 * d[..., 0] ** 2 + 0.2 * d[..., 1] ** 2 + 0.15 * d[..., 2] ** 2
       + 0.1 * d[..., 3] ** 2 + 0.1 * d[..., 4] ** 2 + 0.05 * d[..., 5] ** 2
       + 0.1 * d[..., 0] * d[..., 1] - 0.08 * d[..., 2] * d[..., 4])
  return 1e-3 * (1 + 0.5 * shift) * np.exp(q)


class SyntheticMeasurer:
  """Stands in for :class:`~jaxsched.tuning.Measurer`: the "time" is the synthetic objective."""

  def __init__(self, shift: float):
    self.shift = shift

  def measure(self, configs):
    out = []
    for c in configs:
      logk = np.log2([c[n] for n in SPACE.names])
      out.append(MeasureResult(c, (float(synthetic_time(logk, self.shift)),)))
    return out

  def close(self):
    pass


def _optimum(shift: float) -> float:
  logk = np.log2(np.array(SPACE.choices[0], np.float64))
  grids = np.meshgrid(*[logk] * NKNOBS, indexing="ij")
  return float(synthetic_time(np.stack(grids, -1), shift).min())


DESCRIPTOR = False  # Set by --descriptor.


def _task(shift: float) -> Task:
  size = int(1024 * 2**shift)
  wl = workload_key("synthetic", shapes=[(size,)], dtypes=["float32"])
  if not DESCRIPTOR:
    return Task(wl, SPACE, measure_fn=None, op="synthetic")

  def features(config):
    # Knob features plus a problem descriptor (log2 size), as loop-nest features would carry:
    # without it, configs that are good for one family member and bad for another look alike.
    knobs = SPACE.knob_features(SPACE.config_to_knobs(config))
    return np.append(knobs, math.log2(size))

  return Task(wl, SPACE, measure_fn=None, op="synthetic", feature_fn=features)


def trials_to_good(costs, optimum: float) -> float:
  best = np.minimum.accumulate(np.asarray(costs, np.float64))
  hit = np.flatnonzero(best <= _GOOD * optimum)
  return float(hit[0] + 1) if hit.size else math.inf


# 1. Throughput -----------------------------------------------------------------------------------


def bench_throughput() -> dict[str, float]:
  rng = np.random.default_rng(0)
  x = rng.integers(0, NCHOICES, (256, NKNOBS))
  feats = SPACE.knob_features(x)
  model = MLPCostModel().fit(feats, synthetic_time(feats, 0.0))
  big = rng.random((1 << 21, NKNOBS)).astype(np.float32)
  apply, params = model.jax_apply()
  pred = jax.jit(lambda p, f: jax.lax.map(lambda c: jax.vmap(apply, in_axes=(None, 0))(p, c),
                                          f.reshape(-1, 8192, NKNOBS)).reshape(-1))
  big_j = jnp.asarray(big)
  pred(params, big_j).block_until_ready()
  t = time.perf_counter()
  reps = 5
  for _ in range(reps):
    pred(params, big_j).block_until_ready()
  per_s_device = reps * big.shape[0] / (time.perf_counter() - t)
  model.predict(big)
  t = time.perf_counter()
  model.predict(big)
  per_s_host = big.shape[0] / (time.perf_counter() - t)

  energy = _knob_energy(apply)
  table = jnp.asarray(_padded_feature_table(SPACE))
  init = rng.integers(0, NCHOICES, (128, NKNOBS))
  simulated_annealing(energy, (table, params), SPACE.sizes, init=init, key=jax.random.key(0),
                      num_steps=500)
  times = []
  for i in range(5):
    t = time.perf_counter()
    simulated_annealing(energy, (table, params), SPACE.sizes, init=init, key=jax.random.key(i),
                        num_steps=500)
    times.append(time.perf_counter() - t)
  return {"mlp_pred_per_s_device": per_s_device, "mlp_pred_per_s_from_numpy": per_s_host,
          "sa_128x500_s": float(np.median(times))}


# 2-3. Trials to good -----------------------------------------------------------------------------


def bench_methods(methods, seeds: int, trials: int, batch: int, shift: float = 0.3):
  optimum = _optimum(shift)
  curves, ttg, secs = {}, {}, {}
  with tempfile.TemporaryDirectory() as d:
    for method in methods:
      curves[method], ttg[method] = [], []
      start = time.perf_counter()
      for seed in range(seeds):
        res = tune(_task(shift), trials=trials, method=method, db=f"{d}/{method}{seed}.sqlite",
                   target="bench", measurer=SyntheticMeasurer(shift), seed=seed,
                   batch_size=batch, progress=False)
        curves[method].append(res.costs)
        ttg[method].append(trials_to_good(res.costs, optimum))
      secs[method] = (time.perf_counter() - start) / seeds
  return curves, ttg, secs, optimum


def bench_transfer(model: str, seeds: int, trials: int, batch: int, source_trials: int = 128):
  target_shift = 0.3
  optimum = _optimum(target_shift)
  out = {}
  with tempfile.TemporaryDirectory() as d:
    src = TuningDatabase(f"{d}/src.sqlite")
    for shift in (-0.6, 0.0, 0.7):  # Related workloads already tuned (random records).
      tune(_task(shift), trials=source_trials, method="random", db=src, target="bench",
           measurer=SyntheticMeasurer(shift), seed=11, progress=False)
    for transfer in (False, True):
      ttg = []
      for seed in range(seeds):
        db = f"{d}/t{transfer}{seed}.sqlite"
        if transfer:
          src.export_json(f"{d}/src.json")
          TuningDatabase(db).import_json(f"{d}/src.json")
        res = tune(_task(target_shift), trials=trials, method=model, db=db, target="bench",
                   measurer=SyntheticMeasurer(target_shift), seed=seed, batch_size=batch,
                   transfer=transfer, progress=False)
        ttg.append(trials_to_good(res.costs, optimum))
      out[transfer] = ttg
  return out


# 4. Real workload --------------------------------------------------------------------------------


def bench_real(trials: int) -> dict[str, object]:
  import sys

  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "tuning"))
  from _tuning_workloads import blocked_matmul  # Module-level: picklable for the worker.

  space = SearchSpace({"block_m": (1, 2, 4, 8, 16, 32, 64, 128), "block_k": (8, 32, 128)})
  wl = workload_key("blocked_matmul", shapes=[(128, 128), (128, 128)], dtypes=["float32"] * 2)
  task = Task(wl, space, measure_fn=blocked_matmul, op="blocked_matmul")
  out = {}
  with tempfile.TemporaryDirectory() as d:
    for method in ("xgb", "random"):
      t = time.perf_counter()
      res = tune(task, trials=trials, method=method, db=f"{d}/{method}.sqlite", batch_size=4,
                 repeats=5, seed=0, progress=False)
      out[method] = (res.best_config, res.best_time, time.perf_counter() - t)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--trials", type=int, default=200)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--methods", default="xgb,mlp,treegru,random,grid,ga")
  ap.add_argument("--plot", default=None, help="write the tuning curves to this PNG")
  ap.add_argument("--real", action="store_true", help="also tune a real blocked matmul")
  ap.add_argument("--descriptor", action="store_true",
                  help="add log2(problem size) to the synthetic family's features")
  args = ap.parse_args()
  global DESCRIPTOR
  DESCRIPTOR = args.descriptor

  tp = bench_throughput()
  print(f"MLP predictions/s (jitted vmap, device arrays): {tp['mlp_pred_per_s_device']:.3g}")
  print(f"MLP predictions/s (model.predict from numpy):  {tp['mlp_pred_per_s_from_numpy']:.3g}")
  print(f"SA 128 chains x 500 steps (MLP energy):        {tp['sa_128x500_s'] * 1e3:.1f} ms")

  methods = args.methods.split(",")
  curves, ttg, secs, optimum = bench_methods(methods, args.seeds, args.trials, args.batch)
  print(f"\nSynthetic family, {SPACE.size} configs, optimum {optimum * 1e3:.4f} ms; trials to "
        f"within 5% (median of {args.seeds} seeds, budget {args.trials}):")
  for m in methods:
    print(f"  {m:8s} {np.median(ttg[m]):>7} {ttg[m]}  ({secs[m]:.1f} s of tuner time per run)")

  for model in ("xgb", "mlp"):
    tr = bench_transfer(model, args.seeds, args.trials, args.batch)
    print(f"Transfer ({model}): without {np.median(tr[False])} {tr[False]}, "
          f"with {np.median(tr[True])} {tr[True]}")

  if args.plot:
    from jaxsched.tuning.plot import plot_tuning_curves

    plot_tuning_curves(curves, args.plot, title="synthetic family: best time vs trials",
                       reference=optimum)
    print(f"wrote {args.plot}")
  if args.real:
    for method, (cfg, best, secs_) in bench_real(trials=12).items():
      print(f"real blocked matmul 128^3, {method}: best {best * 1e6:.1f} us {cfg} ({secs_:.1f} s)")


if __name__ == "__main__":
  main()
