"""Attacks (closed-form answers on linear models, invariants on a tiny conv net) and the
evaluator (the experiments/evaluate.py command line: test_evaluate_cli.py)."""

import dataclasses
import inspect
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import atent_jax
from atent_jax import attacks, configuration, evaluation, metrics, train

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


@pytest.mark.core
def test_linear_problem_is_well_posed():
  logits_fn, x, y, v = _binary_linear()
  assert np.all(np.argmax(np.asarray(logits_fn(x)), -1) == y)
  assert x.min() > 0.2 and x.max() < 0.8
  np.testing.assert_allclose(np.abs(x @ v) / np.linalg.norm(v), 0.15, rtol=1e-5)


@pytest.mark.core
def test_pgd_linf_reaches_the_box_corner():
  logits_fn, x, y, v = _binary_linear()
  eps = 0.1
  adv = attacks.pgd_linf(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps, step_size=0.03,
                         num_steps=10, random_init=True)
  away = np.where(y[:, None] == 0, 1.0, -1.0) * np.sign(v)[None]   # sign of grad of CE
  np.testing.assert_allclose(np.asarray(adv), x + eps * away, atol=1e-6)


@pytest.mark.core
def test_pgd_l2_reaches_eps_along_w():
  logits_fn, x, y, v = _binary_linear()
  eps = 0.3
  adv = attacks.pgd_l2(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps, step_size=0.1,
                       num_steps=5, random_init=False)
  u = np.where(y[:, None] == 0, 1.0, -1.0) * (v / np.linalg.norm(v))[None]
  np.testing.assert_allclose(np.asarray(adv), x + eps * u, atol=1e-5)


def _away(y, v, norm):
  """The direction that raises the cross-entropy of the binary linear model (its sign does not
  depend on x): l_inf the sign vector, l_2 the unit vector along -/+ v."""
  side = np.where(y[:, None] == 0, 1.0, -1.0)
  return side * (np.sign(v) if norm == "linf" else v / np.linalg.norm(v))[None]


@pytest.mark.core
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.3)])
def test_fgsm_is_one_full_step_along_the_gradient(norm, eps):
  logits_fn, x, y, v = _binary_linear()
  adv = attacks.fgsm(logits_fn, x, y, eps=eps, norm=norm)
  chex.assert_shape(adv, x.shape)
  np.testing.assert_allclose(np.asarray(adv), x + eps * _away(y, v, norm), atol=1e-6)


@pytest.mark.core
def test_cw_linf_and_atent_attack_reach_the_box_corner_of_a_linear_model():
  """Both ascend a loss whose sign-gradient is constant here (CW margin, cross-entropy): enough
  steps reach x + eps * away, whatever the start (random corner, uniform point)."""
  logits_fn, x, y, v = _binary_linear()
  eps, want = 0.1, x + 0.1 * _away(y, v, "linf")
  cw = attacks.cw_linf(logits_fn, x, y, jax.random.PRNGKey(1), eps=eps, step_size=0.05,
                       num_steps=6)
  np.testing.assert_allclose(np.asarray(cw), want, atol=1e-6)
  at = attacks.atent_attack(logits_fn, x, y, jax.random.PRNGKey(2), eps=eps, step_size=0.05,
                            num_steps=6, noise_scale=0.0)
  np.testing.assert_allclose(np.asarray(at), want, atol=1e-6)
  # With its Langevin noise the walk differs, but the last step still projects onto the ball.
  noisy = np.asarray(attacks.atent_attack(logits_fn, x, y, jax.random.PRNGKey(2), eps=eps,
                                          step_size=0.05, num_steps=6, noise_scale=0.5))
  assert np.abs(noisy - x).max() <= eps + 1e-6 and np.abs(noisy - np.asarray(at)).max() > 1e-3


