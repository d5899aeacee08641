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
5. With ``--pipelines``, the XLA schedules of real apps instead: every valid schedule measured
   (or read from ``--cache``: ``bench/data/tuning_tables.json`` holds the 2048^2 tables the
   docs report), then each method replayed on those timings (docs/tuning.md, "Benchmark").

Usage: ``python -m bench.tuning [--seeds 3] [--trials 200] [--plot curves.png] [--real]
[--descriptor] [--pipelines --cache bench/data/tuning_tables.json]``
"""

from __future__ import annotations

import argparse
import json
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


# 5. Pipeline schedules (XLA backend, real measurements) ----------------------------------------


# Narrower spaces where the full one is too big to measure exhaustively on this CPU: harris's
# Funcs scheduled in three groups (gradients, products, box sums) and fewer split factors.
def _laplacian_groups(levels: int = 8) -> dict[str, list[str]]:
  """The local Laplacian's Laplacian levels (lPyramid, outLPyramid) as finest / second /
  the rest, each inline or root on its own (128 schedules). Grouped by family alone, the space
  had 8 schedules, too few to show a model's gain over random search; the Gaussian pyramids stay
  one knob each (always root: inlining a whole pyramid exceeds the op budget)."""
  fam = {p: [f"{p}{j}" for j in range(levels)] for p in ("gPyramid", "inGPyramid")}
  groups = {"remap": ["remap"], "gPyramid*": fam["gPyramid"], "inGPyramid*": fam["inGPyramid"],
            "outGPyramid*": [f"outGPyramid{j}" for j in range(levels - 1)]}
  # lPyramid of the coarsest level is gPyramid itself (one Func, scheduled with the gPyramids).
  for p, top in (("lPyramid", levels - 1), ("outLPyramid", levels)):
    groups |= {f"{p}0": [f"{p}0"], f"{p}1": [f"{p}1"],
               f"{p}2-{top - 1}": [f"{p}{j}" for j in range(2, top)]}
  return groups


PIPELINE_SPACES = {
  "harris": {"groups": {"grad": ["Ix", "Iy"], "prod": ["Ixx", "Iyy", "Ixy"],
                        "box": ["Sxx", "Syy", "Sxy"]},
             "splits_y": (16, 64, 256), "splits_x": (128, 512)},
  "local_laplacian": {"groups": _laplacian_groups()},
}


class TableMeasurer:
  """Replays measured times of a fixed universe of configs (canonical JSON -> seconds)."""

  def __init__(self, table: dict[str, float]):
    self.table = table

  def measure(self, configs):
    from jaxsched.tuning.database import canonical_config

    out = []
    for c in configs:
      t = self.table.get(canonical_config(c), math.inf)
      out.append(MeasureResult(c, (t,)) if math.isfinite(t) else
                 MeasureResult(c, error="failed when the table was measured"))
    return out

  def close(self):
    pass


def measure_universe(app: str, size: int, n: int, *, repeats: int, timeout: float, seed: int = 0,
                     cache: str | None = None) -> dict[str, float]:
  """Measures ``n`` valid schedules of ``app`` for real: all of them if the space is small
  (<= 20000 points, the "universe" is then the whole space), else a random sample.

  Returns ``{canonical config: median seconds (inf = failed)}``; cached in ``cache`` (JSON).
  """
  import json

  from jaxsched.tuning import Measurer
  from jaxsched.tuning import pipeline_space as ps
  from jaxsched.tuning.database import canonical_config

  key = f"{app}@{size}"
  stored = {}
  if cache and os.path.exists(cache):
    stored = json.loads(open(cache).read())
    if key in stored:
      return {k: float(v) for k, v in stored[key].items()}
  task = ps.pipeline_task(app, (size, size), space_kwargs=PIPELINE_SPACES.get(app))
  space = task.space
  rng = np.random.default_rng(seed)
  valid = []
  if space.size <= 20000:
    valid = [space.knobs_to_config(k) for k in space.iter_valid()]
    rng.shuffle(valid)
  else:
    seen = set()
    while len(valid) < n:
      c = space.knobs_to_config(space.sample(rng, 1, max_tries=5000)[0])
      if canonical_config(c) not in seen:
        seen.add(canonical_config(c))
        valid.append(c)
  dflt = ps._space(app, (size, size), "xla", {}, PIPELINE_SPACES.get(app)).default_config()
  if all(canonical_config(c) != canonical_config(dflt) for c in valid):
    valid[-1] = dflt  # The all-inline baseline is always part of the universe.
  table = {}
  t0 = time.perf_counter()
  with Measurer(task.measure_fn, warmup=1, repeats=repeats, timeout=timeout) as m:
    for i, c in enumerate(valid):
      r = m.measure([c])[0]
      table[canonical_config(c)] = r.cost
      print(f"  [{app} {i + 1}/{len(valid)} {time.perf_counter() - t0:.0f}s] "
            f"{'FAIL' if r.error else f'{r.cost * 1e3:.2f} ms'} {c}", flush=True)
  if cache:
    stored[key] = table
    with open(cache, "w") as f:
      f.write(json.dumps(stored))
  return table


def _universe_task(app: str, size: int, table: dict[str, float], *, loop_nest: bool) -> Task:
  """The app's task restricted to the measured universe (others are invalid)."""
  from jaxsched.tuning import pipeline_space as ps
  from jaxsched.tuning.database import canonical_config

  base = ps._space(app, (size, size), "xla", {}, PIPELINE_SPACES.get(app))
  space = SearchSpace(dict(zip(base.space.names, base.space.choices, strict=True)),
                      valid=lambda c: canonical_config(c) in table)
  feature_fn = tree_fn = None
  if loop_nest:
    feats = {k: base.features(json.loads(k)) for k in table}
    sentinel = np.full(12, -1.0, np.float32)

    def feature_fn(c):
      return feats.get(canonical_config(c), sentinel)

    def tree_fn(c):
      return base.tree(c)

  return Task(ps.pipeline_workload(app, (size, size)), space, measure_fn=None, op=app,
              feature_fn=feature_fn, tree_fn=tree_fn)


