"""CIFAR-10 loading (local python batches, prepared TFDS, or synthetic) and the
standard augmentation.

Images come back as float32 NHWC arrays in [0, 1] of shape (N, 32, 32, 3), labels as int32 (N,).

Sources (``load_cifar10(source=...)``):

* ``'folder'``: a local folder with the standard CIFAR-10 python batches (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``), either directly in ``dir`` or in ``dir/cifar-10-batches-py``.
  These files are Python pickles; they are read with a restricted unpickler that only resolves the
  few globals a numpy array needs and refuses everything else (:class:`UnsafePickleError`), so a
  tampered file cannot run code.
* ``'tfds'``: an already-prepared TFDS ``cifar10``. Nothing is ever downloaded: the source is only
  used when its ``dataset_info.json`` is found on disk and the builder reports ``is_prepared()``.
* ``'synthetic'``: random class-dependent images with a fixed seed, for tests and smoke runs.
* ``'auto'``: ``'folder'`` if ``dir`` holds the batches, else a prepared TFDS ``cifar10`` if
  present, else :class:`DataError` saying how to provide the data. Deciding makes no network access.
"""

from __future__ import annotations

import codecs
import glob
import io
import logging
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The library's one DataError (AtentError, ValueError): the CLIs print it as a one-line error.
from atent_jax.errors import DataError

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
FOLDER_SUBDIR = "cifar-10-batches-py"
SOURCES = ("auto", "folder", "tfds", "synthetic")

__all__ = [
  "DataError",
  "UnsafePickleError",
  "load_cifar10",
  "find_cifar10_folder",
  "tfds_cifar10_prepared",
  "restricted_load",
  "augment_batch",
  "NUM_CLASSES",
]

_NOT_FOUND_HINT = (
  "set config.data.dir to a folder with the CIFAR-10 python batches (data_batch_1..5, "
  "test_batch, e.g. the extracted cifar-10-python.tar.gz) or prepare TFDS cifar10 "
  "(tfds build cifar10 --file_format=array_record) with its data_dir in "
  "config.data.tfds_data_dir or $TFDS_DATA_DIR; or use source='synthetic' for a smoke run"
)


class UnsafePickleError(DataError, pickle.UnpicklingError):
  """A pickle asked for a global outside the whitelist of the restricted unpickler."""


# ----------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
  """Stand-in for ``_codecs.encode`` (protocol-2 pickles of bytes written by Python 3), latin-1
  only."""
  if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
    raise UnsafePickleError(
      f"refusing _codecs.encode({type(obj).__name__}, {encoding!r}, {errors!r}) in a pickle: "
      "only latin-1 encoding of str is allowed"
    )
  return obj.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
  try:  # numpy >= 2
    from numpy._core import multiarray as _ma
    from numpy._core import numeric as _num
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _ma  # type: ignore[no-redef]
    from numpy.core import numeric as _num  # type: ignore[no-redef]
  table: dict[tuple[str, str], Any] = {}
  for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    table[(mod, "_reconstruct")] = _ma._reconstruct
    table[(mod, "scalar")] = _ma.scalar
  for mod in ("numpy.core.numeric", "numpy._core.numeric"):
    if hasattr(_num, "_frombuffer"):
      table[(mod, "_frombuffer")] = _num._frombuffer
  table[("numpy", "ndarray")] = np.ndarray
  table[("numpy", "dtype")] = np.dtype
  return table