@pytest.mark.core
def test_cw_linf_ascends_the_margin_capped_at_kappa_not_the_cross_entropy():
  """Binary linear model, margin m = z_other - z_y, sign steps of 0.02 from x (no random start),
  eps 0.09, kappa 0.045 ||v||_1. Examples given the wrong label start at m = 0.05 ||v||_1 >
  kappa: the capped margin is flat there, so they stay at x (the cross-entropy, or an uncapped
  margin, would move them). The others start at m = -0.05 ||v||_1 and the corner of the box
  only reaches m = 0.04 ||v||_1 < kappa: they go all the way to x + eps * away (with kappa 0
  they would stop at the third step, m = 0.01 ||v||_1)."""
  logits_fn, x, y, v = _binary_linear(norm="linf", dist=0.05)
  flipped = np.arange(len(y)) % 3 == 0
  label = np.where(flipped, 1 - y, y).astype(np.int32)
  eps, kappa = 0.09, 0.045 * float(np.abs(v).sum())
  adv = np.asarray(attacks.cw_linf(logits_fn, x, label, jax.random.PRNGKey(0), eps=eps,
                                   step_size=0.02, num_steps=6, kappa=kappa, random_init=False))
  want = np.where(flipped[:, None], x, x + eps * _away(label, v, "linf"))
  np.testing.assert_allclose(adv, want, atol=1e-6)


