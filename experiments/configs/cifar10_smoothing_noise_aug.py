"""Randomized smoothing baseline on CIFAR-10 / ResNet-20: Gaussian noise augmentation at
sigma 0.12 (Cohen et al.'s training), data, model and schedule of cifar10_smoothing_atent_l2.py.

  python experiments/main.py --config=experiments/configs/cifar10_smoothing_noise_aug.py \
      --workdir=runs/cifar10_smooth_noise --config.data.dir=/data/cifar-10-batches-py
  python experiments/certify.py --workdir=runs/cifar10_smooth_noise --sigma=0.12
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config():
  config = load("cifar10_smoothing_atent_l2")
  config.method = "noise_aug"
  config.noise_aug_sigma = 0.12
  return config
