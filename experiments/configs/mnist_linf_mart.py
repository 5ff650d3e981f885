"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row MART.

Wang et al., beta 6, boosted CE on PGD points + beta KL (1 - p_y(x)).

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_mart.py \
      --workdir=runs/mnist_linf_mart --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_linf")
  config.sampler.num_steps = 40  # TRADES' MNIST setting (the ATENT row samples 80)
  config.method = "mart"
  config.mart_beta = 6.0
  return config
