"""Training library: `train_and_evaluate(config, workdir)` for the MNIST and CIFAR-10 models.

In the style of Flax's examples: module-level jitted `train_step`/`eval_step`, a `loss_fn` that
returns `(loss, aux)`, per-epoch metrics to CSV and TensorBoard, Orbax checkpoints every epoch
(with resume), and a final report.json plus a PNG of the training curves. Data parallel over all
devices: the batch is sharded on a 1-D mesh and the parameters are replicated.
"""

from __future__ import annotations

import csv
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsched import models
from jaxsched.models import pruning
from train import data
from train.configs.default import Config

ModelFactory = Callable[[Config, nnx.Rngs], nnx.Module]

MODELS: dict[str, dict[str, ModelFactory]] = {
  "mnist": {
    "conv": lambda c, r: models.ConvMNIST(rngs=r),
    "hyper": lambda c, r: models.HyperMNIST(rngs=r),
    "mlp800": lambda c, r: models.MLP((800, 800), dropout=c.dropout, rngs=r),
    "mlp1200": lambda c, r: models.MLP((1200, 1200), dropout=c.dropout, rngs=r),
    "lenet300": lambda c, r: models.LeNet300100(rngs=r),
    "lenet5": lambda c, r: models.LeNet5(rngs=r),
    "mobilenet": lambda c, r: models.MobileNetV1(
      c.mobilenet_alpha,
      num_classes=10,
      small_inputs=True,
      in_channels=1,
      kernels=c.kernels,
      rngs=r,
    ),
  },
  "cifar10": {
    "wrn": lambda c, r: models.WRN(c.wrn_depth, c.wrn_k, dropout=c.dropout, rngs=r),
    "hyperwrn": lambda c, r: models.HyperWRN(c.wrn_depth, c.wrn_k, dropout=c.dropout, rngs=r),
    "mobilenet": lambda c, r: models.MobileNetV1(
      c.mobilenet_alpha, num_classes=10, small_inputs=True, kernels=c.kernels, rngs=r
    ),
  },
}
DATASETS = tuple(MODELS)


def create_model(config: Config, *, seed: int | None = None) -> nnx.Module:
  """Builds the model named by `config.dataset` and `config.model`."""
  if config.dataset not in MODELS:
    raise ValueError(f"unknown {config.dataset=}; valid choices: {DATASETS}")
  table = MODELS[config.dataset]
  if config.model not in table:
    raise ValueError(
      f"unknown {config.model=} for {config.dataset}; valid choices: {sorted(table)}"
    )
  key = tuple(getattr(config, f) for f in _MODEL_FIELDS)
  graphdef, init = _initializer(key)
  return nnx.merge(graphdef, init(config.seed if seed is None else seed))


_MODEL_FIELDS = ("dataset", "model", "wrn_depth", "wrn_k", "mobilenet_alpha", "kernels", "dropout")


@functools.lru_cache(maxsize=8)
def _initializer(key: tuple[Any, ...]) -> tuple[nnx.GraphDef, Callable[[int], nnx.State]]:
  config = Config(**dict(zip(_MODEL_FIELDS, key, strict=True)))
  factory = MODELS[config.dataset][config.model]

  def build(seed):
    # RBG keys: initialisers built on them compile ~3x faster than threefry's on CPU.
    keys = jax.random.split(jax.random.key(seed, impl="rbg"))
    return factory(config, nnx.Rngs(params=keys[0], dropout=keys[1]))

  # One jitted initialiser per architecture (cached): eager init would compile a tiny program
  # per parameter shape, which dominates short runs.
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(0)))
  return graphdef, jax.jit(lambda seed: nnx.state(build(seed)))


