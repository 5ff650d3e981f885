"""Rewrites the status table of results/verdict/README.md from the rows' own files.

Run at the end of a session that trained the verdict's rows (experiments/verdict_train.sh), after
stopping it, before committing results/verdict:

  python experiments/verdict_status.py --session=2026-12-01

Per row of Tables 2 and 1: the epochs done and the step of the last checkpoint (what the next
session resumes from), the training loop's per-epoch validation check (clean / robust %) at a
few epochs, and how far the test-set evaluation that verdict_train.sh runs after training is
(chunks done, or its robust accuracies once merged).
Rows not started yet are listed as such. The README's text from the line that starts with
"Status at the end of" to the next line that starts with "Machine: the project's" is replaced;
the rest is left as it is (the same words inside a paragraph are not markers).
"""

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from atent_jax import cli  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# table folder -> (its title and per-epoch check, its rows: folder -> label)
TABLES = {
    "table2": ("Table 2 (l_inf eps 0.3, SmallCNN); per-epoch check PGD-20 step 0.01",
               {"atent_linf": "l_inf-ATENT (code variant)", "pgd_at": "PGD-AT",
                "trades": "TRADES", "sgd": "SGD", "mart": "MART",
                "atent_linf_paper": "l_inf-ATENT (paper's Algorithm 2)"}),
    "table1": ("Table 1 (l_2 eps 2, LeNet5); per-epoch check PGD-40 step 0.25",
               {"atent_l2": "l_2-ATENT (code variant)", "pgd_at": "PGD-AT",
                "trades": "TRADES", "sgd": "SGD", "mma": "MMA",
                "atent_l2_paper": "l_2-ATENT (paper's text)"}),
}
START, END = "Status at the end of", "Machine: the project's"

flags.DEFINE_string("session", None, "The session's date, e.g. 2026-12-01.", required=True)
flags.DEFINE_string("verdict_dir", os.path.join(_ROOT, "results", "verdict"),
                    "The folder holding README.md and the tables' row folders.")
flags.DEFINE_integer("columns", 7, "Epochs shown: the last ones reached, up to this many.")


def _progress(base: str, row: str):
  """(metrics by epoch, last checkpoint step) of a row; ({}, None) when it has not started."""
  metrics_path = os.path.join(base, row, "metrics.jsonl")
  if not os.path.exists(metrics_path):
    return {}, None
  with open(metrics_path) as f:
    by_epoch = {m["epoch"]: m for m in map(json.loads, filter(str.strip, f))}
  ckpt_dir = os.path.join(base, row, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(
      ckpt_dir) else []
  return by_epoch, (steps[-1] if steps else None)


def _test_chunks(base: str, row: str) -> str:
  """How far the row's test-set evaluation is: merged, k of 10 chunks, or not started."""
  path = os.path.join(base, row, "robustness.json")
  if os.path.exists(path):
    with open(path) as f:
      res = json.load(f)
    return "; ".join(f"{a['name']} {100 * a['robust_accuracy']:.1f}" for a in res["attacks"])
  chunk_dir = os.path.join(base, row, "robustness_chunks")
  done = len([n for n in os.listdir(chunk_dir) if n.endswith(".json")]) if os.path.isdir(
      chunk_dir) else 0
  return f"{done} of 10 chunks" if done else "not started"


def status_table(table: str, columns: int) -> str:
  base = os.path.join(flags.FLAGS.verdict_dir, table)
  rows = TABLES[table][1]
  progress = {row: _progress(base, row) for row in rows}
  reached = sorted({e for by_epoch, _ in progress.values() for e in by_epoch})
  shown = reached[-columns:]
  lines = ["| " + " | ".join(["row", "epochs done", *map(str, shown), "test set (first 1,000)"])
           + " |", "|---|---:|" + "---|" * (len(shown) + 1)]
  for row, label in rows.items():
    by_epoch, step = progress[row]
    if not by_epoch:
      lines.append(f"| {label} | 0 (not started) |" + " |" * (len(shown) + 1))
      continue
    cells = [f"{100 * by_epoch[e]['clean_accuracy']:.1f} / "
             f"{100 * by_epoch[e]['robust_accuracy']:.1f}" if e in by_epoch else ""
             for e in shown]
    if os.path.isdir(os.path.join(base, row, "kept_weights")):
      with open(os.path.join(base, row, "kept_weights", "info.json")) as f:
        kept = json.load(f)
      done = (f"{max(by_epoch)} (best: epoch {kept['best']['epoch']}, kept in "
              f"{kept['dtype']})")
    elif step is not None and table == "table1":  # .gitignore: LeNet5 checkpoints stay out
      done = f"{max(by_epoch)} (in progress; a LeNet5 checkpoint is not committed)"
    elif step is not None:
      done = f"{max(by_epoch)} (checkpoint at step {step})"
    else:
      done = f"{max(by_epoch)} (no checkpoint kept: restarts)"
    lines.append(f"| {label} | {done} | " + " | ".join(cells) + f" | {_test_chunks(base, row)} |")
  return "\n".join(lines)


def replace_status(text: str, status: str, name: str) -> str:
  """TEXT with its status section (see the module's docstring) replaced by STATUS."""
  # Markers count only at a line's start: the verdict's own paragraphs say "Machine: the
  # project's" too, and matching one of those before the status once duplicated the README.
  start = text.find("\n" + START) + 1
  end = text.find("\n" + END, start) + 1 if start else 0
  if not start or not end:
    cli.fail(f"{name} has no line starting '{START}' followed by one starting '{END}': "
             "restore the status section from git")
  return text[:start] + status + text[end:]


def main(argv):
  del argv
  table = "\n\n".join(f"{title}:\n\n{status_table(name, flags.FLAGS.columns)}"
                      for name, (title, _) in TABLES.items())
  readme = os.path.join(flags.FLAGS.verdict_dir, "README.md")
  with open(readme) as f:
    text = f.read()
  text = replace_status(text, f"{START} the {flags.FLAGS.session} session (validation: 1,000 "
                        "held-out training images,\nthe training loop's per-epoch check, one "
                        "restart), clean / robust %, by epoch;\n**in progress, not a result**."
                        "\n\n" + table + "\n\n", readme)
  with open(readme, "w") as f:
    f.write(text)
  print(table)


if __name__ == "__main__":
  cli.run(main, sys.argv)