@pytest.mark.core
def test_attacks_draw_their_randomness_from_the_key_they_are_given():
  """Random starts and Langevin noise come from the caller's key: the same key gives the same
  point, another key another point."""
  logits_fn, x, y, _ = _binary_linear()
  for fn, kw in ((attacks.atent_attack, {"eps": 0.1, "step_size": 0.01, "num_steps": 2,
                                         "noise_scale": 0.5}),
                 (attacks.pgd_linf, {"eps": 0.1, "step_size": 0.01, "num_steps": 1}),
                 (attacks.fgsm, {"eps": 0.1, "random_init": True})):
    a, b, c = (np.asarray(fn(logits_fn, x, y, jax.random.PRNGKey(k), **kw)) for k in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3, fn.__name__


@pytest.mark.core
def test_cw_linf_tanh_fools_a_linear_model_inside_the_box():
  logits_fn, x, y, v = _binary_linear(norm="linf", dist=0.05)
  adv = np.asarray(attacks.cw_linf(logits_fn, x, y, eps=0.1, variant="tanh", num_steps=30,
                                   learning_rate=0.1))
  assert np.abs(adv - x).max() <= 0.1 + 1e-6
  assert np.all(np.argmax(np.asarray(logits_fn(adv)), -1) != y)
  # Out of reach (the boundary is 0.05 away, eps 0.02): the margin still rises towards it.
  far = np.asarray(attacks.cw_linf(logits_fn, x, y, eps=0.02, variant="tanh", num_steps=30,
                                   learning_rate=0.1))
  assert np.abs(far - x).max() <= 0.02 + 1e-6
  margin = lambda p: np.asarray(jax.vmap(attacks.cw_margin, (0, 0, None))(logits_fn(p), y, 50.0))
  assert np.all(margin(far) > margin(x) + 0.01 * np.abs(v).sum())


@pytest.mark.core
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_finds_the_exact_minimal_perturbation_of_a_linear_classifier(norm):
  logits_fn, x, y, _ = _binary_linear(norm=norm, dist=0.05)
  adv, dist, success = attacks.deepfool_minimal(logits_fn, x, y, norm=norm, overshoot=0.0)
  assert np.all(np.asarray(success))
  np.testing.assert_allclose(np.asarray(dist), 0.05, atol=1e-4)
  assert np.all(np.argmax(np.asarray(logits_fn(adv)), -1) != y)


@pytest.mark.core
def test_cw_l2_is_within_5_percent_of_the_minimal_perturbation():
  logits_fn, x, y, _ = _binary_linear(dist=0.3)
  adv, dist, success = jax.jit(lambda a, b: attacks.cw_l2_minimal(
      logits_fn, a, b, binary_search_steps=8, num_steps=200, learning_rate=0.01))(x, y)
  assert np.all(np.asarray(success))
  dist = np.asarray(dist)
  assert np.all(dist >= 0.3 * (1 - 1e-3)), dist            # nothing beats the minimum
  assert np.all(dist <= 0.3 * 1.05), dist
  assert np.all(np.argmax(np.asarray(logits_fn(adv)), -1) != y)


@pytest.mark.core
@pytest.mark.parametrize("edge", [0.0, 1.0])
def test_cw_attacks_move_pixels_that_sit_on_the_edge_of_the_box(edge):
  """MNIST's background pixels are exactly 0 (and strokes 1): the tanh parametrisations must
  still move them. Here every pixel sits at `edge` and the only way to fool the model is to move
  all of them inwards by about 0.05."""
  inward = 1.0 if edge == 0.0 else -1.0
  x = np.full((4, 8), edge, np.float32)
  y = np.zeros(4, np.int32)
  logits_fn = lambda v: jnp.stack([jnp.zeros(v.shape[0]),
                                   20.0 * (inward * (v.mean(-1) - edge) - 0.05)], -1)
  tanh = np.asarray(attacks.cw_linf(logits_fn, x, y, eps=0.1, variant="tanh", num_steps=100,
                                    learning_rate=0.2))
  assert np.abs(tanh - x).max() <= 0.1 + 1e-6
  assert np.all(np.argmax(np.asarray(logits_fn(tanh)), -1) != y)
  adv, dist, success = attacks.cw_l2_minimal(logits_fn, x, y, binary_search_steps=5,
                                             num_steps=60, learning_rate=0.2)
  assert np.all(np.asarray(success))
  assert np.all(np.argmax(np.asarray(logits_fn(adv)), -1) != y)
  assert np.all(np.asarray(dist) < 0.5)  # ~0.05 per pixel over 8 pixels: 0.14 at the optimum


@pytest.mark.core
def test_cw_l2_without_eps_returns_every_successful_point():
  logits_fn, x, y, _ = _binary_linear(dist=0.3)
  kw = {"binary_search_steps": 4, "num_steps": 50}
  adv = np.asarray(attacks.cw_l2(logits_fn, x, y, **kw))
  best, _, success = attacks.cw_l2_minimal(logits_fn, x, y, **kw)
  assert np.all(np.asarray(success))
  np.testing.assert_array_equal(adv, np.asarray(best))


@pytest.mark.core
def test_deepfool_stops_after_num_steps():
  """f = z_1 - z_0 = b + w.x - ||x - 0.5||^2 is concave: one linearised DeepFool step
  (r = (|f| + 1e-4) g / ||g||^2, overshoot 0) lands short of the boundary. With num_steps=1 the
  attack must return that point, unsuccessful; with more steps it gets there."""
  rng = np.random.default_rng(4)
  w = rng.normal(size=8).astype(np.float32)
  x = rng.uniform(0.4, 0.6, (3, 8)).astype(np.float32)
  quad = x @ w - ((x - 0.5) ** 2).sum(-1)
  b = np.float32(-1.0 - quad.max())                                # f(x) <= -1: class 0
  f = lambda v: b + v @ jnp.asarray(w) - jnp.sum((v - 0.5) ** 2, -1)
  logits_fn = lambda v: jnp.stack([jnp.zeros(v.shape[0]), f(v)], -1)
  y = np.zeros(3, np.int32)
  adv, _, success = attacks.deepfool_minimal(logits_fn, x, y, num_steps=1, overshoot=0.0,
                                             clip=None)
  g = w[None] - 2 * (x - 0.5)
  want = x + ((np.abs(b + quad) + 1e-4) / (g * g).sum(-1))[:, None] * g
  np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(success))
  _, _, later = attacks.deepfool_minimal(logits_fn, x, y, num_steps=20, overshoot=0.0,
                                         clip=None)
  assert np.all(np.asarray(later))