def bench_pipelines(apps_, size, universe, methods, seeds, trials, batch, *, repeats, timeout,
                    cache, plot, min_fit=8, ln_models=("xgb", "mlp"), prior_mode="margin",
                    knob_features=()):
  from jaxsched.tuning.search import Prior

  tables = {a: measure_universe(a, size, universe, repeats=repeats, timeout=timeout, cache=cache)
            for a in apps_}
  rows = []
  curves_all = {}
  baselines = {"random", "grid", "ga"}
  for app in apps_:
    table = tables[app]
    best = min(table.values())
    n_ok = sum(math.isfinite(v) for v in table.values())
    n_good = sum(v <= _GOOD * best for v in table.values())
    budget = min(trials, len(table))

    def run(method, seed, *, loop_nest, prior=None, app=app, table=table, budget=budget):
      kw = {} if method in baselines else {"tuner_kwargs": {"min_fit": min_fit}}
      if loop_nest and method in knob_features:
        kw["tuner_kwargs"]["knob_features"] = True
      if prior is not None:
        kw["tuner_kwargs"].update(prior=prior, prior_mode=prior_mode)
      with tempfile.TemporaryDirectory() as d:
        return tune(_universe_task(app, size, table, loop_nest=loop_nest), trials=budget,
                    method=method, db=f"{d}/t.sqlite", target="bench",
                    measurer=TableMeasurer(table), seed=seed, batch_size=batch, progress=False,
                    **kw)

    ttg, curves = {}, {}
    for method in methods:
      ttg[method], curves[method] = [], []
      for seed in range(seeds):
        res = run(method, seed, loop_nest=False)
        ttg[method].append(trials_to_good(res.costs, best))
        curves[method].append(res.costs)
    # Loop-nest features (the same meaning in every app), without and with transfer: the model
    # pre-trained on the other apps' measurements.
    others = [a for a in apps_ if a != app]
    prior = None
    if others:
      f, c, g, t = [], [], [], []
      for gi, o in enumerate(others):
        t_o = _universe_task(o, size, tables[o], loop_nest=True)
        for k, v in tables[o].items():
          f.append(t_o.feature_fn(json.loads(k)))
          t.append(t_o.tree_fn(json.loads(k)))
          c.append(v)
          g.append(gi)
      prior = Prior(np.asarray(f, np.float32), np.asarray(c), np.asarray(g), trees=t)
    tr = {}
    for model in ln_models:
      for transfer in (False, True):
        tr[model, transfer] = [
          trials_to_good(run(model, seed, loop_nest=True,
                             prior=prior if transfer else None).costs, best)
          for seed in range(seeds)
        ]
    rows.append((app, len(table), n_ok, n_good, best, ttg, tr))
    curves_all[app] = (curves, best)

  print(f"\nPipeline schedules, XLA backend on this CPU, {size}x{size} float32; universe = every "
        f"valid schedule of the app's space (harris: narrowed, see PIPELINE_SPACES), each "
        f"measured for real; trials to within 5% of the universe's best (median over {seeds} "
        f"seeds; budget min({trials}, universe); batch {batch}; models used from {min_fit} "
        f"measurements; inf = not reached); random (exp.) = (N + 1) / (good + 1), the expected "
        f"trials of random sampling without replacement; -LN = loop-nest features; +K = the knob "
        f"vector appended for the local model (the transfer base reads the loop nest only):")
  head = "".join(f"{m:>9}" for m in methods)
  ln_name = {m: m + ("-LN+K" if m in knob_features else "-LN") for m in ln_models}
  ln_head = "".join(f"{ln_name[m]:>10}{'+trans':>7}" for m in ln_models)
  print(f"  {'app':16}{'configs':>8}{'good':>5}{'best ms':>9}{'rnd exp':>8}{head}{ln_head}")
  for app, n, _, n_good, best, ttg, tr in rows:
    cells = "".join(f"{np.median(ttg[m]):>9}" for m in methods)
    ln = "".join(f"{np.median(tr[m, t]):>{10 if not t else 7}}"
                 for m in ln_models for t in (False, True))
    print(f"  {app:16}{n:>8}{n_good:>5}{best * 1e3:>9.2f}{(n + 1) / (n_good + 1):>8.1f}{cells}"
          f"{ln}")
  for app, n, n_ok, _, _, ttg, tr in rows:
    ln = {ln_name[m] + ("+transfer" if t else ""): v for (m, t), v in tr.items()}
    print(f"  {app}: per seed {ttg}; loop-nest {ln}; {n - n_ok} of {n} failed/timed out")
  if plot:
    from jaxsched.tuning.plot import plot_tuning_curves

    for app, (curves, best) in curves_all.items():
      path = plot.replace(".png", f"_{app}.png")
      plot_tuning_curves(curves, path, title=f"{app} {size}x{size} (XLA, CPU)", reference=best)
      print(f"wrote {path}")
  return rows


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--trials", type=int, default=200)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--min-fit", type=int, default=8,
                  help="pipelines: measurements before a model guides the search")
  ap.add_argument("--methods", default="xgb,mlp,treegru,random,grid,ga")
  ap.add_argument("--plot", default=None, help="write the tuning curves to this PNG")
  ap.add_argument("--real", action="store_true", help="also tune a real blocked matmul")
  ap.add_argument("--descriptor", action="store_true",
                  help="add log2(problem size) to the synthetic family's features")
  ap.add_argument("--pipelines", action="store_true",
                  help="tune the XLA schedules of real pipeline apps instead (see --apps)")
  ap.add_argument("--apps", default="blur,harris,local_laplacian")
  ap.add_argument("--size", type=int, default=2048, help="pipelines: image side")
  ap.add_argument("--universe", type=int, default=96,
                  help="pipelines: measured valid schedules per app (all if fewer)")
  ap.add_argument("--repeats", type=int, default=3, help="pipelines: timed runs per schedule")
  ap.add_argument("--timeout", type=float, default=60.0, help="pipelines: seconds per schedule")
  ap.add_argument("--cache", default=None,
                  help="pipelines: JSON file caching the measured tables across runs")
  ap.add_argument("--ln-models", default="xgb,mlp",
                  help="pipelines: models also run on loop-nest features/trees (with and "
                       "without transfer from the other apps); add treegru for the TreeGRU on "
                       "trees (slow: ~10 min a transfer run, each refit trains on the prior's "
                       "trees)")
  ap.add_argument("--prior-mode", default="margin", choices=("margin", "pooled"),
                  help="pipelines: how transfer uses the other apps' records (ModelTuner)")
  ap.add_argument("--knob-features", default="",
                  help="pipelines: comma-separated --ln-models that also get the raw knob vector "
                       "(ModelTuner(knob_features=True))")
  ap.add_argument("--no-throughput", action="store_true")
  args = ap.parse_args()
  knob_models = {m for m in args.knob_features.split(",") if m}
  ln_models = {m for m in args.ln_models.split(",") if m}
  if not knob_models <= ln_models & {"xgb", "mlp"}:
    ap.error(f"--knob-features {sorted(knob_models)}: each must be xgb or mlp and in "
             f"--ln-models {sorted(ln_models)}")
  if args.pipelines:
    if not args.no_throughput:
      tp = bench_throughput()
      print(f"MLP predictions/s (jitted vmap): {tp['mlp_pred_per_s_device']:.3g}; "
            f"SA 128 chains x 500 steps: {tp['sa_128x500_s'] * 1e3:.1f} ms")
    bench_pipelines(args.apps.split(","), args.size, args.universe, args.methods.split(","),
                    args.seeds, args.trials, args.batch, repeats=args.repeats,
                    timeout=args.timeout, cache=args.cache, plot=args.plot,
                    min_fit=args.min_fit, prior_mode=args.prior_mode,
                    ln_models=tuple(m for m in args.ln_models.split(",") if m),
                    knob_features=tuple(m for m in args.knob_features.split(",") if m))
    return
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
