"""experiments/profile_step.py's command line: a bad flag is one error line and exit code 2,
before anything is timed."""

import os
import subprocess
import sys

import pytest

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "profile_step.py")


@pytest.mark.parametrize("args,message", [
    (["--batch=0"], "error: --batch=0 must be >= 1"),
    (["--repeats", "x"], "error: flag --repeats=x: invalid literal for int()"),
    (["--nope"], "error: Unknown command line flag 'nope': use one of --batch, --repeats"),
])
def test_bad_flags_are_one_line_and_exit_2(args, message):
  proc = subprocess.run([sys.executable, _SCRIPT, *args], capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stdout == ""
