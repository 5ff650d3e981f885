"""Gradient-masking flags of atent_jax.evaluation, on models whose masking is known by design.

The masked model quantises its input (round to multiples of 1/4, whose gradient is zero): every
input gradient is exactly zero, so PGD and APGD cannot move from their random start, while
Square's random search over +-eps patterns crosses the quantisation steps and breaks it. The
control is the same linear classifier without the quantiser. What the attacks should achieve is
derived here from the construction (clean margins vs the reach of random and optimal
perturbations), not from the attacks.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax import evaluation

SHAPE = (8, 8, 1)
D = 64
NUM_CLASSES = 10
EPS = 0.15        # > 1/8: a pixel moved by eps always lands on the next quantisation level
LEVEL = 0.25
N = 24


def _problem():
  """A linear classifier W, and N images on the quantisation grid whose clean margin (to the
  runner-up class) lies in [7, 12], and whose best +-1-level move (a linear program solved in
  closed form) reaches past the margin of some class by at least 3."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(D, NUM_CLASSES)).astype(np.float32)
  images, labels = [], []
  while len(images) < N:
    x = rng.choice([0.25, 0.5, 0.75], size=D).astype(np.float32)
    z = x @ w
    y = int(np.argmax(z))
    margins = z[y] - z                                         # >= 0, 0 at y
    runner_up = np.sort(margins)[1]
    # The best move of one level per pixel towards class j gains LEVEL * ||w_j - w_y||_1.
    reach = LEVEL * np.abs(w - w[:, [y]]).sum(0)
    if 7.0 <= runner_up <= 12.0 and np.any((reach - margins)[np.arange(NUM_CLASSES) != y] > 3.0):
      images.append(x.reshape(SHAPE))
      labels.append(y)
  return w, np.stack(images), np.array(labels, np.int32)


W, IMAGES, LABELS = _problem()


def quantised_logits(x):
  q = jnp.round(x * 4.0) / 4.0          # zero gradient almost everywhere
  return q.reshape(q.shape[0], -1) @ jnp.asarray(W)


def linear_logits(x):
  return x.reshape(x.shape[0], -1) @ jnp.asarray(W)


def test_the_construction():
  chex.assert_shape(IMAGES, (N, *SHAPE))
  np.testing.assert_array_equal(np.argmax(np.asarray(quantised_logits(IMAGES)), -1), LABELS)
  g = jax.grad(lambda v: jnp.sum(quantised_logits(v)))(jnp.asarray(IMAGES))
  assert np.all(np.asarray(g) == 0)
  # A random start moves a pixel by a level with probability (EPS - 1/8) / EPS per side: the
  # logit differences it causes are small against margins >= 7 (sd ~ 0.7 here).
  rng = np.random.default_rng(1)
  starts = np.clip(IMAGES[None] + rng.uniform(-EPS, EPS, (200, *IMAGES.shape)), 0, 1)
  z = np.asarray(quantised_logits(starts.reshape(-1, *SHAPE))).reshape(200, N, NUM_CLASSES)
  assert np.mean(np.argmax(z, -1) != LABELS[None]) < 0.01


_WHITE_BOX = [
    {"attack": "pgd_linf", "eps": EPS, "step_size": 0.03, "num_steps": 20},
    {"attack": "apgd_ce", "eps": EPS, "norm": "linf"},
    {"attack": "apgd_t", "eps": EPS, "norm": "linf"},
]
_SQUARE = {"attack": "square", "eps": EPS, "norm": "linf", "num_queries": 1000}
# The ensemble with the same Square budget, so that its members match the runs alone.
_AUTOATTACK = {"attack": "autoattack", "eps": EPS, "norm": "linf",
               "attack_kwargs": {"square": {"num_queries": 1000}}}


@pytest.fixture(scope="module")
def masked_results():
  with pytest.warns(UserWarning, match="gradient masking"):
    return evaluation.evaluate_attacks(
        quantised_logits, IMAGES, LABELS, [*_WHITE_BOX, _SQUARE, _AUTOATTACK],
        jax.random.PRNGKey(0), batch_size=N, sanity_checks=False)


