"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row TRADES.

Zhang et al., beta 6, x' from PGD on the KL started at x + 0.001 N(0, I).

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_trades.py \
      --workdir=runs/mnist_linf_trades --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_linf")
  config.sampler.num_steps = 40  # TRADES' MNIST setting (the ATENT row samples 80)
  config.method = "trades"
  config.trades_beta = 6.0
  return config
