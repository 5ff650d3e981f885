"""A training run, loaded back from its workdir: its config, model and weights, a classifier to
attack, and the data it was evaluated on.

    logits_fn = atent_jax.load_classifier("runs/mnist_linf")   # best checkpoint, eval mode
    images, labels = atent_jax.runs.load_eval_split("runs/mnist_linf")

The top of the library: it builds the run's model and state the way `atent_jax.train` does, then
restores them with `atent_jax.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from atent_jax import checkpoint, models, plots, train
from atent_jax import workdir as workdir_lib
from atent_jax.data import DATASETS, load_dataset
from atent_jax.errors import CheckpointError


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, from its config.json (JSON only: loading never executes code)."""
  return workdir_lib.read_config(workdir)


_KEPT_FILE, _KEPT_INFO = "weights.msgpack", "info.json"
KEPT_DTYPES = ("float32", "float16", "bfloat16")


def _variables(state) -> dict:
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def load_run(workdir: str, which: str = "best") -> tuple[ml_collections.ConfigDict, Any, dict]:
  """(config, model, variables) of a trained run; `which` is 'best' (falls back to the latest)
  or 'latest'. Corrupt checkpoints are skipped with a warning; nothing on disk is changed.
  A run whose weights were kept alone (`keep_weights`) gives those, as float32, either way."""
  config = load_config(workdir)
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 1)
  state = train.init_state(config, model, tx, DATASETS[config.data.dataset][0])
  kept = os.path.join(workdir, workdir_lib.KEPT_WEIGHTS, _KEPT_FILE)
  if os.path.exists(kept):
    template = _variables(state)
    with open(kept, "rb") as f:
      try:
        restored = serialization.from_state_dict(template, serialization.msgpack_restore(f.read()))
      except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{kept} does not hold this run's model "
                              f"({config.model.name}): {str(e).splitlines()[0]}") from e
    variables = jax.tree_util.tree_map(lambda t, v: jnp.asarray(v, t.dtype), template, restored)
    return config, model, variables
  state = checkpoint.restore_state(workdir, which, state)
  return config, model, _variables(state)


def keep_weights(workdir: str, dtype: str = "float32") -> dict:
  """Replaces a finished run's checkpoints (checkpoints/, best/: weights and optimiser state)
  by its best weights alone, cast to `dtype`, in WORKDIR/kept_weights/ (with info.json: the
  dtype, the best epoch's record, and the fingerprints of the weights before and after the
  cast). What `load_run` / `load_classifier` open afterwards, as float32; training cannot
  resume from them. For runs whose checkpoints are too big to keep: LeNet5 is 13 MB of float32
  weights, 26 MB with its momentum; 6.3 MB in float16. Returns info.json's content."""
  if dtype not in KEPT_DTYPES:
    raise ValueError(f"dtype={dtype!r} is not valid: use one of {', '.join(KEPT_DTYPES)}")
  target = os.path.join(workdir, workdir_lib.KEPT_WEIGHTS)
  if os.path.isdir(target):
    raise CheckpointError(f"{target} exists already: the run's weights were kept before")
  config, _, variables = load_run(workdir, "best")
  records = plots.read_metrics(workdir)
  if not records or records[-1].get("epoch") != config.train.num_epochs:
    raise CheckpointError(f"{workdir} has not finished training ({config.train.num_epochs} "
                          "epochs): resume it with experiments/main.py first")
  cast = jax.tree_util.tree_map(
      lambda v: np.asarray(v, jnp.dtype(dtype)) if jnp.issubdtype(v.dtype, jnp.floating)
      else np.asarray(v), variables)
  best_path = os.path.join(workdir, "best", "metrics.json")
  best = None
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)
  info = {"dtype": dtype, "best": best,
          "weights_sha1_before": weights_sha1(variables),
          "weights_sha1": weights_sha1(jax.tree_util.tree_map(
              lambda t, v: np.asarray(v, t.dtype), variables, cast))}
  partial = target + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  with open(os.path.join(partial, _KEPT_FILE), "wb") as f:
    f.write(serialization.msgpack_serialize(serialization.to_state_dict(cast)))
  workdir_lib.write_json(os.path.join(partial, _KEPT_INFO), info)
  os.replace(partial, target)  # the run is switched to its kept weights in one step
  for sub in ("best", "checkpoints"):
    shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
  return info


def weights_sha1(variables) -> str:
  """A fingerprint of a model's weights (names and bytes of every array): two evaluations
  with the same fingerprint attacked the same model."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def load_classifier(workdir: str, which: str = "best"):
  """`logits_fn(x)` of a trained run: NHWC images in [0, 1] -> logits, model in eval mode.

  Any external tool can attack the same model through it.
  """
  _, model, variables = load_run(workdir, which)
  return jax.jit(lambda x: model.apply(variables, x, train=False))


def load_eval_split(workdir: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a split of the data the run in `workdir` was trained with.

  'test' (default) is the whole test set, for final reports; 'validation' the held-out part of
  the training images; 'eval' the split the run reported metrics on during training.
  """
  return load_dataset(load_config(workdir).data).split(split)
