"""atent_jax.runs: a run loaded back from its workdir, and fine-tuning from another run's weights
(config.train.init_from)."""

import os

import chex
import jax
import numpy as np
import pytest
from scripts import run_script

import atent_jax
from atent_jax import models, runs, train
from atent_jax.errors import CheckpointError


def test_load_run_gives_the_model_the_classifier_evaluates(tiny_run):
  config, model, variables = runs.load_run(tiny_run)
  assert config.method == "sgd" and config.model.name == "small_cnn"
  images, labels = runs.load_eval_split(tiny_run, "test")
  chex.assert_rank(images, 4)
  assert len(images) == len(labels) > 0
  x = np.asarray(images[:8], np.float32)
  logits_fn = atent_jax.load_classifier(tiny_run)
  want = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(np.asarray(logits_fn(x)), np.asarray(want))
  # The package-level names are these functions.
  assert atent_jax.load_run is runs.load_run and atent_jax.load_classifier is runs.load_classifier


def test_a_folder_without_a_run_is_refused_with_one_clear_error(tmp_path):
  with pytest.raises(CheckpointError, match="holds no config.json"):
    runs.load_run(str(tmp_path))
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(CheckpointError, match="is corrupt"):
    runs.load_config(str(tmp_path))


def test_init_from_starts_from_the_other_runs_latest_weights(tiny_run, tiny_config, tmp_path):
  # With a learning rate of 1e-30 the run's own step cannot move a float32 weight of the size
  # SmallCNN's are: what the run ends with is what it started from. One training step (32
  # images, batch 32); the evaluation is the template run's (tests/conftest.py), so its programs
  # come from the compilation cache.
  config = tiny_config("sgd", **{"train.init_from": tiny_run, "train.learning_rate": 1e-30,
                                 "train.momentum": 0.0, "train.weight_decay": 0.0,
                                 "data.num_train": 32, "data.num_eval": 32,
                                 "eval.num_examples": 16, "eval.batch_size": 16,
                                 "eval.num_steps": 1, "eval.eps": 0.3})
  workdir = str(tmp_path / "finetuned")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 1  # the run did take its own step
  _, _, start = runs.load_run(tiny_run, "latest")
  _, _, end = runs.load_run(workdir, "latest")
  chex.assert_trees_all_close(end["params"], start["params"], rtol=0, atol=1e-20)
  # ... and not the weights a fresh initialisation would have given.
  fresh = jax.tree_util.tree_leaves(train.init_state(
      config, models.get_model(config.model), train.make_optimizer(config, 1)[0],
      (28, 28, 1)).params)
  assert any(not np.array_equal(a, b)
             for a, b in zip(fresh, jax.tree_util.tree_leaves(start["params"])))


def test_init_from_a_run_of_another_architecture_is_refused(tiny_run, tiny_config, tmp_path):
  # tiny_run is a SmallCNN run: a LeNet-5 run may not start from its weights (no run of its own
  # is trained for this; the check compares the two models' parameter shapes). The refusal
  # comes before anything is written.
  config = tiny_config("sgd", **{"model.name": "lenet5", "train.init_from": tiny_run})
  workdir = tmp_path / "lenet"
  with pytest.raises(CheckpointError, match="another architecture"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def _tree_bytes(workdir: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kept_weights_replace_the_checkpoints_and_load_as_the_cast_best_weights(tiny_run,
                                                                                 dtype):
  _, model, before = runs.load_run(tiny_run, "best")
  x = np.asarray(runs.load_eval_split(tiny_run, "test")[0][:8], np.float32)
  size_before = _tree_bytes(tiny_run)
  info = runs.keep_weights(tiny_run, dtype)
  assert not os.path.exists(os.path.join(tiny_run, "best"))
  assert not os.path.exists(os.path.join(tiny_run, "checkpoints"))
  _, _, after = runs.load_run(tiny_run, "latest")  # the kept weights, whichever is asked for
  # The expectation: each float32 weight rounded to `dtype` by NumPy, then widened back.
  want = jax.tree_util.tree_map(lambda v: np.asarray(v).astype(dtype).astype(np.float32), before)
  chex.assert_trees_all_equal(after, want)
  chex.assert_trees_all_equal_dtypes(after, before)
  assert info["weights_sha1"] == runs.weights_sha1(want)
  assert info["weights_sha1_before"] == runs.weights_sha1(before)
  assert (info["weights_sha1"] == info["weights_sha1_before"]) == (dtype == "float32")
  assert info["best"]["epoch"] >= 1
  logits = np.asarray(atent_jax.load_classifier(tiny_run)(x))
  np.testing.assert_array_equal(logits, np.asarray(model.apply(want, x, train=False)))
  # Weights and momentum in float32 before; the weights alone, in dtype, after.
  params = sum(np.asarray(v).size for v in jax.tree_util.tree_leaves(before))
  kept = _tree_bytes(os.path.join(tiny_run, "kept_weights"))
  assert kept < params * np.dtype(dtype).itemsize + 4096 < size_before
  with pytest.raises(CheckpointError, match="kept before"):
    runs.keep_weights(tiny_run, dtype)


def test_a_run_with_kept_weights_cannot_be_resumed_or_kept_unfinished(tiny_run, tiny_config,
                                                                       tmp_path):
  runs.keep_weights(tiny_run)
  config = runs.load_config(tiny_run)
  with pytest.raises(atent_jax.ConfigError, match="kept weights"):
    train.train_and_evaluate(config, tiny_run)
  unfinished = str(tmp_path / "unfinished")
  train.train_and_evaluate(tiny_config("sgd", **{"data.num_train": 64, "data.num_eval": 32,
                                                 "eval.num_examples": 16, "eval.batch_size": 16,
                                                 "eval.num_steps": 1}), unfinished)
  with open(os.path.join(unfinished, "metrics.jsonl")) as f:
    lines = f.readlines()
  config = runs.load_config(unfinished)
  config.train.num_epochs = len(lines) + 1  # one epoch short of the (now longer) run
  with open(os.path.join(unfinished, "config.json"), "w") as f:
    f.write(config.to_json())
  with pytest.raises(CheckpointError, match="has not finished training"):
    runs.keep_weights(unfinished)
  assert os.path.isdir(os.path.join(unfinished, "checkpoints"))


def test_keep_weights_script_keeps_a_run_and_refuses_bad_input_in_one_line(tiny_run, tmp_path):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  for args, field in ((["--workdir=" + empty], "--workdir"),
                      (["--workdir=" + tiny_run, "--dtype=int8"], "--dtype")):
    res = run_script("keep_weights.py", args)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], lines
  assert os.listdir(empty) == [] and os.path.isdir(os.path.join(tiny_run, "checkpoints"))
  res = run_script("keep_weights.py", ["--workdir=" + tiny_run, "--dtype=float16"])
  assert res.returncode == 0 and "as float16" in res.stdout, res
  assert not os.path.isdir(os.path.join(tiny_run, "checkpoints"))
  res = run_script("keep_weights.py", ["--workdir=" + tiny_run])
  assert res.returncode == 2 and "kept before" in res.stderr, res
