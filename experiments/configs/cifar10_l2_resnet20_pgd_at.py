"""Table 4 baseline: l_2 PGD-AT (Madry et al.) on ResNet-20, eps 0.5 (`:eps1` for 1.0).

Same data, model, schedule and evaluation as cifar10_l2_resnet20.py; inner PGD-10 with a random
start and step 2*eps/10 (the ATENT row's step; our choice), projection every step.

  python experiments/main.py --config=experiments/configs/cifar10_l2_resnet20_pgd_at.py \
      --workdir=runs/cifar10_l2_pgd_at --config.data.dir=/data/cifar-10-batches-py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str | None = None):
  import cifar10_l2_resnet20
  config = cifar10_l2_resnet20.get_config(arg)
  config.method = "pgd_at"
  config.sampler.gamma = 0.0
  config.sampler.random_init = True
  return config

