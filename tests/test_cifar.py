"""Tests of the CIFAR-10 models (ResNet, WideResNet), loader and augmentation."""

import os
import pickle
import socket
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax.data.cifar10 import (
  DataError,
  UnsafePickleError,
  augment_batch,
  load_cifar10,
  restricted_load,
)
from atent_jax.models.cifar import (
  CIFAR10_MEAN,
  CIFAR10_STD,
  WRN34_10,
  ResNet,
  ResNet20,
  WideResNet,
  count_params,
)


def _key(seed):
  # Model tests use the 'rbg' PRNG: the model code is PRNG-agnostic and threefry's XLA compile is
  # slow on CPU.
  return jax.random.key(seed, impl="rbg")


def _images(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32))


def _init(model, n=2):
  return model.init(_key(0), _images(n), train=False)


def _jit_init(model, n=2):
  # One compiled program: much faster on CPU than op-by-op initialisation.
  return jax.jit(lambda key: model.init(key, _images(n), train=False))(_key(0))


def _train_step_stats(model, variables, x, key=1):
  """Run one (jitted) train-mode forward pass and return variables with the updated
  batch_stats."""
  _, upd = jax.jit(
    lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}, mutable=["batch_stats"])
  )(variables, x, _key(key))
  return {"params": variables["params"], "batch_stats": upd["batch_stats"]}


@pytest.fixture(scope="module")
def resnet20():
  model = ResNet20()
  variables = _jit_init(model)
  # Non-trivial running averages, so eval mode differs visibly from batch statistics.
  variables = _train_step_stats(model, variables, _images(8, seed=3))
  return model, variables


@pytest.fixture(scope="module")
def tiny_wrn():
  model = WideResNet(depth=10, widen_factor=1, dropout_rate=0.5)
  variables = _jit_init(model)
  variables = _train_step_stats(model, variables, _images(8, seed=3))
  return model, variables


# ------------------------------------------------------------------------------------------- models


def test_resnet20_forward_and_param_count(resnet20):
  model, variables = resnet20
  assert model.depth == 20 and model.width == 16
  out = model.apply(variables, _images(2), train=False)
  chex.assert_shape(out, (2, 10))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  n = count_params(variables["params"])
  # 269,722 for option-A ResNet-20 + 2,752 for the two projection shortcuts (1x1 conv + BN).
  assert n == 272_474
  assert 0.26e6 < n < 0.28e6
  # 3 stages x 3 blocks, projection shortcuts exactly at the two stage starts with a shape change.
  p = variables["params"]
  blocks = sorted(k for k in p if k.startswith("stage"))
  assert len(blocks) == 9
  assert sorted(k for k in blocks if "shortcut_conv" in p[k]) == [
    "stage2_block1",
    "stage3_block1",
  ]
  chex.assert_shape(p["stage3_block1"]["shortcut_conv"]["kernel"], (1, 1, 32, 64))


def test_resnet_depth_and_width_fields():
  v = jax.eval_shape(lambda: _init(ResNet(depth=8, width=4, num_classes=7)))
  chex.assert_shape(v["params"]["fc"]["kernel"], (16, 7))
  assert len([k for k in v["params"] if k.startswith("stage")]) == 3
  with pytest.raises(ValueError, match="6n\\+2"):
    jax.eval_shape(lambda: _init(ResNet(depth=21)))


def test_tiny_wrn_forward(tiny_wrn):
  model, variables = tiny_wrn
  out = model.apply(variables, _images(2), train=False)
  chex.assert_shape(out, (2, 10))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  p = variables["params"]
  # widths 16, 16k, 32k, 64k with k=1; 1 block per stage; 1x1 shortcut only where shape changes.
  chex.assert_shape(p["conv_stem"]["kernel"], (3, 3, 3, 16))
  assert "shortcut_conv" not in p["stage1_block1"]
  chex.assert_shape(p["stage2_block1"]["shortcut_conv"]["kernel"], (1, 1, 16, 32))
  chex.assert_shape(p["fc"]["kernel"], (64, 10))
  assert "bn_final" in p


def test_wrn34_10_param_count_via_eval_shape():
  model = WRN34_10()
  assert (model.depth, model.widen_factor) == (34, 10)
  shapes = jax.eval_shape(lambda: _init(model, n=1))
  assert isinstance(jax.tree_util.tree_leaves(shapes)[0], jax.ShapeDtypeStruct)
  n = count_params(shapes["params"])
  assert n == 46_160_474  # the TRADES WRN-34-10
  assert abs(n - 46.2e6) < 0.1e6
  chex.assert_shape(shapes["params"]["fc"]["kernel"], (640, 10))


