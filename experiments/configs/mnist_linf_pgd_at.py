"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row PGD-AT: Madry et al.'s PGD adversarial training with the table's PGD (random start, projection every step).

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_pgd_at.py --workdir=runs/mnist_linf_pgd_at \
      --config.data.dir=../shared/data/mnist
"""

import importlib.util
import os

import ml_collections


def _base_config():
  """The ATENT row's config of this table, loaded from the sibling file (not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_linf.py")
  spec = importlib.util.spec_from_file_location("_atent_mnist_linf_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  config = _base_config()
  config.method = "pgd_at"
  config.sampler.random_init = True
  return config
