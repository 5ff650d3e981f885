"""Faults: kill -9 and resume, corrupt checkpoints, unusable workdirs, NaN, two runs at once.

Small runs (synthetic MNIST-shaped data, 256 images, batch 32: 8 steps an epoch, 3 epochs, a
checkpoint every 3 steps). Kills use the ATENT_JAX_TEST_PAUSE_AT hook: the run prints
`ATENT_JAX_PAUSED <point> <step>` and sleeps at that point, and the test sends SIGKILL.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from determinism import assert_same_metrics, assert_same_params
from scripts import run_script

from atent_jax import checkpoint as ckpt_lib
from atent_jax import models, runs, train
from atent_jax import workdir as workdir_lib
from atent_jax.configuration import default_config
from atent_jax.errors import AtentWarning, CheckpointError, NonFiniteError, WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "experiments", "main.py")
_TIME_KEYS = ("epoch_train_seconds", "eval_seconds", "wall_time")

OVERRIDES = {
    "method": "sgd", "data.source": "synthetic", "data.synthetic_examples": 256,
    "train.batch_size": 32, "train.num_epochs": 3, "train.checkpoint_every_steps": 3,
    "train.progress_bar": False, "eval.num_examples": 64, "eval.batch_size": 32,
    "eval.num_steps": 2, "sampler.num_steps": 2,
}


def _config(**changes):
  config = default_config()
  for key, value in {**OVERRIDES, **changes}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _argv(workdir, **changes):
  return [sys.executable, MAIN, f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()]


def _env(pause=None):
  env = dict(os.environ)
  env.pop("ATENT_JAX_TEST_PAUSE_AT", None)
  if pause:
    env["ATENT_JAX_TEST_PAUSE_AT"] = pause
  # The runs share the test session's compilation cache (tests/conftest.py, inherited through
  # the environment), which the in-process reference run has filled: the same programs load
  # instead of compiling again in every process.
  return env


def _run_and_kill(workdir, pause, timeout=240):
  """Starts a run that pauses at `pause`, kills it with SIGKILL there; returns its stderr."""
  proc = subprocess.Popen(_argv(workdir), env=_env(pause), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    import threading
    out = []
    done = threading.Event()

    def read():
      for line in proc.stdout:
        out.append(line)
        if line.startswith("ATENT_JAX_PAUSED"):
          done.set()
          return
      done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"run did not reach {pause}"
    assert out and out[-1].startswith("ATENT_JAX_PAUSED"), (
        f"run ended before {pause}: {''.join(out)} {proc.stderr.read()}")
    return proc, out[-1].split()
  except BaseException:
    proc.kill()
    raise


def _kill(proc):
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(30)
  stderr = proc.stderr.read()
  proc.stdout.close()
  proc.stderr.close()
  return stderr


def _run(workdir, **changes):
  return subprocess.run(_argv(workdir, **changes), env=_env(), capture_output=True,
                        text=True, cwd=ROOT, timeout=300)


def _params(workdir):
  return runs.load_run(workdir, "latest")[2]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in _TIME_KEYS} for line in f]


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run, in-process, started from an empty cwd: nothing may appear outside
  its workdir."""
  base = tmp_path_factory.mktemp("reference")
  cwd = os.getcwd()
  os.chdir(base)
  try:
    workdir = str(base / "run")
    train.train_and_evaluate(_config(), workdir)
  finally:
    os.chdir(cwd)
  assert sorted(os.listdir(base)) == ["run"]
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))
  return workdir


def test_same_config_and_seed_are_bit_identical(reference, tmp_path):
  again = str(tmp_path / "again")
  train.train_and_evaluate(_config(), again)
  assert_same_metrics(_metrics(again), _metrics(reference))
  assert_same_params(_params(again), _params(reference))