_SAFE_BUILTINS = {
  "set": set,
  "frozenset": frozenset,
  "bytearray": bytearray,
  "bytes": bytes,
  "complex": complex,
  "slice": slice,
  "range": range,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler resolving only numpy array reconstruction and a few inert builtins.

  Dicts, lists, tuples, str, bytes, ints and floats are built by pickle opcodes and never reach
  ``find_class``; every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...)
  is refused before anything is called.
  """

  _numpy = None

  def find_class(self, module: str, name: str) -> Any:
    if _RestrictedUnpickler._numpy is None:
      _RestrictedUnpickler._numpy = _numpy_globals()
    obj = _RestrictedUnpickler._numpy.get((module, name))
    if obj is not None:
      return obj
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
      return _SAFE_BUILTINS[name]
    if module == "_codecs" and name == "encode":
      return _latin1_encode
    raise UnsafePickleError(
      f"refusing to unpickle global {module}.{name}: the CIFAR-10 loader only allows numpy "
      "arrays and builtin containers (the file is not a genuine CIFAR-10 batch, or it has "
      "been tampered with)"
    )


def restricted_load(file: Any) -> Any:
  """Unpickle ``file`` (a path, bytes, or binary file object) with the restricted unpickler.

  Uses ``encoding='bytes'`` like the CIFAR-10 reference code, so the Python-2 batches give
  ``b'data'`` keys. Raises :class:`UnsafePickleError` (a :class:`DataError` and
  :class:`pickle.UnpicklingError`) on any global outside the whitelist.
  """
  if isinstance(file, (bytes, bytearray)):
    return _RestrictedUnpickler(io.BytesIO(bytes(file)), encoding="bytes").load()
  if isinstance(file, (str, os.PathLike)):
    with open(file, "rb") as f:
      return _RestrictedUnpickler(f, encoding="bytes").load()
  return _RestrictedUnpickler(file, encoding="bytes").load()


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def _split_files(split: str) -> tuple[str, ...]:
  if split == "train":
    return TRAIN_FILES
  if split == "test":
    return TEST_FILES
  raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def find_cifar10_folder(dir: str | os.PathLike | None) -> str | None:
  """The folder holding all CIFAR-10 python batches: ``dir`` itself or
  ``dir/cifar-10-batches-py``; else None."""
  if dir is None:
    return None
  base = os.path.expanduser(os.fspath(dir))
  needed = TRAIN_FILES + TEST_FILES
  for cand in (base, os.path.join(base, FOLDER_SUBDIR)):
    if all(os.path.isfile(os.path.join(cand, f)) for f in needed):
      return cand
  return None


def _get(d: dict, key: str) -> Any:
  for k in (key.encode(), key):
    if k in d:
      return d[k]
  raise DataError(f"CIFAR-10 batch has no {key!r} entry (keys: {sorted(map(repr, d))[:6]})")


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    d = restricted_load(path)
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise DataError(
      f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})"
    ) from e
  if not isinstance(d, dict):
    raise DataError(f"{path}: expected a pickled dict, got {type(d).__name__}")
  data = np.asarray(_get(d, "data"))
  labels = np.asarray(_get(d, "labels"), dtype=np.int64)
  if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
    raise DataError(
      f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
    )
  if labels.shape != (data.shape[0],):
    raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f"{path}: labels outside [0, {NUM_CLASSES})")
  # Rows are CHW (1024 red, 1024 green, 1024 blue, each row-major 32x32) -> NHWC.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int32)


def _load_folder(dir: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
  files = _split_files(split)
  folder = None
  if dir is not None:
    base = os.path.expanduser(os.fspath(dir))
    for cand in (base, os.path.join(base, FOLDER_SUBDIR)):
      if all(os.path.isfile(os.path.join(cand, f)) for f in files):
        folder = cand
        break
  if folder is None:
    raise DataError(
      f"CIFAR-10 {split} batches ({', '.join(files)}) not found in {dir!r} or its "
      f"{FOLDER_SUBDIR}/: " + _NOT_FOUND_HINT
    )
  parts = [_read_batch(os.path.join(folder, f)) for f in files]
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  return images, labels


def _tfds_data_dir(tfds_data_dir: Any) -> str:
  if tfds_data_dir is not None:
    return os.path.expanduser(os.fspath(tfds_data_dir))
  return os.path.expanduser(
    os.environ.get("TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))
  )


def tfds_cifar10_prepared(tfds_data_dir: Any = None) -> bool:
  """Whether a prepared TFDS ``cifar10`` exists locally (no download, no network access).

  First looks on disk for ``<data_dir>/cifar10/<version>/dataset_info.json`` (cheap; TFDS is not
  imported when absent), then confirms with ``tfds.builder(...).is_prepared()``. Remote
  (``gs://``) data dirs are not probed.
  """
  data_dir = _tfds_data_dir(tfds_data_dir)
  if "://" in data_dir:
    return False
  if not glob.glob(os.path.join(data_dir, "cifar10", "*", "dataset_info.json")):
    return False
  try:
    import tensorflow_datasets as tfds

    return bool(tfds.builder("cifar10", data_dir=data_dir).is_prepared())
  except Exception as e:  # noqa: BLE001 - any failure means "not usable"
    logger.warning("TFDS cifar10 in %s is not usable: %s", data_dir, e)
    return False


def _load_tfds(tfds_data_dir: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
  _split_files(split)
  data_dir = _tfds_data_dir(tfds_data_dir)
  if not tfds_cifar10_prepared(data_dir):
    raise DataError(f"TFDS cifar10 is not prepared in {data_dir!r}: " + _NOT_FOUND_HINT)
  import tensorflow_datasets as tfds

  builder = tfds.builder("cifar10", data_dir=data_dir)
  file_format = str(getattr(builder.info, "file_format", "")).lower()
  if "array_record" in file_format:
    source = tfds.data_source("cifar10", split=split, data_dir=data_dir, download=False)
    n = len(source)
    images = np.empty((n, *IMAGE_SHAPE), np.uint8)
    labels = np.empty((n,), np.int32)
    chunk = 1024
    for start in range(0, n, chunk):
      idx = list(range(start, min(n, start + chunk)))
      getitems = getattr(source, "__getitems__", None)
      records = getitems(idx) if getitems is not None else [source[i] for i in idx]
      for i, rec in zip(idx, records):
        images[i] = np.asarray(rec["image"], np.uint8).reshape(IMAGE_SHAPE)
        labels[i] = int(rec["label"])
    return images, labels
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    raise DataError(
      f"TFDS cifar10 in {data_dir!r} is stored as {file_format or 'tfrecord'}, which needs "
      "TensorFlow to read; install tensorflow or re-prepare it with "
      "`tfds build cifar10 --file_format=array_record`"
    ) from None
  ds = builder.as_dataset(split=split, batch_size=-1)
  arrays = tfds.as_numpy(ds)
  return np.asarray(arrays["image"], np.uint8), np.asarray(arrays["label"], np.int32)


def _synthetic(split: str, num_examples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random images with a weak class signal (a per-class template shared by both splits), so smoke
  runs learn."""
  _split_files(split)
  if num_examples is None:
    num_examples = 1024 if split == "train" else 256
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}")
  templates = np.random.default_rng(seed).random((NUM_CLASSES, *IMAGE_SHAPE), dtype=np.float32)
  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  labels = rng.integers(0, NUM_CLASSES, size=num_examples).astype(np.int32)
  noise = rng.random((num_examples, *IMAGE_SHAPE), dtype=np.float32)
  images = 0.5 * templates[labels] + 0.5 * noise
  return images.astype(np.float32), labels


