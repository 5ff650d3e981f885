"""The benchmark's bookkeeping (interleaving, spreads, K-scaling flags, paired ratios) and the
PyTorch reference's two ATENT variants against a re-implementation of the authors' step written
here from their notebook (GauriJagatap/StochAT notebooks/mnist_exps_linf.ipynb and
adversarial/functional.py)."""

import copy
import functools
import math
import os
import subprocess
import sys

import pytest
from absl import flags

torch = pytest.importorskip("torch")
F = torch.nn.functional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import benchmark
import torch_reference


def _record(impl, method, K, ms, variant="-", cpu=None):
  return {"impl": impl, "variant": variant, "method": method, "K": K, "ms_median": ms,
          "cpu_ms_median": ms if cpu is None else cpu, "unreliable": []}


def test_k_scaling_flags_superlinear_and_flat_methods_only():
  recs = [_record("jax", "pgd_at", 10, 560.0), _record("jax", "pgd_at", 40, 1602.0),  # 2.9x
          _record("jax", "atent_l2", 10, 1100.0), _record("jax", "atent_l2", 40, 14000.0),
          _record("torch", "atent_linf", 10, 900.0, "authors"),
          _record("torch", "atent_linf", 40, 950.0, "authors"),  # flat: not K-proportional
          _record("jax", "sgd", 0, 100.0),
          # wall flat (the load fell between the K groups), CPU time linear
          _record("jax", "trades", 10, 700.0, cpu=1400.0),
          _record("jax", "trades", 40, 700.0, cpu=5000.0)]
  rel = benchmark.check_scaling(recs)
  assert rel["JAX pgd_at"]["wall"] == pytest.approx((1602 / 560) / 4, abs=0.01)
  assert rel["JAX atent_l2"]["wall"] == pytest.approx((14000 / 1100) / 4, abs=0.01)
  assert rel["JAX trades"] == {"wall": 0.25, "cpu": pytest.approx(5000 / 1400 / 4, abs=0.01)}
  assert [bool(r["unreliable"]) for r in recs] == [False, False, True, True, True, True, False,
                                                    True, True]
  assert recs[2]["unreliable"][0] == "K-scaling (wall): t(K 40) / t(K 10) = 12.7 for K x4"
  assert [r.split(":")[0] for r in recs[7]["unreliable"]] == ["K-scaling (wall)"]


def test_spread_marks_a_row_unreliable():
  row = {"impl": "jax", "variant": "-", "method": "sgd", "K": 0, "batch": 8,
         "wall": [100.0, 110.0, 90.0, 100.0, 105.0], "cpu": [190.0] * 5,
         "load_before": [1.0, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0]}
  rec = benchmark.summarise(row, max_spread=0.25)
  assert (rec["ms_median"], rec["ms_min"], rec["ms_max"], rec["spread"]) == (100, 90, 110, 0.2)
  assert rec["unreliable"] == [] and rec["n"] == 5 and rec["cpu_ms_median"] == 190
  row["wall"][0] = 142.5  # median 105: (142.5 - 90) / 105 = 0.5
  assert benchmark.summarise(row, max_spread=0.25)["unreliable"] == ["spread 0.50 > 0.25"]


def test_rounds_interleave_every_row_once_per_round_in_rotated_order():
  calls = []
  rows = [{"step": (lambda name=name: calls.append(name))} for name in "abc"]
  benchmark.interleaved_rounds(rows, repeats=3, warmup=1)
  assert calls == list("abc") + list("abc") + list("bca") + list("cab")
  assert all(len(r["wall"]) == len(r["cpu"]) == 3 for r in rows)


def test_paired_ratio_is_per_round():
  a = {"wall": [200.0, 400.0, 300.0], "cpu": [10.0, 10.0, 10.0]}
  b = {"wall": [100.0, 400.0, 100.0], "cpu": [20.0, 20.0, 20.0]}
  assert benchmark.paired_ratio(a, b) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                          "cpu_median": 0.5}


def _notebook_linf_step(model, opt, x, y, L, *, step=0.01, eps=0.3, ep=1e-4, alpha=0.9):
  """Table 2's step as the notebook's cells read, written independently of torch_reference."""
  model.train()
  loss = 0
  x_adv = None
  for sample in range(L):
    if sample == 0:
      start = x + torch.sign(torch.normal(torch.zeros_like(x), torch.ones_like(x))) * eps
    else:
      start = x_adv
    leaf = start.clone().detach().requires_grad_(True)
    F.cross_entropy(model(leaf), y).backward()
    with torch.no_grad():
      new = leaf.detach().clone()
      new += leaf.grad.sign() * step
      new += ep * math.sqrt(2 * step) * torch.randn_like(leaf)
      new = torch.max(torch.min(new, x + eps), x - eps).clamp(0, 1)
    x_adv = new.detach()
    opt.zero_grad()
    loss = (1 - alpha) * loss + alpha * F.cross_entropy(model(x_adv), y)
  loss.backward()
  opt.step()


