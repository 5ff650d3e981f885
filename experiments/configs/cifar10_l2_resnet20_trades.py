"""Table 4 baseline: l_2 TRADES (Zhang et al.) on ResNet-20, eps 0.5 (`:eps1` for 1.0).

TRADES with beta 6 (its default), inner l_2 PGD on the KL, 10 steps of 2*eps/10 (our choice,
the ATENT row's step); data, model, schedule and evaluation as cifar10_l2_resnet20.py.

  python experiments/main.py --config=experiments/configs/cifar10_l2_resnet20_trades.py \
      --workdir=runs/cifar10_l2_trades --config.data.dir=/data/cifar-10-batches-py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str | None = None):
  import cifar10_l2_resnet20
  config = cifar10_l2_resnet20.get_config(arg)
  config.method = "trades"
  config.sampler.gamma = 0.0
  config.trades_beta = 6.0
  return config
