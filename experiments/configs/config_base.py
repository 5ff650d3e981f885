"""What the experiment configs share: the library's default config (every key that exists),
loading a sibling config file, and the clean-baseline rule (configs are files, not a package)."""

import importlib.util
import os

from atent_jax.configuration import default_config  # noqa: F401  (the configs import it here)


def load(name: str):
  """get_config() of another config file in this folder (e.g. 'mnist_l2')."""
  spec = importlib.util.spec_from_file_location(
      f"atent_config_{name}", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def clean_baseline(config):
  """A row trained without adversarial examples (SGD, Entropy-SGD): early stopping keeps its
  most accurate epoch, not its most robust one (that would pick a half-trained model and
  flatter the baseline)."""
  config.early_stopping_metric = "clean_accuracy"
  return config
