"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row MMA.

Ding et al.'s margin maximisation (simplified: PGD at max_eps + bisection to the margin point; see
atent_jax/methods/mma.py).

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_mma.py \
      --workdir=runs/mnist_linf_mma --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_linf")
  config.sampler.num_steps = 40  # TRADES' MNIST setting (the ATENT row samples 80)
  config.method = "mma"
  config.mma.clean_weight = 1.0 / 3.0
  config.mma.max_eps = 0.4
  return config
