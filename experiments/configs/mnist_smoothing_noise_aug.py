"""Randomized smoothing baseline on MNIST / LeNet5: Gaussian noise augmentation at sigma 0.12
(Cohen et al.'s training), same schedule as mnist_smoothing_atent_l2.py.

  python experiments/main.py --config=experiments/configs/mnist_smoothing_noise_aug.py \
      --workdir=runs/smooth_noise --config.data.dir=../shared/data/mnist
  python experiments/certify.py --workdir=runs/smooth_noise --sigma=0.12
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config():
  config = load("mnist_smoothing_atent_l2")
  config.method = "noise_aug"
  config.noise_aug_sigma = 0.12
  return config
