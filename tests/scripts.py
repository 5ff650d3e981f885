"""`run_script("evaluate.py", [ARGS...])`: an experiments/ script run in the test's own process,
as its `__main__`, for the cases where a separate process is not what is tested (a Python and
JAX start-up costs seconds). The script goes through its own flag definitions, atent_jax.cli,
its `error:` line and exit code, like `python experiments/SCRIPT ARGS...`; the result has the
fields of subprocess.run's (returncode, stdout, stderr). What the script changes in the process
is undone: sys.argv, sys.path, the working directory, warnings.showwarning, and the absl flags
it defined (scripts share flag names, and the next run defines them afresh).
"""

import contextlib
import io
import os
import runpy
import subprocess
import sys
import warnings

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script: str, args, *, cwd=ROOT) -> subprocess.CompletedProcess:
  """experiments/SCRIPT with ARGS in this process, from cwd (None: stay where we are)."""
  path = os.path.join(ROOT, "experiments", script)
  saved = sys.argv, list(sys.path), warnings.showwarning, os.getcwd()
  sys.argv = [path, *map(str, args)]
  before = set(flags.FLAGS)
  out, err = io.StringIO(), io.StringIO()
  try:
    if cwd is not None:
      os.chdir(cwd)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      runpy.run_path(path, run_name="__main__")
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    sys.argv, sys.path[:], warnings.showwarning = saved[:3]
    os.chdir(saved[3])
  return subprocess.CompletedProcess([path, *args], code, out.getvalue(), err.getvalue())
