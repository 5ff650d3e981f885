"""Table 4 baseline: l_2 TRADES (Zhang et al.) on ResNet-20, eps 0.5 (`:eps1` for 1.0).

TRADES with beta 6 (its default), inner l_2 PGD on the KL, 10 steps of 2*eps/10 (our choice,
the paper's ATENT step rule, whichever variant); data, model, schedule and evaluation as
cifar10_l2_resnet20.py (its `code` variant unless the argument names `paper`).

  python experiments/main.py --config=experiments/configs/cifar10_l2_resnet20_trades.py \
      --workdir=runs/cifar10_l2_trades --config.data.dir=/data/cifar-10-batches-py
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
  config.method = "trades"
  config.sampler.gamma = 0.0
  config.trades_beta = 6.0
  return config
