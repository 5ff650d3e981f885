"""Checkpoints of a run (orbax) and loading a trained classifier back from its workdir.

Layout: WORKDIR/checkpoints/<step>/ (the latest `keep`), WORKDIR/best/<step>/ plus
WORKDIR/best/metrics.json (the epoch with the best robust accuracy on the evaluation split).
Checkpoints hold arrays only (orbax's standard format, no pickled objects), so loading one never
executes code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from atent_jax.errors import CheckpointError


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _template(state) -> dict:
  return state.to_dict() if hasattr(state, "to_dict") else dict(state)


def _restore_into(manager, step, state):
  """Restores checkpoint `step` shaped like `state`; a different model raises CheckpointError."""
  template = _template(state)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"the checkpoint at step {step} in {manager.directory} does not fit this model "
        f"({str(e).splitlines()[0][:160]}): use the config it was trained with") from None
  if hasattr(state, "replace"):
    return state.replace(**restored)
  return restored


class RunCheckpoints:
  """The latest-N and the best checkpoints of one run."""

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = workdir
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
    self._best = None

  @property
  def best(self) -> ocp.CheckpointManager:
    if self._best is None:
      self._best = _manager(os.path.join(self.workdir, "best"), 1)
    return self._best

  def save(self, step: int, state) -> None:
    self.latest.save(step, args=ocp.args.StandardSave(_template(state)), force=True)

  def restore_latest(self, state):
    step = self.latest.latest_step()
    if step is None:
      return None
    return _restore_into(self.latest, step, state)

  def best_metric(self) -> float | None:
    path = os.path.join(self.workdir, "best", "metrics.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f).get("robust_accuracy")

  def save_best(self, step: int, state, record: dict) -> None:
    self.best.save(step, args=ocp.args.StandardSave(_template(state)), force=True)
    self.best.wait_until_finished()
    tmp = os.path.join(self.workdir, "best", "metrics.json.tmp")
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(self.workdir, "best", "metrics.json"))

  def close(self) -> None:
    self.latest.wait_until_finished()
    self.latest.close()
    if self._best is not None:
      self._best.wait_until_finished()
      self._best.close()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir} holds no config.json: pass the workdir of a training run "
                          "(experiments/main.py --workdir=...)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, which: str = "best") -> tuple[ml_collections.ConfigDict, Any, dict]:
  """(config, model, variables) of a trained run; `which` is 'best' (falls back to the latest)
  or 'latest'."""
  from atent_jax import models, train
  config = load_config(workdir)
  model = models.get_model(config.model)
  from atent_jax.data import DATASETS
  shape = DATASETS[config.data.dataset][0]
  tx, _ = train.make_optimizer(config, 1)
  state = train.init_state(config, model, tx, shape)
  for sub in (("best", "checkpoints") if which == "best" else ("checkpoints",)):
    directory = os.path.join(workdir, sub)
    if not os.path.isdir(directory):
      continue
    manager = _manager(directory, 1)
    step = manager.latest_step()
    if step is None:
      continue
    state = _restore_into(manager, step, state)
    variables = {"params": state.params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    return config, model, variables
  raise CheckpointError(f"{workdir} holds no checkpoint: train first with experiments/main.py "
                        f"--workdir={workdir}")


def load_classifier(workdir: str, which: str = "best"):
  """`logits_fn(x)` of a trained run: NHWC images in [0, 1] -> logits, model in eval mode.

  Any external tool can attack the same model through it.
  """
  _, model, variables = load_run(workdir, which)
  return jax.jit(lambda x: model.apply(variables, x, train=False))


def load_weights(workdir: str, state) -> dict:
  """params/batch_stats of another run, to fine-tune from (config.train.init_from)."""
  _, _, variables = load_run(workdir, "latest")
  out = {"params": variables["params"]}
  if "batch_stats" in variables:
    out["batch_stats"] = variables["batch_stats"]
  shapes = jax.tree_util.tree_map(lambda a: a.shape, out["params"])
  if shapes != jax.tree_util.tree_map(lambda a: a.shape, state.params):
    raise CheckpointError(f"config.train.init_from={workdir!r} holds another architecture: "
                          "use a run of the same model")
  return out
