"""Table 4 (CIFAR-10, l_2): l_2-ATENT on ResNet-20, PGD-10 at eps 0.5 (and 1.0).

Paper: ResNet-20, gamma 0.05 (0.08 for eps 1.0, per its text), noise 1e-3, K 10 Langevin
steps of 2*eps/K, alpha 0.9, lr 0.1, batch 256 (its text); evaluated with PGD-10.
Authors' l_2 notebook (cifar_exps_l2): batch 256, SGD momentum 0.9, weight decay 1e-4, lr x0.1
at epoch 50, 84 epochs, random crop + flip, [0, 1] images without normalisation.
Our choices: evaluation PGD-10 with a random start and step 2.5*eps/10 (Madry et al.'s rule),
early stopping on 1,000 held-out training images, ResNet-20 with projection shortcuts
(atent_jax.models.cifar.ResNet).

  python experiments/main.py --config=experiments/configs/cifar10_l2_resnet20.py \
      --workdir=runs/cifar10_l2_eps0.5 --config.data.dir=/data/cifar-10-batches-py
  python experiments/main.py --config=experiments/configs/cifar10_l2_resnet20.py:eps1 \
      --workdir=runs/cifar10_l2_eps1 --config.data.dir=/data/cifar-10-batches-py
(`:eps1` trains and evaluates at eps 1.0 with gamma 0.08.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config_base import default_config  # noqa: E402
from cifar10_linf_wrn import cifar10_base  # noqa: E402


def l2_row(config, eps: float):
  """The sampler/evaluation radius of a Table 4 column: eps 0.5 or 1.0."""
  k = 10
  config.sampler.norm = "l2"
  config.sampler.eps = eps
  config.sampler.num_steps = k
  config.sampler.step_size = 2 * eps / k
  config.eval.norm = "l2"
  config.eval.eps = eps
  config.eval.num_steps = 10
  config.eval.step_size = 2.5 * eps / 10
  config.eval.random_init = True
  return config


def get_config(arg: str | None = None):
  if arg not in (None, "", "eps0.5", "eps1"):
    raise ValueError(f"unknown config argument {arg!r}: use eps0.5 or eps1")
  eps = 1.0 if arg == "eps1" else 0.5
  config = cifar10_base(default_config())
  config.method = "atent_l2"
  config.model.name = "resnet"
  config.model.depth = 20
  config.model.width = 16
  config.data.num_validation = 1000
  config.data.eval_split = "validation"
  config.train.num_epochs = 84
  config.train.batch_size = 256
  config.train.learning_rate = 0.1
  config.train.momentum = 0.9
  config.train.weight_decay = 1e-4
  config.train.lr_decay_epochs = (50,)
  config.train.checkpoint_every_steps = 100
  l2_row(config, eps)
  config.sampler.gamma = 0.08 if eps == 1.0 else 0.05
  config.sampler.noise_scale = 1e-3
  config.sampler.alpha = 0.9
  config.eval.num_examples = -1
  config.eval.batch_size = 500
  return config
