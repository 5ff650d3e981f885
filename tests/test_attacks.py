"""Attacks (closed-form answers on linear models, invariants on a tiny conv net), the evaluator
and the experiments/evaluate.py command line."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import atent_jax
from atent_jax import attacks, evaluation

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 16


def _binary_linear(seed=0, batch=6, dist=0.15, norm="l2"):
  """A 2-class linear model z = x W, inputs near 0.5 placed at a known minimal distance `dist`
  (in `norm`) from the decision boundary z_1 = z_0."""
  rng = np.random.default_rng(seed)
  w0 = rng.normal(size=D)
  v = rng.normal(size=D)
  v -= v.mean()                                           # v = grad of f = z_1 - z_0
  w = np.stack([w0, w0 + v], -1).astype(np.float32)
  dual = np.abs(v).sum() if norm == "linf" else np.linalg.norm(v)
  x = rng.uniform(0.45, 0.55, size=(batch, D))
  target = np.where(np.arange(batch) % 2 == 0, 1.0, -1.0) * dist * dual   # f(x_i) wanted
  x = x + ((target - x @ v) / (v @ v))[:, None] * v[None, :]
  y = (x @ v > 0).astype(np.int32)
  logits_fn = lambda xx: xx @ jnp.asarray(w)
  return logits_fn, x.astype(np.float32), y, v.astype(np.float32)


def test_linear_problem_is_well_posed():
  logits_fn, x, y, v = _binary_linear()
  assert np.all(np.argmax(np.asarray(logits_fn(x)), -1) == y)
  assert x.min() > 0.2 and x.max() < 0.8
  np.testing.assert_allclose(np.abs(x @ v) / np.linalg.norm(v), 0.15, rtol=1e-5)


def test_pgd_linf_reaches_the_box_corner():
  logits_fn, x, y, v = _binary_linear()
  eps = 0.1
  adv = attacks.pgd_linf(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps, step_size=0.03,
                         num_steps=10, random_init=True)
  away = np.where(y[:, None] == 0, 1.0, -1.0) * np.sign(v)[None]   # sign of grad of CE
  np.testing.assert_allclose(np.asarray(adv), x + eps * away, atol=1e-6)


def test_pgd_l2_reaches_eps_along_w():
  logits_fn, x, y, v = _binary_linear()
  eps = 0.3
  adv = attacks.pgd_l2(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps, step_size=0.1,
                       num_steps=5, random_init=False)
  u = np.where(y[:, None] == 0, 1.0, -1.0) * (v / np.linalg.norm(v))[None]
  np.testing.assert_allclose(np.asarray(adv), x + eps * u, atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_finds_the_exact_minimal_perturbation_of_a_linear_classifier(norm):
  logits_fn, x, y, v = _binary_linear(norm=norm, dist=0.05)
  adv, dist, success = attacks.deepfool_minimal(logits_fn, x, y, norm=norm, overshoot=0.0)
  assert np.all(np.asarray(success))
  np.testing.assert_allclose(np.asarray(dist), 0.05, atol=1e-4)
  assert np.all(np.argmax(np.asarray(logits_fn(adv)), -1) != y)


def test_cw_l2_is_within_5_percent_of_the_minimal_perturbation():
  logits_fn, x, y, v = _binary_linear(dist=0.3)
  adv, dist, success = jax.jit(lambda a, b: attacks.cw_l2_minimal(
      logits_fn, a, b, binary_search_steps=8, num_steps=200, learning_rate=0.01))(x, y)
  assert np.all(np.asarray(success))
  dist = np.asarray(dist)
  assert np.all(dist >= 0.3 * (1 - 1e-3)), dist            # nothing beats the minimum
  assert np.all(dist <= 0.3 * 1.05), dist
  assert np.all(np.argmax(np.asarray(logits_fn(adv)), -1) != y)


def test_minimal_attacks_at_eps_return_x_when_the_perturbation_is_larger():
  logits_fn, x, y, _ = _binary_linear(dist=0.3)
  for fn, kw in ((attacks.deepfool, {"norm": "l2"}),
                 (attacks.cw_l2, {"num_steps": 50, "binary_search_steps": 4})):
    small = np.asarray(fn(logits_fn, x, y, eps=0.2, **kw))
    np.testing.assert_array_equal(small, x)
    big = np.asarray(fn(logits_fn, x, y, eps=0.5, **kw))
    assert np.all(np.argmax(np.asarray(logits_fn(big)), -1) != y)


# --- a tiny conv net on 8x8 inputs ------------------------------------------------------------

class _TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(10)(x) * 3.0


@pytest.fixture(scope="module")
def tiny():
  model = _TinyCNN()
  x = jax.random.uniform(jax.random.PRNGKey(1), (24, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(0), x)
  logits_fn = jax.jit(lambda v: model.apply(params, v))
  y = np.asarray(jnp.argmax(logits_fn(x), -1)).astype(np.int32)  # clean accuracy 100%
  y[:3] = (y[:3] + 1) % 10                                        # ... except three
  return logits_fn, np.asarray(x), y


_CASES = [
    ("fgsm", {"eps": 0.1, "norm": "linf"}),
    ("fgsm", {"eps": 0.5, "norm": "l2"}),
    ("pgd_linf", {"eps": 0.1, "step_size": 0.03, "num_steps": 5, "restarts": 2}),
    ("pgd_l2", {"eps": 0.5, "step_size": 0.2, "num_steps": 5}),
    ("cw_linf", {"eps": 0.1, "step_size": 0.03, "num_steps": 5}),
    ("cw_linf", {"eps": 0.1, "num_steps": 10, "variant": "tanh", "learning_rate": 0.05}),
    ("cw_l2", {"eps": 0.5, "num_steps": 20, "binary_search_steps": 3}),
    ("deepfool", {"eps": 0.1, "norm": "linf", "num_steps": 10}),
    ("deepfool", {"eps": 0.5, "norm": "l2", "num_steps": 10}),
    ("atent_attack", {"eps": 0.1, "step_size": 0.03, "num_steps": 5}),
    ("atent_attack", {"eps": 0.5, "step_size": 0.2, "num_steps": 5, "norm": "l2"}),
]


@pytest.mark.parametrize("name,kw", _CASES)
def test_perturbations_stay_in_the_ball_and_in_range(tiny, name, kw):
  logits_fn, x, y = tiny
  fn, _ = attacks.ATTACKS[name]
  adv = np.asarray(fn(logits_fn, x, y, jax.random.PRNGKey(3), **kw))
  assert adv.shape == x.shape
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  norm = attacks.attack_norm(name, kw)
  d = (adv - x).reshape(len(x), -1)
  size = np.abs(d).max(-1) if norm == "linf" else np.linalg.norm(d, axis=-1)
  assert size.max() <= kw["eps"] * (1 + 1e-5) + 1e-6
  # the attack does something: it fools the net on some correctly classified example
  if name != "fgsm":
    assert np.any(np.argmax(np.asarray(logits_fn(adv)), -1)[3:] != y[3:])


def test_more_restarts_never_increase_robust_accuracy(tiny):
  logits_fn, x, y = tiny
  key = jax.random.PRNGKey(7)
  fooled = {}
  for r in (1, 3):
    adv = attacks.pgd_linf(logits_fn, x, y, key, eps=0.05, step_size=0.02, num_steps=3,
                           restarts=r)
    fooled[r] = np.argmax(np.asarray(logits_fn(adv)), -1) != y
  assert np.all(fooled[3] >= fooled[1])          # per example, not only on average
  assert fooled[3].sum() >= fooled[1].sum()


def test_evaluate_attacks_reports_and_sanity_checks(tiny):
  logits_fn, x, y = tiny
  spec = [{"attack": "pgd_linf", "eps": 0.1, "step_size": 0.03, "num_steps": 5, "unroll": False},
          {"attack": "fgsm", "eps": 0.1}, "deepfool"]
  res = evaluation.evaluate_attacks(logits_fn, x, y, spec, jax.random.PRNGKey(0), batch_size=10,
                                    sanity_examples=24)
  assert res["clean_accuracy"] == pytest.approx(21 / 24)
  assert [r["name"] for r in res["attacks"]] == ["PGD-5", "FGSM-l_inf", "DeepFool-l_inf"]
  for r in res["attacks"]:
    assert r["robust_accuracy"] <= res["clean_accuracy"]
    assert r["num_examples"] == 24 and r["in_ball"] and r["in_range"]
    assert {"name", "norm", "eps", "steps", "restarts", "robust_accuracy"} <= set(r)
  sc = res["sanity_checks"]
  assert sc["unbounded"]["robust_accuracy"] <= 0.02 and sc["unbounded"]["passed"]
  assert sc["eps_monotone"]["robust_accuracy"] >= sc["base_robust_accuracy"] - 0.05
  assert sc["strength_monotone"]["robust_accuracy"] <= sc["base_robust_accuracy"] + 0.05
  assert 0.0 <= sc["vanishing_gradients"]["fraction_of_correct"] <= 1.0
  table = evaluation.markdown_table([("tiny", res)])
  assert "| Defense | Benign | PGD-5 (l_inf 0.1)" in table and "| tiny | 87.50 |" in table


def test_vanishing_gradients_are_flagged():
  # A saturated net: huge logits make the softmax exactly one-hot in float32.
  logits_fn = lambda v: jnp.stack([1e4 * jnp.ones(v.shape[0]), jnp.zeros(v.shape[0])], -1) + \
      0.0 * v.reshape(v.shape[0], -1).sum(-1, keepdims=True)
  x = np.full((4, 3), 0.5, np.float32)
  y = np.zeros(4, np.int32)
  with pytest.warns(UserWarning, match="input gradient"):
    res = evaluation.evaluate_attacks(
        logits_fn, x, y, [{"attack": "pgd_linf", "num_steps": 2, "unroll": False}],
        jax.random.PRNGKey(0), 4)
  assert res["sanity_checks"]["vanishing_gradients"]["fraction_of_correct"] == 1.0
  assert not res["sanity_checks"]["unbounded"]["passed"]


@pytest.mark.parametrize("spec,match", [("nope", "not known"), ({"attack": "pgd_l2", "eps": 0},
                                                                  "eps"),
                                        ({"attack": "fgsm", "eps": -1.0}, "eps")])
def test_bad_attack_specs_raise(spec, match):
  with pytest.raises(ValueError, match=match):
    evaluation.normalise_spec(spec)


def test_exported_names():
  for name in ("fgsm", "pgd_linf", "pgd_l2", "cw_l2", "cw_linf", "deepfool", "atent_attack",
               "ATTACKS"):
    assert hasattr(atent_jax, name)
  assert set(attacks.ATTACKS) == {"fgsm", "pgd_linf", "pgd_l2", "cw_l2", "cw_linf", "deepfool",
                                  "atent_attack"}


# --- experiments/evaluate.py ------------------------------------------------------------------

def _evaluate(*args):
  return subprocess.run([sys.executable, os.path.join(_ROOT, "experiments", "evaluate.py"),
                         *args], capture_output=True, text=True, cwd=_ROOT, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A SmallCNN trained for a few steps on the built-in MNIST sample."""
  from atent_jax import configuration, train
  workdir = str(tmp_path_factory.mktemp("run"))
  config = configuration.default_config()
  config.method = "sgd"
  config.data.source = "builtin"
  config.data.num_train = 64
  config.data.num_eval = 32
  config.train.batch_size = 32
  config.train.num_epochs = 1
  config.train.progress_bar = False
  config.eval.num_examples = 16
  config.eval.batch_size = 16
  config.eval.num_steps = 1
  config.eval.eps = 0.3  # the CLI's l_inf attacks default to the run's eval eps
  train.train_and_evaluate(config, workdir)
  return workdir


