"""Table 1, MNIST l_2 (LeNet5, eps 2), row SGD: clean training (no adversarial examples).

Starts from the ATENT row's config (experiments/configs/mnist_l2.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_l2_sgd.py --workdir=runs/mnist_l2_sgd \
      --config.data.dir=../shared/data/mnist
"""

import importlib.util
import os

import ml_collections


def _base_config():
  """The ATENT row's config of this table, loaded from the sibling file (not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_l2.py")
  spec = importlib.util.spec_from_file_location("_atent_mnist_l2_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  config = _base_config()
  config.method = "sgd"
  return config
