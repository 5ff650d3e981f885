"""The experiment configs: one file per paper table or family, the row chosen by the argument.

    python experiments/main.py --config=experiments/configs/FILE.py[:ARG] --workdir=...

Each file has `get_config(arg)` (ml-collections passes what follows the colon) and `ARGS`, every
argument it accepts. ARG is comma-separated tokens in any order, each group defaulting to its
first choice (config_base.parse_arg; a bad token is one `error:` line, exit code 2):

  mnist_l2.py             Table 1: ROW atent_l2, sgd, pgd_at, trades, mma, entropy_sgd;
                          VARIANT code, paper (atent_l2 only)
  mnist_linf.py           Table 2: ROW atent_linf, sgd, pgd_at, trades, mart, mma, entropy_sgd;
                          VARIANT code, paper (atent_linf only)
  cifar10_linf_wrn.py     Table 3: ROW atent_linf, pgd_at, trades, finetune;
                          VARIANT code, paper (atent_linf only)
  cifar10_l2_resnet20.py  Table 4: ROW atent_l2, pgd_at, trades; VARIANT code, paper;
                          RADIUS eps0.5, eps1
  cifar10_smoothing.py    Table 5: ROW atent_l2, noise_aug
  mnist_smoothing.py      Table 5 analogue on MNIST: ROW atent_l2, noise_aug
  verdict_table2.py       the verdict's reduced-budget Table 2: ROW atent_linf, pgd_at, trades,
                          mart, sgd, atent_linf_paper (the paper's Algorithm 2)
  verdict_table1.py       the verdict's reduced-budget Table 1: ROW atent_l2, pgd_at, trades,
                          sgd, mma, atent_l2_paper (the paper's text)
  default.py              the built-in demo (atent_jax/defaults.py); no argument

A ROW is the method it trains (config.method), except cifar10_linf_wrn.py's `finetune` (ATENT
from a naturally trained model). VARIANT `code` is what the authors' code runs, `paper` the
paper's text (results/authors_code.md). config_base.py holds what the files share; a file
loads another with `config_base.load("mnist_l2.py:trades")`, the command line's syntax.
"""
