"""Reproduces one of the paper's MNIST tables end to end: trains every defense, attacks it, reports.

  python experiments/reproduce.py --table=table2 --out=results/table2 \
      [--work=runs/table2] [--data_dir=../shared/data/mnist] \
      [--override=train.num_epochs=5 --override=sampler.num_steps=10 ...] \
      [--num_test=-1] [--restarts=10] [--rows=sgd,pgd_at,...] [--jobs=1] [--dry_run]
      [--report_only]

Tables (MNIST; each row is a config of experiments/configs, e.g. mnist_linf.py:trades):
  table1  l_2 eps 2, LeNet5. Rows sgd, pgd_at, trades, atent_l2 (optional: mma, entropy_sgd).
          Attacks on the test set: PGD-40 (step 0.25, --restarts, default 10 as the paper) and
          CW-l_2.
  table2  l_inf eps 0.3, SmallCNN. Rows sgd, pgd_at, trades, mart, atent_linf (optional: mma,
          entropy_sgd). Attacks: PGD-20 (step 0.01, --restarts) and CW-l_inf.
  table6  ATENT used as an attack (ATENT-20, step 0.01) against PGD-20 at several l_inf radii
          (--table6_eps, default 0.1,0.2,0.3,0.4) on table2's l_inf-ATENT run: its workdir
          (--table2_work/atent_linf, default runs/table2/atent_linf) is reused when it holds a
          run of the same config (finished, or resumed to the end here); else the run is
          trained in --work/atent_linf. (The paper's Table 6 is on CIFAR-10; this is its MNIST
          analogue.)

Same budget for every defense: each --override (a config key and value, as
`--config.KEY=VALUE` of experiments/main.py) and --data_dir apply to every row, so all rows see
the same data, epochs and K (sampler.num_steps: ATENT's Langevin steps and the PGD steps of
PGD-AT, TRADES and MART). Early stopping uses the validation split (the configs set
data.eval_split='validation'); the final numbers are on the test set (--num_test images, -1:
all), from the `best/` checkpoint, with experiments/evaluate.py.

Each training and each evaluation is a subprocess of experiments/main.py / evaluate.py (the
exact commands are written to OUT/commands.sh before anything runs). Rerunning the same
command skips rows whose training reached the last epoch and evaluations already written with
the same settings (known from OUT or from the run's own folder in --work, so a new OUT reuses
them); a killed run resumes from its last checkpoint. A row that fails is reported
and the others go on (exit code 1 at the end). Checkpoints stay in --work (default
runs/<table>); OUT gets only small files:

  OUT/README.md          the result: our table, the paper's numbers, scale, how it was run
  OUT/table.md           the tables alone (ours and the paper's)
  OUT/commands.sh        the exact commands (run from the repository root)
  OUT/data.md            the data: source, train/validation/test images, reduced or full scale
  OUT/timing.md, timing.json   training and evaluation time per row
  OUT/machine.md         CPU count, platform, jax/jaxlib/flax versions, devices
  OUT/training_curves.png      clean/robust validation accuracy and train loss per epoch
  OUT/<row>/             config.json, run_info.json, metrics.jsonl, robustness.json,
                         robustness.md, reproduce.json (this tool's status and timing)
"""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
EXPERIMENTS = os.path.join(ROOT, "experiments")

from absl import flags  # noqa: E402

import atent_jax  # noqa: E402,F401  (first: sets XLA flags before JAX starts)
from atent_jax import cli, methods  # noqa: E402
from atent_jax.errors import ConfigError  # noqa: E402

# Row titles: the methods registry's display names ("PGD-AT", "l_inf-ATENT", ...).
DISPLAY = {name: method.display_name for name, method in methods.METHODS.items()}