@pytest.mark.core
def test_documented_attack_defaults():
  """Defaults stated in the docstrings and the README (a silent change would change results)."""
  sig = lambda f: {k: p.default for k, p in inspect.signature(f).parameters.items()
                   if p.default is not inspect.Parameter.empty}
  assert sig(attacks.pgd_linf) == sig(attacks.pgd_l2) == {
      "random_init": True, "restarts": 1, "unroll": None}
  assert sig(attacks.fgsm) == {"key": None, "norm": "linf", "random_init": False, "unroll": None}
  assert sig(attacks.cw_linf) == {
      "key": None, "step_size": 0.01, "num_steps": 20, "kappa": 50.0, "random_init": True,
      "restarts": 1, "variant": "pgd", "learning_rate": 0.01, "unroll": None}
  assert sig(attacks.cw_l2_minimal) == {
      "key": None, "binary_search_steps": 9, "num_steps": 100, "learning_rate": 0.01,
      "initial_const": 1e-3, "kappa": 0.0, "max_const": 1e10}
  assert sig(attacks.cw_l2) == {
      "key": None, "eps": None, "binary_search_steps": 9, "num_steps": 100,
      "learning_rate": 0.01, "initial_const": 1e-3, "kappa": 0.0}
  assert sig(attacks.deepfool_minimal) == {
      "key": None, "norm": "l2", "num_steps": 50, "overshoot": 0.02, "num_candidates": 10,
      "clip": (0.0, 1.0)}
  assert sig(attacks.deepfool) == {
      "key": None, "eps": None, "norm": "l2", "num_steps": 50, "overshoot": 0.02,
      "num_candidates": 10}
  assert sig(attacks.atent_attack) == {
      "key": None, "num_steps": 20, "norm": "linf", "noise_scale": 1e-3, "gamma": 0.0,
      "random_init": True, "update": "code", "unroll": None}
  assert sig(attacks.cw_margin) == sig(attacks.cw_margin_loss) == {"kappa": 0.0}


@pytest.mark.core
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
  # The attack does something: it fools the net on some correctly classified example ...
  fooled = np.argmax(np.asarray(logits_fn(adv)), -1) != y
  assert np.any(fooled[3:])
  # ... and raises its own objective (computed here, not by the attack).
  if name in ("fgsm", "pgd_linf", "pgd_l2", "atent_attack"):
    ce = lambda p: np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits_fn(p), y))
    assert ce(adv).mean() > ce(x).mean() + 0.1, (ce(adv).mean(), ce(x).mean())
  elif name == "cw_linf":
    margin = lambda p: np.asarray(jax.vmap(attacks.cw_margin)(logits_fn(p), y))
    assert margin(adv).mean() > margin(x).mean() + 0.1
  else:  # minimal-perturbation attacks: x where they failed or needed more than eps
    moved = size > 0
    assert moved.any() and np.all(fooled[moved])


def _plateau_logits(levels):
  """logits_fn of 1-pixel inputs that PGD's gradient cannot see (stop_gradient: the sign step is
  0), so every PGD run stays at its uniform random start and restarts are independent draws.
  `levels(x') -> logits` says what each start is worth."""
  return lambda v: jax.lax.stop_gradient(levels(v[:, 0]))


def _one_in_four_starts_fool(n=400):
  """3 classes, label 0, x = 0.45, eps 0.1: a start above 0.5 fools the model (logits
  [1, 1.1, -10]); below it does not, although its cross-entropy is higher (logits
  [1, 0.95, 0.95]). (logits_fn, x, y) of n such examples."""
  fooling = jnp.array([1.0, 1.1, -10.0])
  safe = jnp.array([1.0, 0.95, 0.95])
  logits_fn = _plateau_logits(lambda p: jnp.where((p > 0.5)[:, None], fooling, safe))
  return logits_fn, np.full((n, 1), 0.45, np.float32), np.zeros(n, np.int32)


@pytest.mark.core
def test_restarts_find_what_a_single_start_misses():
  """3 classes, label 0, x = 0.45, eps 0.1: a start above 0.5 fools the model (logits
  [1, 1.1, -10], cross-entropy 0.74); below it does not, although its cross-entropy is higher
  (logits [1, 0.95, 0.95], 1.07). A start fools with p = 1/4, so R restarts fool with
  1 - (3/4)^R; keeping the highest cross-entropy instead of the first fooling point would give
  (1/4)^R."""
  logits_fn, x, y = _one_in_four_starts_fool()
  n = len(y)
  key = jax.random.PRNGKey(11)
  fooled = {}
  for r in (1, 4):
    adv = attacks.pgd_linf(logits_fn, x, y, key, eps=0.1, step_size=0.05, num_steps=2,
                           restarts=r)
    assert np.abs(np.asarray(adv) - x).max() <= 0.1 + 1e-6
    fooled[r] = np.asarray(jnp.argmax(logits_fn(adv), -1) != y)
  for r, p in ((1, 0.25), (4, 1 - 0.75 ** 4)):
    se = np.sqrt(p * (1 - p) / n)
    assert abs(fooled[r].mean() - p) < 5 * se, (r, fooled[r].mean(), p)
  # Same key: restart 0 of the 4 is the single run, so never weaker, per example.
  assert np.all(fooled[4] >= fooled[1])


