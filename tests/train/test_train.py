"""train_and_evaluate on tiny generated MNIST- and CIFAR-format files; resume; data parallel."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train import data
from train import mnist as mnist_main
from train.configs.default import get_config
from train.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]


def _images(rng, n, shape, labels):
  """Class-dependent images: noise plus a bright bar whose position encodes the label."""
  x = rng.integers(0, 60, size=(n, *shape)).astype(np.uint8)
  for i, y in enumerate(labels):
    x[i, 2 * y : 2 * y + 3, 4:-4] = 250
  return x


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("mnist")
  rng = np.random.default_rng(0)
  for split, n in (("train", 256), ("test", 70)):
    y = rng.integers(0, 10, size=n)
    data.write_mnist_idx(d, split, _images(rng, n, (28, 28), y), y)
  return d


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("cifar")
  rng = np.random.default_rng(1)
  for split, n in (("train", 40), ("test", 12)):
    y = rng.integers(0, 10, size=n)
    data.write_cifar10_batches(d, split, _images(rng, n, (32, 32, 3), y), y)
  return d


ONE_EPOCH = dict(dataset="mnist", model="hyper", batch_size=32, epochs=1, lr=0.01, progress=False)


@pytest.fixture(scope="module")
def four_devices(mnist_dir, tmp_path_factory):
  """Starts the ONE_EPOCH run on 4 host devices in a subprocess, in parallel with the tests."""
  args = dict(ONE_EPOCH, data_dir=str(mnist_dir))
  code = (
    "import json, jax; assert jax.device_count() == 4, jax.devices();"
    "from train.configs.default import get_config; from train.train import train_and_evaluate;"
    f"r = train_and_evaluate(get_config(**{args!r}), {str(tmp_path_factory.mktemp('four'))!r});"
    "print('REPORT', json.dumps(r))"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.Popen(
    [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
    stderr=subprocess.PIPE, text=True,
  )  # fmt: skip
  yield proc
  if proc.poll() is None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def one_epoch(mnist_dir, tmp_path_factory):
  """One HyperMNIST epoch through the CLI (shared: compiling dominates these tests)."""
  workdir = tmp_path_factory.mktemp("one_epoch")
  report = mnist_main.main(
    ["--model", "hyper", "--data-dir", str(mnist_dir), "--workdir", str(workdir),
     "--batch-size", "32", "--epochs", "1", "--lr", "0.01", "--no-progress"]
  )  # fmt: skip
  return workdir, report


def test_mnist_one_epoch_writes_everything(four_devices, one_epoch):
  del four_devices  # started first so that it overlaps with this module's other runs
  workdir, report = one_epoch
  assert report["steps"] == 256 // 32
  assert report["params"] == 800 + 4244 + 16 + 7850
  assert report["hyper_generator_params"] + report["hyper_embedding_params"] == 4244
  assert report["test_examples"] == 70
  assert report["test_errors"] == round(70 * (1 - report["test_accuracy"]))
  assert report["test_error"] < 0.9  # the bars are easy: even one tiny epoch beats chance
  saved = json.loads((workdir / "report.json").read_text())
  assert saved["test_errors"] == report["test_errors"]
  rows = list(csv.DictReader((workdir / "metrics.csv").open()))
  assert [int(r["epoch"]) for r in rows] == [1]
  assert (workdir / "curves.png").stat().st_size > 1000
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / "1").is_dir()
  assert json.loads((workdir / "config.json").read_text())["model"] == "hyper"


def test_resume_continues_from_the_saved_step(mnist_dir, tmp_path):
  def cli(workdir, *extra):
    return mnist_main.main(
      ["--model", "lenet300", "--data-dir", str(mnist_dir), "--workdir", str(workdir),
       "--batch-size", "32", "--lr", "1e-3", "--lr-schedule", "constant", "--no-progress", *extra]
    )  # fmt: skip

  straight = cli(tmp_path / "a", "--epochs", "2")
  cli(tmp_path / "b", "--epochs", "1")
  resumed = cli(tmp_path / "b", "--epochs", "2", "--resume")
  assert resumed["resumed_from_epoch"] == 1 and resumed["steps"] == straight["steps"] == 16
  ckpt = tmp_path / "b" / "checkpoints"
  assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [1, 2]
  rows = list(csv.DictReader((tmp_path / "b" / "metrics.csv").open()))
  assert [int(r["epoch"]) for r in rows] == [1, 2]
  # The data order depends on (seed, epoch) only, so resuming reproduces the uninterrupted run.
  np.testing.assert_allclose(resumed["test_loss"], straight["test_loss"], rtol=1e-5)
  np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=1e-5)


def test_cifar_one_epoch(cifar_dir, tmp_path):
  config = get_config(
    dataset="cifar10", model="hyperwrn", wrn_depth=10, wrn_k=1, data_dir=str(cifar_dir),
    batch_size=8, epochs=1, optimizer="sgd", lr=0.05, augment=True, progress=False,
  )  # fmt: skip
  report = train_and_evaluate(config, tmp_path)
  assert report["steps"] == 5 and report["test_examples"] == 12
  assert np.isfinite(report["train_loss"]) and 0 <= report["test_errors"] <= 12
  assert (tmp_path / "report.json").is_file()


def test_distilled_and_pruned_student(mnist_dir, one_epoch, tmp_path):
  teacher_dir = one_epoch[0]
  report = mnist_main.main(
    ["--model", "lenet300", "--data-dir", str(mnist_dir), "--workdir", str(tmp_path),
     "--batch-size", "32", "--epochs", "2", "--no-progress", "--teacher", str(teacher_dir),
     "--temperature", "4", "--alpha", "0.7", "--prune", "gradual", "--sparsity", "0.5"]
  )  # fmt: skip
  kernels = 784 * 300 + 300 * 100 + 100 * 10
  biases = 300 + 100 + 10
  assert report["params"] == kernels + biases
  # Kernels end at 50% sparsity per layer (+-0.5%); biases are not pruned.
  assert abs(report["nonzeros"] - (kernels // 2 + biases)) <= 0.005 * kernels
  assert json.loads((tmp_path / "config.json").read_text())["teacher"] == str(teacher_dir)
  assert np.isfinite(report["train_loss"])


def test_four_devices_give_the_one_device_loss(four_devices, one_epoch):
  out, err = four_devices.communicate(timeout=600)
  assert four_devices.returncode == 0, err[-3000:]
  four = json.loads(out.split("REPORT", 1)[1])
  one = one_epoch[1]
  assert four["devices"] == 4 and one["devices"] == 1
  np.testing.assert_allclose(four["train_loss"], one["train_loss"], rtol=1e-4)
  np.testing.assert_allclose(four["test_loss"], one["test_loss"], rtol=1e-4)
  assert four["test_errors"] == one["test_errors"]


def test_cifar_cli_missing_data_exits_with_the_loaders_message(tmp_path, capsys):
  from train import cifar

  with pytest.raises(SystemExit) as info:
    cifar.main(["--model", "wrn", "--data-dir", str(tmp_path / "nope"),
                "--workdir", str(tmp_path / "run")])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "python -m train.cifar: error:" in err
  assert "data_batch_1" in err and "--data-dir" in err and str(tmp_path / "nope") in err
