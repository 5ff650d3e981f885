"""Datasets as in-memory arrays: images float32 NHWC in [0, 1], labels int32.

`load_dataset(config.data)` picks the source without any network attempt (offline, TFDS retries
a download for minutes): a local folder when `config.data.dir` is set, else a prepared TFDS
dataset when one is present, else (MNIST) the built-in sample shipped with a dependency.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from atent_jax.data import mnist as mnist_lib
from atent_jax.errors import DataError

SOURCES = ("auto", "idx", "folder", "tfds", "builtin", "synthetic")
DATASETS = {"mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10)}


@dataclasses.dataclass
class Dataset:
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_images: np.ndarray       # the split metrics and evaluations report on
  eval_labels: np.ndarray
  eval_split: str               # 'test' or 'validation'
  source: str                   # a sentence saying where the data came from
  validation_images: np.ndarray | None = None
  validation_labels: np.ndarray | None = None
  test_images: np.ndarray | None = None
  test_labels: np.ndarray | None = None

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of 'test' (the whole test set), 'validation' or 'eval'."""
    if name == "eval":
      return self.eval_images, self.eval_labels
    if name == "test":
      return self.test_images, self.test_labels
    if name == "validation" and self.validation_labels is not None:
      return self.validation_images, self.validation_labels
    raise DataError(f"split {name!r} is not available: use 'test', or 'validation' with "
                    "config.data.num_validation > 0")

  @property
  def num_classes(self) -> int:
    return 10

  def describe(self) -> str:
    n_val = 0 if self.validation_labels is None else len(self.validation_labels)
    return (f"{self.source}; {len(self.train_labels)} train, {n_val} validation, "
            f"{len(self.eval_labels)} {self.eval_split} images")


