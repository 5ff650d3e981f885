"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row SGD: clean training (no adversarial examples).

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_sgd.py \
      --workdir=runs/mnist_linf_sgd --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import clean_baseline, load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_linf")
  config.method = "sgd"
  clean_baseline(config)  # early stopping on clean accuracy
  return config
