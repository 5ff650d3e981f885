"""Compares two robustness.json files (experiments/evaluate.py) example by example.

  python experiments/compare_robustness.py RUN_A/robustness.json RUN_B/robustness.json

For every attack name present in both: robust accuracy in each, and how many examples are
robust in both, only in A, only in B, in neither, and the exact McNemar p-value of the
examples on which they disagree (is the difference more than chance?). The two evaluations
must have used the same examples (same split indices and labels); otherwise one `error:` line
and exit code 2.
Prints a markdown table; --json writes the comparison as JSON instead.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from atent_jax import cli, evaluation
from atent_jax.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_bool("json", False, "Print the comparison as JSON.")


def _load(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"{path} could not be read as a robustness.json ({e})") from None


def main(argv):
  paths = argv[1:]  # cli.run passes the positional arguments only
  if len(paths) != 2:
    raise ConfigError("pass two robustness.json files: compare_robustness.py A.json B.json")
  try:
    out = evaluation.compare_results(_load(paths[0]), _load(paths[1]))
  except (KeyError, ValueError) as e:
    raise ConfigError(f"{e}") from None
  if FLAGS.json:
    print(json.dumps(out, indent=2))
    return
  print(f"A = {paths[0]}\nB = {paths[1]}\n{out['num_examples']} examples\n")
  print("| Attack | A robust % | B robust % | both | only A | only B | neither | agree % | "
        "McNemar p |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in out["attacks"]:
    print(f"| {r['name']} | {100 * r['robust_accuracy_a']:.2f} | {100 * r['robust_accuracy_b']:.2f}"
          f" | {r['both_robust']} | {r['only_a']} | {r['only_b']} | {r['neither']} | "
          f"{100 * r['agreement']:.2f} | {r['mcnemar_p']:.3g} |")


if __name__ == "__main__":
  cli.run(main, sys.argv)