def load_dataset(config: Config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split as uint8 images and int32 labels, truncated for smoke runs."""
  if config.dataset == "mnist":
    x, y = data.load_mnist(split, config.data_dir)
  else:
    x, y = data.load_cifar10(split, config.data_dir)
  limit = config.max_train_examples if split == "train" else config.max_test_examples
  return (x[:limit], y[:limit]) if limit else (x, y)


# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------


_OPT_FIELDS = (
  "optimizer", "lr", "lr_schedule", "warmup_epochs", "momentum", "weight_decay", "epochs",
  "prune", "sparsity", "prune_scope", "prune_begin", "prune_end", "prune_frequency",
)  # fmt: skip


def create_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam/SGD with a cosine or constant schedule, wrapped in gradual pruning if requested.

  Equal settings return the same object, so the jitted train_step (which takes the optimizer as
  a static argument) is compiled once per process.
  """
  return _create_optimizer(tuple(getattr(config, f) for f in _OPT_FIELDS), steps_per_epoch)


@functools.lru_cache(maxsize=8)
def _create_optimizer(key: tuple[Any, ...], steps_per_epoch: int) -> optax.GradientTransformation:
  config = Config(**dict(zip(_OPT_FIELDS, key, strict=True)))
  lr = _lr_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    tx = (
      optax.adamw(lr, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(lr)
    )
  elif config.optimizer == "sgd":
    tx = optax.sgd(lr, momentum=config.momentum, nesterov=True)
    if config.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
  else:
    raise ValueError(f"unknown {config.optimizer=}; valid choices: ('adam', 'sgd')")
  if config.prune is None:
    return tx
  if config.prune != "gradual":
    raise ValueError(f"unknown {config.prune=}; valid choices: (None, 'gradual')")
  return pruning.gradual_pruning(
    tx,
    schedule_kwargs=pruning_schedule(config, steps_per_epoch),
    scope=config.prune_scope,
    prunable=_is_kernel,
  )


def _is_kernel(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  """Prunes conv/dense kernels only (not biases, norms or hypernetwork embeddings)."""
  del leaf
  # NNX state paths end in the Variable's ".value", so look at every key on the path.
  return any(getattr(k, "key", getattr(k, "name", None)) == "kernel" for k in path)


def pruning_schedule(config: Config, steps_per_epoch: int) -> dict[str, Any]:
  """`polynomial_sparsity` arguments for a run: 0 -> sparsity between prune_begin/end."""
  total = config.epochs * steps_per_epoch
  begin = int(config.prune_begin * total)
  end = max(begin + 1, int(config.prune_end * total))
  freq = max(1, min(config.prune_frequency, (end - begin) // 4 or 1))
  return dict(initial=0.0, final=config.sparsity, begin_step=begin, end_step=end, frequency=freq)


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------


def _forward(graphdef, params, rest, x):
  model = nnx.merge(graphdef, params, rest, copy=True)
  logits = model(x)
  _, _, new_rest = nnx.split(model, nnx.Param, ...)
  return logits, new_rest


def loss_fn(params, rest, graphdef, x, y, teacher_logits, *, temperature, alpha):
  """Cross-entropy (or distillation loss when teacher_logits is given) -> (loss, aux)."""
  logits, new_rest = _forward(graphdef, params, rest, x)
  if teacher_logits is None:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  else:
    loss = models.distillation_loss(logits, teacher_logits, y, temperature=temperature, alpha=alpha)
  return loss, (logits, new_rest)


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "tx", "teacher_graphdef", "temperature", "alpha"),
  donate_argnames=("params", "rest", "opt_state"),
)
def train_step(
  params, rest, opt_state, x, y, teacher_state=None, *, graphdef, tx, teacher_graphdef=None,
  temperature=1.0, alpha=0.0,
):  # fmt: skip
  """One optimizer step; returns new (params, rest, opt_state) and batch metrics."""
  teacher_logits = None
  if teacher_graphdef is not None:
    teacher_logits, _ = _forward(teacher_graphdef, *teacher_state, x)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, rest)), grads = grad_fn(
    params, rest, graphdef, x, y, teacher_logits, temperature=temperature, alpha=alpha
  )
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  metrics = dict(loss=loss, accuracy=jnp.mean(jnp.argmax(logits, -1) == y))
  return params, rest, opt_state, metrics


@functools.partial(jax.jit, static_argnames=("graphdef",))
def eval_step(params, rest, x, y, weight, *, graphdef):
  """Sums of loss and correct predictions over the examples with weight 1 (padding has 0)."""
  logits, _ = _forward(graphdef, params, rest, x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  correct = jnp.argmax(logits, -1) == y
  return dict(loss=jnp.sum(loss * weight), correct=jnp.sum(correct * weight))


# ------------------------------------------------------------------------------------------------
# Sharding, checkpoints, logging
# ------------------------------------------------------------------------------------------------


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over all devices (all hosts when jax.distributed is initialized)."""
  return Mesh(np.array(jax.devices()), ("data",))


def _shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Places a global batch (identical on every host) sharded along its first axis."""
  sharding = NamedSharding(mesh, P("data"))
  pid, nproc = jax.process_index(), jax.process_count()
  out = []
  for a in arrays:
    per = a.shape[0] // nproc
    out.append(jax.make_array_from_process_local_data(sharding, a[pid * per : (pid + 1) * per]))
  return tuple(out)


def _replicate(mesh: Mesh, tree: Any) -> Any:
  """Replicates host-identical values on every device of the mesh."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  # Multi-host: every process builds its addressable shards from its own (identical) copy.
  def put(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree)


def _savable(tree: Any) -> Any:
  # Orbax stores plain arrays; typed PRNG keys (dropout streams) go in as their raw key data.
  return jax.tree.map(
    lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree
  )


def _unsavable(saved: Any, like: Any) -> Any:
  return jax.tree.map(
    lambda s, x: (
      jax.random.wrap_key_data(s, impl=jax.random.key_impl(x))
      if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
      else s
    ),
    saved,
    like,
  )


def _checkpoint_manager(workdir: Path) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def save_checkpoint(mngr: ocp.CheckpointManager, epoch: int, items: dict[str, Any]) -> None:
  """Saves each item ("model": params + rest, "opt_state") apart, so each restores alone."""
  args = {k: ocp.args.StandardSave(_savable(v)) for k, v in items.items()}
  mngr.save(epoch, args=ocp.args.Composite(**args))
  mngr.wait_until_finished()


def restore_checkpoint(
  workdir: str | Path, items: dict[str, Any], step: int | None = None
) -> tuple[int, dict[str, Any]]:
  """Restores the latest (or `step`) checkpoint's named items into the structures of `items`."""
  with _checkpoint_manager(Path(workdir)) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    args = {
      k: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(v)))
      for k, v in items.items()
    }
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return step, {k: _unsavable(restored[k], v) for k, v in items.items()}


