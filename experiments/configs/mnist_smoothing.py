"""Randomized smoothing on MNIST / LeNet5 (a Table 5 analogue, reduced scale on the local files).

`--config=experiments/configs/mnist_smoothing.py:ROW`, ROW one of (default first):

* `atent_l2`: l_2-ATENT whose Langevin noise has std sigma. The paper (Table 5, CIFAR-10) trains
  l_2-ATENT with gamma 0.05, step 0.02, K 10 and tunes the noise scale so that the effective
  per-step noise sqrt(2 * step) * noise_scale has standard deviation sigma = 0.12, then certifies
  with Cohen et al.'s CERTIFY at sigma 0.12. This is the same recipe on MNIST / LeNet5, starting
  from mnist_l2.py (its `code` variant), 20 epochs with lr x0.1 at 15.
* `noise_aug`: the baseline, Gaussian noise augmentation at sigma 0.12 (Cohen et al.'s training),
  same data, model and schedule.

  python experiments/main.py --config=experiments/configs/mnist_smoothing.py:atent_l2 \
      --workdir=runs/smooth_atent --config.data.dir=../shared/data/mnist
  python experiments/certify.py --workdir=runs/smooth_atent --sigma=0.12
  python experiments/main.py --config=experiments/configs/mnist_smoothing.py:noise_aug \
      --workdir=runs/smooth_noise --config.data.dir=../shared/data/mnist
  python experiments/certify.py --workdir=runs/smooth_noise --sigma=0.12
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments.configs import config_base

ROWS = ("atent_l2", "noise_aug")
ARGS = ROWS  # every config of this file
SIGMA = 0.12


def get_config(arg: str | None = None):
  (row,) = config_base.parse_arg("mnist_smoothing.py", arg, row=ROWS)
  config = config_base.load("mnist_l2.py")
  config.sampler.gamma = 0.05
  config.sampler.step_size = 0.02
  config.sampler.num_steps = 10
  config.sampler.eps = 0.435               # the certified l_2 radius of Table 5
  config.sampler.noise_scale = SIGMA / math.sqrt(2 * config.sampler.step_size)  # = 0.6
  config.eval.eps = 0.435
  config.eval.num_steps = 10
  config.eval.step_size = 2.5 * 0.435 / 10
  config.train.num_epochs = 20
  config.train.lr_decay_epochs = (15,)
  if row == "noise_aug":
    config.method = "noise_aug"
    config.noise_aug_sigma = SIGMA
  return config