def check_images(images, name: str = "images", shape: tuple | None = None) -> np.ndarray:
  """Validates a user-supplied image batch: NHWC, finite, in [0, 1]."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise DataError(f"{name} has shape {images.shape}: pass a batch of NHWC images (N, H, W, C)")
  if shape is not None and tuple(images.shape[1:]) != tuple(shape):
    hint = " (channels first? transpose to NHWC)" if tuple(images.shape[1:]) == (
        shape[2], shape[0], shape[1]) else ""
    raise DataError(f"{name} has shape {images.shape[1:]} per image, the model expects "
                    f"{tuple(shape)}{hint}")
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{name} has dtype {images.dtype}: pass float images scaled to [0, 1] "
                    "(divide uint8 pixels by 255)")
  if not np.all(np.isfinite(images)):
    raise DataError(f"{name} holds NaN or Inf values: clean the data")
  lo, hi = float(images.min(initial=0.0)), float(images.max(initial=0.0))
  if lo < 0.0 or hi > 1.0:
    hint = " (0-255 pixels? divide by 255)" if hi > 1.0 else ""
    raise DataError(f"{name} has values in [{lo:g}, {hi:g}], outside [0, 1]{hint}: pixels must be "
                    "in [0, 1], with any normalisation inside the model")
  return images


def check_labels(labels, num_examples: int, num_classes: int, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (num_examples,):
    raise DataError(f"{name} has shape {labels.shape}, expected ({num_examples},)")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"{name} hold values in [{labels.min()}, {labels.max()}], outside "
                    f"[0, {num_classes - 1}]: use integer class ids")
  return labels.astype(np.int32)


def _to_float(images: np.ndarray) -> np.ndarray:
  return (images.astype(np.float32) / 255.0) if images.dtype == np.uint8 else images.astype(
      np.float32)


def _load_raw(data_config, split: str):
  """Returns (uint8 or float images, labels, source sentence) for one split."""
  name = data_config.get("dataset", "mnist")
  source = data_config.get("source", "auto")
  directory = data_config.get("dir", "") or ""
  tfds_dir = data_config.get("tfds_data_dir", "") or None
  if name not in DATASETS:
    raise DataError(f"config.data.dataset={name!r} is not known: use one of "
                    f"{', '.join(DATASETS)}")
  if source not in SOURCES:
    raise DataError(f"config.data.source={source!r} is not known: use one of "
                    f"{', '.join(SOURCES)}")
  if name == "cifar10":
    from atent_jax.data import cifar10
    if source == "synthetic":
      n = data_config.get("synthetic_examples", 512)
      images, labels = cifar10.load_cifar10(source="synthetic", split=split, num_examples=n)
      return images, labels, f"synthetic CIFAR-10-shaped data ({n} random images per split)"
    src = {"idx": "folder"}.get(source, source)
    images, labels, used = cifar10.load_cifar10(source=src, dir=directory or None,
                                                tfds_data_dir=tfds_dir, split=split,
                                                return_source=True)
    return images, labels, f"CIFAR-10 from {used}" + (f" ({directory})" if directory else "")
  # MNIST
  if source == "auto":
    if directory:
      source = "idx"
    elif mnist_lib.tfds_prepared(tfds_dir):
      source = "tfds"
    else:
      source = "builtin"
  if source in ("idx", "folder"):
    images, labels = mnist_lib.load_idx_folder(directory, split)
    return images, labels, f"MNIST IDX files in {directory}"
  if source == "tfds":
    images, labels = mnist_lib.load_tfds(split, tfds_dir)
    return images, labels, "TFDS mnist (prepared locally)"
  if source == "synthetic":
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = data_config.get("synthetic_examples", 512)
    return (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int32), f"synthetic MNIST-shaped data ({n} images)")
  images, labels = mnist_lib.load_builtin(split)
  return images, labels, "MNIST " + mnist_lib.BUILTIN_DESCRIPTION


def load_dataset(data_config) -> Dataset:
  """Loads train (minus a held-out validation split) and the evaluation split."""
  shape, num_classes = DATASETS.get(data_config.get("dataset", "mnist"), ((28, 28, 1), 10))
  train_x, train_y, source = _load_raw(data_config, "train")
  test_x, test_y, _ = _load_raw(data_config, "test")
  for y, split in ((train_y, "train"), (test_y, "test")):
    if len(y) == 0:
      raise DataError(f"the {split} split of {source} is empty: check config.data")
    check_labels(y, len(y), num_classes, name=f"{split} labels")
  train_x, test_x = _to_float(train_x), _to_float(test_x)
  check_images(train_x, "train images", shape)
  check_images(test_x, "test images", shape)

  num_train = data_config.get("num_train", -1)
  num_val = data_config.get("num_validation", 0)
  if num_val >= len(train_y):
    raise DataError(f"config.data.num_validation={num_val} leaves no training images "
                    f"(there are {len(train_y)}): lower it")
  # A fixed-seed permutation decides which training images are held out for validation.
  order = np.random.default_rng(12345).permutation(len(train_y))
  val_idx, train_idx = order[:num_val], np.sort(order[num_val:])
  val_x, val_y = (train_x[val_idx], train_y[val_idx]) if num_val else (None, None)
  train_x, train_y = train_x[train_idx], train_y[train_idx]
  if num_train and num_train > 0:
    train_x, train_y = train_x[:num_train], train_y[:num_train]

  eval_split = data_config.get("eval_split", "test")
  if eval_split == "validation":
    if val_x is None:
      raise DataError("config.data.eval_split='validation' needs config.data.num_validation > 0")
    eval_x, eval_y = val_x, val_y
  elif eval_split == "test":
    eval_x, eval_y = test_x, test_y
  else:
    raise DataError(f"config.data.eval_split={eval_split!r} is not valid: use 'test' or "
                    "'validation'")
  num_eval = data_config.get("num_eval", -1)
  if num_eval and num_eval > 0:
    eval_x, eval_y = eval_x[:num_eval], eval_y[:num_eval]
  return Dataset(train_x, train_y, eval_x, eval_y, eval_split, source, val_x, val_y, test_x,
                 test_y)
