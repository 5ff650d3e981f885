"""The built-in default (experiments/configs/default.py) is the demo the README quotes.

Its settings are pinned here, by value: the README's quickstart block states the time and the
accuracies measured with exactly these (a change must be measured again and the README updated).
And the paper configs, which start from default.py, must not inherit the demo's settings: each
sets every field in which the demo departs from the paper.
"""

import glob
import importlib.util
import os
import sys

import pytest

from atent_jax.configuration import flatten_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
sys.path.insert(0, ROOT)
from experiments.configs import config_base  # the module every config calls default_config() of

# The measured demo (README, "Set up"). The values in which it departs from the paper's Table 2
# setting (mnist_linf.py) are marked; everything else is the paper's or the library default.
DEMO = {
    "seed": 0,
    "method": "atent_linf",
    "model.name": "small_cnn",
    "model.dropout_rate": 0.5,
    "data.dataset": "mnist",
    "data.source": "auto",                 # offline: the built-in sample when no data is set up
    "data.num_train": -1,
    "data.num_validation": 0,
    "data.eval_split": "test",
    "train.num_epochs": 3,                 # demo (paper: 100)
    "train.batch_size": 128,
    "train.learning_rate": 0.05,           # demo (paper: 0.01)
    "train.momentum": 0.9,
    "train.weight_decay": 1e-4,
    "train.lr_decay_epochs": (),           # demo (paper: 55, 75, 90)
    "sampler.norm": "linf",
    "sampler.eps": 0.1,                    # demo (paper: 0.3)
    "sampler.step_size": 0.025,            # demo (paper: 0.01 with K 40 at eps 0.3)
    "sampler.num_steps": 5,                # demo (paper: 40)
    "sampler.noise_scale": 1e-3,
    "sampler.alpha": 0.9,
    "sampler.random_init": True,
    "sampler.project_every_step": False,   # the paper's Algorithm 2
    "sampler.update_rule": "code",
    "sampler.fused": True,
    "sampler.ema_tolerance": 0.0,
    "eval.every_epochs": 1,
    "eval.num_examples": 1000,
    "eval.norm": "linf",
    "eval.eps": 0.1,                       # demo (paper: 0.3)
    "eval.num_steps": 20,
    "eval.step_size": 0.01,
    "eval.restarts": 1,
    "early_stopping": True,
    "early_stopping_metric": "robust_accuracy",
}

# The demo's departures from the paper: a paper config that left one of them to default.py
# would silently train the demo's setting.
DEMO_DEPARTURES = {
    "train.num_epochs": 77, "train.learning_rate": 0.0777, "train.lr_decay_epochs": (7,),
    "sampler.eps": 0.0777, "sampler.num_steps": 7, "sampler.step_size": 0.0777,
    "eval.eps": 0.0777,
}


def _flat(config):
  """flatten_config with sequences as tuples (a ConfigDict may hold either)."""
  return {key: tuple(value) if isinstance(value, list) else value
          for key, value in flatten_config(config).items()}


def _load(path, arg=None):
  spec = importlib.util.spec_from_file_location(
      "atent_test_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, (module.get_config(arg) if arg else module.get_config())


def test_the_default_config_is_the_measured_demo():
  _, config = _load(os.path.join(CONFIGS, "default.py"))
  validate_config(config)
  flat = _flat(config)
  assert {key: flat[key] for key in DEMO} == DEMO


def _experiment_configs():
  """(file, argument) of every experiment config: each argument of a file's ARGS (its rows and
  their variants)."""
  out = []
  for path in sorted(glob.glob(os.path.join(CONFIGS, "*.py"))):
    name = os.path.basename(path)
    if name in ("default.py", "config_base.py", "__init__.py"):
      continue
    module, _ = _load(path)
    out.extend((name, arg) for arg in module.ARGS)
  return out


@pytest.mark.parametrize("name,variant", _experiment_configs())
def test_experiment_configs_set_every_field_the_demo_departs_in(name, variant, monkeypatch):
  path = os.path.join(CONFIGS, name)
  _, normal = _load(path, variant)

  original = config_base.default_config

  def poisoned_default():
    config = original()
    for key, value in DEMO_DEPARTURES.items():
      section, field = key.split(".")
      config[section][field] = value
    return config

  monkeypatch.setattr(config_base, "default_config", poisoned_default)
  _, with_poison = _load(path, variant)
  assert _flat(with_poison) == _flat(normal)


@pytest.mark.parametrize("name", sorted({name for name, _ in _experiment_configs()}))
def test_experiment_configs_start_from_config_base(name, monkeypatch):
  # The poisoning above reaches a config only through config_base.default_config.
  def missing():
    raise LookupError("config_base.default_config was called")

  monkeypatch.setattr(config_base, "default_config", missing)
  with pytest.raises(LookupError):
    _load(os.path.join(CONFIGS, name))