def test_evaluate_cli_writes_json_and_markdown(trained_run):
  out = _evaluate(f"--workdir={trained_run}",
                  "--attacks=pgd3_linf,fgsm_linf,pgd2_l2@1.5,pgd3_linf@0.2:step=0.05",
                  "--num_examples=16", "--batch_size=16", "--nosanity_checks")
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(trained_run, "robustness.json")) as f:
    res = json.load(f)
  assert res["num_examples"] == 16
  names = [(r["name"], r["norm"], r["eps"], r["steps"]) for r in res["attacks"]]
  assert names == [("PGD-3", "linf", 0.3, 3), ("FGSM-l_inf", "linf", 0.3, 1),
                   ("PGD-2", "l2", 1.5, 2), ("PGD-3 (step 0.05)", "linf", 0.2, 3)]
  assert res["attacks"][0]["kwargs"]["step_size"] == 0.01  # the run's eval step
  assert res["attacks"][3]["kwargs"]["step_size"] == 0.05
  assert "sanity_checks" not in res  # covered in-process by test_evaluate_attacks_...
  with open(os.path.join(trained_run, "robustness.md")) as f:
    md = f.read()
  assert "| Defense | Benign | PGD-3 (l_inf 0.3) | FGSM-l_inf (l_inf 0.3) | PGD-2 (l_2 1.5) |" in md
  assert "| sgd |" in md


