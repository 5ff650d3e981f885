"""experiments/verdict_status.py rewrites only the status section of the verdict's README."""

import json
import os

from tests.scripts import run_script

INTRO = ("# Verdict\n\nEach row was trained on the kept weights. Machine: the project's CPU,\n"
         "shared and niced.\n\n| Row | clean |\n|---|---|\n| ATENT | 98.9 |\n\n")
OLD_STATUS = "Status at the end of the 2026-12-01 session: old table.\n\n| stale |\n\n"
TAIL = "Machine: the project's 2-core CPU, shared.\n\nCommands.\n"


def _row(tmp_path, table, row, epochs):
  os.makedirs(tmp_path / table / row)
  with open(tmp_path / table / row / "metrics.jsonl", "w") as f:
    for epoch in range(1, epochs + 1):
      f.write(json.dumps({"epoch": epoch, "clean_accuracy": 0.9, "robust_accuracy": 0.5}) + "\n")


def test_replaces_the_status_section_alone(tmp_path):
  # "Machine: the project's" inside the intro's paragraph, before the status, is not the marker:
  # taking it for one once copied the intro, the tables and the old status a second time.
  (tmp_path / "README.md").write_text(INTRO + OLD_STATUS + TAIL)
  _row(tmp_path, "table2", "pgd_at", 3)
  result = run_script("verdict_status.py", ["--session=2026-12-08",
                                            f"--verdict_dir={tmp_path}"])
  assert result.returncode == 0, result.stderr
  text = (tmp_path / "README.md").read_text()
  assert text.startswith(INTRO + "Status at the end of the 2026-12-08 session")
  assert text.endswith("\n\n" + TAIL)
  assert text.count("Status at the end of") == 1 and text.count("| ATENT | 98.9 |") == 1
  assert "stale" not in text
  assert "| PGD-AT | 3 " in text  # the row's own files, read from --verdict_dir


def test_a_readme_without_the_section_is_refused_and_left_as_it_was(tmp_path):
  (tmp_path / "README.md").write_text(INTRO + TAIL)
  result = run_script("verdict_status.py", ["--session=2026-12-08",
                                            f"--verdict_dir={tmp_path}"])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "Status at the end of" in result.stderr
  assert (tmp_path / "README.md").read_text() == INTRO + TAIL