def test_init_statistics(resnet20):
  v = resnet20[1]["params"]
  k = np.asarray(v["stage3_block2"]["conv1"]["kernel"])  # 3x3, 64 -> 64: fan_out = 9 * 64
  np.testing.assert_allclose(k.std(), np.sqrt(2.0 / (9 * 64)), rtol=0.1)
  np.testing.assert_array_equal(np.asarray(v["fc"]["bias"]), 0.0)
  assert np.abs(np.asarray(v["fc"]["kernel"])).max() <= 1.0 / np.sqrt(64) + 1e-6


@pytest.mark.parametrize("which", ["resnet20", "tiny_wrn"])
def test_eval_deterministic_and_per_example(which, request):
  model, variables = request.getfixturevalue(which)
  x = _images(4, seed=5)
  out4 = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(
    np.asarray(out4), np.asarray(model.apply(variables, x, train=False))
  )
  # Different dropout keys do not matter in eval mode.
  out_rng = model.apply(variables, x, train=False, rngs={"dropout": _key(42)})
  np.testing.assert_array_equal(np.asarray(out4), np.asarray(out_rng))
  # Batch of 1, and per example under vmap (as the sampler / attacks use it), equal the batch-of-4
  # outputs.
  for i in range(4):
    out1 = model.apply(variables, x[i : i + 1], train=False)
    chex.assert_shape(out1, (1, 10))
    np.testing.assert_allclose(np.asarray(out1[0]), np.asarray(out4[i]), rtol=1e-5, atol=1e-5)
  per_ex = jax.vmap(lambda xi: model.apply(variables, xi[None], train=False)[0])(x)
  np.testing.assert_allclose(np.asarray(per_ex), np.asarray(out4), rtol=1e-5, atol=1e-5)
  # Eval uses the running averages: the result differs from what batch statistics would give.
  out_train, _ = model.apply(
    variables, x, train=True, rngs={"dropout": _key(0)}, mutable=["batch_stats"]
  )
  assert not np.allclose(np.asarray(out_train), np.asarray(out4), atol=1e-3)


@pytest.mark.parametrize("which", ["resnet20", "tiny_wrn"])
def test_train_updates_batch_stats_eval_does_not(which, request):
  model, variables = request.getfixturevalue(which)
  x = _images(4, seed=7)
  _, upd = model.apply(variables, x, train=True, rngs={"dropout": _key(0)}, mutable=["batch_stats"])
  old, new = variables["batch_stats"], upd["batch_stats"]
  chex.assert_trees_all_equal_shapes(old, new)
  changed = jax.tree_util.tree_map(
    lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), old, new
  )
  assert all(jax.tree_util.tree_leaves(changed))
  _, eval_upd = model.apply(variables, x, train=False, mutable=["batch_stats"])
  chex.assert_trees_all_equal(eval_upd["batch_stats"], old)


