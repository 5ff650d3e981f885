"""CIFAR-10 training: the paper's configs at reduced size, augmentation inside the step (and
exact resume with it), batch norm in eval mode during evaluation, the per-host sharding
arithmetic of multi-host runs, and mixed precision.

Small shapes throughout (synthetic CIFAR-10-shaped data, ResNet depth 8 width 16 / WRN depth 10
widen 1, K 2), in-process. Both nets then have the same parameter shapes, so the eager
initialisation's per-shape compilations (threefry normals, seconds each on CPU) are shared.
"""

import importlib.util
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from determinism import assert_same_metrics, assert_same_params

from atent_jax import distributed, methods, models, train
from atent_jax.configuration import default_config, validate_config
from atent_jax.data import load_dataset
from atent_jax.data.cifar10 import augment_batch
from atent_jax.errors import ConfigError

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "configs")

CIFAR_CONFIGS = [
    "cifar10_linf_wrn.py", "cifar10_linf_wrn.py:pgd_at", "cifar10_linf_wrn.py:trades",
    "cifar10_linf_wrn.py:finetune", "cifar10_l2_resnet20.py", "cifar10_l2_resnet20.py:pgd_at",
    "cifar10_l2_resnet20.py:trades", "cifar10_smoothing.py:atent_l2",
    "cifar10_smoothing.py:noise_aug",
]