def load_teacher(path: str | Path) -> tuple[Config, nnx.GraphDef, tuple[Any, Any]]:
  """Loads a finished run (its config.json and latest checkpoint) as an eval-mode teacher."""
  path = Path(path)
  cfg_file = path / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"teacher {path} has no config.json: pass a training run's workdir")
  cfg = Config(**json.loads(cfg_file.read_text()))
  model = create_model(cfg)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  _, state = restore_checkpoint(path, dict(model=dict(params=params, rest=rest)))
  return cfg, graphdef, (state["model"]["params"], state["model"]["rest"])


_CSV_FIELDS = (
  "epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
  "test_errors", "sparsity", "seconds",
)  # fmt: skip


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  epochs = [r["epoch"] for r in rows]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
  ax1.plot(epochs, [r["test_loss"] for r in rows], "o-", label="test")
  ax1.set(xlabel="epoch", ylabel="loss", title="loss")
  ax2.plot(epochs, [100 * (1 - r["train_accuracy"]) for r in rows], "o-", label="train")
  ax2.plot(epochs, [100 * (1 - r["test_accuracy"]) for r in rows], "o-", label="test")
  ax2.set(xlabel="epoch", ylabel="error (%)", title="error", yscale="log")
  for ax in (ax1, ax2):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _hyper_counts(model: nnx.Module) -> dict[str, int]:
  gens = [m for _, m in nnx.iter_graph(model) if isinstance(m, models.HyperGenerator)]
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, models.HyperConv)]
  if not convs:
    return {}
  gen = sum(models.count_params(g) for g in gens)
  emb = sum(c.embedding.size for c in convs)
  return dict(hyper_generator_params=gen, hyper_embedding_params=emb)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def evaluate(params, rest, graphdef, images, labels, *, config: Config, mesh: Mesh):
  """Test loss, accuracy and error count over a whole split (padded to fixed batch shapes)."""
  ndev = mesh.devices.size
  bs = min(config.eval_batch_size, len(images))
  bs = -(-bs // ndev) * ndev
  loss = correct = 0.0
  for x, y in data.eval_batches(images, labels, batch_size=bs):
    n = len(y)
    weight = np.zeros((bs,), np.float32)
    weight[:n] = 1
    pad = bs - n
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    y = np.concatenate([y, np.zeros((pad,), y.dtype)]) if pad else y
    out = eval_step(params, rest, *_shard_batch(mesh, x, y, weight), graphdef=graphdef)
    loss += float(out["loss"])
    correct += float(out["correct"])
  n = len(images)
  return dict(test_loss=loss / n, test_accuracy=correct / n, test_errors=int(round(n - correct)))


def train_and_evaluate(config: Config, workdir: str | Path) -> dict[str, Any]:
  """Trains `config.model` on `config.dataset`, logging into `workdir`; returns the report."""
  from tensorboardX import SummaryWriter
  from tqdm.auto import tqdm

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = make_mesh()
  ndev = mesh.devices.size
  if config.batch_size % ndev:
    raise ValueError(f"{config.batch_size=} must be a multiple of the {ndev} devices")
  if config.epochs < 1:
    raise ValueError(f"{config.epochs=} must be >= 1")

  train_x, train_y = load_dataset(config, "train")
  test_x, test_y = load_dataset(config, "test")
  steps = data.steps_per_epoch(len(train_x), config.batch_size)
  if steps < 1:
    raise ValueError(f"{config.batch_size=} exceeds the {len(train_x)} training examples")

  model = create_model(config)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  n_params = models.count_params(params)
  hyper = _hyper_counts(model)
  tx = create_optimizer(config, steps)
  opt_state = jax.jit(tx.init)(params)

  teacher_state, teacher_graphdef = None, None
  if config.teacher:
    teacher_cfg, teacher_graphdef, teacher_state = load_teacher(config.teacher)
    if teacher_cfg.dataset != config.dataset:
      raise ValueError(
        f"teacher {config.teacher} was trained on {teacher_cfg.dataset=}, not {config.dataset=}"
      )
    teacher_state = _replicate(mesh, teacher_state)

  start_epoch, rows = 1, []
  metrics_csv = workdir / "metrics.csv"
  if config.resume:
    target = dict(model=dict(params=params, rest=rest), opt_state=opt_state)
    saved_epoch, state = restore_checkpoint(workdir, target)
    params, rest = state["model"]["params"], state["model"]["rest"]
    opt_state = state["opt_state"]
    start_epoch = saved_epoch + 1
    if metrics_csv.is_file():
      with metrics_csv.open() as f:
        rows = [
          {
            k: float(v) if k not in ("epoch", "step", "test_errors") else int(v)
            for k, v in r.items()
          }
          for r in csv.DictReader(f)
          if int(r["epoch"]) <= saved_epoch
        ]
  (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
  params, rest, opt_state = _replicate(mesh, (params, rest, opt_state))
  lr_fn = _lr_schedule(config, steps)

  writer = SummaryWriter(str(workdir / "tensorboard"))
  mngr = _checkpoint_manager(workdir)
  statics = dict(
    graphdef=graphdef, tx=tx, teacher_graphdef=teacher_graphdef,
    temperature=config.temperature, alpha=config.alpha,
  )  # fmt: skip
  for epoch in range(start_epoch, config.epochs + 1):
    t0 = time.perf_counter()
    sums = dict(loss=0.0, accuracy=0.0)
    it = data.batches(
      train_x, train_y, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
      augment=(("mnist" if config.dataset == "mnist" else "cifar") if config.augment else None),
    )  # fmt: skip
    bar = tqdm(it, total=steps, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress)
    batch_metrics = []
    for x, y in bar:
      params, rest, opt_state, m = train_step(
        params, rest, opt_state, *_shard_batch(mesh, x, y), teacher_state, **statics
      )
      batch_metrics.append(m)
      if len(batch_metrics) % 50 == 0:
        bar.set_postfix(loss=f"{float(m['loss']):.4f}")
    for m in jax.device_get(batch_metrics):
      for k in sums:
        sums[k] += float(m[k]) / steps
    seconds = time.perf_counter() - t0
    row = dict(
      epoch=epoch, step=epoch * steps, lr=float(lr_fn((epoch * steps) - 1)),
      train_loss=sums["loss"], train_accuracy=sums["accuracy"],
      **evaluate(params, rest, eval_graphdef, test_x, test_y, config=config, mesh=mesh),
      sparsity=1.0 - models.count_nonzeros(params) / n_params, seconds=seconds,
    )  # fmt: skip
    rows.append(row)
    for k, v in row.items():
      if k not in ("epoch", "step"):
        writer.add_scalar(k, v, row["step"])
    writer.flush()
    with metrics_csv.open("w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
      w.writeheader()
      w.writerows(rows)
    save_checkpoint(mngr, epoch, dict(model=dict(params=params, rest=rest), opt_state=opt_state))
    if config.progress:
      print(
        f"epoch {epoch}: train loss {row['train_loss']:.4f}, test error "
        f"{100 * (1 - row['test_accuracy']):.2f}% ({row['test_errors']} errors), {seconds:.1f} s"
      )
  mngr.close()
  writer.close()

  if not rows:  # resumed a finished run: nothing left to train
    raise ValueError(f"{config.epochs=} is not beyond the checkpointed epoch {start_epoch - 1}")
  _plot_curves(rows, workdir / "curves.png")
  final = rows[-1]
  trained = [r["seconds"] for r in rows[start_epoch - 1 :]]
  report = dict(
    dataset=config.dataset, model=config.model, epochs=config.epochs, steps=final["step"],
    resumed_from_epoch=start_epoch - 1 if config.resume else None,
    test_accuracy=final["test_accuracy"], test_error=1.0 - final["test_accuracy"],
    test_errors=final["test_errors"], test_examples=len(test_x), test_loss=final["test_loss"],
    train_loss=final["train_loss"], params=n_params, nonzeros=models.count_nonzeros(params),
    **hyper, seconds_per_epoch=float(np.mean(trained)) if trained else None,
    epoch_seconds=[r["seconds"] for r in rows], devices=ndev,
  )  # fmt: skip
  if config.prune:
    report["sparsity"] = pruning.sparsity_report(jax.device_get(params))["sparsity"]
  (workdir / "report.json").write_text(json.dumps(report, indent=2))
  return report


def _lr_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  total = max(1, config.epochs * steps_per_epoch)
  if config.lr_schedule == "constant":
    return optax.constant_schedule(config.lr)
  if config.lr_schedule != "cosine":
    raise ValueError(f"unknown {config.lr_schedule=}; valid choices: ('cosine', 'constant')")
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if warmup == 0:
    return optax.cosine_decay_schedule(config.lr, total)
  return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, max(total, warmup + 1))
