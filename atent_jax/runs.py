"""A training run, loaded back from its workdir: its config, model and weights, a classifier to
attack, and the data it was evaluated on.

    logits_fn = atent_jax.load_classifier("runs/mnist_linf")   # best checkpoint, eval mode
    images, labels = atent_jax.runs.load_eval_split("runs/mnist_linf")

The top of the library: it builds the run's model and state the way `atent_jax.train` does, then
restores them with `atent_jax.checkpoint`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import ml_collections
import numpy as np

from atent_jax import checkpoint, models, train
from atent_jax import workdir as workdir_lib
from atent_jax.data import DATASETS, load_dataset


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, from its config.json (JSON only: loading never executes code)."""
  return workdir_lib.read_config(workdir)


def load_run(workdir: str, which: str = "best") -> tuple[ml_collections.ConfigDict, Any, dict]:
  """(config, model, variables) of a trained run; `which` is 'best' (falls back to the latest)
  or 'latest'. Corrupt checkpoints are skipped with a warning; nothing on disk is changed."""
  config = load_config(workdir)
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 1)
  state = train.init_state(config, model, tx, DATASETS[config.data.dataset][0])
  state = checkpoint.restore_state(workdir, which, state)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return config, model, variables


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