@pytest.mark.core
def test_restarts_keep_the_highest_loss_where_none_fools():
  """Binary, label 0, x = 0.3, eps 0.1: no start reaches the boundary at 0.5, and the
  cross-entropy grows with x'. The kept start is the largest of R uniform draws on
  [-eps, eps]: mean eps (R - 1) / (R + 1)."""
  logits_fn = _plateau_logits(lambda p: jnp.stack([jnp.zeros_like(p), 10.0 * (p - 0.5)], -1))
  n, eps = 400, 0.1
  x = np.full((n, 1), 0.3, np.float32)
  y = np.zeros(n, np.int32)
  for r in (1, 4):
    adv = attacks.pgd_linf(logits_fn, x, y, jax.random.PRNGKey(12), eps=eps, step_size=0.05,
                           num_steps=2, restarts=r)
    delta = np.asarray(adv - x, np.float64)[:, 0]
    mean = eps * (r - 1) / (r + 1)
    sd = 2 * eps * np.sqrt(r / ((r + 1) ** 2 * (r + 2)))  # sd of the max of r U(0, 1), scaled
    assert abs(delta.mean() - mean) < 5 * sd / np.sqrt(n), (r, delta.mean(), mean)


def test_more_restarts_never_increase_robust_accuracy(tiny):
  """The invariant on a conv net: restart 0 is the single run, so 3 restarts keep every point it
  fooled. It holds even if the extra restarts never run: that they run, and which point they
  keep, is shown by the two closed-form restart tests above."""
  logits_fn, x, y = tiny
  key = jax.random.PRNGKey(7)
  fooled = {}
  for r in (1, 3):
    adv = attacks.pgd_linf(logits_fn, x, y, key, eps=0.05, step_size=0.02, num_steps=3,
                           restarts=r)
    fooled[r] = np.argmax(np.asarray(logits_fn(adv)), -1) != y
  assert np.all(fooled[3] >= fooled[1])          # per example, not only on average
  assert fooled[3].sum() >= fooled[1].sum()


def _evaluated_robust(logits_fn, x, y, attack, kwargs, key, batch_size):
  out = evaluation.evaluate_attacks(logits_fn, x, y, [dict(kwargs, attack=attack)], key,
                                    batch_size=batch_size, sanity_checks=False,
                                    masking_checks=False)
  return evaluation.robust_mask(out["attacks"][0], len(y))


@pytest.mark.core
def test_the_evaluator_runs_restarts_one_at_a_time_with_the_restarts_own_statistics():
  """The evaluator runs PGD's restarts one compiled restart at a time (on CPU one program with
  all of them unrolled took 8-11 min to compile). What it finds must still be what R
  independent starts find: on the plateau model of the test above, a start fools with p = 1/4,
  so 4 restarts fool with 1 - (3/4)^4; restart 0 alone fools with 1/4."""
  logits_fn, x, y = _one_in_four_starts_fool()
  n = len(y)
  for r, p in ((1, 0.25), (4, 1 - 0.75 ** 4)):
    robust = _evaluated_robust(logits_fn, x, y, "pgd_linf", {
        "eps": 0.1, "step_size": 0.05, "num_steps": 2, "restarts": r}, jax.random.PRNGKey(3),
        100)
    se = np.sqrt(p * (1 - p) / n)
    assert abs((1 - robust.mean()) - p) < 5 * se, (r, 1 - robust.mean(), p)


@pytest.mark.parametrize("attack,kwargs", [
    ("pgd_linf", {"eps": 0.05, "step_size": 0.02, "num_steps": 3, "restarts": 3}),
    ("pgd_l2", {"eps": 0.4, "step_size": 0.15, "num_steps": 3, "restarts": 3})])