@pytest.mark.parametrize("variant", ["authors", "optimised"])
def test_reference_atent_linf_step_matches_the_notebook(variant):
  torch.manual_seed(0)
  base = torch_reference.SmallCNN(drop=0.0)  # dropout off: the variants draw the same noise
  x = torch.rand(4, 1, 28, 28)
  y = torch.tensor([0, 3, 7, 9])
  models = [copy.deepcopy(base) for _ in range(2)]
  opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
  torch.manual_seed(1)
  torch_reference.atent_step(models[0], opts[0], x, y, 3, "linf", variant)
  torch.manual_seed(1)
  _notebook_linf_step(models[1], opts[1], x, y, 3)
  moved = 0.0
  for p, q, p0 in zip(models[0].parameters(), models[1].parameters(), base.parameters()):
    assert p.shape == q.shape
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    moved += float((p - p0).detach().abs().max())
  assert moved > 1e-4  # the step did change the weights


def test_reference_rejects_unknown_variant_and_method():
  with pytest.raises(ValueError, match="variant"):
    torch_reference.make_step("atent_linf", 2, 4, variant="fast")
  with pytest.raises(ValueError, match="method"):
    torch_reference.make_step("atent", 2, 4)


class _FreshFlags:
  """absl.flags, with every DEFINE_* writing into one fresh FlagValues instead of the process's
  FLAGS (where benchmark.py's and torch_reference.py's flags would clash)."""

  def __init__(self):
    self.values = flags.FlagValues()

  def __getattr__(self, name):
    attr = getattr(flags, name)
    return functools.partial(attr, flag_values=self.values) if name.startswith("DEFINE") else attr


# (script, args, message, started as a script). Each script is started for at least one error
# (the whole path: flags defined and parsed as `python script.py` does, the one line, exit 2,
# nothing on stdout); benchmark.py starts in a fraction of a second (no JAX, no PyTorch), so all
# of its errors are. torch_reference.py imports PyTorch (seconds per start): it is started for
# absl's parse error, and its own checks in main() run in this process, on flags defined afresh
# for each case.
BAD_FLAGS = [
    ("benchmark.py", ["--K=10,x"], "error: --K=10,x is not a comma-separated list of integers",
     True),
    ("benchmark.py", ["--K=0"], "error: --K=0: every K must be >= 1", True),
    ("benchmark.py", ["--methods=sgd,nope"], "error: --methods: unknown method 'nope'", True),
    ("benchmark.py", ["--reference", "--attacks"],
     "error: --reference and --attacks: use one at a time", True),
    ("benchmark.py", ["--repeats=0"], "error: --repeats and --batch must be >= 1", True),
    ("benchmark.py", ["--no_such_flag=1"], "error: Unknown command line flag 'no_such_flag'",
     True),
    ("torch_reference.py", ["--_memory-child"],
     "error: Unknown command line flag '_memory-child'", True),
    ("torch_reference.py", ["--methods=sgd,nope"], "error: --methods: unknown method 'nope'",
     False),
    ("torch_reference.py", ["--K", "10,x"],
     "error: --K=10,x is not a comma-separated list of integers", False),
    ("torch_reference.py", ["--memory_child=sgd,1"],
     "error: --memory_child=sgd,1: use METHOD,K,BATCH,VARIANT", False),
]


@pytest.mark.parametrize("script,args,message,as_script", BAD_FLAGS)
def test_bad_flags_are_one_line_and_exit_2(script, args, message, as_script, monkeypatch,
                                           capsys):
  path = os.path.join(os.path.dirname(benchmark.__file__), script)
  if as_script:
    proc = subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                          timeout=120, check=False)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
  else:
    module = {"benchmark.py": benchmark, "torch_reference.py": torch_reference}[script]
    fresh = _FreshFlags()
    monkeypatch.setattr(module, "flags", fresh)
    monkeypatch.setattr(module, "FLAGS", fresh.values)
    module.define_flags()
    with pytest.raises(SystemExit) as exit_info:
      module.main([path, *args])
    code, (out, err) = exit_info.value.code, capsys.readouterr()
  assert code == 2, err
  assert err.startswith(message) and err.count("\n") == 1, err
  assert out == ""


@pytest.mark.parametrize("script,flag", [("benchmark.py", "--reference"),
                                         ("torch_reference.py", "--memory")])
def test_help_prints_the_flags_and_exits_0(script, flag):
  path = os.path.join(os.path.dirname(benchmark.__file__), script)
  proc = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert flag in proc.stdout