def test_batchnorm_momentum(resnet20):
  model, variables = resnet20
  x = _images(3, seed=11)
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  # Stem BN sees conv_stem(normalized x): new running mean = 0.9 * old + 0.1 * batch mean.
  xn = (x - jnp.asarray(CIFAR10_MEAN)) / jnp.asarray(CIFAR10_STD)
  conv = jax.lax.conv_general_dilated(
    xn,
    variables["params"]["conv_stem"]["kernel"],
    (1, 1),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  np.testing.assert_allclose(
    np.asarray(upd["batch_stats"]["bn_stem"]["mean"]),
    0.9 * np.asarray(variables["batch_stats"]["bn_stem"]["mean"])
    + 0.1 * np.asarray(conv.mean(axis=(0, 1, 2))),
    atol=1e-5,
  )


def test_dropout_only_in_train_mode(tiny_wrn):
  model, variables = tiny_wrn
  x = _images(2, seed=9)

  def train_out(seed):
    out, _ = model.apply(
      variables, x, train=True, rngs={"dropout": _key(seed)}, mutable=["batch_stats"]
    )
    return np.asarray(out)

  np.testing.assert_array_equal(train_out(1), train_out(1))
  assert not np.allclose(train_out(1), train_out(2))
  # Without dropout, train mode does not depend on the dropout key (and needs none).
  no_drop = WideResNet(depth=10, widen_factor=1, dropout_rate=0.0)
  out_a, _ = no_drop.apply(variables, x, train=True, mutable=["batch_stats"])
  out_b, _ = no_drop.apply(
    variables, x, train=True, rngs={"dropout": _key(5)}, mutable=["batch_stats"]
  )
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


# ------------------------------------------------------------------------------------- augmentation


def test_augment_batch():
  images, labels = load_cifar10(source="synthetic", split="train", num_examples=16, seed=1)
  labels_before = labels.copy()
  key = jax.random.key(0)
  aug_fn = jax.jit(augment_batch)
  out = aug_fn(key, images)
  chex.assert_shape(out, images.shape)
  chex.assert_type(out, jnp.float32)
  out = np.asarray(out)
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(labels, labels_before)
  # Deterministic for a key (and jit / no-jit agree), different for another key.
  np.testing.assert_array_equal(out, np.asarray(aug_fn(key, images)))
  np.testing.assert_array_equal(out, np.asarray(augment_batch(key, images)))
  assert not np.array_equal(out, np.asarray(aug_fn(jax.random.key(1), images)))
  # It changes images, with per-example randomness (not one transform for the whole batch).
  changed = [not np.array_equal(out[i], images[i]) for i in range(len(images))]
  assert sum(changed) >= 8
  # Every output is a shifted (+ possibly flipped) copy of its input with zero padding.
  for i in range(4):
    padded = np.pad(images[i], ((4, 4), (4, 4), (0, 0)))
    found = False
    for dy in range(9):
      for dx in range(9):
        crop = padded[dy : dy + 32, dx : dx + 32]
        if np.array_equal(out[i], crop) or np.array_equal(out[i], crop[:, ::-1]):
          found = True
    assert found, i


def test_augment_batch_distribution():
  # Flip probability ~1/2 and offsets cover [0, 8]: a column index ramp reveals both.
  ramp = np.broadcast_to(
    np.arange(1, 33, dtype=np.float32)[None, None, :, None] / 32.0, (256, 32, 32, 1)
  )
  out = np.asarray(augment_batch(jax.random.key(3), ramp))
  row = out[:, 16, :, 0]
  flipped = row[:, 20] < row[:, 10]
  assert 0.35 < flipped.mean() < 0.65
  # Horizontal shift of the unflipped crops: out column 0 shows original column dx - 4
  # (zero if dx < 4).
  shifts = set()
  for r in row[~flipped]:
    first = int(np.argmax(r > 0))
    shifts.add(4 - first if first > 0 else 3 + int(round(r[0] * 32)))
  assert shifts == set(range(9))


# ------------------------------------------------------------------------------------------ loading


def _pattern(n, offset):
  """uint8 (n, 3072) rows in CHW order with value (offset + 7n + 50c + 3h + w) % 256."""
  idx_n, idx_c, idx_h, idx_w = np.meshgrid(
    np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
  )
  chw = (offset + 7 * idx_n + 50 * idx_c + 3 * idx_h + idx_w) % 256
  return chw.reshape(n, 3072).astype(np.uint8)


def _write_fake_cifar(folder, per_batch=3, protocol=2):
  os.makedirs(folder, exist_ok=True)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for b, name in enumerate(names):
    d = {
      b"batch_label": f"fake batch {b}".encode(),
      b"labels": [(b + j) % 10 for j in range(per_batch)],
      b"data": _pattern(per_batch, offset=11 * b),
      b"filenames": [f"img_{b}_{j}.png".encode() for j in range(per_batch)],
    }
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump(d, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_folder_loader_reads_fake_cifar(tmp_path, protocol):
  _write_fake_cifar(tmp_path / "cifar-10-batches-py", per_batch=3, protocol=protocol)
  images, labels = load_cifar10(source="folder", dir=str(tmp_path), split="train")
  chex.assert_shape(images, (15, 32, 32, 3))
  assert images.dtype == np.float32 and labels.dtype == np.int32
  assert images.min() >= 0.0 and images.max() <= 1.0
  np.testing.assert_array_equal(labels, [(b + j) % 10 for b in range(5) for j in range(3)])
  # HWC ordering: pixel (h, w, c) of example j of batch b is
  # (11b + 7j + 50c + 3h + w) % 256 / 255.
  for b, j, h, w, c in [(0, 0, 0, 0, 0), (1, 2, 5, 9, 2), (4, 1, 31, 0, 1), (2, 0, 3, 30, 2)]:
    expected = (11 * b + 7 * j + 50 * c + 3 * h + w) % 256 / 255.0
    assert images[3 * b + j, h, w, c] == pytest.approx(expected, abs=1e-7), (b, j, h, w, c)
  x, y, used = load_cifar10(source="auto", dir=tmp_path, split="test", return_source=True)
  assert used == "folder"
  chex.assert_shape(x, (3, 32, 32, 3))
  np.testing.assert_array_equal(y, [5, 6, 7])
  assert x[1, 2, 3, 1] == pytest.approx((55 + 7 + 50 + 6 + 3) / 255.0)
  # num_examples keeps the first examples.
  x2, y2 = load_cifar10(
    source="folder", dir=tmp_path / "cifar-10-batches-py", split="train", num_examples=4
  )
  np.testing.assert_array_equal(x2, images[:4])
  np.testing.assert_array_equal(y2, labels[:4])


def test_folder_loader_missing_files(tmp_path):
  with pytest.raises(DataError, match="config.data.dir"):
    load_cifar10(source="folder", dir=tmp_path, split="train")


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
  def __reduce__(self):
    return (eval, ("__import__('os').getcwd()",))


def test_restricted_unpickler_refuses_malicious_pickle(tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({b"data": _Evil(str(marker)), b"labels": [0]}, protocol=2)
  with pytest.raises(UnsafePickleError, match="system"):
    restricted_load(payload)
  assert not marker.exists()
  with pytest.raises(pickle.UnpicklingError, match="eval"):
    restricted_load(pickle.dumps(_EvalEvil()))
  # Through the loader: a tampered batch in an otherwise valid folder.
  _write_fake_cifar(tmp_path / "data", per_batch=2)
  with open(tmp_path / "data" / "data_batch_3", "wb") as f:
    f.write(payload)
  with pytest.raises(DataError, match="refusing"):
    load_cifar10(source="folder", dir=tmp_path / "data", split="train")
  assert not marker.exists()
  # A genuine-format payload still loads.
  ok = restricted_load(
    pickle.dumps({b"data": np.arange(4, dtype=np.uint8), b"labels": [1, 2]}, protocol=2)
  )
  np.testing.assert_array_equal(ok[b"data"], np.arange(4))


def test_auto_without_data_raises_quickly(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("network access attempted")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_env"))
  (tmp_path / "empty").mkdir()
  for kwargs in [dict(dir=tmp_path / "empty", tfds_data_dir=tmp_path / "tfds"), dict()]:
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
      load_cifar10(source="auto", split="train", **kwargs)
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert "config.data.dir" in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)
  with pytest.raises(DataError, match="not prepared"):
    load_cifar10(source="tfds", tfds_data_dir=tmp_path / "tfds")


def test_tfds_source_glue(tmp_path, monkeypatch):
  """The TFDS branch with a stubbed TFDS (a real prepared cifar10 cannot be built offline
  here)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
  (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
  rng = np.random.default_rng(0)
  records = [
    {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": np.int64(i % 10)}
    for i in range(5)
  ]

  class _Info:
    file_format = "FileFormat.ARRAY_RECORD"  # compared lower-cased as a string

  class _Builder:
    info = _Info()

    def is_prepared(self):
      return True

  calls = {}

  def fake_data_source(name, split, data_dir, download):
    calls.update(name=name, split=split, data_dir=data_dir, download=download)
    return records

  monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None, **kw: _Builder())
  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  x, y, used = load_cifar10(source="auto", tfds_data_dir=tmp_path, split="test", return_source=True)
  assert used == "tfds"
  assert calls == dict(name="cifar10", split="test", data_dir=str(tmp_path), download=False)
  np.testing.assert_array_equal(y, np.arange(5) % 10)
  np.testing.assert_allclose(x[3], records[3]["image"] / 255.0, atol=1e-7)
  assert x.dtype == np.float32 and y.dtype == np.int32


def test_synthetic_source():
  x, y, used = load_cifar10(
    source="synthetic", split="test", num_examples=32, seed=3, return_source=True
  )
  assert used == "synthetic"
  chex.assert_shape(x, (32, 32, 32, 3))
  assert x.dtype == np.float32 and y.dtype == np.int32
  assert x.min() >= 0.0 and x.max() <= 1.0 and y.min() >= 0 and y.max() < 10
  x2, y2 = load_cifar10(source="synthetic", split="test", num_examples=32, seed=3)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  xt, _ = load_cifar10(source="synthetic", split="train", num_examples=32, seed=3)
  assert not np.array_equal(x, xt)
  with pytest.raises(ValueError, match="split"):
    load_cifar10(source="synthetic", split="validation")
