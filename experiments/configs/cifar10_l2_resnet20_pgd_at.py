"""Table 4 baseline: l_2 PGD-AT (Madry et al.) on ResNet-20, eps 0.5 (`:eps1` for 1.0).

Same data, model, schedule and evaluation as cifar10_l2_resnet20.py (its `code` variant unless
the argument names `paper`, e.g. `:paper,eps1`); inner PGD-10 with a random start and step
2*eps/10 (the paper's ATENT step rule, whichever variant; our choice), projection every step.

  python experiments/main.py --config=experiments/configs/cifar10_l2_resnet20_pgd_at.py \
      --workdir=runs/cifar10_l2_pgd_at --config.data.dir=/data/cifar-10-batches-py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10_l2_resnet20  # noqa: E402


def get_config(arg: str | None = None):
  config = cifar10_l2_resnet20.get_config(arg)
  # The inner attack keeps 10 steps of 2 * eps / 10 (the `code` ATENT sampler steps 0.5 * eps / K).
  config.sampler.num_steps = 10
  config.sampler.step_size = 2 * config.sampler.eps / 10
  config.method = "pgd_at"
  config.sampler.gamma = 0.0
  config.sampler.random_init = True
  return config

