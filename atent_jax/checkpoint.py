"""Checkpoints of a run (orbax): saving, resuming, restoring (atent_jax.runs loads a finished
run's classifier on top of this).

Layout: WORKDIR/checkpoints/<step>/ (the latest `keep`), WORKDIR/best/<step>/ plus
WORKDIR/best/metrics.json (the epoch with the best robust accuracy on the evaluation split).
Checkpoints hold arrays only (orbax's standard format, no pickled objects), so loading one never
executes code.

Fault tolerance:
* orbax writes a step into a temporary folder and renames it on commit, so a run killed during a
  write leaves the previous checkpoints intact (the temporary folder is removed at the next start);
* saves are asynchronous, of a private on-device copy of the state: the training loop donates
  its state buffers to the next step, and the copy keeps the checkpoint's values intact whatever
  orbax's device-to-host transfer does;
* `restore_latest` checks the latest checkpoint (readable, the same tree and shapes as the model,
  finite values); a truncated or corrupt one is moved to WORKDIR/corrupt_checkpoints/ with a
  warning and the previous one is used. A checkpoint of another model raises CheckpointError.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from atent_jax import workdir as workdir_lib
from atent_jax.errors import CheckpointError, warn

# Test hook (see _pausing_temporary_path_class and train.pause_point); unset outside tests.
PAUSE_ENV = "ATENT_JAX_TEST_PAUSE_AT"


def _pausing_temporary_path_class():
  """Test hook: with ATENT_JAX_TEST_PAUSE_AT=checkpoint[@step], the commit of that step pauses
  (prints `ATENT_JAX_PAUSED checkpoint <step>` and sleeps) after its files are written and before
  the rename, so a test can `kill -9` the run during a checkpoint write."""
  spec = os.environ.get(PAUSE_ENV, "")
  if not spec.startswith("checkpoint"):
    return None
  from orbax.checkpoint._src.path import atomicity  # private: only used by this test hook
  _, _, at = spec.partition("@")

  class _Pausing(atomicity.AtomicRenameTemporaryPath):
    async def finalize(self, *args, **kwargs):
      step = self.get_final().name
      if not at or at == step:
        print(f"ATENT_JAX_PAUSED checkpoint {step}", flush=True)
        time.sleep(3600)
      return await super().finalize(*args, **kwargs)

  return _Pausing


def _manager(directory: str, keep: int, *, writer: bool = False) -> ocp.CheckpointManager:
  kwargs = {}
  if writer:
    # Temporary folders of writes that were killed are deleted when a run starts again.
    kwargs["cleanup_tmp_directories"] = True
    pausing = _pausing_temporary_path_class()
    if pausing is not None:
      kwargs["temporary_path_class"] = pausing
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=writer, **kwargs)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def _template(state) -> dict:
  return state.to_dict() if hasattr(state, "to_dict") else dict(state)


def _private_copy(tree):
  """A fresh on-device copy, so donating the training state cannot touch what is being saved."""
  return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True) if isinstance(a, jax.Array)
                                else a, tree)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _signature(tree) -> dict:
  """{'opt_state/1/0/trace/conv1/bias': shape, ...}: named tuples and lists as on disk."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in leaves}


class _Corrupt(Exception):
  pass


def _check_fits(manager, step, template) -> None:
  """Raises CheckpointError for another model's checkpoint, _Corrupt for an unreadable one."""
  try:
    metadata = manager.item_metadata(step)
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    saved = _signature(dict(tree))
  except Exception as e:  # any failure to read the metadata: a corrupt checkpoint
    raise _Corrupt(f"its metadata cannot be read ({_first_line(e)})") from None
  want = _signature(template)
  if saved != want:
    diff = sorted(set(saved.items()) ^ set(want.items()))
    where = diff[0][0] if diff else "?"
    raise CheckpointError(
        f"the checkpoint at step {step} in {manager.directory} does not fit this model (it "
        f"differs at {where}): use the config it was trained with, or another workdir")


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return (lines[0] if lines else type(e).__name__)[:160]