def load_cifar10(
  *,
  source: str = "auto",
  dir: str | os.PathLike | None = None,
  tfds_data_dir: str | os.PathLike | None = None,
  split: str = "train",
  num_examples: int | None = None,
  seed: int = 0,
  return_source: bool = False,
):
  """Load a CIFAR-10 split as ``(images float32 (N, 32, 32, 3) in [0, 1], labels int32 (N,))``.

  Args:
    source: ``'auto'`` | ``'folder'`` | ``'tfds'`` | ``'synthetic'`` (see the module docstring).
    dir: folder with the CIFAR-10 python batches (or their ``cifar-10-batches-py`` subfolder).
    tfds_data_dir: TFDS data dir of a prepared ``cifar10`` (default ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``). Never downloads.
    split: ``'train'`` (50,000 images) or ``'test'`` (10,000).
    num_examples: keep only the first ``num_examples`` (real sources); the size of the synthetic
      set (default 1024 train / 256 test).
    seed: seed of the synthetic data.
    return_source: also return the source actually used (``'folder'``, ``'tfds'`` or
      ``'synthetic'``).

  The source used is always logged (``logging.INFO`` on this module's logger).
  Raises :class:`DataError` when the data is not available or malformed.
  """
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  _split_files(split)
  used = source
  if source == "auto":
    if find_cifar10_folder(dir) is not None:
      used = "folder"
    elif tfds_cifar10_prepared(tfds_data_dir):
      used = "tfds"
    else:
      where = (
        f"no CIFAR-10 python batches in dir={os.fspath(dir)!r}"
        if dir is not None
        else "dir is not set"
      )
      raise DataError(
        f"CIFAR-10 not found ({where}; no prepared TFDS cifar10 in "
        f"{_tfds_data_dir(tfds_data_dir)!r}): " + _NOT_FOUND_HINT
      )

  if used == "folder":
    images_u8, labels = _load_folder(dir, split)
  elif used == "tfds":
    images_u8, labels = _load_tfds(tfds_data_dir, split)
  else:
    images, labels = _synthetic(split, num_examples, seed)
    images_u8 = None

  if images_u8 is not None:
    if num_examples is not None:
      images_u8, labels = images_u8[:num_examples], labels[:num_examples]
    images = images_u8.astype(np.float32) / np.float32(255.0)
  images = np.ascontiguousarray(images, dtype=np.float32)
  labels = np.ascontiguousarray(labels, dtype=np.int32)
  where = {
    "folder": f" from {dir}",
    "tfds": f" from {_tfds_data_dir(tfds_data_dir)}",
  }.get(used, "")
  logger.info("CIFAR-10 %s: %d examples, source=%s%s", split, len(labels), used, where)
  if return_source:
    return images, labels, used
  return images, labels


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------


def _augment_one(key: jax.Array, image: jnp.ndarray, padding: int) -> jnp.ndarray:
  h, w, c = image.shape
  k_y, k_x, k_flip = jax.random.split(key, 3)
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  dy = jax.random.randint(k_y, (), 0, 2 * padding + 1)
  dx = jax.random.randint(k_x, (), 0, 2 * padding + 1)
  zero = jnp.zeros((), dy.dtype)
  out = jax.lax.dynamic_slice(padded, (dy, dx, zero), (h, w, c))
  flip = jax.random.bernoulli(k_flip)
  return jnp.where(flip, out[:, ::-1, :], out)


def augment_batch(key: jax.Array, images: jnp.ndarray, *, padding: int = 4) -> jnp.ndarray:
  """Standard CIFAR augmentation: random crop with ``padding``-pixel zero padding + random
  horizontal flip.

  ``images``: (N, H, W, C) array. Every example gets its own crop offset (uniform in
  [0, 2*padding] on each axis, as torchvision's ``RandomCrop(32, padding=4)``) and a flip with
  probability 1/2, derived from ``key``; the result is deterministic for a given key. Shape and
  dtype are kept and values stay within the input range (zero padding: for images in [0, 1] the
  result is in [0, 1]). Labels are unaffected. jit-able (``padding`` is static).
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"augment_batch expects (N, H, W, C) images, got shape {images.shape}")
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: _augment_one(k, x, padding))(keys, images)