def test_the_evaluator_compiles_one_restart_and_keeps_the_attacks_points(tiny, monkeypatch,
                                                                         attack, kwargs):
  """Per example, the evaluator's outcome equals the attack function's own (all restarts in
  one jitted call, batch i with key fold_in(key_j, i)), and the restart is traced once for 3
  restarts and 2 batches."""
  logits_fn, x, y = tiny
  record = attacks.registry.get(attack)
  traces = []

  def counted(*args, **kw):
    traces.append(args[4])
    return record.one_restart(*args, **kw)

  patched, get = dataclasses.replace(record, one_restart=counted), attacks.registry.get
  monkeypatch.setattr(attacks.registry, "get",
                      lambda name: patched if name == attack else get(name))
  key = jax.random.PRNGKey(5)
  robust = _evaluated_robust(logits_fn, x, y, attack, kwargs, key, 12)
  assert len(traces) == 1 and isinstance(traces[0], jax.core.Tracer)
  whole = jax.jit(lambda xx, yy, kk: record.fn(logits_fn, xx, yy, kk, **kwargs))
  expected = []
  for i in range(2):
    sl = slice(12 * i, 12 * i + 12)
    adv = whole(x[sl], y[sl], jax.random.fold_in(jax.random.fold_in(key, 0), i))
    expected.append(np.argmax(np.asarray(logits_fn(adv)), -1) == y[sl])
  clean = np.argmax(np.asarray(logits_fn(x)), -1) == y
  expected = np.concatenate(expected) & clean
  np.testing.assert_array_equal(robust, expected)
  assert 0 < robust.sum() < clean.sum()  # the attack fools some points and not others


@pytest.mark.core
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_on_the_cnn_reports_true_distances_and_successes(tiny, norm):
  logits_fn, x, y = tiny
  adv, dist, success = attacks.deepfool_minimal(logits_fn, x, y, norm=norm, num_steps=10)
  adv, dist, success = map(np.asarray, (adv, dist, success))
  d = (adv - x).reshape(len(x), -1)
  np.testing.assert_allclose(dist, np.abs(d).max(-1) if norm == "linf"
                             else np.linalg.norm(d, axis=-1), rtol=1e-5, atol=1e-7)
  pred = np.argmax(np.asarray(logits_fn(adv)), -1)
  np.testing.assert_array_equal(success, pred != y)
  assert success[3:].mean() > 0.5                  # it fools most correctly classified images
  assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_cw_l2_on_the_cnn_reports_true_distances_and_successes(tiny):
  logits_fn, x, y = tiny
  adv, dist, success = attacks.cw_l2_minimal(logits_fn, x, y, binary_search_steps=3,
                                             num_steps=20, learning_rate=0.05)
  adv, dist, success = map(np.asarray, (adv, dist, success))
  assert success[3:].mean() > 0.5
  pred = np.argmax(np.asarray(logits_fn(adv)), -1)
  assert np.all(pred[success] != y[success])
  np.testing.assert_allclose(dist[success],
                             np.linalg.norm((adv - x).reshape(len(x), -1), axis=-1)[success],
                             rtol=1e-4)
  assert np.all(np.isinf(dist[~success])) and np.array_equal(adv[~success], x[~success])


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


@pytest.mark.core
def test_robust_means_correct_on_the_clean_and_on_the_attacked_input():
  labels = np.array([0, 0, 0, 0])
  clean = np.array([0, 0, 1, 1])
  attacked = np.array([0, 1, 0, 1])
  np.testing.assert_array_equal(metrics.robust_correct(labels, clean, attacked),
                                [True, False, False, False])
  np.testing.assert_array_equal(np.asarray(metrics.robust_correct(
      jnp.asarray(labels), jnp.asarray(clean), jnp.asarray(attacked))), [True, False, False, False])


