"""Table 3 (CIFAR-10, l_inf eps 8/255, WideResNet-34-10): l_inf-ATENT, its baselines and the
fine-tuning run.

`--config=experiments/configs/cifar10_linf_wrn.py:ROW[,VARIANT]`, ROW one of (default first):

* `atent_linf`: l_inf-ATENT, in one of two variants:
  * `code` (default): what the authors' script behind Table 3 (GauriJagatap/StochAT,
    notebooks/cifar10_exps_linf.ipynb and its export cifar10_exps_linf.py, "[Table 3 and Figure 3
    of paper]") runs: sampler radius eps 0.031 (args['epsilon']), lr x0.1 from the 75th of 76
    epochs on (`if epoch >= 75` with epochs counted from 1, so the last two epochs run at 0.01).
  * `paper`: the paper's text: eps 8/255 (0.03137), lr decayed to 0.01 at epoch 76 (the last).
* `pgd_at`: PGD-AT (Madry et al.): PGD with a random start, 10 steps of 0.007 (~2/255),
  projection every step, loss on the adversarial points only (the paper reports PGD-AT from its
  literature: 47.04%, 56.80% with early stopping).
* `trades`: TRADES (Zhang et al.) with its own CIFAR-10 settings, which the paper's Table 3 setup
  follows: beta 6 (1/lambda), inner PGD on the KL with 10 steps of 0.007 from x + 0.001 N(0, I)
  within eps 0.031, lr 0.1 x0.1 from the 75th epoch on (TRADES' `epoch >= 75`, as the `code`
  variant), 76 epochs, weight decay 5e-4.
* `finetune`: fine-tuning a naturally trained WRN-34-10 with l_inf-ATENT (the paper: 52.1% at
  8/255): start from a naturally (SGD) trained WRN-34-10, ATENT with the Table 3 sampler (K 10,
  step 0.007, eps 8/255, noise 1e-3), lr 1e-4, 20 epochs. No fine-tuning script is among the
  authors' stored files. Our choices: a constant lr (no decay), the rest of the `code` variant
  (sampler radius 0.031, weight decay 5e-4, momentum 0.9, crop + flip, early stopping on the
  validation split); set the natural run with `--config.train.init_from=RUN`.

The baselines and `finetune` start from the `code` variant (only `atent_linf` takes `paper`):
same data, model, batch 128, schedule and evaluation.

Both variants (code and paper agree): K 10 Langevin samples of step 0.007, projected onto the
eps-box at the K-th step only (`projector` True for the last sample), clamped to [0, 1] after
every step (the final adversarial/functional.py), noise scale 1e-3, alpha 0.9, a random corner
start, the model in train mode while sampling (batch norm on batch statistics); SGD lr 0.1
momentum 0.9 weight decay 5e-4 (passed to the optimizer), batch 128, 76 epochs, random crop
(pad 4) + flip, images in [0, 1] without per-channel normalisation (mean 0, std 1 here), WRN
without dropout. The per-epoch evaluation is the paper's PGD-20 step 0.003 at 8/255 without
random start (the TRADES evaluator); the notebook's own check uses eps 0.031 and a uniform random
start. Our choices: early stopping on 1,000 training images held out as a validation split (the
metrics and best/ are on that split; evaluate the test split afterwards), a checkpoint every 200
steps besides the end of each epoch. See results/authors_code.md.

One host (all its GPUs, data parallel):
  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn.py \
      --workdir=runs/cifar10_linf_wrn --config.data.dir=/data/cifar-10-batches-py
  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn.py:trades \
      --workdir=runs/cifar10_linf_wrn_trades --config.data.dir=/data/cifar-10-batches-py
Add --config.train.mixed_precision=True for bfloat16 compute. Reduced size on CPU (synthetic):
  --config.data.source=synthetic --config.model.depth=10 --config.model.widen_factor=1 \
  --config.train.num_epochs=1 --config.sampler.num_steps=2 --config.eval.num_examples=32
Fine-tuning: the natural model is a run of the same architecture with --config.method=sgd:
  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn.py \
      --config.method=sgd --workdir=runs/cifar10_wrn_natural --config.data.dir=/data/cifar10
  python experiments/main.py --config=experiments/configs/cifar10_linf_wrn.py:finetune \
      --workdir=runs/cifar10_wrn_finetune --config.train.init_from=runs/cifar10_wrn_natural \
      --config.data.dir=/data/cifar10
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments.configs import config_base

EPS = 8 / 255
CODE_EPS = 0.031                           # args['epsilon'] of the authors' Table 3 script
ROWS = ("atent_linf", "pgd_at", "trades", "finetune")
VARIANTS = ("code", "paper")
ARGS = ROWS + ("atent_linf,paper",)  # every config of this file


def atent_linf(variant: str):
  config = config_base.cifar10_base(config_base.default_config())
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
  # lr_decay_epochs counts completed epochs: (74,) = from the 75th epoch on.
  config.train.lr_decay_epochs = (74,) if variant == "code" else (75,)
  config.train.lr_decay_factor = 0.1
  config.train.checkpoint_every_steps = 200
  config.sampler.norm = "linf"
  config.sampler.eps = CODE_EPS if variant == "code" else EPS
  config.sampler.project_every_step = False
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


def get_config(arg: str | None = None):
  row, variant = config_base.parse_arg("cifar10_linf_wrn.py", arg, row=ROWS, variant=VARIANTS)
  if variant != "code" and row != "atent_linf":
    raise config_base.arg_error("cifar10_linf_wrn.py", arg, f"{variant} is a variant of the "
                                "atent_linf row only (the others start from code)")
  config = atent_linf(variant)
  if row == "pgd_at":
    config.method = "pgd_at"
    config.sampler.random_init = True
  elif row == "trades":
    config.method = "trades"
    config.trades_beta = 6.0
  elif row == "finetune":
    config.train.init_from = ""            # set on the command line: the natural run's workdir
    config.train.learning_rate = 1e-4
    config.train.num_epochs = 20
    config.train.lr_decay_epochs = ()
  return config
