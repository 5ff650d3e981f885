"""README.md's "Extending" example, run as written: a training method added as one module plus
one registry line validates, and trains through train_and_evaluate."""

import os
import re
import types

import jax
import numpy as np
import pytest
from tiny import make_tiny_config

import atent_jax
from atent_jax import configuration, methods, models, train
from atent_jax.data import DATASETS
from atent_jax.errors import ConfigError

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MARKER = "<!-- extending-example"

# Two steps of 32 synthetic images; a small evaluation.
TWO_STEPS = {"data.source": "synthetic", "data.synthetic_examples": 64, "data.num_train": -1,
             "data.num_eval": 32, "train.batch_size": 32, "train.num_epochs": 1,
             "eval.num_examples": 16, "eval.batch_size": 16, "eval.num_steps": 1}


def readme_example() -> str:
  """The python block right after the marker line of README.md's "Extending" section."""
  with open(README) as f:
    text = f.read()
  assert text.count(MARKER) == 1, f"README.md needs exactly one {MARKER!r} line"
  after = text[text.index(MARKER):].split("\n", 1)[1]
  match = re.match(r"```python\n(.*?)\n```", after, re.S)
  assert match, "the marker line must be followed directly by a ```python block"
  return match.group(1)


@pytest.fixture
def fgsm_at():
  """The README's module, executed as a module of its own; unregistered afterwards."""
  module = types.ModuleType("fgsm_at")
  try:
    exec(compile(readme_example(), "README.md (Extending)", "exec"), module.__dict__)
    yield module
  finally:
    methods.METHODS.pop("fgsm_at", None)


def test_readme_method_is_registered_and_checked(fgsm_at):
  record = methods.get("fgsm_at")
  assert record.make_grad_fn is fgsm_at.make_fgsm_at and record.display_name == "FGSM-AT"
  configuration.validate_config(make_tiny_config("fgsm_at", **TWO_STEPS))
  l2 = make_tiny_config("fgsm_at", **TWO_STEPS, **{"sampler.norm": "l2", "sampler.eps": 2.0})
  with pytest.raises(ConfigError, match="l_inf only"):
    configuration.validate_config(l2)
  with pytest.raises(ValueError, match="already registered"):
    methods.register(record)


def test_readme_method_trains(fgsm_at, tmp_path):
  config = make_tiny_config("fgsm_at", **TWO_STEPS)
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 2
  assert np.isfinite(metrics["train_loss"])
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 2)
  start = train.init_state(config, model, tx, DATASETS[config.data.dataset][0]).params
  _, _, variables = atent_jax.load_run(workdir, "latest")
  before, after = jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(variables["params"])
  assert len(before) == len(after)
  assert all(np.all(np.isfinite(a)) for a in after)
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_unknown_method_lists_the_registry():
  with pytest.raises(ConfigError, match="is not known: use one of .*atent_linf.*trades"):
    methods.get("fgsm_at")
