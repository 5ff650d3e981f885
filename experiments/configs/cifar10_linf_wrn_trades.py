"""Table 3 baseline: TRADES (Zhang et al.) on WRN-34-10, l_inf eps 8/255.

TRADES' own CIFAR-10 settings, which the paper's Table 3 setup follows: beta 6 (1/lambda),
inner PGD on the KL with 10 steps of 0.007 from x + 0.001 N(0, I) within eps 0.031, batch 128,
lr 0.1 x0.1 from the 75th epoch on (TRADES' `epoch >= 75`, as the `code` variant of
cifar10_linf_wrn.py this starts from), 76 epochs, weight decay 5e-4; evaluation as
cifar10_linf_wrn.py (PGD-20 step 0.003 at 8/255, no random start). Our choice: early stopping on
the validation split.

  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn_trades.py \
      --workdir=runs/cifar10_linf_wrn_trades --config.data.dir=/data/cifar-10-batches-py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config():
  config = load("cifar10_linf_wrn")
  config.method = "trades"
  config.trades_beta = 6.0
  return config
