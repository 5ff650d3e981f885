"""Shared fixtures: the tiny config every end-to-end test starts from, and a tiny trained run.

    def test_something(tiny_config, tiny_run):
      config = tiny_config("atent_linf", **{"train.num_epochs": 2})
      logits_fn = atent_jax.load_classifier(tiny_run)   # a private copy of the trained run

The builder itself is tests/tiny.py (`from tiny import make_tiny_config` where a plain function
is needed). The trained run is made once per test session (once per xdist worker) and copied
for each test that asks for it, so a test may write into its copy.
"""

import shutil

import pytest
from tiny import make_tiny_config


@pytest.fixture(scope="session")
def tiny_config():
  """`tiny_config(method="sgd", **{"dotted.key": value})` -> a ConfigDict (see _TINY)."""
  return make_tiny_config


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory) -> str:
  """The trained run itself, shared by the session: read it or copy it, never write into it
  (module-scoped fixtures copy it; tests take `tiny_run`)."""
  from atent_jax import train
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  # Two SGD steps: the model is barely trained; what uses it tests plumbing, not accuracy.
  config = make_tiny_config("sgd", **{"data.num_train": 64, "data.num_eval": 32,
                                      "eval.num_examples": 16, "eval.batch_size": 16,
                                      "eval.num_steps": 1, "eval.eps": 0.3})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> str:
  """A private copy of a SmallCNN workdir trained for two SGD steps (eval eps 0.3)."""
  workdir = str(tmp_path / "tiny_run")
  shutil.copytree(tiny_run_template, workdir)
  return workdir
