"""Table 1, MNIST l_2 (LeNet5, eps 2), row TRADES: Zhang et al., beta 6, x' from PGD on the KL
started at x + 0.001 N(0, I).

Starts from the ATENT row's config (experiments/configs/mnist_l2.py, its `code` variant: model,
data, optimiser, epochs, K 40 and evaluation of the table), changes the method and keeps the
paper's PGD step 0.25 for its inner attack. Run:
  python experiments/main.py --config=experiments/configs/mnist_l2_trades.py \
      --workdir=runs/mnist_l2_trades \
      --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_l2")
  config.method = "trades"
  config.sampler.step_size = 0.25  # the paper's PGD step (the ATENT row samples with 0.125)
  config.trades_beta = 6.0
  return config
