"""Fine-tuning a naturally trained WRN-34-10 with l_inf-ATENT (the paper: 52.1% at 8/255).

Paper: start from a naturally (SGD) trained WRN-34-10, ATENT with the Table 3 sampler
(K 10, step 0.007, eps 8/255, noise 1e-3), lr 1e-4, 20 epochs. No fine-tuning script is
among the authors' stored files. Our choices: constant lr (no decay), the rest of
cifar10_linf_wrn.py in its `code` variant (sampler radius 0.031, weight decay 5e-4, momentum
0.9, crop + flip, early stopping on the validation split). The natural model is a run of the
same architecture, e.g. --config=experiments/configs/cifar10_linf_wrn.py --config.method=sgd:

  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn.py \
      --config.method=sgd --workdir=runs/cifar10_wrn_natural --config.data.dir=/data/cifar10
  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn_finetune.py \
      --workdir=runs/cifar10_wrn_finetune --config.train.init_from=runs/cifar10_wrn_natural \
      --config.data.dir=/data/cifar10
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import load  # noqa: E402


def get_config():
  config = load("cifar10_linf_wrn")
  config.train.init_from = ""              # set on the command line: the natural run's workdir
  config.train.learning_rate = 1e-4
  config.train.num_epochs = 20
  config.train.lr_decay_epochs = ()
  return config