def test_evaluate_cli_user_errors_exit_2(trained_run, tmp_path):
  cases = [(f"--workdir={trained_run}", "--attacks=pgd20_linf,nope"),
           (f"--workdir={trained_run}", "--attacks=pgd20_linf@0"),
           (f"--workdir={trained_run}", "--attacks=pgd20_linf:step=0"),
           (f"--workdir={trained_run}", "--attacks=pgd20_linf:steps=3"),
           (f"--workdir={trained_run}", "--attacks=cw_l2:step=0.1"),
           (f"--workdir={trained_run}", "--eps=-0.1")]
  empty = tmp_path / "empty"
  empty.mkdir()
  with open(os.path.join(trained_run, "config.json")) as f:
    config = json.load(f)
  (empty / "config.json").write_text(json.dumps(config))
  cases.append((f"--workdir={empty}",))
  other = tmp_path / "other"
  shutil.copytree(trained_run, other)
  config["model"]["name"] = "lenet5"
  (other / "config.json").write_text(json.dumps(config))
  cases.append((f"--workdir={other}", "--num_examples=4"))
  cases.append((f"--workdir={tmp_path / 'missing'}",))
  for args in cases:
    out = _evaluate(*args)
    assert out.returncode == 2, (args, out.stderr[-1500:])
    lines = [l for l in out.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, (args, out.stderr[-1500:])
