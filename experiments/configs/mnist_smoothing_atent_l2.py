"""Randomized smoothing (Table 5 analogue on MNIST): l_2-ATENT whose Langevin noise has std sigma.

The paper (Table 5, CIFAR-10) trains l_2-ATENT with gamma 0.05, step 0.02, K 10 and tunes the
noise scale so that the effective per-step noise sqrt(2 * step) * noise_scale has standard
deviation sigma = 0.12, then certifies with Cohen et al.'s CERTIFY at sigma 0.12. This is the
same recipe on MNIST / LeNet5 (reduced scale on the local files):

  python experiments/main.py --config=experiments/configs/mnist_smoothing_atent_l2.py \
      --workdir=runs/smooth_atent --config.data.dir=../shared/data/mnist
  python experiments/certify.py --workdir=runs/smooth_atent --sigma=0.12
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402

SIGMA = 0.12


def get_config():
  config = load("mnist_l2")
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
  return config