def _load(name, arg=None):
  """The config of experiments/configs/NAME ('cifar10_l2_resnet20.py:trades'), or of FILE:ARG."""
  file, _, own_arg = name.partition(":")
  arg = ",".join(a for a in (own_arg, arg) if a)
  spec = importlib.util.spec_from_file_location(f"cfg_{file[:-3]}", os.path.join(_CONFIGS, file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _shrink(config, n=40, batch=16):
  """The reduced size of the tests: tiny nets, n synthetic images (n - 8 = 32 train: 2 steps of
  16 an epoch), one epoch, K 2."""
  config.data.source = "synthetic"
  config.data.synthetic_examples = n
  config.data.num_validation = min(config.data.num_validation, 8)
  config.model.depth = 10 if config.model.name == "wide_resnet" else 8
  config.model.widen_factor = 1
  config.model.width = 16  # ResNet-8's parameter shapes are then WRN-10-1's
  config.train.num_epochs = 1
  config.train.batch_size = batch
  config.train.progress_bar = False
  config.sampler.num_steps = 2
  config.sampler.unroll = 0
  config.eval.num_steps = 1
  config.eval.num_examples = 8
  config.eval.batch_size = 8
  return config


# ---------------------------------------------------------------------------------- the configs

@pytest.mark.parametrize("name", CIFAR_CONFIGS)
def test_config_valid(name):
  config = _load(name)
  if config.method not in methods.METHODS:
    pytest.skip(f"method {config.method!r} is not registered yet")
  validate_config(config)
  assert config.data.dataset == "cifar10" and config.data.augment
  assert config.data.eval_split == "validation" and config.early_stopping


def test_config_values():
  wrn = _load("cifar10_linf_wrn.py", "paper")  # the paper's text; the `code` variant decays at 74
  assert (wrn.model.depth, wrn.model.widen_factor, wrn.train.batch_size) == (34, 10, 128)
  assert (wrn.train.num_epochs, tuple(wrn.train.lr_decay_epochs)) == (76, (75,))
  assert (wrn.sampler.step_size, wrn.sampler.num_steps, wrn.eval.num_steps) == (0.007, 10, 20)
  assert wrn.eval.step_size == 0.003 and not wrn.eval.random_init
  eps1 = _load("cifar10_l2_resnet20.py", "paper,eps1")  # `code`: gamma 0.05, step 0.5 * eps / K
  assert (eps1.sampler.eps, eps1.sampler.gamma, eps1.sampler.step_size) == (1.0, 0.08, 0.2)
  half = _load("cifar10_l2_resnet20.py")
  assert (half.sampler.eps, half.sampler.gamma, half.train.batch_size) == (0.5, 0.05, 256)
  smooth = _load("cifar10_smoothing.py:atent_l2")
  assert abs(np.sqrt(2 * smooth.sampler.step_size) * smooth.sampler.noise_scale - 0.12) < 1e-9
  assert smooth.sampler.eps == 0.435
  fine = _load("cifar10_linf_wrn.py:finetune")
  assert (fine.train.learning_rate, fine.train.num_epochs) == (1e-4, 20)


_CORE = ("cifar10_linf_wrn.py", "cifar10_l2_resnet20.py")
# Trained end to end: each method/network pair of the configs once: ATENT-l_inf on the WRN,
# l_2-ATENT on the ResNet, and TRADES (its KL inner maximisation through batch norm). The
# other rows change only the method, which the MNIST tests train; every row is built and
# validated by test_config_valid. cifar10_smoothing.py:atent_l2 is cifar10_l2_resnet20.py's
# config (it loads it) with other sampler/evaluation numbers: the same program as the ResNet
# row, so it is not trained a second time (its numbers: test_config_values).
END_TO_END = [*_CORE, "cifar10_linf_wrn.py:trades"]


@pytest.mark.parametrize("name", [n if n in _CORE else pytest.param(n, marks=pytest.mark.slow)
                                  for n in END_TO_END])
def test_config_runs_end_to_end(tmp_path, name):
  config = _shrink(_load(name))
  if config.method not in methods.METHODS:
    pytest.skip(f"method {config.method!r} is not registered yet")
  workdir = tmp_path / name.replace(":", "_")
  out = train.train_and_evaluate(config, str(workdir))
  assert np.isfinite(out["train_loss"]) and out["eval_split"] == "validation"
  assert 0 <= out["robust_accuracy"] <= out["clean_accuracy"] + 1e-9 <= 1 + 1e-9
  assert os.path.isdir(workdir / "best")


# ---------------------------------------------------------------------------------- augmentation

def _sgd_resnet(**changes):
  config = _shrink(_load("cifar10_l2_resnet20.py"), n=64)
  config.method = "sgd"
  config.eval.num_examples = 8
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def resnet_setup():
  """A tiny ResNet trained by SGD with augmentation on: its state, data and jitted steps (with
  and without augmentation), shared by the tests below (one compilation each)."""
  config = _sgd_resnet()
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 4)
  state = train.init_state(config, model, tx, (32, 32, 3))
  ds = load_dataset(config.data)
  x, y = ds.train_images[:16], ds.train_labels[:16]
  with_aug = jax.jit(train.make_train_step(config, model, tx))
  without = jax.jit(train.make_train_step(_sgd_resnet(**{"data.augment": False}), model, tx))
  return dict(config=config, model=model, tx=tx, state=state, ds=ds, x=x, y=y,
              with_aug=with_aug, without=without)


def test_augmentation_inside_the_step_is_a_function_of_seed_and_step(resnet_setup):
  r = resnet_setup
  config, x, y = r["config"], r["x"], r["y"]
  state = r["state"].replace(step=jnp.asarray(5, jnp.int32))
  key = jax.random.PRNGKey(1)
  # The step augments with the key fold_in(PRNGKey(seed + 3), step), inside the jitted step.
  x_aug = augment_batch(jax.random.fold_in(jax.random.PRNGKey(config.seed + 3), 5), x)
  assert not np.allclose(np.asarray(x_aug), x)
  a, ma = r["with_aug"](state, x, y, key)
  b, mb = r["without"](state, x_aug, y, key)
  chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
  _, mc = r["without"](state, x, y, key)
  assert abs(float(mc["loss"]) - float(ma["loss"])) > 1e-6
  # Another step, another crop/flip.
  _, md = r["with_aug"](state.replace(step=jnp.asarray(6, jnp.int32)), x, y, key)
  assert float(md["loss"]) != float(ma["loss"])


def test_resume_with_augmentation_is_exact(tmp_path):
  """Augmentation on: resuming from a mid-epoch checkpoint gives the parameters, metrics and
  best checkpoint of the uninterrupted run (end-of-epoch resume: tests/test_train.py)."""
  # The ResNet row of test_config_runs_end_to_end (l_2-ATENT: the step's Langevin noise, as
  # well as its crop + flip, must be resumed), at its size: its programs come from the
  # compilation cache. 40 images - 8 held out = 32: 2 steps of 16 an epoch; a checkpoint every
  # step (mid-epoch: the odd ones) and at the end of each epoch.
  config = _shrink(_load("cifar10_l2_resnet20.py"))
  config.train.num_epochs = 2
  config.train.checkpoint_every_steps = 1
  config.train.keep_checkpoints = 5
  assert config.data.augment and config.method == "atent_l2"
  full = str(tmp_path / "full")
  train.train_and_evaluate(config, full)
  assert _steps(full) == [1, 2, 3, 4]
  # As if killed after the mid-epoch checkpoint at step 3 was saved (before step 4's):
  # resuming re-runs step 4 with the same crop, flip and sampler noise.
  part = str(tmp_path / "part")
  shutil.copytree(full, part)
  shutil.rmtree(os.path.join(part, "checkpoints", "4"))
  train.train_and_evaluate(config, part)
  assert_same_params(_latest(full), _latest(part))
  assert_same_metrics(_metrics(full), _metrics(part))
  with open(os.path.join(full, "best", "metrics.json")) as f, \
       open(os.path.join(part, "best", "metrics.json")) as g:
    assert_same_metrics(_drop_times(json.load(f)), _drop_times(json.load(g)))


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


_TIME_KEYS = ("epoch_train_seconds", "eval_seconds", "wall_time")


def _drop_times(record):
  return {k: v for k, v in record.items() if k not in _TIME_KEYS}


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [_drop_times(json.loads(line)) for line in f if line.strip()]


def _latest(workdir):
  from atent_jax import runs
  return runs.load_run(workdir, "latest")[2]


# ------------------------------------------------------------------- batch norm during evaluation

def test_evaluation_keeps_batch_stats_and_is_per_example(resnet_setup):
  r = resnet_setup
  config, model, state, ds = r["config"], r["model"], r["state"], r["ds"]
  config = _sgd_resnet(**{"eval.random_init": False, "eval.num_steps": 2})
  # Two train steps: running statistics away from their initial values.
  for _ in range(2):
    state, _ = r["with_aug"](state, r["x"], r["y"], jax.random.PRNGKey(0))
  before = jax.tree_util.tree_map(np.array, state.batch_stats)
  init = jax.tree_util.tree_map(np.array, r["state"].batch_stats)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                        jax.tree_util.tree_leaves(init)))
  eval_step = jax.jit(train.make_eval_step(config, model))
  key = jax.random.PRNGKey(2)
  big = train.evaluate(eval_step, state, ds.eval_images[:16], ds.eval_labels[:16], 16, key)
  chex.assert_trees_all_equal(before, jax.tree_util.tree_map(np.array, state.batch_stats))
  # The attack sees the model in eval mode, which is per example: batches of 16 and of 5
  # (padded) give the same counts; train-mode batch statistics would not.
  small = train.evaluate(eval_step, state, ds.eval_images[:16], ds.eval_labels[:16], 5, key)
  assert big == small