# Published numbers (robust accuracy %, benign accuracy %), from
# /work/shared/paper/reference_setup.md; None where it gives none.
TABLES = {
    "table1": {
        "title": "Table 1: MNIST, l_2 eps 2, LeNet5",
        "rows": {"sgd": "mnist_l2.py:sgd", "pgd_at": "mnist_l2.py:pgd_at",
                 "trades": "mnist_l2.py:trades", "atent_l2": "mnist_l2.py:atent_l2"},
        "optional_rows": {"mma": "mnist_l2.py:mma", "entropy_sgd": "mnist_l2.py:entropy_sgd"},
        "attacks": ["pgd40_l2", "cw_l2"],
        "restarts": 10,
        "paper_columns": ["PGD-40 (l_2 2)", "CW-l_2 (l_2 2)"],
        "paper": {"sgd": (99.38, 19.40, None), "pgd_at": (98.76, 72.94, None),
                  "trades": (97.54, 76.08, None), "mma": (99.27, 73.02, 72.72),
                  "atent_l2": (98.66, 77.21, 76.72)},
        "paper_note": "PGD-40 with 10 restarts, eps 2, step 0.25; CW-l_2. Where the reference "
                      "gives one robust number for a defense it is listed under PGD-40.",
    },
    "table2": {
        "title": "Table 2: MNIST, l_inf eps 0.3, SmallCNN",
        "rows": {"sgd": "mnist_linf.py:sgd", "pgd_at": "mnist_linf.py:pgd_at",
                 "trades": "mnist_linf.py:trades", "mart": "mnist_linf.py:mart",
                 "atent_linf": "mnist_linf.py:atent_linf"},
        "optional_rows": {"mma": "mnist_linf.py:mma",
                          "entropy_sgd": "mnist_linf.py:entropy_sgd"},
        "attacks": ["pgd20_linf", "cw_linf"],
        "restarts": 1,
        "paper_columns": ["PGD-20 (l_inf 0.3)", "CW-l_inf (l_inf 0.3)"],
        "paper": {"sgd": (None, 0.97, None), "pgd_at": (None, 96.01, None),
                  "trades": (None, 96.07, None), "mart": (None, 96.48, None),
                  "mma": (None, 95.25, None), "atent_linf": (99.45, 96.44, 97.40)},
        "paper_note": "PGD-20, eps 0.3, step 0.01; CW-l_inf. Where the reference gives one "
                      "robust number for a defense it is listed under PGD-20.",
    },
    "table6": {
        "title": "Table 6 analogue: ATENT as an attack vs PGD-20, MNIST l_inf, SmallCNN "
                 "(table2's l_inf-ATENT run)",
        "rows": {"atent_linf": "mnist_linf.py:atent_linf"},
        "optional_rows": {},
        "attacks": None,  # built from --table6_eps
        "restarts": 1,
        "paper": {},
        "paper_note": "The paper's Table 6 attacks a CIFAR-10 WRN-34-10 at eps 2, 4, 8, 12/255; "
                      "it has no MNIST counterpart, so there are no published numbers to "
                      "compare with here.",
    },
}

# The full MNIST and the configs' paper-scale settings, for the "reduced scale" statement.
FULL_TRAIN_IMAGES = 60000
FULL_TEST_IMAGES = 10000

FLAGS = flags.FLAGS
flags.DEFINE_enum("table", None, sorted(TABLES), "Which table to reproduce.")
flags.DEFINE_string("out", None, "Results folder (small files only); default results/<table>.")
flags.DEFINE_string("work", None, "Folder of the training workdirs (checkpoints); default "
                    "runs/<table>. Keep it outside the results.")
flags.DEFINE_string("data_dir", None, "A folder of MNIST IDX files for every row "
                    "(config.data.dir); default: each config's data source (auto).")
flags.DEFINE_multi_string("override", [], "KEY=VALUE: a config override for every row, e.g. "
                          "train.num_epochs=5 (repeatable).")
flags.DEFINE_list("rows", [], "Rows to run (default: the table's rows).")
flags.DEFINE_integer("num_test", -1, "Test images to attack (-1: the whole test set).")
flags.DEFINE_integer("restarts", None, "Random restarts of PGD and CW-l_inf (default: table1 10, "
                     "as the paper; table2 and table6 1).")
flags.DEFINE_integer("eval_batch_size", 500, "Examples per attack call.")
flags.DEFINE_bool("sanity_checks", True, "Run evaluate.py's sanity checks (monotonicity, "
                  "unbounded attack, vanishing gradients) on --sanity_examples images.")
flags.DEFINE_integer("sanity_examples", 200, "Images for the sanity checks.")
flags.DEFINE_integer("seed", 0, "PRNG seed of the attacks.")
flags.DEFINE_list("table6_eps", ["0.1", "0.2", "0.3", "0.4"], "table6: the l_inf radii.")
flags.DEFINE_string("table2_work", "runs/table2", "table6: table2's --work (its atent_linf "
                    "workdir is reused when it holds a run of the same config).")
flags.DEFINE_bool("figures", True, "Write OUT/training_curves.png.")
flags.DEFINE_integer("jobs", 1, "Rows trained and evaluated at the same time. On a GPU a "
                     "small MNIST model leaves most of the chip idle, so 4-5 rows share it well "
                     "(children then allocate GPU memory on demand); on a CPU keep 1.")
flags.DEFINE_bool("report_only", False, "Run nothing: write the reports (README.md, table.md, "
                  "timing, curves) from what OUT already holds, e.g. after a run that was cut "
                  "short or whose checkpoints are on another machine.")
flags.DEFINE_bool("dry_run", False, "Write OUT/commands.sh and print the plan; run nothing.")

_SMALL_FILES = ("config.json", "run_info.json", "metrics.jsonl", "robustness.json",
                "robustness.md")


# --- configs and overrides --------------------------------------------------------------------

