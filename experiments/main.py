"""Trains a model per an ml-collections config (Flax-examples style).

  python experiments/main.py --config=experiments/configs/mnist_linf.py --workdir=runs/linf \
      --config.train.num_epochs=5 --config.data.dir=../shared/data/mnist
  python experiments/main.py --config=experiments/configs/mnist_linf.py:trades ...

A config file is one paper table: what follows its colon picks the row and variant
(experiments/configs/__init__.py lists every file's rows).
Without --config the built-in default (experiments/configs/default.py) runs: ATENT-l_inf on the
offline MNIST sample. Started again on the same workdir, a run resumes from its last checkpoint.
User errors (a wrong config key or value, missing data, an unusable or busy workdir, a loss that
became NaN) print one line and exit with code 2; nothing is written before the checks pass.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402

import atent_jax  # noqa: E402,F401  (first: sets XLA flags before JAX starts)
from atent_jax import cli  # noqa: E402

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/default", "Directory for config, metrics and checkpoints.")
cli.define_config_file("config", _DEFAULT, "Training configuration file.")


def main(argv):
  del argv
  from atent_jax import train
  logging.set_verbosity(logging.WARNING)
  config = cli.load_config_flag(FLAGS, "config")
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, sys.argv)
