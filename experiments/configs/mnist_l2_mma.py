"""Table 1, MNIST l_2 (LeNet5, eps 2), row MMA: Ding et al.'s margin maximisation (simplified: PGD
at max_eps + bisection to the margin point; see atent_jax/methods/mma.py).

Starts from the ATENT row's config (experiments/configs/mnist_l2.py, its `code` variant: model,
data, optimiser, epochs, K 40 and evaluation of the table), changes the method and keeps the
paper's PGD step 0.25 for its inner attack. Run:
  python experiments/main.py --config=experiments/configs/mnist_l2_mma.py \
      --workdir=runs/mnist_l2_mma \
      --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_l2")
  config.method = "mma"
  config.sampler.step_size = 0.25  # the paper's PGD step (the ATENT row samples with 0.125)
  config.mma.clean_weight = 1.0 / 3.0
  config.mma.max_eps = 4.0  # Ding et al.'s MMA-4.0 for MNIST l_2
  return config