def load_config(spec: str):
  """The config of `spec`, an experiments/configs file and its argument ('mnist_l2.py:trades')."""
  from experiments.configs import config_base  # pylint: disable=import-outside-toplevel
  return config_base.load(spec)


def parse_value(key: str, text: str, current):
  """A command-line value, typed like the config field it replaces (as ml-collections does)."""
  try:
    if isinstance(current, bool):
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (tuple, list)):
      value = ast.literal_eval(text)
      if isinstance(value, (int, float)):
        value = (value,)
      if not isinstance(value, (tuple, list)):
        raise ValueError
      return tuple(value)
  except (ValueError, SyntaxError):
    raise ConfigError(f"--override={key}={text}: {text!r} is not a valid "
                      f"{type(current).__name__} for config.{key}") from None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_overrides(items) -> list[tuple[str, str]]:
  out = []
  for item in items:
    key, sep, value = item.partition("=")
    key = key.strip()
    if key.startswith("config."):
      key = key[len("config."):]
    if not sep or not key:
      raise ConfigError(f"--override={item!r} is not KEY=VALUE: e.g. "
                        "--override=train.num_epochs=5")
    if key == "method":
      raise ConfigError("--override=method=... would change what a row is: pick rows with "
                        "--rows")
    out.append((key, value))
  return out


def apply_overrides(config, overrides):
  """config with the overrides applied (typed); unknown keys raise ConfigError."""
  from atent_jax.configuration import flatten_config, nearest_key  # pylint: disable=import-outside-toplevel
  flat = flatten_config(config)
  for key, text in overrides:
    if key not in flat:
      close = nearest_key(key)
      hint = f": did you mean {close}?" if close else ""
      raise ConfigError(f"--override={key}=...: {key} is not a known config key{hint}")
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = parse_value(key, text, flat[key])
  return config


def row_overrides(data_dir, overrides) -> list[tuple[str, str]]:
  """The overrides every row gets, in command-line order: data dir, user overrides, and no
  progress bar (a resumable key: logs stay readable)."""
  out = []
  if data_dir:
    out.append(("data.dir", data_dir))
  out.extend(overrides)
  if not any(k == "train.progress_bar" for k, _ in out):
    out.append(("train.progress_bar", "False"))
  return out


# --- paths and commands -----------------------------------------------------------------------

def shown_path(path: str) -> str:
  """`path` relative to the repository root when inside it (commands run from there)."""
  path = os.path.abspath(path)
  rel = os.path.relpath(path, ROOT)
  return path if rel.startswith("..") else rel


def train_command(config_name: str, workdir: str, overrides) -> list[str]:
  cmd = ["python", "experiments/main.py", f"--config=experiments/configs/{config_name}",
         f"--workdir={shown_path(workdir)}"]
  cmd += [f"--config.{k}={v}" for k, v in overrides]
  return cmd


def eval_command(workdir: str, attacks, restarts: int, data_dir=None) -> list[str]:
  cmd = ["python", "experiments/evaluate.py", f"--workdir={shown_path(workdir)}",
         f"--attacks={','.join(attacks)}", f"--restarts={restarts}",
         f"--num_examples={FLAGS.num_test}", f"--batch_size={FLAGS.eval_batch_size}",
         f"--seed={FLAGS.seed}", "--which=best", f"--sanity_checks={FLAGS.sanity_checks}",
         f"--sanity_examples={FLAGS.sanity_examples}"]
  if data_dir:
    cmd.append(f"--data_dir={data_dir}")
  return cmd


