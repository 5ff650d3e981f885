"""Table 2, MNIST l_inf (SmallCNN, eps 0.3), row Entropy-SGD.

Chaudhari et al., Algorithm 3 of the paper: K = 5 Langevin steps in weight space, gamma 1e-3.

Starts from the ATENT row's config (experiments/configs/mnist_linf.py: model, data, optimiser,
sampler and evaluation settings of the table) and changes only the method. Run:
  python experiments/main.py --config=experiments/configs/mnist_linf_entropy_sgd.py \
      --workdir=runs/mnist_linf_entropy_sgd --config.data.dir=../shared/data/mnist
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import clean_baseline, load  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  config = load("mnist_linf")
  config.method = "entropy_sgd"
  clean_baseline(config)  # early stopping on clean accuracy
  config.entropy_sgd.num_steps = 5
  config.entropy_sgd.gamma = 1e-3
  # The paper's Entropy-SGD runs (Appendix B): lr 0.1, 50 epochs, batch 128. Algorithm 3's outer
  # step is lr * gamma * (w - mu), so with gamma 1e-3 the weights move slowly by design.
  config.train.learning_rate = 0.1
  config.train.num_epochs = 50
  config.train.lr_decay_epochs = ()
  return config
