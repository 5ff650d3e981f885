"""The verdict's Table 1 rows (MNIST l_2, eps 2, LeNet5) at the budget a 2-core CPU allows
(reduced scale, said so).

`--config=experiments/configs/verdict_table1.py:ROW`, ROW one of atent_l2, pgd_at, trades, sgd,
mma, atent_l2_paper. Each row is its Table 1 config (mnist_l2.py:ROW; ATENT in the `code`
variant: projection every step, noise 1e-2, SGD lr 0.01 momentum 0.9 at a constant lr) with the
same reduced budget for every row, as the Table 2 verdict (verdict_table2.py);
`atent_l2_paper` is the paper's Algorithm 1 text instead (mnist_l2.py:atent_l2,paper: projection
at the K-th step only, noise 1e-3, step 0.25 (here 1.0), lr 0.001, weight decay 1e-4):

* the 22,699 local MNIST training images (../shared/data/mnist; 1,000 held out for validation);
* 15 epochs, half of the table's code's 30. LeNet5's fc layer (3136 x 1024) makes a resumable
  checkpoint 26 MB (weights and momentum in float32, 52 MB with best/), so a row cannot be
  carried from one session to the next in git within results/' 60 MB, as Table 2's SmallCNN
  rows were: every row must finish inside one session. On this CPU a 15-epoch row took
  (metrics.jsonl: training plus the per-epoch validation, one niced core while the other
  trained or evaluated) 0.48 h (SGD), 1.61 h (PGD-AT), 1.58 h (TRADES) and 2.03 h (ATENT);
  MMA, from its step time, about 2.4 h. The lr is constant, so these 15 epochs are exactly
  the first 15 of a 30-epoch run;
* K = 10 inner steps for every row instead of the table's 40, each step 4x the table's so every
  row's inner loop still travels as far as in the table: ATENT 10 x 0.5 (the notebook's
  2.5 * eps), PGD-AT / TRADES / MMA 10 x 1.0 (the paper's 40 x 0.25);
* a finished row keeps its best weights alone in float16 (experiments/keep_weights.py: 6.3 MB),
  and is evaluated from them, so the committed model is the one the figures describe.

  python experiments/main.py --config=experiments/configs/verdict_table1.py:atent_l2 \
      --workdir=results/verdict/table1/atent_l2
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments.configs import config_base

ROWS = {"atent_l2": "mnist_l2.py:atent_l2", "pgd_at": "mnist_l2.py:pgd_at",
        "trades": "mnist_l2.py:trades", "sgd": "mnist_l2.py:sgd", "mma": "mnist_l2.py:mma",
        "atent_l2_paper": "mnist_l2.py:atent_l2,paper"}
ARGS = tuple(ROWS)  # every config of this file
NUM_STEPS = 10
NUM_EPOCHS = 15


def get_config(arg: str | None = None):
  (row,) = config_base.parse_arg("verdict_table1.py", arg, row=tuple(ROWS))
  config = config_base.verdict_budget(config_base.load(ROWS[row]), checkpoint_every_steps=100)
  # Same distance travelled as the table's 40 steps (sampler.step_size is the row's own).
  config.sampler.step_size *= config.sampler.num_steps / NUM_STEPS
  config.sampler.num_steps = NUM_STEPS
  config.train.num_epochs = NUM_EPOCHS
  return config
