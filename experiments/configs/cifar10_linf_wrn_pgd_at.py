"""Table 3 baseline: PGD-AT (Madry et al.) on WRN-34-10, l_inf eps 8/255.

Same data, model, schedule and evaluation as cifar10_linf_wrn.py in its `code` variant (training
radius 0.031, lr x0.1 for the last two of 76 epochs; the paper reports PGD-AT from its
literature: 47.04%, 56.80% with early stopping). Madry et al.'s inner maximisation: PGD with a
random start, 10 steps of 0.007 (~2/255), projection every step, loss on the adversarial points
only. Our choice: the same early stopping on a validation split.

  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn_pgd_at.py \
      --workdir=runs/cifar10_linf_wrn_pgd_at --config.data.dir=/data/cifar-10-batches-py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config():
  config = load("cifar10_linf_wrn")
  config.method = "pgd_at"
  config.sampler.random_init = True
  return config
