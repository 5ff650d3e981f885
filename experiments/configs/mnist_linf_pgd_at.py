"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row PGD-AT.

Madry et al.'s PGD adversarial training with the table's PGD (random start, projection every step).

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_pgd_at.py \
      --workdir=runs/mnist_linf_pgd_at --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_linf")
  config.sampler.num_steps = 40  # TRADES' MNIST setting (the ATENT row samples 80)
  config.method = "pgd_at"
  config.sampler.random_init = True
  return config
