"""Keeps a finished run's best weights alone, so the run fits in git: its checkpoints (latest and
best/, weights and optimiser state) are replaced by WORKDIR/kept_weights/ (the best weights,
cast to --dtype, and info.json: the dtype, the best epoch's record, the weights' fingerprints
before and after the cast). `atent_jax.load_classifier(WORKDIR)` and experiments/evaluate.py
open them as float32; training cannot resume from them (main.py says so).

  python experiments/keep_weights.py --workdir=results/verdict/table1/pgd_at --dtype=float16

Run it before evaluating the run, so the evaluation attacks the weights that are kept (its
robustness.json records their fingerprint).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from atent_jax import cli, runs  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished run's workdir.", required=True)
flags.DEFINE_enum("dtype", "float32", list(runs.KEPT_DTYPES), "The kept weights' dtype.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not os.path.exists(os.path.join(FLAGS.workdir, "config.json")):
    cli.fail(f"--workdir={FLAGS.workdir} holds no run (no config.json): pass a trained run's "
             "workdir")
  info = runs.keep_weights(FLAGS.workdir, FLAGS.dtype)
  best = info["best"] or {}
  print(f"kept the best weights (epoch {best.get('epoch', '?')}) of {FLAGS.workdir} in "
        f"{os.path.join(FLAGS.workdir, 'kept_weights')} as {info['dtype']} (fingerprint "
        f"{info['weights_sha1']}); its checkpoints were removed", flush=True)


if __name__ == "__main__":
  cli.run(main, sys.argv)
