"""The training loop: small pure train/eval steps, and `train_and_evaluate(config, workdir)`.

A run writes into its workdir: `config.json` (the resolved config), `run_info.json` (data source,
devices, versions), `metrics.jsonl` (one JSON object per epoch), `checkpoints/` (the latest
few, orbax) and `best/` (the epoch with the best robust accuracy on the evaluation split, or
the best clean accuracy with config.early_stopping_metric='clean_accuracy').
Started again on the same workdir, it resumes from the last checkpoint exactly: the data order
is a function of (seed, epoch) and the step's randomness (the method's and, with
config.data.augment, the random crop + flip done inside the jitted step) of (seed, step).

Scale-out: one jitted step over a 1-D 'data' mesh of all devices (`jit` + `NamedSharding`, see
`data_mesh`); several hosts run one process each (atent_jax.distributed: jax.distributed is
initialised from config.distributed, each process reads its slice of every global batch, only
process 0 writes config/metrics files, all processes take part in orbax checkpoints).
config.train.mixed_precision runs the step's convolutions and matmuls in bfloat16 (float32
parameters, optimizer, losses and evaluation; see `MixedPrecisionModel`).

Faults: config, data and workdir are checked before anything is written; WORKDIR/.lock keeps a
second run out; a run killed at any point resumes bit-identically (on CPU); a corrupt latest
checkpoint is skipped with a warning; a NaN/Inf stops the run naming the step and quantity, with
the saves in flight completed (see atent_jax.checkpoint, atent_jax.workdir).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from atent_jax import attacks, distributed, methods, models, plots
from atent_jax import checkpoint as ckpt_lib
from atent_jax import workdir as workdir_lib
from atent_jax.configuration import check_devices, default_config, flatten_config, validate_config
from atent_jax.data import DATASETS, Dataset, check_images, check_labels, load_dataset
from atent_jax.errors import CheckpointError, ConfigError, DataError, NonFiniteError, warn
from atent_jax.metrics import robust_correct


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Sums over the current epoch's steps, kept in the state so a resumed epoch reports exactly.
  loss_sum: jax.Array
  accuracy_sum: jax.Array

  def to_dict(self) -> dict:
    return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state, "loss_sum": self.loss_sum,
            "accuracy_sum": self.accuracy_sum}


def make_optimizer(config, steps_per_epoch: int):
  """SGD with momentum, PyTorch-style weight decay (added to the gradient) and a step schedule."""
  t = config.train
  boundaries = {int(round(e * steps_per_epoch)): t.lr_decay_factor for e in t.lr_decay_epochs}
  schedule = optax.piecewise_constant_schedule(t.learning_rate, boundaries)
  tx = optax.chain(optax.add_decayed_weights(t.weight_decay),
                   optax.sgd(schedule, momentum=t.momentum or None, nesterov=t.nesterov))
  return tx, schedule


def init_state(config, model, tx, input_shape) -> TrainState:
  key = jax.random.PRNGKey(config.seed)
  variables = model.init({"params": key, "dropout": key}, jnp.zeros((1,) + tuple(input_shape)),
                         train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), loss_sum=jnp.zeros((), jnp.float32),
                    accuracy_sum=jnp.zeros((), jnp.float32))


class MixedPrecisionModel:
  """`model` with bfloat16 compute: the methods call it like the flax module (`.apply`).

  Parameters stay float32 (the optimizer and checkpoints see float32): they are cast to
  `dtype` for the forward pass, and the cast's gradient brings the weight gradients back to
  float32. The inputs of every nn.Conv and nn.Dense are cast to `dtype` too (the models
  normalise in float32 and have no `dtype` field), so those layers, and the batch norms between
  them, compute in `dtype`; batch-norm statistics are computed and kept in float32 (flax). The
  logits come back as float32, so losses, the EMA over samples and the input gradients that
  move the ATENT / PGD samples (kept in float32) are float32.
  """

  def __init__(self, model, dtype=jnp.bfloat16):
    self.model = model
    self.dtype = dtype

  def __getattr__(self, name):
    return getattr(self.model, name)

  def _cast_inputs(self, next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
      args = (jnp.asarray(args[0]).astype(self.dtype),) + tuple(args[1:])
    return next_fun(*args, **kwargs)

  def apply(self, variables, *args, **kwargs):
    variables = dict(variables)
    variables["params"] = jax.tree_util.tree_map(
        lambda p: p.astype(self.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
        variables["params"])
    with nn.intercept_methods(self._cast_inputs):
      out = self.model.apply(variables, *args, **kwargs)
    if kwargs.get("mutable"):
      logits, updates = out
      return logits.astype(jnp.float32), updates
    return out.astype(jnp.float32)


# The augmentation key of step s is fold_in(PRNGKey(seed + _AUGMENT_SEED_OFFSET), s): its own
# stream, so turning augmentation on does not change the method's randomness.
_AUGMENT_SEED_OFFSET = 3


def make_train_step(config, model, tx):
  """train_step(state, images, labels, base_key) -> (state, metrics); pure, to be jitted.

  With config.data.augment the batch is randomly cropped (pad 4) and flipped inside the step,
  on the accelerator, with a key that is a function of (config.seed, step).
  """
  if config.train.get("mixed_precision", False):
    model = MixedPrecisionModel(model)
  grad_fn = methods.make_grad_fn(config, model)
  augment = bool(config.data.get("augment", False))
  augment_seed = config.seed + _AUGMENT_SEED_OFFSET

  def train_step(state: TrainState, images, labels, base_key):
    rng = jax.random.fold_in(base_key, state.step)
    if augment:
      from atent_jax.data.cifar10 import augment_batch
      aug_key = jax.random.fold_in(jax.random.PRNGKey(augment_seed), state.step)
      images = augment_batch(aug_key, images)
    loss, grads, new_bs, aux = grad_fn(state.params, state.batch_stats, images, labels, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    acc = aux.get("train_accuracy", jnp.zeros(()))
    metrics = {"loss": loss, "train_accuracy": acc, "grad_norm": optax.global_norm(grads),
               "param_norm": optax.global_norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                              opt_state=opt_state, loss_sum=state.loss_sum + loss,
                              accuracy_sum=state.accuracy_sum + acc)
    return new_state, metrics

  return train_step


def make_eval_step(config, model):
  """eval_step(params, batch_stats, x, y, mask, key) -> (clean correct, robust correct).

  The model is in eval mode for the clean pass and for the attack (config.eval's PGD).
  """
  e = config.eval
  unroll = methods.unroll_from_config(config)

  def eval_step(params, batch_stats, x, y, mask, key):
    logits_fn = methods.eval_logits_fn(model, params, batch_stats)
    clean_pred = jnp.argmax(logits_fn(x), -1)
    adv = attacks.pgd(logits_fn, x, y, key, norm=e.norm, eps=e.eps, step_size=e.step_size,
                      num_steps=e.num_steps, random_init=e.random_init, restarts=e.restarts,
                      unroll=unroll)
    clean = (clean_pred == y) & mask
    # Robust: correct on x AND on the attack's point (the evaluator's definition).
    robust = robust_correct(y, clean_pred, jnp.argmax(logits_fn(adv), -1)) & mask
    return clean.sum(), robust.sum()

  return eval_step


def evaluate(eval_step, state, images, labels, batch_size: int, key, put=None) -> dict:
  """Clean and PGD robust accuracy over (images, labels), padded to whole batches.

  `put(x, y, mask)`, when given, places a padded batch on the devices (e.g. sharded along the
  data mesh, or this process's rows of it on several hosts); `batch_size` must then suit it.
  """
  n = len(labels)
  clean = robust = 0
  for i, start in enumerate(range(0, n, batch_size)):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    m = len(y)
    mask = np.ones(batch_size, bool)
    if m < batch_size:  # pad so every batch has one shape (one compilation)
      mask[m:] = False
      x = np.concatenate([x, np.repeat(x[:1], batch_size - m, 0)])
      y = np.concatenate([y, np.repeat(y[:1], batch_size - m, 0)])
    if put is not None:
      x, y, mask = put(x, y, mask)
    c, r = eval_step(state.params, state.batch_stats, x, y, mask, jax.random.fold_in(key, i))
    clean += int(c)
    robust += int(r)
  return {"clean_accuracy": clean / n, "robust_accuracy": robust / n, "num_eval": n}


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def _check_finite(metrics: dict, step: int, epoch: int, workdir: str, last_good) -> None:
  for name, label in (("loss", "the training loss"), ("grad_norm", "the weight gradient"),
                      ("param_norm", "the parameters")):
    if not math.isfinite(metrics[name]):
      kept = (f"the last good checkpoint (step {last_good}) is kept in "
              f"{os.path.join(workdir, 'checkpoints')}" if last_good is not None
              else "no checkpoint was written yet")
      raise NonFiniteError(
          f"{label} became {metrics[name]} at step {step} (epoch {epoch}); {kept}; lower "
          "config.train.learning_rate or check the data")


def _write_json(path: str, obj) -> None:
  workdir_lib.write_json(path, obj, sort_keys=True)


def _truncate_metrics(path: str, last_epoch: int) -> None:
  """Drops metric lines of epochs after the restored checkpoint (they are re-run)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = [line for line in lines if json.loads(line).get("epoch", 0) <= last_epoch]
  if len(keep) != len(lines):
    with open(path, "w") as f:
      f.writelines(keep)


def data_mesh() -> Mesh:
  """A 1-D mesh over all devices; the batch is split along it (data parallelism).

  We use `jit` with `NamedSharding` rather than `pmap`: since jax 0.8 pmap is implemented on
  top of jit + shard_map and documented as the old way. With the global batch sharded and the
  state replicated, XLA averages gradients (and batch-norm statistics) across devices, so a
  2-device run computes what a 1-device run of the same global batch computes.
  """
  return Mesh(distributed.mesh_devices(), ("data",))


# Keys that may change when a run is resumed: they do not change what is trained.
_RESUMABLE_CHANGES = ("train.num_epochs", "train.progress_bar", "train.log_every_steps",
                      "train.keep_checkpoints", "train.checkpoint_every_steps", "train.init_from",
                      "data.dir", "data.tfds_data_dir", "eval.", "early_stopping",
                      "distributed.")


def _weights_of_run(workdir: str, state) -> dict:
  """params/batch_stats of another run's latest checkpoint, to fine-tune from
  (config.train.init_from). Its state is built from its own config (its optimiser may differ)."""
  other = workdir_lib.read_config(workdir)
  model = models.get_model(other.model)
  tx, _ = make_optimizer(other, 1)
  restored = ckpt_lib.restore_state(
      workdir, "latest", init_state(other, model, tx, DATASETS[other.data.dataset][0]))
  out = {"params": restored.params}
  if restored.batch_stats:
    out["batch_stats"] = restored.batch_stats
  shapes = jax.tree_util.tree_map(lambda a: a.shape, out["params"])
  if shapes != jax.tree_util.tree_map(lambda a: a.shape, state.params):
    raise CheckpointError(f"config.train.init_from={workdir!r} holds another architecture: "
                      "use a run of the same model")
  return out


def check_resume_config(config, workdir: str) -> None:
  """A workdir's checkpoints are resumed only with the config they were trained with."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = flatten_config(json.load(f))
  except (OSError, ValueError):
    return  # an unreadable config.json is rewritten below
  current = flatten_config(json.loads(config.to_json_best_effort()))
  defaults = flatten_config(json.loads(default_config().to_json_best_effort()))
  for key in sorted(set(saved) | set(current)):
    if key.startswith(_RESUMABLE_CHANGES) or saved.get(key) == current.get(key):
      continue
    if key not in saved and current.get(key) == defaults.get(key):
      continue  # a key added to the library after the run started, at its default
    raise ConfigError(
        f"config.{key}={current.get(key)!r} differs from the run in {workdir} "
        f"(config.{key}={saved.get(key)!r}): resume with the run's config or use a new workdir")


def _pause_point(point: str, step: int) -> None:
  """Test hook: ATENT_JAX_TEST_PAUSE_AT=step@N | eval[@N] pauses the run there (it prints
  `ATENT_JAX_PAUSED <point> <step>` and sleeps), so a test can `kill -9` it at a known point.
  checkpoint[@N] is handled in atent_jax.checkpoint. Unset (always, outside tests): no effect."""
  spec = os.environ.get(ckpt_lib.PAUSE_ENV, "")
  if not spec:
    return
  name, _, at = spec.partition("@")
  if name == point and (not at or int(at) == step):
    print(f"ATENT_JAX_PAUSED {point} {step}", flush=True)
    time.sleep(3600)


def _state_bytes(state) -> int:
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))


def _validate_dataset(config, dataset: Dataset) -> None:
  """A Dataset passed in by the caller gets the checks that load_dataset applies."""
  shape, num_classes = DATASETS[config.data.dataset]
  check_images(dataset.train_images, "train images", shape)
  check_labels(dataset.train_labels, len(dataset.train_images), num_classes, "train labels")
  check_images(dataset.eval_images, f"{dataset.eval_split} images", shape)
  check_labels(dataset.eval_labels, len(dataset.eval_images), num_classes,
               f"{dataset.eval_split} labels")
  if len(dataset.eval_labels) == 0:
    raise DataError(f"the {dataset.eval_split} split is empty: pass evaluation images")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: Dataset | None = None) -> dict:
  """Trains per `config`, writing everything into `workdir`; returns the final metrics.

  Everything that can be checked is checked before anything is written: the config, the data,
  the workdir's location, an init_from run. Then the workdir is created, probed for writes and
  free space, and locked (WORKDIR/.lock) for the run's duration.
  """
  validate_config(config)  # before JAX starts: config.distributed must be usable
  distributed.initialize(config)  # multi-host: before any JAX computation; else nothing
  mesh = data_mesh()
  check_devices(config, mesh.size)  # the rest of the config was validated above
  multi = distributed.is_multiprocess()
  if multi:
    distributed.host_rows(config.train.batch_size, 0, jax.process_count())  # divisible?
  workdir = os.path.abspath(os.fspath(workdir))
  workdir_lib.check_location(workdir)
  if os.path.isdir(os.path.join(workdir, workdir_lib.KEPT_WEIGHTS)):
    raise ConfigError(f"{workdir} holds a finished run's kept weights "
                      f"({workdir_lib.KEPT_WEIGHTS}/): training cannot resume from them; train "
                      "into a new --workdir")
  if dataset is None:
    dataset = load_dataset(config.data)
  else:
    _validate_dataset(config, dataset)
  logging.info("data: %s", dataset.describe())

  model = models.get_model(config.model)
  batch_size = config.train.batch_size
  n_train = len(dataset.train_labels)
  steps_per_epoch = n_train // batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"config.train.batch_size={batch_size} is larger than the {n_train} "
                      "training images: lower it")
  total_steps = steps_per_epoch * config.train.num_epochs
  tx, schedule = make_optimizer(config, steps_per_epoch)
  input_shape = dataset.train_images.shape[1:]
  state = init_state(config, model, tx, input_shape)
  has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
      name.isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints")))
  if has_checkpoints:
    check_resume_config(config, workdir)
  elif config.train.init_from:
    state = state.replace(**_weights_of_run(config.train.init_from, state))
    print(f"initialised weights from {config.train.init_from}", flush=True)

  need = _state_bytes(state) * (config.train.keep_checkpoints + 2) + (1 << 20)
  # Several processes share the workdir (a shared file system): process 0 prepares and locks it.
  primary = distributed.is_primary()
  if primary:
    workdir_lib.prepare(workdir, need)
  lock = workdir_lib.RunLock(workdir).acquire() if primary else None
  checkpoints = None
  try:
    if multi:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("atent_jax: workdir prepared")
      # Orbax restores into the template's shardings: the state replicated over all devices.
      state = distributed.replicate(state, NamedSharding(mesh, P()))
    checkpoints = ckpt_lib.RunCheckpoints(workdir, keep=config.train.keep_checkpoints)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
      state = restored
    if primary:
      print(f"data: {dataset.describe()}", flush=True)
    if restored is not None and primary:
      print(f"resumed from the checkpoint at step {int(state.step)}", flush=True)
    return _train_loop(config, workdir, dataset, model, tx, schedule, state, checkpoints,
                       restored is not None, mesh, steps_per_epoch, total_steps)
  finally:
    if checkpoints is not None:
      checkpoints.close()  # waits for saves in flight: the last good checkpoint is kept
    if lock is not None:
      lock.release()


def _train_loop(config, workdir, dataset, model, tx, schedule, state, checkpoints, resumed,
                mesh, steps_per_epoch, total_steps) -> dict:
  batch_size = config.train.batch_size
  n_train = len(dataset.train_labels)
  primary = distributed.is_primary()  # only process 0 writes the run's files
  num_processes, process = jax.process_count(), jax.process_index()
  if primary:
    _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    _write_json(os.path.join(workdir, "run_info.json"), {
        "data": dataset.describe(), "devices": [str(d) for d in jax.devices()],
        "processes": num_processes, "jax": jax.__version__, "flax": flax.__version__,
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps})

  replicated = NamedSharding(mesh, P())
  batch_sharded = NamedSharding(mesh, P("data"))
  state = distributed.replicate(state, replicated)
  train_step = jax.jit(make_train_step(config, model, tx),
                       in_shardings=(replicated, batch_sharded, batch_sharded, replicated),
                       out_shardings=(replicated, replicated), donate_argnums=(0,))
  eval_batch = config.eval.batch_size
  shard_eval_batch = None
  if mesh.size == 1:
    eval_step = jax.jit(make_eval_step(config, model))
  else:
    # The evaluation batch is sharded too, padded up to a multiple of the device count.
    eval_batch = -(-eval_batch // mesh.size) * mesh.size
    eval_step = jax.jit(make_eval_step(config, model),
                        in_shardings=(replicated, replicated, batch_sharded, batch_sharded,
                                      batch_sharded, replicated),
                        out_shardings=(replicated, replicated))
    rows = distributed.host_rows(eval_batch, process, num_processes)

    def shard_eval_batch(*arrays):
      if num_processes == 1:
        return tuple(jax.device_put(a, batch_sharded) for a in arrays)
      return tuple(distributed.global_batch(a[rows], batch_sharded, eval_batch) for a in arrays)
  base_key = jax.random.PRNGKey(config.seed + 1)
  eval_key = jax.random.PRNGKey(config.seed + 2)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  step = int(state.step)
  start_epoch = step // steps_per_epoch
  if primary:
    _truncate_metrics(metrics_path, start_epoch)
  last_good = step if resumed else None
  best = checkpoints.best_metric(config.early_stopping_metric)
  summary: dict = {}
  t_start = time.time()

  for epoch in range(start_epoch, config.train.num_epochs):
    order = _epoch_order(config.seed, epoch, n_train)
    first = step - epoch * steps_per_epoch
    bar = _progress(config, epoch, steps_per_epoch, first)
    t_epoch = time.time()
    for i in range(first, steps_per_epoch):
      if num_processes == 1:
        idx = order[i * batch_size:(i + 1) * batch_size]
        x = jax.device_put(dataset.train_images[idx], batch_sharded)
        y = jax.device_put(dataset.train_labels[idx], batch_sharded)
      else:  # this process's rows of the global batch
        idx = distributed.host_batch_indices(order, i, batch_size, process, num_processes)
        x = distributed.global_batch(dataset.train_images[idx], batch_sharded, batch_size)
        y = distributed.global_batch(dataset.train_labels[idx], batch_sharded, batch_size)
      new_state, m = train_step(state, x, y, base_key)
      m = {k: float(v) for k, v in m.items()}
      _check_finite(m, step + 1, epoch + 1, workdir, last_good)
      state, step = new_state, step + 1
      if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['train_accuracy']:.3f}")
      every = config.train.checkpoint_every_steps
      if every and step % every == 0 and step % steps_per_epoch:
        checkpoints.save(step, state)
        last_good = step
      _pause_point("step", step)
    if bar is not None:
      bar.close()
    train_time = time.time() - t_epoch
    record = {"epoch": epoch + 1, "step": step,
              "train_loss": float(state.loss_sum) / steps_per_epoch,
              "train_accuracy": float(state.accuracy_sum) / steps_per_epoch,
              "learning_rate": float(schedule(step - 1)), "epoch_train_seconds": train_time}
    if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == config.train.num_epochs:
      t_eval = time.time()
      _pause_point("eval", step)
      n_eval = config.eval.num_examples
      sl = slice(None) if n_eval < 0 else slice(0, n_eval)
      record.update(evaluate(eval_step, state, dataset.eval_images[sl], dataset.eval_labels[sl],
                             eval_batch, eval_key, put=shard_eval_batch))
      record["eval_split"] = dataset.eval_split
      record["eval_attack"] = (f"PGD-{config.eval.num_steps} {config.eval.norm} eps "
                               f"{config.eval.eps:g} step {config.eval.step_size:g} restarts "
                               f"{config.eval.restarts}")
      record["eval_seconds"] = time.time() - t_eval
    record["wall_time"] = time.time() - t_start
    # Epoch sums start again at zero; saved with the checkpoint so a resumed epoch is exact.
    state = state.replace(**distributed.replicate(
        {"loss_sum": np.float32(0), "accuracy_sum": np.float32(0)}, replicated))
    if primary:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    # The best checkpoint first (synchronous): a run killed before the epoch's latest checkpoint
    # is committed re-runs the epoch and finds the same best, already saved.
    metric = config.early_stopping_metric
    if config.early_stopping and metric in record and (best is None or record[metric] > best):
      best = record[metric]
      checkpoints.save_best(step, state, record)
    checkpoints.save(step, state)
    last_good = step
    summary = record
    if primary:
      print(json.dumps(record), flush=True)
  if primary:
    print(end_of_run(config, workdir), flush=True)
  return summary


def _display_path(path: str) -> str:
  """`path` relative to the working directory when it lies below it (shorter to copy)."""
  relative = os.path.relpath(path)
  return path if relative.startswith("..") else relative


def end_of_run(config, workdir: str) -> str:
  """Draws WORKDIR/training_curves.png and returns the run's one-line summary: the last
  evaluation, the epoch best/ holds, the PNG and the evaluate command to run next (a stronger
  attack than the per-epoch PGD). Also after a resumed run that had nothing left to train."""
  records = plots.read_metrics(workdir)
  last = [r for r in records if "robust_accuracy" in r][-1]
  shown = _display_path(workdir)
  line = (f"done: epoch {last['epoch']}/{config.train.num_epochs}: clean "
          f"{100 * last['clean_accuracy']:.1f}%, robust {100 * last['robust_accuracy']:.1f}% "
          f"({last['eval_attack']}; {last['num_eval']} {last['eval_split']} images)")
  best_path = os.path.join(workdir, "best", "metrics.json")
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)
    metric = config.early_stopping_metric
    line += (f"; best: epoch {best['epoch']} ({metric} {100 * best[metric]:.1f}%) in "
             f"{os.path.join(shown, 'best')}")
  curves = os.path.join(workdir, plots.CURVES_FILE)
  try:
    plots.training_curves([workdir], curves, labels=[config.method],
                          title=f"{config.method}: {shown}")
    line += f"; curves: {os.path.join(shown, plots.CURVES_FILE)}"
  except OSError as e:  # the run itself is complete and saved: say so, do not fail it
    warn(f"could not write {curves} ({e}); draw it later with experiments/figures.py curves")
  return (f"{line}; next: python experiments/evaluate.py --workdir={shown} "
          f"--attacks=pgd100_{config.eval.norm} --restarts=5")


def _progress(config, epoch, total, initial):
  if not config.train.progress_bar or not distributed.is_primary():
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{config.train.num_epochs}",
              unit="batch", dynamic_ncols=True, leave=False)