def _restore_into(manager, step, state):
  """Restores checkpoint `step` shaped like `state`; a different model raises CheckpointError,
  an unreadable or non-finite checkpoint _Corrupt."""
  template = _template(state)
  _check_fits(manager, step, template)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:
    raise _Corrupt(f"it cannot be read ({_first_line(e)})") from None
  for path, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(leaf))):
      raise _Corrupt(f"it holds NaN or Inf values in {jax.tree_util.keystr(path)}")
  if hasattr(state, "replace"):
    return state.replace(**restored)
  return restored


class RunCheckpoints:
  """The latest-N and the best checkpoints of one run."""

  def __init__(self, workdir: str, keep: int = 3):
    self.workdir = workdir
    self.keep = keep
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep, writer=True)
    self._best = None

  @property
  def best(self) -> ocp.CheckpointManager:
    if self._best is None:
      self._best = _manager(os.path.join(self.workdir, "best"), 1, writer=True)
    return self._best

  def save(self, step: int, state) -> None:
    """Starts an asynchronous save of `state` (a private copy: the caller may donate `state`)."""
    if step in self.latest.all_steps():
      return  # the same step of a deterministic re-run: already on disk
    self.latest.save(step, args=ocp.args.StandardSave(_private_copy(_template(state))),
                     force=True)

  def wait(self) -> None:
    self.latest.wait_until_finished()

  def _quarantine(self, step: int) -> str:
    """Moves a corrupt step out of orbax's sight, keeping it for inspection."""
    self.latest.close()
    src = os.path.join(self.workdir, "checkpoints", str(step))
    dst = os.path.join(self.workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.move(src, dst)
    self.latest = _manager(os.path.join(self.workdir, "checkpoints"), self.keep, writer=True)
    return dst

  def restore_latest(self, state):
    """The newest checkpoint that is intact (see the module docstring), or None."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        return _restore_into(self.latest, step, state)
      except _Corrupt as e:
        moved = self._quarantine(step)
        warn(f"the checkpoint at step {step} in {self.workdir} is corrupt ({e}): moved it to "
             f"{moved}; using the previous checkpoint")
    return None

  def best_metric(self, metric: str = "robust_accuracy") -> float | None:
    """The `metric` of the saved best checkpoint (None: no best checkpoint yet)."""
    path = os.path.join(self.workdir, "best", "metrics.json")
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        return json.load(f).get(metric)
    except (OSError, ValueError):
      warn(f"{path} is unreadable: the best checkpoint will be chosen afresh")
      return None

  def save_best(self, step: int, state, record: dict) -> None:
    if step not in self.best.all_steps():
      self.best.save(step, args=ocp.args.StandardSave(_private_copy(_template(state))),
                     force=True)
      self.best.wait_until_finished()
    if jax.process_index() != 0:  # one writer of best/metrics.json on several hosts
      return
    workdir_lib.write_json(os.path.join(self.workdir, "best", "metrics.json"), record)

  def close(self) -> None:
    """Waits for the saves in flight (they are durable once this returns) and closes."""
    self.latest.wait_until_finished()
    self.latest.close()
    if self._best is not None:
      self._best.wait_until_finished()
      self._best.close()


def restore_state(workdir: str, which: str, state):
  """`state` with the weights (and optimiser state) of a run's checkpoint, shaped like `state`.

  which: 'best' (falls back to the latest) or 'latest'. Corrupt checkpoints are skipped with a
  warning (nothing on disk is changed); a checkpoint of another model raises CheckpointError, as
  does a workdir without a usable checkpoint.
  """
  for sub in (("best", "checkpoints") if which == "best" else ("checkpoints",)):
    directory = os.path.join(workdir, sub)
    if not os.path.isdir(directory):
      continue
    manager = _manager(directory, 1)
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return _restore_into(manager, step, state)
      except _Corrupt as e:
        warn(f"the checkpoint at step {step} in {directory} is corrupt ({e}): skipping it")
  raise CheckpointError(f"{workdir} holds no usable checkpoint: train first with "
                        f"experiments/main.py --workdir={workdir}")
