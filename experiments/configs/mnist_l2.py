"""Table 1 (MNIST, l_2 eps 2): l_2-ATENT on advertorch's LeNet5, the paper's settings.

batch 50, SGD lr 0.01 (the authors' code; the paper's text says 0.001), gamma 0.05, noise 1e-3,
K 40 Langevin steps of 0.25, alpha 0.9, eps 2; evaluated with PGD-40 (step 0.25). Momentum,
weight decay and the number of epochs are not given by the paper: we use momentum 0.9, weight
decay 1e-4 and 100 epochs with lr x0.1 at 55, 75, 90 (as mnist_linf.py), with early stopping
on a validation split.

  python experiments/main.py --config=experiments/configs/mnist_l2.py --workdir=runs/mnist_l2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import default_config  # noqa: E402


def get_config():
  config = default_config()
  config.method = "atent_l2"
  config.model.name = "lenet5"
  config.data.num_validation = 1000
  config.data.eval_split = "validation"  # early stopping; report with experiments/evaluate.py
  config.train.num_epochs = 100
  config.train.batch_size = 50
  config.train.learning_rate = 0.01
  config.train.momentum = 0.9
  config.train.weight_decay = 1e-4
  config.train.lr_decay_epochs = (55, 75, 90)
  config.sampler.norm = "l2"
  config.sampler.eps = 2.0
  config.sampler.step_size = 0.25
  config.sampler.num_steps = 40
  config.sampler.gamma = 0.05
  config.sampler.noise_scale = 1e-3
  config.sampler.alpha = 0.9
  config.eval.norm = "l2"
  config.eval.eps = 2.0
  config.eval.num_steps = 40
  config.eval.step_size = 0.25
  config.eval.num_examples = 1000
  return config
