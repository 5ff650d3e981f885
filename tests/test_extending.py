"""README.md's "Extending" examples, run as written: a training method added as one module plus
one registry line validates and trains through train_and_evaluate; an attack added the same way
is parsed, checked and evaluated like the built-in ones."""

import os
import re
import types

import jax
import numpy as np
import pytest
from tiny import make_tiny_config

import atent_jax
from atent_jax import configuration, evaluation, methods, models, runs, train
from atent_jax.attacks import registry
from atent_jax.data import DATASETS
from atent_jax.errors import ConfigError

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MARKER = "<!-- extending-example"
ATTACK_MARKER = "<!-- extending-attack-example"

# Two steps of 32 synthetic images; a small evaluation.
TWO_STEPS = {"data.source": "synthetic", "data.synthetic_examples": 64, "data.num_train": -1,
             "data.num_eval": 32, "train.batch_size": 32, "train.num_epochs": 1,
             "eval.num_examples": 16, "eval.batch_size": 16, "eval.num_steps": 1}


def readme_example(marker: str = MARKER) -> str:
  """The python block right after a marker line of README.md's "Extending" section."""
  with open(README) as f:
    text = f.read()
  assert text.count(marker) == 1, f"README.md needs exactly one {marker!r} line"
  after = text[text.index(marker):].split("\n", 1)[1]
  match = re.match(r"```python\n(.*?)\n```", after, re.S)
  assert match, "the marker line must be followed directly by a ```python block"
  return match.group(1)


@pytest.fixture
def fgsm_at():
  """The README's module, executed as a module of its own; unregistered afterwards."""
  module = types.ModuleType("fgsm_at")
  try:
    exec(compile(readme_example(), "README.md (Extending)", "exec"), module.__dict__)
    yield module
  finally:
    methods.METHODS.pop("fgsm_at", None)


def test_readme_method_is_registered_and_checked(fgsm_at):
  record = methods.get("fgsm_at")
  assert record.make_grad_fn is fgsm_at.make_fgsm_at and record.display_name == "FGSM-AT"
  configuration.validate_config(make_tiny_config("fgsm_at", **TWO_STEPS))
  l2 = make_tiny_config("fgsm_at", **TWO_STEPS, **{"sampler.norm": "l2", "sampler.eps": 2.0})
  with pytest.raises(ConfigError, match="l_inf only"):
    configuration.validate_config(l2)
  with pytest.raises(ValueError, match="already registered"):
    methods.register(record)


def test_readme_method_trains(fgsm_at, tmp_path):
  config = make_tiny_config("fgsm_at", **TWO_STEPS)
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 2
  assert np.isfinite(metrics["train_loss"])
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 2)
  start = train.init_state(config, model, tx, DATASETS[config.data.dataset][0]).params
  _, _, variables = atent_jax.load_run(workdir, "latest")
  before, after = jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(variables["params"])
  assert len(before) == len(after)
  assert all(np.all(np.isfinite(a)) for a in after)
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_unknown_method_lists_the_registry():
  with pytest.raises(ConfigError, match="is not known: use one of .*atent_linf.*trades"):
    methods.get("fgsm_at")


@pytest.fixture
def rfgsm():
  """The README's attack module, executed as a module of its own; unregistered afterwards."""
  module = types.ModuleType("rfgsm")
  try:
    exec(compile(readme_example(ATTACK_MARKER), "README.md (Extending)", "exec"), module.__dict__)
    yield module
  finally:
    if "rfgsm" in registry.RECORDS:
      registry.unregister("rfgsm")


def test_readme_attack_is_registered_parsed_and_checked(rfgsm):
  assert registry.get("rfgsm").fn is rfgsm.rfgsm
  assert registry.parse_token("rfgsm@0.1:alpha=0.05") == {
      "attack": "rfgsm", "eps": 0.1, "alpha": 0.05, "name": "R+FGSM (alpha=0.05)"}
  assert registry.normalise_spec("rfgsm")["name"] == "R+FGSM"
  assert "rfgsm" in registry.token_help()
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.get("rfgsm"))
  with pytest.raises(ValueError, match="l2.*not supported"):
    registry.normalise_spec({"attack": "rfgsm", "norm": "l2"})
  with pytest.raises(ValueError, match="steps=3 is not an argument"):
    registry.normalise_spec({"attack": "rfgsm", "steps": 3})
  registry.unregister("rfgsm")
  with pytest.raises(ValueError, match="not a known attack"):
    registry.parse_token("rfgsm")


def test_registering_a_taken_command_line_stem_is_refused(rfgsm):
  clash = registry.AttackRecord("pgd_copy", rfgsm.rfgsm, ("linf",), {"eps": 0.3}, "PGD copy",
                                cli="pgd", takes_norm=False)
  with pytest.raises(ValueError, match="stem 'pgd' is taken by 'pgd_linf'"):
    registry.register(clash)
  assert "pgd_copy" not in registry.RECORDS


def test_readme_attack_matches_its_closed_form_on_an_affine_model(rfgsm):
  # logits = x W + b: the cross-entropy's input gradient is W (softmax - onehot), computed here
  # in NumPy, not by the attack.
  rng = np.random.default_rng(0)
  w = rng.normal(size=(12, 4)).astype(np.float32)
  b = rng.normal(size=4).astype(np.float32)
  x = rng.uniform(size=(16, 12)).astype(np.float32)
  y = rng.integers(0, 4, size=16)
  eps, alpha = 0.2, 0.05
  key = jax.random.PRNGKey(3)
  adv = np.asarray(rfgsm.rfgsm(lambda v: v @ w + b, x, y, key, eps=eps, alpha=alpha))

  noise = np.asarray(jax.random.normal(key, x.shape))
  start = np.clip(x + alpha * np.sign(noise), 0, 1)
  z = start @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  grad = (p - np.eye(4)[y]) @ w.T
  expected = np.clip(np.clip(start + (eps - alpha) * np.sign(grad), x - eps, x + eps), 0, 1)
  np.testing.assert_allclose(adv, expected, atol=1e-6)
  assert np.abs(adv - x).max() <= eps + 1e-6


def test_readme_attack_runs_in_the_evaluator(rfgsm, tiny_run):
  logits_fn = atent_jax.load_classifier(tiny_run)
  images, labels = runs.load_eval_split(tiny_run)
  result = evaluation.evaluate_attacks(
      logits_fn, images[:16], labels[:16], [{"attack": "rfgsm", "eps": 0.3}],
      jax.random.PRNGKey(0), batch_size=16, sanity_checks=False, masking_checks=False)
  [row] = result["attacks"]
  assert row["name"] == "R+FGSM" and row["steps"] == 1 and row["norm"] == "linf"
  assert row["in_ball"] and row["in_range"] and row["max_perturbation"] <= 0.3 + 1e-6
  assert row["robust_accuracy"] <= result["clean_accuracy"]