class _Plateau(nn.Module):
  """1-pixel inputs; class 1 iff x > 0.5, invisible to gradients (PGD stays at its start)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    scale = self.param("scale", nn.initializers.ones, ())
    p = jax.lax.stop_gradient(x[:, 0])
    return scale * jnp.stack([jnp.zeros_like(p), 10.0 * (p - 0.5)], -1)


@pytest.mark.core
def test_training_loop_and_evaluator_share_the_robust_accuracy_definition():
  """Every example is misclassified (x = 0.45, label 1), and a random start above 0.5 (p = 1/4)
  would classify it correctly: counting the attacked prediction alone gives ~25% "robust"
  accuracy at 0% clean accuracy. Both the epoch evaluation and the evaluator must report 0."""
  n = 64
  x = np.full((n, 1), 0.45, np.float32)
  y = np.ones(n, np.int32)
  model = _Plateau()
  variables = model.init(jax.random.PRNGKey(0), x)
  config = configuration.default_config()
  config.eval.norm, config.eval.eps, config.eval.step_size = "linf", 0.1, 0.05
  config.eval.num_steps, config.eval.restarts, config.eval.random_init = 1, 1, True
  eval_step = jax.jit(train.make_eval_step(config, model))
  state = types.SimpleNamespace(params=variables["params"], batch_stats={})
  epoch = train.evaluate(eval_step, state, x, y, 32, jax.random.PRNGKey(1))
  assert epoch["clean_accuracy"] == 0.0 and epoch["robust_accuracy"] == 0.0
  logits_fn = lambda v: model.apply(variables, v)
  res = evaluation.evaluate_attacks(
      logits_fn, x, y, [{"attack": "pgd_linf", "eps": 0.1, "step_size": 0.05, "num_steps": 1}],
      jax.random.PRNGKey(1), batch_size=32, sanity_checks=False)
  assert res["clean_accuracy"] == 0.0 and res["attacks"][0]["robust_accuracy"] == 0.0
  # The premise: the attacked points alone are often classified correctly.
  adv = attacks.pgd_linf(logits_fn, x, y, jax.random.PRNGKey(1), eps=0.1, step_size=0.05,
                         num_steps=1)
  assert np.mean(np.argmax(np.asarray(logits_fn(adv)), -1) == y) > 0.1


@pytest.mark.core
@pytest.mark.parametrize("spec,match", [("nope", "not known"), ({"attack": "pgd_l2", "eps": 0},
                                                                  "eps"),
                                        ({"attack": "fgsm", "eps": -1.0}, "eps")])
def test_bad_attack_specs_raise(spec, match):
  with pytest.raises(ValueError, match=match):
    evaluation.normalise_spec(spec)


@pytest.mark.core
def test_exported_names():
  for name in ("fgsm", "pgd_linf", "pgd_l2", "cw_l2", "cw_linf", "deepfool", "atent_attack",
               "ATTACKS"):
    assert hasattr(atent_jax, name)
  assert set(attacks.ATTACKS) == {"fgsm", "pgd_linf", "pgd_l2", "cw_l2", "cw_linf", "deepfool",
                                  "atent_attack", "apgd_ce", "apgd_t", "fab_t", "square",
                                  "autoattack"}


# experiments/evaluate.py (its output and its one-line user errors): test_evaluate_cli.py,
# where one evaluation of the tiny run serves every test of its output.


@pytest.mark.core
@pytest.mark.parametrize("attack,kwargs,name", [
    ("cw_l2_minimal", {"num_steps": 0}, "num_steps"),
    ("cw_l2_minimal", {"binary_search_steps": 0}, "binary_search_steps"),
    ("cw_l2_minimal", {"num_steps": True}, "num_steps"),
    ("deepfool_minimal", {"num_candidates": 1}, "num_candidates"),
    ("deepfool_minimal", {"num_steps": -3}, "num_steps"),
    ("fgsm", {"eps": 0.1, "norm": "l1"}, "norm"),
])
def test_bad_integers_and_choices_name_the_argument_first(attack, kwargs, name):
  """An integer below its minimum (or a bool) is refused, and the message starts with the
  argument's name (a message naming another argument fails)."""
  logits_fn, x, y = _binary_linear()[:3]
  with pytest.raises(ValueError, match=rf"^{name}="):
    getattr(attacks, attack)(logits_fn, x, y, None, **kwargs)
