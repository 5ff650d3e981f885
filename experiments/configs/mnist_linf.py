"""Table 2 (MNIST, l_inf eps 0.3): l_inf-ATENT on SmallCNN, the paper's settings.

batch 128, SGD lr 0.01 momentum 0.9, weight decay 1e-4, K 40 Langevin steps of 0.01, noise 1e-3,
alpha 0.9, eps 0.3; evaluated with PGD-20 (step 0.01). The paper does not give the number of
epochs or the schedule: we use TRADES' MNIST schedule (100 epochs, lr x0.1 at 55, 75, 90),
whose configuration the paper says it follows, and early stopping on a validation split.

  python experiments/main.py --config=experiments/configs/mnist_linf.py --workdir=runs/mnist_linf
Reduced-scale on the local files: add --config.data.dir=../shared/data/mnist.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import default_config  # noqa: E402


def get_config():
  config = default_config()
  config.method = "atent_linf"
  config.model.name = "small_cnn"
  config.data.num_validation = 1000
  config.data.eval_split = "validation"  # early stopping; report with experiments/evaluate.py
  config.train.num_epochs = 100
  config.train.batch_size = 128
  config.train.learning_rate = 0.01
  config.train.momentum = 0.9
  config.train.weight_decay = 1e-4
  config.train.lr_decay_epochs = (55, 75, 90)
  config.sampler.norm = "linf"
  config.sampler.eps = 0.3
  config.sampler.step_size = 0.01
  config.sampler.num_steps = 40
  config.sampler.noise_scale = 1e-3
  config.sampler.alpha = 0.9
  config.eval.norm = "linf"
  config.eval.eps = 0.3
  config.eval.num_steps = 20
  config.eval.step_size = 0.01
  config.eval.num_examples = 1000
  return config