def run_logged(cmd, log_path: str, prefix: str = "") -> tuple[int, float]:
  """Runs `cmd` (python -> this interpreter) from the repository root; its output goes to the
  console (each line after `prefix`) and to log_path (appended). Returns (exit code, wall
  seconds)."""
  argv = [sys.executable] + cmd[1:] if cmd[0] == "python" else cmd
  env = dict(os.environ)
  if FLAGS.jobs > 1:  # several JAX processes on one GPU: none may take 75% of it up front
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  t0 = time.time()
  with open(log_path, "a") as log:
    log.write(f"\n$ {shlex.join(cmd)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env)
    try:
      for line in proc.stdout:
        sys.stdout.write("  " + prefix + line)
        sys.stdout.flush()
        log.write(line)
      rc = proc.wait()
    except KeyboardInterrupt:
      proc.wait()
      raise
  return rc, time.time() - t0


# --- state of a row ---------------------------------------------------------------------------

def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          out.append(json.loads(line))
        except ValueError:
          pass
  return out


def training_finished(workdir: str, num_epochs: int) -> bool:
  records = read_metrics(workdir)
  from atent_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  has_best = any(os.path.isdir(os.path.join(workdir, sub))
                 for sub in ("best", "checkpoints", workdir_lib.KEPT_WEIGHTS))
  return bool(records) and records[-1].get("epoch") == num_epochs and has_best and \
      os.path.exists(os.path.join(workdir, "config.json"))


def check_compatible(config, workdir: str) -> None:
  """ConfigError when `workdir` holds a run of another config (train.py's resume rule)."""
  from atent_jax import train  # pylint: disable=import-outside-toplevel
  train.check_resume_config(config, workdir)


def compatible(config, workdir: str) -> bool:
  try:
    check_compatible(config, workdir)
    return True
  except ConfigError:
    return False


def file_digest(path: str) -> str:
  if not os.path.exists(path):
    return ""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def load_json(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def write_json(path: str, obj) -> None:
  from atent_jax import workdir  # pylint: disable=import-outside-toplevel
  workdir.write_json(path, obj, default=str)


def copy_small_files(workdir: str, dest: str) -> None:
  os.makedirs(dest, exist_ok=True)
  for name in _SMALL_FILES:
    src = os.path.join(workdir, name)
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(dest, name))


def link_run(base: str, linkdir: str) -> None:
  """A workdir `linkdir` that evaluates `base`'s checkpoints: copies of its small files and
  symlinks to its best/ and checkpoints/ (so its robustness.json is not overwritten)."""
  os.makedirs(linkdir, exist_ok=True)
  for name in ("config.json", "run_info.json", "metrics.jsonl"):
    if os.path.exists(os.path.join(base, name)):
      shutil.copyfile(os.path.join(base, name), os.path.join(linkdir, name))
  for sub in ("best", "checkpoints"):
    link, target = os.path.join(linkdir, sub), os.path.abspath(os.path.join(base, sub))
    if os.path.islink(link):
      if os.readlink(link) == target:
        continue
      os.remove(link)
    if os.path.isdir(target) and not os.path.exists(link):
      os.symlink(target, link)


# --- the plan ---------------------------------------------------------------------------------

class Row:
  def __init__(self, name, config_name, config, train_dir, eval_dir, attacks, restarts,
               overrides, data_dir, reused=False):
    self.name, self.config_name, self.config = name, config_name, config
    self.train_dir, self.eval_dir = train_dir, eval_dir
    self.attacks, self.restarts = attacks, restarts
    self.reused = reused
    self.train_cmd = train_command(config_name, train_dir, overrides)
    self.eval_cmd = eval_command(eval_dir, attacks, restarts, data_dir)

  @property
  def display(self):
    return DISPLAY.get(self.name, self.name)

  @property
  def num_epochs(self):
    return int(self.config.train.num_epochs)


def make_plan(table: str, work: str, overrides, data_dir) -> list[Row]:
  spec = TABLES[table]
  all_rows = {**spec["rows"], **spec["optional_rows"]}
  names = FLAGS.rows or list(spec["rows"])
  unknown = [n for n in names if n not in all_rows]
  if unknown:
    raise ConfigError(f"--rows: {', '.join(unknown)} not in {table}: use some of "
                      f"{', '.join(all_rows)}")
  restarts = FLAGS.restarts if FLAGS.restarts is not None else spec["restarts"]
  if restarts < 1:
    raise ConfigError(f"--restarts={restarts} is not valid: use an integer >= 1")
  if table == "table6":
    try:
      radii = [float(e) for e in FLAGS.table6_eps]
    except ValueError:
      raise ConfigError(f"--table6_eps={','.join(FLAGS.table6_eps)}: use numbers") from None
    if not radii or any(not e > 0 for e in radii):
      raise ConfigError("--table6_eps: use radii > 0")
    attacks = [a for e in radii for a in (f"pgd20_linf@{e:g}", f"atent20_linf@{e:g}")]
  else:
    attacks = spec["attacks"]
  from atent_jax.configuration import validate_config  # pylint: disable=import-outside-toplevel
  plan = []
  for name in names:
    config = apply_overrides(load_config(all_rows[name]), overrides)
    validate_config(config)
    own = os.path.join(work, name)
    train_dir, eval_dir, reused = own, own, False
    if table == "table6":
      base = os.path.join(FLAGS.table2_work, name)
      own_trained = os.path.isdir(os.path.join(own, "checkpoints")) and not os.path.islink(
          os.path.join(own, "checkpoints"))
      if not own_trained and os.path.exists(os.path.join(base, "config.json")) and \
          compatible(config, base):
        train_dir, reused = base, True
    plan.append(Row(name, all_rows[name], config, train_dir, eval_dir, attacks, restarts,
                    overrides, data_dir, reused))
  return plan


def write_commands(path: str, plan: list[Row], table: str) -> None:
  lines = ["#!/usr/bin/env bash",
           f"# {TABLES[table]['title']}: the exact commands of experiments/reproduce.py.",
           "# Run from the repository root. This file was written by:",
           "#   python " + shlex.join(["experiments/reproduce.py"] + sys.argv[1:]),
           f"# (with PYTHON={sys.executable}). Rerunning a training command resumes it.",
           "set -euo pipefail", 'PYTHON="${PYTHON:-python}"', ""]
  for row in plan:
    lines.append(f"# --- {row.display} ({row.config_name}) ---")
    if row.reused:
      lines.append(f"# reuses table2's run {shown_path(row.train_dir)} (same config)")
    lines.append(_shell(row.train_cmd))
    if row.eval_dir != row.train_dir:
      ed, td = shown_path(row.eval_dir), shown_path(row.train_dir)
      lines.append(f"mkdir -p {shlex.quote(ed)}")
      for name in ("config.json", "run_info.json", "metrics.jsonl"):
        lines.append(f"cp {shlex.quote(os.path.join(td, name))} {shlex.quote(ed)}/")
      for sub in ("best", "checkpoints"):
        target = shlex.quote(os.path.join(td, sub))
        target = target if os.path.isabs(td) else f'"$PWD"/{target}'
        lines.append(f"ln -sfn {target} {shlex.quote(os.path.join(ed, sub))}")
    lines.append(_shell(row.eval_cmd))
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  os.chmod(path, 0o755)


def _shell(cmd) -> str:
  parts = ['"$PYTHON"'] + [shlex.quote(c) for c in cmd[1:]]
  out, line = [], ""
  for p in parts:  # wrap long commands
    if line and len(line) + len(p) > 96:
      out.append(line + " \\")
      line = "    "
    line += ("" if line.strip() == "" else " ") + p
  out.append(line)
  return "\n".join(out)


# --- running a row ----------------------------------------------------------------------------

def eval_signature(row: Row) -> dict:
  return {"command": row.eval_cmd[1:],
          "metrics_digest": file_digest(os.path.join(row.train_dir, "metrics.jsonl"))}


def _prefix(row: Row) -> str:
  return f"[{row.name}] " if FLAGS.jobs > 1 else ""


def run_row(row: Row, out: str, logs: str) -> dict:
  """Trains (unless finished) and evaluates (unless done with the same settings) one row."""
  dest = os.path.join(out, row.name)
  os.makedirs(dest, exist_ok=True)
  status_path = os.path.join(dest, "reproduce.json")
  status = load_json(status_path, {}) or {}
  status.update({"row": row.name, "display": row.display, "config": row.config_name,
                 "train_workdir": shown_path(row.train_dir),
                 "eval_workdir": shown_path(row.eval_dir), "reused_table2_run": row.reused})
  train = status.setdefault("train", {"wall_seconds": 0.0, "invocations": 0})
  ev = status.setdefault("eval", {})

  check_compatible(row.config, row.train_dir)  # refuses a workdir of another config
  if training_finished(row.train_dir, row.num_epochs):
    print(f"[{row.name}] training finished ({row.num_epochs} epochs): skipped", flush=True)
    train["status"] = "done"
  else:
    print(f"[{row.name}] training: {shlex.join(row.train_cmd)}", flush=True)
    rc, secs = run_logged(row.train_cmd, os.path.join(logs, f"{row.name}.train.log"),
                          _prefix(row))
    train["wall_seconds"] = train.get("wall_seconds", 0.0) + secs
    train["invocations"] = train.get("invocations", 0) + 1
    if rc != 0 or not training_finished(row.train_dir, row.num_epochs):
      train["status"] = f"failed (exit code {rc})"
      status["error"] = f"training failed with exit code {rc}: see {logs}/{row.name}.train.log"
      write_json(status_path, status)
      print(f"[{row.name}] {status['error']}", flush=True)
      return status
    train["status"] = "done"
  status.pop("error", None)
  if row.eval_dir != row.train_dir:
    link_run(row.train_dir, row.eval_dir)

  signature = eval_signature(row)
  # The evaluation's settings are kept with the results and next to the run (in --work), so a
  # results folder that was lost or replaced (e.g. a fresh checkout on a GPU machine) does not
  # send finished evaluations round again.
  stamp_path = os.path.join(row.eval_dir, "reproduce_eval.json")
  done_here = os.path.exists(os.path.join(dest, "robustness.json")) and \
      ev.get("signature") == signature and ev.get("status") == "done"
  done_in_work = os.path.exists(os.path.join(row.eval_dir, "robustness.json")) and \
      (load_json(stamp_path, {}) or {}).get("signature") == signature
  if done_here or done_in_work:
    ev.update(status="done", signature=signature)
    print(f"[{row.name}] evaluation already written: skipped", flush=True)
  else:
    print(f"[{row.name}] evaluation: {shlex.join(row.eval_cmd)}", flush=True)
    rc, secs = run_logged(row.eval_cmd, os.path.join(logs, f"{row.name}.eval.log"), _prefix(row))
    ev["wall_seconds"] = secs
    if rc != 0:
      ev["status"] = f"failed (exit code {rc})"
      status["error"] = f"evaluation failed with exit code {rc}: see {logs}/{row.name}.eval.log"
      write_json(status_path, status)
      print(f"[{row.name}] {status['error']}", flush=True)
      return status
    ev.update(status="done", signature=signature)
    write_json(stamp_path, {"signature": signature})
  copy_small_files(row.eval_dir, dest)
  write_json(status_path, status)
  return status


# --- reports ----------------------------------------------------------------------------------

def _fmt(v):
  return "-" if v is None else f"{v:.2f}"


def results_table(table: str, plan, out: str) -> str:
  from atent_jax import evaluation  # pylint: disable=import-outside-toplevel
  rows = []
  for row in plan:
    res = load_json(os.path.join(out, row.name, "robustness.json"))
    if res is not None:
      rows.append((row.display, res))
  if not rows:
    return "(no row has been evaluated yet)\n"
  if table != "table6":
    return evaluation.markdown_table(rows)
  # Table 6: one row per radius, PGD-20 vs ATENT-20.
  res = rows[0][1]
  by = {}
  for r in res["attacks"]:
    by.setdefault(r["eps"], {})[r["attack"]] = r["robust_accuracy"]
  lines = [f"Clean accuracy {100 * res['clean_accuracy']:.2f}% on {res['num_examples']} test "
           "images.", "", "| eps (l_inf) | PGD-20 | ATENT-20 (attack) |", "|---:|---:|---:|"]
  for eps in sorted(by):
    p, a = by[eps].get("pgd_linf"), by[eps].get("atent_attack")
    lines.append(f"| {eps:g} | {_fmt(None if p is None else 100 * p)} | "
                 f"{_fmt(None if a is None else 100 * a)} |")
  return "\n".join(lines) + "\n"


def paper_table(table: str, plan) -> str:
  spec = TABLES[table]
  if not spec["paper"]:
    return spec["paper_note"] + "\n"
  cols = spec["paper_columns"]
  names = list(dict.fromkeys([r.name for r in plan] + list(spec["paper"])))
  lines = ["| Defense | Benign | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
  for n in names:
    if n in spec["paper"]:
      lines.append(f"| {DISPLAY.get(n, n)} | " + " | ".join(_fmt(v) for v in spec["paper"][n])
                   + " |")
  return "\n".join(lines) + "\n\n" + spec["paper_note"] + "\n"


def _describe_counts(describe: str):
  import re  # pylint: disable=import-outside-toplevel
  m = re.search(r"(\d+) train, (\d+) validation", describe or "")
  return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def scale_notes(plan, out: str) -> tuple[list[str], dict]:
  """Reasons the runs are below paper scale (empty: full scale), and the data counts."""
  reasons, info = [], {}
  row = plan[0]
  run_info = load_json(os.path.join(out, row.name, "run_info.json"), {}) or {}
  res = load_json(os.path.join(out, row.name, "robustness.json"), {}) or {}
  n_train, n_val = _describe_counts(run_info.get("data", ""))
  info.update(source=run_info.get("data", "(not trained yet)"), train=n_train, validation=n_val,
              test=res.get("num_examples"))
  if n_train is not None and n_train + (n_val or 0) < FULL_TRAIN_IMAGES:
    reasons.append(f"{n_train + (n_val or 0):,} training images (train + validation) instead of "
                   f"the full {FULL_TRAIN_IMAGES:,}")
  if res.get("num_examples") and res["num_examples"] < FULL_TEST_IMAGES:
    reasons.append(f"{res['num_examples']:,} test images attacked instead of "
                   f"{FULL_TEST_IMAGES:,}")
  paper = load_config(row.config_name)
  for key, label in (("train.num_epochs", "epochs"), ("sampler.num_steps", "K (inner steps)")):
    section, field = key.split(".")
    ours, theirs = row.config[section][field], paper[section][field]
    if ours < theirs:
      reasons.append(f"{label} {ours} instead of the config's paper-scale {theirs}")
  return reasons, info


def write_reports(table: str, plan, out: str, statuses: dict, overrides) -> None:
  spec = TABLES[table]
  ours = results_table(table, plan, out)
  theirs = paper_table(table, plan)
  reasons, info = scale_notes(plan, out)
  scale = ("**Reduced scale**: " + "; ".join(reasons) + ".") if reasons else \
      "Full scale: the whole MNIST training and test sets and the configs' paper settings."
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(f"# {spec['title']}\n\n## This run (test set, robust accuracy %)\n\n{ours}\n"
            f"## Published (paper)\n\n{theirs}")

  # data.md
  data_lines = [f"# Data of {table}", "",
                f"- Source: {info['source']}",
                f"- Training images: {info['train'] if info['train'] is not None else '?'}",
                f"- Validation images (held out of the training images, early stopping): "
                f"{info['validation'] if info['validation'] is not None else '?'}",
                f"- Test images attacked: {info['test'] if info['test'] is not None else '?'}"
                f" (--num_test={FLAGS.num_test})",
                "- Every row uses the same data (same --data_dir and overrides).", "",
                scale, ""]
  with open(os.path.join(out, "data.md"), "w") as f:
    f.write("\n".join(data_lines))

  # timing
  timing, tlines = {}, ["# Timing", "",
                        "| Defense | epochs | train s (sum of epochs) | validation s | "
                        "train wall s (this tool) | eval wall s | attack s |",
                        "|---|---:|---:|---:|---:|---:|---:|"]
  for row in plan:
    st = statuses.get(row.name) or load_json(os.path.join(out, row.name, "reproduce.json"), {})
    metrics = read_metrics(os.path.join(out, row.name))
    res = load_json(os.path.join(out, row.name, "robustness.json"), {}) or {}
    t = {"epochs": len(metrics),
         "train_seconds": sum(m.get("epoch_train_seconds", 0) for m in metrics),
         "validation_seconds": sum(m.get("eval_seconds", 0) for m in metrics),
         "train_wall_seconds": (st or {}).get("train", {}).get("wall_seconds"),
         "eval_wall_seconds": (st or {}).get("eval", {}).get("wall_seconds"),
         "attack_seconds": {a["name"] + f"@{a['eps']:g}": a["seconds"]
                            for a in res.get("attacks", [])}}
    timing[row.name] = t
    att = sum(t["attack_seconds"].values()) if t["attack_seconds"] else None
    tlines.append(f"| {row.display} | {t['epochs']} | {t['train_seconds']:.0f} | "
                  f"{t['validation_seconds']:.0f} | {_fmt0(t['train_wall_seconds'])} | "
                  f"{_fmt0(t['eval_wall_seconds'])} | {_fmt0(att)} |")
  tlines += ["", "train s: sum of the epochs' training time (metrics.jsonl); validation s: the "
             "per-epoch PGD validation; wall s: the subprocesses run by reproduce.py (with "
             "start-up and compilation; a reused or earlier run counts only what this tool ran)."
             " Per attack: robustness.json.", ""]
  write_json(os.path.join(out, "timing.json"), timing)
  with open(os.path.join(out, "timing.md"), "w") as f:
    f.write("\n".join(tlines))

  # machine.md
  devices = sorted({d for row in plan for d in (load_json(
      os.path.join(out, row.name, "run_info.json"), {}) or {}).get("devices", [])})
  machine_path = os.path.join(out, "machine.md")
  # --report_only keeps the machine that ran the rows, not the one writing the report.
  if not (FLAGS.report_only and os.path.exists(machine_path)):
    with open(machine_path, "w") as f:
      f.write("\n".join(["# Machine", "", f"- CPUs: {os.cpu_count()} ({_cpu_model()})",
                         f"- Platform: {platform.platform()}, Python {platform.python_version()}",
                         f"- Versions: {_versions()}",
                         f"- JAX devices of the runs: {', '.join(devices) or '?'}",
                         f"- XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')}", ""]))

  # README.md
  st_lines = []
  for row in plan:
    st = statuses.get(row.name) or {}
    if st.get("error"):
      st_lines.append(f"- {row.display}: {st['error']}")
  cmd = shlex.join(["python", "experiments/reproduce.py"] +
                   [a for a in sys.argv[1:] if a not in ("--report_only", "--report_only=True")])
  overrides_text = ", ".join(f"`{k}={v}`" for k, v in overrides) or "none"
  readme = [f"# {spec['title']}", "", scale, "",
            "```bash", cmd, "```", "",
            f"Every row: same data and budget (overrides: {overrides_text}); early stopping on "
            "the validation split (best robust validation accuracy, `best/` checkpoint); "
            f"attacks on {info['test'] or '?'} test images with `experiments/evaluate.py` "
            f"({', '.join(plan[0].attacks)}, {plan[0].restarts} restart(s)). "
            "The exact commands are in [commands.sh](commands.sh).", "",
            "## This run (robust accuracy %, test set)", "", ours,
            "## Published (paper)", "", theirs, "## Training (validation split)", "",
            training_table(plan, out), *(["## Problems", ""] + st_lines + [""] if st_lines
                                         else []),
            "Data: [data.md](data.md). Machine: [machine.md](machine.md). Time: "
            "[timing.md](timing.md). Curves: [training_curves.png](training_curves.png). "
            "Per row: `<row>/` (config.json, metrics.jsonl, robustness.json).", ""]
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write("\n".join(readme))


def training_table(plan, out) -> str:
  lines = ["| Defense | epochs | best epoch | clean % | PGD % (validation) | last train loss |",
           "|---|---:|---:|---:|---:|---:|"]
  for row in plan:
    m = [r for r in read_metrics(os.path.join(out, row.name))]
    ev = [r for r in m if "robust_accuracy" in r]
    if not ev:
      lines.append(f"| {row.display} | {len(m)} | - | - | - | - |")
      continue
    best = max(ev, key=lambda r: r["robust_accuracy"])  # first best, as train.py keeps it
    lines.append(f"| {row.display} | {len(m)} | {best['epoch']} | "
                 f"{100 * best['clean_accuracy']:.2f} | {100 * best['robust_accuracy']:.2f} | "
                 f"{m[-1].get('train_loss', float('nan')):.4f} |")
  return "\n".join(lines) + "\n"


def _fmt0(v):
  return "-" if v is None else f"{v:.0f}"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "?"


def _versions() -> str:
  from importlib.metadata import PackageNotFoundError, version  # pylint: disable=import-outside-toplevel
  out = []
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
    try:
      out.append(f"{name} {version(name)}")
    except PackageNotFoundError:
      pass
  return ", ".join(out)


def write_figures(plan, out: str) -> None:
  sys.path.insert(0, EXPERIMENTS)
  import figures  # pylint: disable=import-outside-toplevel
  dirs = [os.path.join(out, r.name) for r in plan
          if read_metrics(os.path.join(out, r.name))]
  if dirs:
    figures.training_curves(dirs, os.path.join(out, "training_curves.png"),
                            labels=[DISPLAY.get(os.path.basename(d), os.path.basename(d))
                                    for d in dirs])


# --- main -------------------------------------------------------------------------------------

def main(argv):
  del argv
  table = FLAGS.table
  if table is None:
    raise ConfigError("--table is required: one of " + ", ".join(sorted(TABLES)))
  out = os.path.abspath(FLAGS.out or os.path.join(ROOT, "results", table))
  work = os.path.abspath(FLAGS.work or os.path.join(ROOT, "runs", table))
  if os.path.commonpath([out, work]) == out:
    raise ConfigError(f"--work={work} is inside --out={out}: keep checkpoints out of the results")
  if FLAGS.jobs < 1:
    raise ConfigError(f"--jobs={FLAGS.jobs} is not valid: use an integer >= 1")
  if FLAGS.num_test == 0 or FLAGS.num_test < -1:
    raise ConfigError(f"--num_test={FLAGS.num_test} is not valid: use -1 or N >= 1")
  if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
    raise ConfigError(f"--data_dir={FLAGS.data_dir} is not a folder")
  # Relative to the repository root, where the commands run (e.g. ../shared/data/mnist).
  data_dir = os.path.relpath(os.path.abspath(FLAGS.data_dir), ROOT) if FLAGS.data_dir else None
  overrides = row_overrides(data_dir, parse_overrides(FLAGS.override))
  plan = make_plan(table, work, overrides, data_dir)
  for row in plan:  # a workdir of another config is refused before anything runs
    if not FLAGS.report_only:
      check_compatible(row.config, row.train_dir)

  os.makedirs(out, exist_ok=True)
  if not FLAGS.report_only:  # keep the commands of the run that produced the results
    write_commands(os.path.join(out, "commands.sh"), plan, table)
  print(f"{TABLES[table]['title']}: rows {', '.join(r.name for r in plan)}; results in "
        f"{shown_path(out)}, checkpoints in {shown_path(work)}", flush=True)
  if FLAGS.dry_run:
    print(f"dry run: wrote {shown_path(os.path.join(out, 'commands.sh'))}", flush=True)
    return
  logs = os.path.join(work, "logs")
  statuses = {}
  if FLAGS.report_only:
    statuses = {row.name: load_json(os.path.join(out, row.name, "reproduce.json"), {}) or {}
                for row in plan}
    for row in plan:
      if not os.path.exists(os.path.join(out, row.name, "robustness.json")):
        statuses[row.name].setdefault("error", "not evaluated (no robustness.json in the results)")
  elif FLAGS.jobs > 1:
    with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool:
      futures = [(row.name, pool.submit(run_row, row, out, logs)) for row in plan]
      for name, future in futures:
        statuses[name] = future.result()
  else:
    for row in plan:
      statuses[row.name] = run_row(row, out, logs)
  failed = [row.name for row in plan if statuses[row.name].get("error")]
  write_reports(table, plan, out, statuses, overrides)
  if FLAGS.figures:
    write_figures(plan, out)
  print(open(os.path.join(out, "table.md")).read(), flush=True)
  print(f"wrote {shown_path(out)}/README.md, table.md, commands.sh, data.md, timing.md, "
        "machine.md" + (", training_curves.png" if FLAGS.figures else ""), flush=True)
  if failed:
    print(f"rows that failed: {', '.join(failed)} (rerun the same command to resume)",
          file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, sys.argv)