def test_white_box_attacks_fail_and_square_succeeds_on_the_masked_model(masked_results):
  res = masked_results
  assert res["clean_accuracy"] == 1.0
  acc = {r["attack"]: r["robust_accuracy"] for r in res["attacks"]}
  assert acc["pgd_linf"] >= 0.95 and acc["apgd_ce"] >= 0.95 and acc["apgd_t"] >= 0.95, acc
  assert acc["square"] <= 0.5, acc
  for r in res["attacks"]:
    assert r["in_ball"] and r["in_range"]
  # AutoAttack: the white-box members break nothing, its Square breaks what Square alone breaks,
  # and per example the ensemble is never more robust than a member run alone.
  aa = res["attacks"][-1]
  assert aa["order"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  broken = {m["member"]: evaluation.decode_mask(m["broken_examples"], N) for m in aa["members"]}
  assert not broken["apgd-ce"].any() and not broken["apgd-t"].any()
  masks = {r["attack"]: evaluation.robust_mask(r, N) for r in res["attacks"]}
  np.testing.assert_array_equal(broken["square"] | broken["fab-t"], ~masks["square"])
  for name in ("apgd_ce", "apgd_t", "square"):
    assert np.all(masks["autoattack"] <= masks[name]), name
  assert acc["autoattack"] <= acc["square"]


def test_the_masking_flags_fire(masked_results):
  gm = masked_results["gradient_masking"]
  assert gm["zero_gradients"]["fraction"] == 1.0 and gm["zero_gradients"]["flag"]
  versus, in_autoattack = gm["gradient_free_beats_white_box"]
  assert in_autoattack["attack"] == "AutoAttack" and in_autoattack["flag"]
  assert in_autoattack["versus"] == ["APGD-CE", "APGD-T", "FAB-T"]
  assert versus["attack"] == "Square" and versus["flag"]
  assert sorted(versus["versus"]) == ["APGD-CE", "APGD-T", "PGD-20"]
  # Per example: Square's successes on points every white-box attack left robust.
  masks = {r["attack"]: evaluation.robust_mask(r, N) for r in masked_results["attacks"]}
  white = masks["pgd_linf"] & masks["apgd_ce"] & masks["apgd_t"]
  assert versus["count"] == int((white & ~masks["square"]).sum()) >= N // 2
  assert {"zero_gradients", "gradient_free_beats_white_box"} <= set(gm["flags"])
  assert not gm["randomized_outputs"]["flag"] and not gm["probability_outputs"]["flag"]
  assert "FLAGS" in evaluation.masking_summary(gm)


def test_no_flag_on_the_unmasked_linear_model():
  res = evaluation.evaluate_attacks(
      linear_logits, IMAGES, LABELS, [*_WHITE_BOX[1:], _SQUARE], jax.random.PRNGKey(0),
      batch_size=N, sanity_checks=False)
  gm = res["gradient_masking"]
  assert gm["flags"] == [], gm
  assert gm["zero_gradients"]["count"] == 0
  (versus,) = gm["gradient_free_beats_white_box"]
  assert versus["count"] == 0  # APGD-T reaches every class's best corner of a linear model
  assert "no flag" in evaluation.masking_summary(gm)


def test_randomized_and_probability_outputs_are_flagged():
  rng = np.random.default_rng(0)

  def noisy(x):  # impure: new noise on every call (as a randomized defense without a key)
    return linear_logits(x) + jnp.asarray(rng.normal(size=(x.shape[0], NUM_CLASSES)), x.dtype)

  probabilities = lambda x: jax.nn.softmax(linear_logits(x) / 10.0)
  fgsm = [{"attack": "fgsm", "eps": EPS}]
  with pytest.warns(UserWarning, match="identical calls"):
    res = evaluation.evaluate_attacks(noisy, IMAGES, LABELS, fgsm, jax.random.PRNGKey(0),
                                      batch_size=N, sanity_checks=False)
  assert "randomized_outputs" in res["gradient_masking"]["flags"]
  with pytest.warns(UserWarning, match="probabilities"):
    res = evaluation.evaluate_attacks(probabilities, IMAGES, LABELS, fgsm,
                                      jax.random.PRNGKey(0), batch_size=N, sanity_checks=False)
  assert res["gradient_masking"]["flags"] == ["probability_outputs"]


def test_robust_accuracy_rising_with_eps_is_flagged():
  """Records of one attack at two radii, the larger one more robust: only the derived check
  (no model call) is exercised."""
  robust = evaluation.encode_mask(np.ones(4, bool))
  records = [{"attack": "pgd_linf", "name": "PGD-20", "norm": "linf", "eps": e,
              "kwargs": {"eps": e, "num_steps": 20}, "robust_accuracy": a,
              "robust_examples": robust} for e, a in ((0.1, 0.2), (0.3, 0.6))]
  (group,) = evaluation.eps_monotone_groups(records, 100)
  assert group["flag"] and group["eps"] == [0.1, 0.3]
  records[1]["robust_accuracy"] = 0.2
  assert not evaluation.eps_monotone_groups(records, 100)[0]["flag"]
