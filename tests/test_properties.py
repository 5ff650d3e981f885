"""Property-based tests (hypothesis): invariants that must hold for every input, not one example.

- the projection lands in the eps-ball (and leaves points inside it alone);
- one optimiser step, and every attack, returns points in the eps-ball and in [0, 1];
- the EMA weights of ATENT's K samples sum to 1 - (1 - alpha)^K;
- randomized smoothing: the Clopper-Pearson bound solves its defining binomial-tail equation,
  a classifier that never changes its answer gets the closed-form radius.

Example counts stay small (the suite runs on 2 CPU cores) and the search is derandomized, so CI
and mutation testing see the same examples on every run. Shapes are fixed per test, so each
jitted function compiles once and hypothesis varies only the values.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from atent_jax import attacks, langevin, smoothing

pytestmark = pytest.mark.core

# No example database: nothing is written into the checkout, and runs do not depend on history.
FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None)
D = 6          # pixels per example
B = 4          # examples per batch
# A relative slack for float32 arithmetic in the ball checks.
SLACK = 1e-5

# No subnormals: XLA on CPU flushes them to zero (a backend choice, not a property of the code).
floats32 = lambda lo, hi: st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False,
                                    allow_subnormal=False)
positive = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _norms(delta, norm):
  flat = np.asarray(delta, np.float64).reshape(delta.shape[0], -1)
  return np.abs(flat).max(-1) if norm == "linf" else np.linalg.norm(flat, axis=-1)


@jax.jit
def _project_both(delta, eps):
  return (jax.vmap(langevin.project, (0, None, None))(delta, "linf", eps),
          jax.vmap(langevin.project, (0, None, None))(delta, "l2", eps))


@FEW
@given(delta=hnp.arrays(np.float32, (B, D), elements=floats32(-10, 10)),
       eps=positive(1e-3, 5.0))
def test_projection_lands_in_the_ball_and_keeps_points_inside(delta, eps):
  linf, l2 = (np.asarray(a) for a in _project_both(delta, eps))
  for norm, out in (("linf", linf), ("l2", l2)):
    size, before = _norms(out, norm), _norms(delta, norm)
    assert np.all(size <= eps * (1 + SLACK)), (norm, size, eps)
    inside = before <= eps
    np.testing.assert_allclose(out[inside], delta[inside], rtol=1e-6)   # inside: unchanged
    # outside: on the sphere, along the same ray (l_2) / clipped per pixel (l_inf)
    np.testing.assert_allclose(size[~inside], eps, rtol=1e-5)
  np.testing.assert_allclose(linf, np.clip(delta, -eps, eps), rtol=1e-6)
  scale = np.minimum(1.0, eps / np.maximum(np.linalg.norm(delta, axis=-1), 1e-12))
  np.testing.assert_allclose(l2, delta * scale[:, None], rtol=1e-5, atol=1e-7)


def _one_step(norm, direction, projection, gamma_times_step):
  @jax.jit
  def step(i, x, xp, g, keys, eps, step_size, noise_scale, gamma):
    opt = langevin.InputOptimizer(norm=norm, eps=eps, step_size=step_size, num_steps=3,
                                  direction=direction, projection=projection,
                                  noise_scale=noise_scale, gamma=gamma,
                                  gamma_times_step=gamma_times_step)
    return jax.vmap(opt.update, (None, 0, 0, 0, 0))(i, x, xp, g, keys)
  return step


_STEPS = {(n, d, p, t): _one_step(n, d, p, t) for n in ("linf", "l2")
          for d in ("sign", "l2", "raw") for p in ("every", "last") for t in (False, True)}


@settings(max_examples=16, deadline=None, derandomize=True, database=None)
@given(x=hnp.arrays(np.float32, (B, D), elements=floats32(0, 1)),
       start=hnp.arrays(np.float32, (B, D), elements=floats32(-2, 2)),
       g=hnp.arrays(np.float32, (B, D), elements=floats32(-100, 100)),
       eps=positive(1e-3, 2.0), step_size=positive(1e-3, 1.0), noise_scale=positive(0, 1.0),
       gamma=positive(0, 2.0), norm=st.sampled_from(["linf", "l2"]),
       direction=st.sampled_from(["sign", "l2", "raw"]), last=st.booleans(),
       gamma_times_step=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_an_optimiser_step_that_projects_lands_in_the_ball_and_in_the_unit_box(
    x, start, g, eps, step_size, noise_scale, gamma, norm, direction, last, gamma_times_step,
    seed):
  """Whatever the gradient, noise, pull or current point (even one outside the box): a
  projecting step (every step for PGD, the K-th for ATENT) returns a point of the eps-ball
  around x, inside [0, 1]."""
  projection = "last" if last else "every"
  step = _STEPS[(norm, direction, projection, gamma_times_step)]
  keys = jax.random.split(jax.random.PRNGKey(seed), B)
  i = 2 if last else 0  # the last of num_steps = 3, where 'last' projects
  out = np.asarray(step(i, x, x + start, g, keys, eps, step_size, noise_scale, gamma))
  chex.assert_shape(out, x.shape)
  assert out.min() >= 0.0 and out.max() <= 1.0
  # Clipping to [0, 1] after projecting never leaves the ball (x itself is in the box).
  assert np.all(_norms(out - x, norm) <= eps * (1 + SLACK) + 1e-6)


@FEW
@given(num_samples=st.integers(1, 60), alpha=positive(1e-3, 1.0))
def test_ema_weights_sum_to_one_minus_one_minus_alpha_to_the_k(num_samples, alpha):
  c = np.asarray(langevin.ema_weights(num_samples, alpha, dtype=jnp.float32), np.float64)
  chex.assert_shape(c, (num_samples,))
  assert c.sum() == pytest.approx(1 - (1 - alpha) ** num_samples, rel=1e-5, abs=1e-7)
  assert c[-1] == pytest.approx(alpha, rel=1e-6)  # the newest sample weighs alpha
  assert np.all(c >= 0) and np.all(np.diff(c) >= 0)  # older samples never weigh more


# --- every attack stays in its ball --------------------------------------------------------

_W = np.random.default_rng(0).normal(size=(D, 5)).astype(np.float32)
_LOGITS = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(_W)

_ATTACKS = ("fgsm", "pgd_linf", "pgd_l2", "cw_linf", "atent_attack", "deepfool", "cw_l2")


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(x=hnp.arrays(np.float32, (B, D), elements=floats32(0, 1)),
       y=hnp.arrays(np.int32, (B,), elements=st.integers(0, 4)),
       name=st.sampled_from(_ATTACKS), norm=st.sampled_from(["linf", "l2"]),
       eps=positive(1e-3, 1.5), step_size=positive(1e-3, 0.5), num_steps=st.integers(1, 3),
       restarts=st.integers(1, 2), noise_scale=positive(0, 0.5), seed=st.integers(0, 2 ** 16))
def test_no_attack_returns_a_point_outside_its_ball_or_the_unit_box(
    x, y, name, norm, eps, step_size, num_steps, restarts, noise_scale, seed):
  fn, _ = attacks.ATTACKS[name]
  kw = {"eps": eps}
  if name in ("pgd_linf", "pgd_l2", "cw_linf"):
    kw.update(step_size=step_size, num_steps=num_steps, restarts=restarts)
  elif name == "atent_attack":
    kw.update(step_size=step_size, num_steps=num_steps, noise_scale=noise_scale, norm=norm)
  elif name == "deepfool":
    kw.update(norm=norm, num_steps=num_steps + 2)
  elif name == "cw_l2":
    kw.update(num_steps=5, binary_search_steps=2, learning_rate=0.1)
  elif name == "fgsm":
    kw.update(norm=norm, random_init=restarts == 2)
  adv = np.asarray(fn(_LOGITS, x, y, jax.random.PRNGKey(seed), **kw))
  chex.assert_shape(adv, x.shape)
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  size = _norms(adv - x, attacks.attack_norm(name, kw))
  assert np.all(size <= eps * (1 + SLACK) + 1e-6), (name, size, eps)


# --- randomized smoothing ------------------------------------------------------------------

@FEW
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), alpha=positive(1e-4, 0.2))
def test_clopper_pearson_bound_solves_the_binomial_tail_equation(n, frac, alpha):
  """p_lower is the p with P(Binomial(n, p) >= n_a) = alpha (0 when n_a = 0): checked with the
  binomial tail itself, not the beta quantile the implementation uses."""
  n_a = round(frac * n)
  p = smoothing.lower_confidence_bound(n_a, n, alpha)
  assert 0.0 <= p <= n_a / n
  if n_a == 0:
    assert p == 0.0
  else:
    assert stats.binom.sf(n_a - 1, n, p) == pytest.approx(alpha, rel=1e-4, abs=1e-12)


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 300), sigma=positive(0.05, 1.0), alpha=positive(1e-3, 0.1),
       cls=st.integers(0, 2), batch_size=st.integers(1, 64))
def test_a_classifier_that_never_changes_gets_the_closed_form_radius(n, sigma, alpha, cls,
                                                                    batch_size):
  """All n noisy copies vote for cls: p_lower = alpha^(1/n), radius sigma Phi^-1(alpha^(1/n)),
  or abstention when that bound is below 1/2. The counts add up to n whatever the batch size."""
  logits_fn = lambda v: jnp.zeros((v.shape[0], 3)).at[:, cls].set(1.0)
  x = np.full((2, 2, 1), 0.5, np.float32)
  counts = smoothing.sample_counts(logits_fn, x, n, sigma, 0, batch_size=batch_size)
  np.testing.assert_array_equal(counts, np.eye(3, dtype=np.int64)[cls] * n)
  label, radius = smoothing.certify(logits_fn, x, sigma=sigma, n0=3, n=n, alpha=alpha, key=1,
                                    batch_size=batch_size)
  p_lower = alpha ** (1.0 / n)
  if p_lower < 0.5:
    assert (label, radius) == (smoothing.ABSTAIN, 0.0)
  else:
    assert label == cls
    assert radius == pytest.approx(sigma * stats.norm.ppf(p_lower), rel=1e-6, abs=1e-9)
    assert radius == pytest.approx(sigma * math.sqrt(2) * _erfinv(2 * p_lower - 1), rel=1e-6,
                                   abs=1e-9)


def _erfinv(v):
  """Inverse error function by bisection on math.erf (an independent route to Phi^-1)."""
  lo, hi = -10.0, 10.0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if math.erf(mid) < v else (lo, mid)
  return (lo + hi) / 2