def test_kill9_mid_epoch_during_checkpoint_and_during_eval_then_resume(reference, tmp_path):
  workdir = str(tmp_path / "run")
  # 1. Killed mid-epoch (after step 5 of epoch 1). Meanwhile a second run is refused: here in
  # this process (the process of the paused run holds the lock), through main.py and cli.run.
  proc, _ = _run_and_kill(workdir, "step@5")
  try:
    second = run_script("main.py", _argv(workdir)[2:], cwd=None)
  finally:
    _kill(proc)
  assert second.returncode == 2, second.stderr
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and "in use by another run" in lines[0], second.stderr
  assert f"pid {proc.pid} on host {socket.gethostname()}" in lines[0]

  # 2. Resumed (taking over the dead run's lock), killed while writing the checkpoint of step 16.
  proc, marker = _run_and_kill(workdir, "checkpoint@16")
  assert marker[1:] == ["checkpoint", "16"]
  stderr = _kill(proc)
  assert "took over the stale lock" in stderr, stderr
  assert 16 not in _steps(workdir)  # never committed: only a temporary folder holds it
  leftovers = _temporary_folders(workdir)
  assert leftovers and all(n.startswith("16.") for n in leftovers), leftovers
  # Run 3 writes step 16 again, which replaces that folder whether or not leftovers are cleaned
  # up: a copy under a step no run writes (checkpoints at multiples of 3 and at 8, 16, 24) is
  # removed only by the clean-up.
  checkpoints = os.path.join(workdir, "checkpoints")
  stray = leftovers[0].replace("16.", "13.", 1)
  shutil.copytree(os.path.join(checkpoints, leftovers[0]), os.path.join(checkpoints, stray))
  leftovers.append(stray)

  # 3. Resumed from step 15, killed during the evaluation of epoch 3.
  proc, marker = _run_and_kill(workdir, "eval@24")
  _kill(proc)
  # The killed write's leftovers were cleaned up. (This run's own asynchronous write of the
  # checkpoint before the evaluation may still be in flight when it is killed: a new temporary
  # folder, which run 4 then cleans up; seen once on a loaded machine.)
  assert not set(leftovers) & set(_temporary_folders(workdir)), _temporary_folders(workdir)

  # 4. Resumed to the end: exactly the uninterrupted run.
  final = _run(workdir)
  assert final.returncode == 0, final.stderr
  assert_same_params(_params(workdir), _params(reference))
  assert_same_metrics(_metrics(workdir), _metrics(reference))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


def _temporary_folders(workdir):
  """Orbax's folders of checkpoint writes not committed (yet): 'STEP.orbax-checkpoint-tmp...'."""
  return sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if ".orbax-checkpoint-tmp" in n)


def _truncate_latest(workdir):
  step = _steps(workdir)[-1]
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(workdir, "checkpoints",
                                                                   str(step)))
           for f in fs if os.sep + "d" + os.sep in os.path.join(r, f)]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)
  return step


def test_truncated_latest_checkpoint_is_skipped_with_a_warning(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  bad = _truncate_latest(workdir)
  with pytest.warns(AtentWarning, match=f"checkpoint at step {bad} .* is corrupt"):
    train.train_and_evaluate(_config(), workdir)  # resumes from the previous checkpoint
  assert_same_params(_params(workdir), _params(reference))
  assert_same_metrics(_metrics(workdir), _metrics(reference))
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints"))  # kept for inspection


def _small_state(name="small_cnn"):
  config = _config()
  config.model.name = name
  tx, _ = train.make_optimizer(config, 8)
  return train.init_state(config, models.get_model(config.model), tx, (28, 28, 1))


def test_corrupt_metadata_falls_back_and_other_model_is_refused(tmp_path):
  state = _small_state()
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path), keep=3)
  ckpts.save(1, state)
  ckpts.save(2, state.replace(step=jnp.asarray(2, jnp.int32)))
  ckpts.close()
  with open(tmp_path / "checkpoints" / "2" / "default" / "_METADATA", "w") as f:
    f.write("{garbage")
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path), keep=3)
  with pytest.warns(AtentWarning, match="step 2"):
    restored = ckpts.restore_latest(state)
  assert int(restored.step) == 0  # step 1's copy of the initial state
  with pytest.raises(CheckpointError, match="does not fit this model"):
    ckpts.restore_latest(_small_state("lenet5"))
  ckpts.close()


