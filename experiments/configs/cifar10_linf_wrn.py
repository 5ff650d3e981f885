"""Table 3 (CIFAR-10, l_inf eps 8/255): l_inf-ATENT on WideResNet-34-10.

Paper: WRN-34-10, batch 128, SGD lr 0.1 momentum 0.9, weight decay 5e-4, lr x0.1 at epoch 75 of
76, K 10 Langevin steps of 0.007, eps 8/255, noise 1e-3, alpha 0.9, random crop (pad 4) + flip;
evaluated with PGD-20 step 0.003 eps 8/255 without random start (the TRADES evaluator).
Authors' code (and TRADES'): images in [0, 1] without per-channel normalisation (mean 0, std 1
here), WRN without dropout. Our choices: early stopping on 1,000 training images held out as a
validation split (the metrics and best/ are on that split; evaluate the test split afterwards),
a checkpoint every 200 steps besides the end of each epoch.

One host (all its GPUs, data parallel):
  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn.py \
      --workdir=runs/cifar10_linf_wrn --config.data.dir=/data/cifar-10-batches-py
Add --config.train.mixed_precision=True for bfloat16 compute. Reduced size on CPU (synthetic):
  --config.data.source=synthetic --config.model.depth=10 --config.model.widen_factor=1 \
  --config.train.num_epochs=1 --config.sampler.num_steps=2 --config.eval.num_examples=32
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import default_config  # noqa: E402

EPS = 8 / 255


def cifar10_base(config):
  """CIFAR-10 data as the authors' code reads it: [0, 1], crop + flip, no normalisation."""
  config.data.dataset = "cifar10"
  config.data.augment = True
  config.model.num_classes = 10
  config.model.mean = (0.0, 0.0, 0.0)
  config.model.std = (1.0, 1.0, 1.0)
  return config


def get_config():
  config = cifar10_base(default_config())
  config.method = "atent_linf"
  config.model.name = "wide_resnet"
  config.model.depth = 34
  config.model.widen_factor = 10
  config.model.dropout_rate = 0.0
  config.data.num_validation = 1000
  config.data.eval_split = "validation"
  config.train.num_epochs = 76
  config.train.batch_size = 128
  config.train.learning_rate = 0.1
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.lr_decay_epochs = (75,)
  config.train.lr_decay_factor = 0.1
  config.train.checkpoint_every_steps = 200
  config.sampler.norm = "linf"
  config.sampler.eps = EPS
  config.sampler.step_size = 0.007
  config.sampler.num_steps = 10
  config.sampler.noise_scale = 1e-3
  config.sampler.alpha = 0.9
  config.eval.norm = "linf"
  config.eval.eps = EPS
  config.eval.num_steps = 20
  config.eval.step_size = 0.003
  config.eval.random_init = False
  config.eval.num_examples = -1            # the whole validation split
  config.eval.batch_size = 500
  config.early_stopping = True
  return config