# ------------------------------------------------------------------ multi-host sharding arithmetic

@pytest.mark.parametrize("processes", [1, 2, 4, 8])
def test_host_rows_partition_every_global_batch(processes):
  batch, n = 32, 200
  order = np.random.default_rng([0, 3]).permutation(n)
  for step in range(n // batch):
    parts = [distributed.host_batch_indices(order, step, batch, p, processes)
             for p in range(processes)]
    assert all(len(p) == batch // processes for p in parts)
    # Process p's rows are the p-th contiguous slice; together, the global batch in order.
    np.testing.assert_array_equal(np.concatenate(parts), order[step * batch:(step + 1) * batch])
  rows = [distributed.host_rows(batch, p, processes) for p in range(processes)]
  assert rows[0].start == 0 and rows[-1].stop == batch
  assert all(a.stop == b.start for a, b in zip(rows, rows[1:]))


def test_host_rows_errors():
  with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
    distributed.host_rows(32, 0, 3)
  with pytest.raises(ValueError):
    distributed.host_rows(32, 2, 2)


def test_single_process_paths_are_the_plain_ones():
  assert jax.process_count() == 1 and distributed.is_primary()
  assert list(distributed.mesh_devices()) == jax.devices()
  mesh = train.data_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = np.arange(4 * len(jax.devices()) * 3, dtype=np.float32).reshape(-1, 3)
  # This process's rows (all of them) make the global array.
  glob = distributed.global_batch(x[distributed.host_rows(len(x), 0, 1)], sharding, len(x))
  np.testing.assert_array_equal(np.asarray(glob), x)


def test_initialize_only_when_asked(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "SLURM_STEP_ID",
               "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  d = default_config().distributed
  assert not distributed.wants_initialize(d)
  assert distributed.initialize(default_config()) is False  # single process: nothing happens
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert not distributed.wants_initialize(d)  # the sbatch script itself
  monkeypatch.setenv("SLURM_STEP_ID", "0")
  assert distributed.wants_initialize(d)       # a task started by srun
  d.initialize = "never"
  assert not distributed.wants_initialize(d)
  monkeypatch.delenv("SLURM_NTASKS")
  d.initialize = "auto"
  d.coordinator_address = "10.0.0.1:1234"
  assert distributed.wants_initialize(d)


@pytest.mark.parametrize("key,value,words", [
    ("distributed.initialize", "sometimes", "use one of"),
    ("distributed.coordinator_address", "10.0.0.1", "host:port"),
    ("distributed.num_processes", -1, "out of range"),
    ("distributed.local_device_ids", "0;1", "separated by commas"),
])
def test_bad_distributed_and_precision_config(key, value, words):
  config = default_config()
  group, leaf = key.split(".")
  config[group][leaf] = value
  with pytest.raises(ConfigError, match=words):
    validate_config(config)


def test_process_id_out_of_range():
  config = default_config()
  config.distributed.num_processes = 2
  config.distributed.process_id = 2
  with pytest.raises(ConfigError, match="process_id=2 is out of range"):
    validate_config(config)


# ---------------------------------------------------------------------------------- mixed precision

def test_mixed_precision_off_is_the_float32_step(resnet_setup):
  r = resnet_setup
  config, model, tx, state, x, y = (r[k] for k in ("config", "model", "tx", "state", "x", "y"))
  assert not config.train.mixed_precision
  key = jax.random.PRNGKey(0)
  new, m = r["without"](state, x, y, key)
  # The reference: the method's gradient on the plain model, one optimizer update.
  import optax
  grad_fn = methods.make_grad_fn(config, model)

  def reference(state):
    loss, grads, _, _ = grad_fn(state.params, state.batch_stats, x, y, jax.random.fold_in(key, 0))
    updates, _ = tx.update(grads, state.opt_state, state.params)
    return loss, optax.apply_updates(state.params, updates)

  loss, params = jax.jit(reference)(state)
  chex.assert_trees_all_close(new.params, params, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(m["loss"]), float(loss), rtol=1e-6)
  assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(new.params))


def test_mixed_precision_on_runs_in_bfloat16_with_float32_state(resnet_setup):
  r = resnet_setup
  model, tx, state, x, y = (r[k] for k in ("model", "tx", "state", "x", "y"))
  config = _sgd_resnet(**{"train.mixed_precision": True, "data.augment": False})
  step = train.make_train_step(config, model, tx)
  key = jax.random.PRNGKey(0)
  lowered = jax.jit(step).lower(state, x, y, key)
  assert "bf16" in lowered.as_text()  # convolutions in bfloat16
  new, m = lowered.compile()(state, x, y, key)
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
  for tree in (new.params, new.batch_stats, new.opt_state):
    assert all(a.dtype in (jnp.float32, jnp.int32) for a in jax.tree_util.tree_leaves(tree))
  # Close to the float32 step (bfloat16 keeps ~3 significant digits).
  _, m32 = r["without"](state, x, y, key)
  assert abs(float(m["loss"]) - float(m32["loss"])) < 0.05 * abs(float(m32["loss"]))
  # The wrapped model returns float32 logits close to the float32 model's.
  mp = train.MixedPrecisionModel(model)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = mp.apply(variables, x[:2], train=False)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, model.apply(variables, x[:2], train=False), atol=0.1)
