"""The attack registry, the evaluator's bad-input errors, and experiments/evaluate.py with the
AutoAttack family: per-example outcomes, the comparison CLI, one-line errors with exit code 2.

One evaluate.py process evaluates the tiny run for every test of its output; of each kind of
user error one case goes through a real process, the others through the same script run in
this process (tests/scripts.py `run_script`: the script's own `cli.run`, exit code and
`error:` line)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from scripts import run_script

from atent_jax import attacks, evaluation, runs
from atent_jax.attacks import registry

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN = registry.RunDefaults(norm="linf", eps=0.3, step_size=0.01, num_steps=20)


# --- the registry -----------------------------------------------------------------------------

# What the hand-written grammar of experiments/evaluate.py produced before the registry (written
# out here from that code), for a run with eval norm linf, eps 0.3, step 0.01, 20 steps.
_OLD_GRAMMAR = {
    "pgd": {"attack": "pgd_linf", "num_steps": 20, "step_size": 0.01, "restarts": 1, "eps": 0.3},
    "pgd40_l2": {"attack": "pgd_l2", "num_steps": 40, "step_size": 0.25, "restarts": 1,
                 "eps": 2.0},
    "pgd100_linf@0.1": {"attack": "pgd_linf", "num_steps": 100, "step_size": 0.01,
                        "restarts": 1, "eps": 0.1},
    "cw_linf": {"attack": "cw_linf", "eps": 0.3, "step_size": 0.01, "restarts": 1,
                "num_steps": 20},
    "cw_linf_tanh": {"attack": "cw_linf", "eps": 0.3, "step_size": 0.01, "restarts": 1,
                     "variant": "tanh", "num_steps": 100},
    "cw_l2": {"attack": "cw_l2", "eps": 2.0},
    "deepfool_l2": {"attack": "deepfool", "norm": "l2", "eps": 2.0},
    "fgsm_linf": {"attack": "fgsm", "norm": "linf", "eps": 0.3},
    "atent20_l2": {"attack": "atent_attack", "norm": "l2", "num_steps": 20, "step_size": 0.25,
                   "eps": 2.0},
    "atent_attack": {"attack": "atent_attack", "eps": 0.3, "norm": "linf"},
}


@pytest.mark.parametrize("token", sorted(_OLD_GRAMMAR))
def test_registry_grammar_keeps_the_old_tokens(token):
  spec = registry.parse_token(token, _RUN)
  assert {k: v for k, v in spec.items() if k != "name"} == _OLD_GRAMMAR[token]


def test_registry_grammar_of_the_autoattack_family():
  l2_run = registry.RunDefaults(norm="l2", eps=1.5, step_size=0.1, num_steps=40)
  assert registry.parse_token("autoattack", l2_run) == {"attack": "autoattack", "norm": "l2",
                                                        "eps": 1.5}
  assert registry.parse_token("autoattack_linf", l2_run)["eps"] == 0.3  # the standard radius
  for name in ("apgd_ce", "apgd_t", "fab_t", "square"):
    assert registry.parse_token(f"{name}@0.2", _RUN) == {"attack": name, "norm": "linf",
                                                         "eps": 0.2}
  spec = registry.parse_token("square@0.1:num_queries=100:p_init=0.5", _RUN)
  assert spec["num_queries"] == 100 and spec["p_init"] == 0.5
  assert spec["name"] == "Square (num_queries=100) (p_init=0.5)"
  spec = registry.parse_token("autoattack:attacks=apgd-ce+square:version=plus", _RUN)
  assert spec["attacks"] == ("apgd-ce", "square") and spec["version"] == "plus"
  assert evaluation.normalise_spec(spec)["name"].startswith("AutoAttack-plus")
  assert registry.parse_token("pgd3_linf:step=0.05", _RUN)["name"] == "PGD-3 (step 0.05)"


@pytest.mark.parametrize("token,match", [
    ("nope", "'nope' is not a known attack"), ("autoattack@0", "eps=0.0"),
    ("square@-1", "eps=-1.0"), ("autoattack@x", "not a number"),
    ("fab_t_l1", "norm 'l1' is not supported"), ("apgd_ce:nope=3", "'nope=3' is not an option"),
    ("pgd20_linf:steps=3", "is not an option"), ("cw_l2:step=0.1", "is not an option"),
    ("pgd20_linf:step=0", "use a number > 0"), ("square:num_queries=many", "use int"),
    ("apgd_ce20", "takes no step count")])
def test_registry_grammar_errors(token, match):
  with pytest.raises(ValueError, match=match):
    registry.parse_token(token, _RUN)


def test_every_record_resolves_with_its_defaults():
  for name, record in registry.RECORDS.items():
    spec = evaluation.normalise_spec(name)
    assert spec["attack"] == name and spec["name"] == record.title(record.defaults)
    assert record.norm_of(spec["kwargs"]) in record.norms
    assert attacks.ATTACKS[name] == (record.fn, dict(record.defaults))
    assert record.cli in registry.token_help()
  assert registry.RECORDS["autoattack"].ensemble
  assert {r.member for r in registry.RECORDS.values() if r.member} == {
      "apgd-ce", "apgd-t", "fab-t", "square"}


# --- bad input from the API -------------------------------------------------------------------

def _linear(x):
  return x.reshape(x.shape[0], -1) @ jnp.ones((12, 3)) * jnp.arange(3.0)


_X = np.full((4, 2, 2, 3), 0.5, np.float32)
_Y = np.array([2, 2, 2, 2], np.int32)


@pytest.mark.parametrize("spec,match", [
    ("nope", "attack 'nope' is not known"),
    ({"attack": "autoattack", "eps": 0.0}, "eps=0.0"),
    ({"attack": "square", "eps": -0.1}, "eps=-0.1"),
    ({"attack": "square", "norm": "l1"}, "norm='l1' is not supported"),
    ({"attack": "pgd_linf", "norm": "l2"}, "norm='l2'.*use attack 'pgd_l2'"),
    ({"attack": "fgsm", "steps": 3}, "steps=3 is not an argument"),
    ({"attack": "autoattack", "version": "fast"}, "version='fast'"),
])
def test_bad_specs_raise_value_errors_naming_the_argument(spec, match):
  with pytest.raises(ValueError, match=match):
    evaluation.evaluate_attacks(_linear, _X, _Y, [spec], jax.random.PRNGKey(0))


@pytest.mark.parametrize("logits_fn,labels,match", [
    (lambda x: _linear(x)[:, 0], _Y, "logits_fn returns"),
    (lambda x: _linear(x)[:2], _Y, "logits_fn returns"),
    (_linear, np.array([0, 1, 2, 3], np.int32), "labels holds values"),
    (_linear, _Y[:3], "do not match"),
])
def test_bad_models_and_labels_raise_value_errors(logits_fn, labels, match):
  with pytest.raises(ValueError, match=match):
    evaluation.evaluate_attacks(logits_fn, _X, labels, [{"attack": "fgsm", "eps": 0.1}],
                                jax.random.PRNGKey(0), sanity_checks=False)


@pytest.mark.parametrize("only_a,only_b,want", [
    (0, 6, 2 / 64),               # all 6 disagreements one way: 2 * (1/2)^6
    (9, 1, 2 * 11 / 1024),        # 2 * (C(10,0) + C(10,1)) / 2^10
    (3, 3, 1.0),                  # an even split: no evidence (capped at 1)
    (0, 0, 1.0),                  # they never disagree
])
def test_mcnemar_p_is_the_exact_two_sided_binomial_test(only_a, only_b, want):
  assert evaluation.mcnemar_p(only_a, only_b) == pytest.approx(want, rel=1e-12)


def test_mcnemar_p_agrees_with_scipy_on_the_verdicts_sizes():
  stats = pytest.importorskip("scipy.stats")
  for only_a, only_b in ((21, 39), (24, 21), (150, 190)):
    assert evaluation.mcnemar_p(only_a, only_b) == pytest.approx(
        stats.binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9)


def test_masks_round_trip_and_comparisons_refuse_other_examples():
  mask = np.random.default_rng(0).random(1001) < 0.3
  np.testing.assert_array_equal(evaluation.decode_mask(evaluation.encode_mask(mask), 1001), mask)
  assert len(evaluation.encode_mask(np.ones(10_000, bool))) == 1668
  ex = evaluation.examples_record(np.arange(5), [3, 4, 5, 6, 7])
  assert ex["indices"] == {"start": 3, "stop": 8}
  assert evaluation.examples_record(np.arange(3), [0, 2, 5])["indices"] == [0, 2, 5]
  rec = {"name": "PGD-20", "norm": "linf", "eps": 0.3, "robust_accuracy": 0.6,
         "robust_examples": evaluation.encode_mask(mask[:5])}
  a = {"examples": ex, "attacks": [rec]}
  b = {"examples": dict(ex, labels_sha1="other"), "attacks": [rec]}
  with pytest.raises(ValueError, match="different examples"):
    evaluation.compare_results(a, b)


# --- experiments/evaluate.py ------------------------------------------------------------------

def _run(*args, script="evaluate.py"):
  return subprocess.run([sys.executable, os.path.join(_ROOT, "experiments", script), *args],
                        capture_output=True, text=True, cwd=_ROOT, timeout=900, check=False)


# One evaluation serves every test of evaluate.py's output: the tokens of the registry (a step
# count, a norm, a radius, a step size) and the AutoAttack family.
_ATTACKS = ("pgd3_linf,fgsm_linf,pgd2_l2@1.5,pgd3_linf@0.2:step=0.05,"
            "autoattack:attacks=apgd-ce,square:num_queries=20")


@pytest.fixture(scope="module")
def evaluated(tiny_run_template, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("evaluated") / "run")
  shutil.copytree(tiny_run_template, workdir)
  out = _run(f"--workdir={workdir}", f"--attacks={_ATTACKS}", "--num_examples=16",
             "--batch_size=16", "--nosanity_checks")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "robustness.json")) as f:
    return workdir, json.load(f), out


def test_evaluate_cli_writes_json_and_markdown(evaluated):
  workdir, res, _ = evaluated
  assert res["num_examples"] == 16
  names = [(r["name"], r["norm"], r["eps"], r["steps"]) for r in res["attacks"][:4]]
  assert names == [("PGD-3", "linf", 0.3, 3), ("FGSM-l_inf", "linf", 0.3, 1),
                   ("PGD-2", "l2", 1.5, 2), ("PGD-3 (step 0.05)", "linf", 0.2, 3)]
  assert res["attacks"][0]["kwargs"]["step_size"] == 0.01  # the run's eval step
  assert res["attacks"][3]["kwargs"]["step_size"] == 0.05
  assert "sanity_checks" not in res  # covered in-process by test_evaluate_attacks_...
  with open(os.path.join(workdir, "robustness.md")) as f:
    md = f.read()
  assert "| Defense | Benign | PGD-3 (l_inf 0.3) | FGSM-l_inf (l_inf 0.3) | PGD-2 (l_2 1.5) |" in md
  assert "| sgd |" in md


def test_evaluate_cli_stores_per_example_outcomes_and_masking_flags(evaluated):
  workdir, res, out = evaluated
  assert [r["name"] for r in res["attacks"]][4:] == ["AutoAttack (attacks=apgd-ce)",
                                                     "Square (num_queries=20)"]
  assert res["examples"]["count"] == 16 and res["examples"]["indices"] == {"start": 0,
                                                                          "stop": 16}
  assert res["examples"]["split"] == "test" and "evaluate.py" in res["command"]
  clean = res["clean_accuracy"]
  for r in res["attacks"]:
    mask = evaluation.robust_mask(r, 16)
    chex.assert_shape(mask, (16,))
    assert mask.mean() == pytest.approx(r["robust_accuracy"]) and r["robust_accuracy"] <= clean
  aa = res["attacks"][4]
  assert aa["attack"] == "autoattack" and aa["order"] == ["apgd-ce"]
  assert aa["kwargs"]["attacks"] == ["apgd-ce"] and aa["members"][0]["name"] == "APGD-CE"
  broken = evaluation.decode_mask(aa["members"][0]["broken_examples"], 16)
  assert not np.any(broken & evaluation.robust_mask(aa, 16))  # what it broke is not robust
  gm = res["gradient_masking"]
  assert {"randomized_outputs", "zero_gradients", "probability_outputs",
          "gradient_free_beats_white_box", "eps_monotone", "flags"} <= set(gm)
  assert "gradient masking" in out.stdout
  with open(os.path.join(workdir, "robustness.md")) as f:
    md = f.read()
  assert "| AutoAttack (attacks=apgd-ce) (l_inf 0.3) |" in md and "gradient masking" in md
  assert "examples broken by each member" in md


def test_compare_cli(evaluated, tmp_path):
  """The error (exit code 2) through a process, the comparisons in this process."""
  workdir, res, _ = evaluated
  path = os.path.join(workdir, "robustness.json")
  n = len(res["attacks"])
  out = run_script("compare_robustness.py", ["--json", path, path])
  assert out.returncode == 0, out.stderr[-2000:]
  same = json.loads(out.stdout)
  assert [r["agreement"] for r in same["attacks"]] == [1.0] * n
  flipped = json.loads(json.dumps(res))
  mask = evaluation.robust_mask(flipped["attacks"][0], 16)
  mask[5] = ~mask[5]
  flipped["attacks"][0]["robust_examples"] = evaluation.encode_mask(mask)
  (tmp_path / "b.json").write_text(json.dumps(flipped))
  out = run_script("compare_robustness.py", ["--json", path, str(tmp_path / "b.json")])
  first = json.loads(out.stdout)["attacks"][0]
  assert first["only_a"] + first["only_b"] == 1 and first["agreement"] == 15 / 16
  flipped["examples"]["indices"] = {"start": 16, "stop": 32}
  (tmp_path / "c.json").write_text(json.dumps(flipped))
  out = _run(path, str(tmp_path / "c.json"), script="compare_robustness.py")
  assert out.returncode == 2
  assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
      ("error: the two evaluations used different examples (indices or labels differ): compare "
      "evaluations of the same split and --num_examples")]


def _assert_one_error_and_nothing_written(out, workdir, args):
  assert out.returncode == 2, (args, out.stderr[-2000:])
  lines = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1, (args, out.stderr[-2000:])
  assert not os.path.exists(os.path.join(workdir, "robustness.json"))
  assert not os.path.exists(os.path.join(workdir, "robustness.md"))
  return lines[0]


# One token per kind of error; every message of the grammar: test_registry_grammar_errors.
# The first through a process, the others in this process (the same script and cli.run).
@pytest.mark.parametrize("attacks,match", [
    ("nope", "'nope' is not a known attack"), ("autoattack@0", "eps=0.0"),
    ("fab_t_l1", "norm 'l1' is not supported"), ("autoattack:version=fast", "version='fast'"),
    ("pgd20_linf:steps=3", "is not an option")])
def test_evaluate_cli_bad_attacks_exit_2_writing_nothing(tiny_run, attacks, match):
  workdir = tiny_run
  args = (f"--workdir={workdir}", f"--attacks=pgd3_linf,{attacks}", "--num_examples=4")
  out = _run(*args) if attacks == "nope" else run_script("evaluate.py", args)
  assert match in _assert_one_error_and_nothing_written(out, workdir, attacks)


def test_evaluate_cli_user_errors_exit_2(tiny_run, tmp_path):
  """Bad flags and workdirs (bad --attacks tokens: the test above). The first case through a
  process, the others in this process."""
  cases = [(f"--workdir={tmp_path / 'missing'}",), (f"--workdir={tiny_run}", "--eps=-0.1")]
  empty = tmp_path / "empty"
  empty.mkdir()
  with open(os.path.join(tiny_run, "config.json")) as f:
    config = json.load(f)
  (empty / "config.json").write_text(json.dumps(config))
  cases.append((f"--workdir={empty}",))
  other = tmp_path / "other"
  shutil.copytree(tiny_run, other)
  config["model"]["name"] = "lenet5"
  (other / "config.json").write_text(json.dumps(config))
  cases.append((f"--workdir={other}", "--num_examples=4"))
  for i, args in enumerate(cases):
    out = _run(*args) if i == 0 else run_script("evaluate.py", args)
    assert out.returncode == 2, (args, out.stderr[-1500:])
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, (args, out.stderr[-1500:])


def test_evaluate_cli_model_output_of_the_wrong_shape_exits_2(tiny_run, monkeypatch):
  """The run's model, wrapped to return one number per image instead of logits."""
  workdir = tiny_run
  real = runs.load_run

  class OneNumber:
    def __init__(self, model):
      self.model = model

    def apply(self, variables, x, train=False):
      return self.model.apply(variables, x, train=train)[:, 0]

  def load_run(workdir, which="best"):
    config, model, variables = real(workdir, which)
    return config, OneNumber(model), variables

  monkeypatch.setattr(runs, "load_run", load_run)
  out = run_script("evaluate.py", [f"--workdir={workdir}", "--attacks=pgd3_linf",
                                  "--num_examples=4"])
  line = _assert_one_error_and_nothing_written(out, workdir, "wrong shape")
  assert "logits_fn returns" in line and "(batch, num_classes)" in line


def test_default_report_set_includes_autoattack(monkeypatch):
  # Not as __main__: the module is only imported (its flags removed again).
  monkeypatch.setattr(sys, "path", list(sys.path))
  before = set(flags.FLAGS)
  try:
    spec = importlib.util.spec_from_file_location(
        "evaluate_cli", os.path.join(_ROOT, "experiments", "evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = [module.default_attacks(ml_collections.ConfigDict({"norm": norm}))
           for norm in ("linf", "l2")]
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
  assert got == [["pgd", "cw_linf", "autoattack"], ["pgd", "cw_l2", "autoattack"]]