def test_async_save_is_safe_from_buffer_donation(tmp_path):
  state = _small_state()
  expected = jax.tree_util.tree_map(np.array, state)
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path), keep=1)
  ckpts.save(7, state)  # asynchronous
  clobber = jax.jit(lambda s: jax.tree_util.tree_map(lambda a: a * 0 + 7, s), donate_argnums=0)
  for _ in range(3):
    state = clobber(state)
  jax.block_until_ready(state)
  ckpts.close()
  ckpts = ckpt_lib.RunCheckpoints(str(tmp_path), keep=1)
  restored = ckpts.restore_latest(_small_state())
  ckpts.close()
  chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, restored), expected)


def test_nan_stops_the_run_naming_step_and_quantity_keeping_the_last_checkpoint(tmp_path):
  # The learning rate jumps to 1e30 after epoch 1 (step 8): the run diverges in epoch 2.
  config = _config(**{"train.lr_decay_epochs": (1,), "train.lr_decay_factor": 1e32,
                      "eval.every_epochs": 5})
  workdir = str(tmp_path / "run")
  with pytest.raises(NonFiniteError) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  step = int(message.split(" at step ")[1].split()[0])
  assert step > 8 and "became" in message and ("nan" in message or "inf" in message)
  kept = int(message.split("last good checkpoint (step ")[1].split(")")[0])
  assert kept == max(_steps(workdir)) and kept >= 8
  runs.load_run(workdir, "latest")  # the kept checkpoint is intact
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


def test_nan_on_the_command_line_is_one_line_with_nonzero_exit(tmp_path):
  result = _run(str(tmp_path / "run"), **{"train.learning_rate": 1e30, "train.num_epochs": 1})
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
  assert "at step 1" in errors[0] and "became" in errors[0]


def test_unwritable_or_full_workdir_is_refused_before_training(tmp_path, monkeypatch):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  for workdir in (str(a_file), str(a_file / "run"), "/proc/atent_jax_test_run"):
    with pytest.raises(WorkdirError):
      train.train_and_evaluate(_config(), workdir)
  if os.geteuid() != 0:  # root writes anywhere: the permission check needs a normal user
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(WorkdirError, match="not writable"):
      workdir_lib.prepare(str(ro / "run"))

  class Usage:
    free = 1024
  monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda path: Usage())
  workdir = tmp_path / "full"
  with pytest.raises(WorkdirError, match="MiB free"):
    train.train_and_evaluate(_config(), str(workdir))
  assert os.listdir(workdir) == []  # neither config nor checkpoints were written


def test_lock_refuses_a_live_run_and_takes_over_a_dead_ones(tmp_path):
  with workdir_lib.RunLock(str(tmp_path)) as lock:
    with open(lock.path) as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(WorkdirError, match=f"pid {os.getpid()}"):
      workdir_lib.RunLock(str(tmp_path)).acquire()
  assert not os.path.exists(lock.path)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  with open(lock.path, "w") as f:
    json.dump({"pid": int(dead), "host": socket.gethostname()}, f)
  with pytest.warns(AtentWarning, match="stale lock"):
    workdir_lib.RunLock(str(tmp_path)).acquire().release()
  with open(lock.path, "w") as f:
    json.dump({"pid": 1, "host": "another-host"}, f)
  with pytest.raises(WorkdirError, match="another-host"):
    workdir_lib.RunLock(str(tmp_path)).acquire()


def test_checkpoints_and_results_load_without_executing_code():
  for name in ("checkpoint.py", "train.py", "workdir.py", "configuration.py"):
    with open(os.path.join(ROOT, "atent_jax", name)) as f:
      source = f.read()
    for unsafe in ("import pickle", "pickle.load", "cloudpickle", "dill", "eval(", "exec("):
      assert unsafe not in source, (name, unsafe)
