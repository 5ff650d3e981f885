"""APGD (atent_jax.attacks.apgd) against closed forms.

On an affine classifier z = W^T x + b the attack's success is decided in closed form: example
(x, y) can be pushed across the boundary with class j by a perturbation delta of the ball
intersected with [0, 1]^d iff  m_j = z_y - z_j  <=  max_delta (w_j - w_y) . delta. For l_inf the
maximum is sum_i |d_i| room_i with d = w_y - w_j and room_i = min(eps, x_i) where d_i > 0 (the
pixel moves down), min(eps, 1 - x_i) otherwise (exact with the box). For l_2 with x in the
interior (every pixel at least eps from 0 and 1) the box cannot bind and the maximum is
eps ||d||_2. The exact robust set at a radius follows; the test radii are chosen between the
examples' break radii, away from ties.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atent_jax.attacks.apgd import (
  APGDResult,
  apgd,
  apgd_targeted,
  apgd_with_info,
  checkpoint_schedule,
  checkpoints,
)

# --- closed forms (NumPy, independent of the attack code) --------------------------------------


def affine_problem(num_classes, norm, seed=0, batch=24, side=6):
  rng = np.random.default_rng(seed)
  dim = side * side
  w = rng.normal(size=(dim, num_classes)).astype(np.float32)
  b = rng.normal(size=num_classes).astype(np.float32)
  if norm == "linf":   # anywhere in the box, some pixels exactly at 0 or 1: the box binds
    x = np.clip(rng.uniform(-0.2, 1.2, size=(batch, dim)), 0.0, 1.0).astype(np.float32)
  else:                # interior, so the l_2 ball stays inside the box for eps <= 0.25
    x = rng.uniform(0.25, 0.75, size=(batch, dim)).astype(np.float32)
  y = np.argmax(x @ w + b, -1).astype(np.int32)

  def logits_fn(v):
    return v.reshape(v.shape[0], -1) @ w + b

  return w, b, x.reshape(batch, side, side, 1), y, logits_fn


def worst_margin(w, b, x, y, eps, norm):
  """min over the other classes j of  m_j - max_delta (w_j - w_y) . delta  (numpy, float64)."""
  w, b = w.astype(np.float64), b.astype(np.float64)
  x = x.reshape(len(x), -1).astype(np.float64)
  z = x @ w + b
  out = np.full(len(x), np.inf)
  for i in range(len(x)):
    for j in range(w.shape[1]):
      if j == y[i]:
        continue
      d = w[:, y[i]] - w[:, j]
      if norm == "linf":
        room = np.where(d > 0, np.minimum(eps, x[i]), np.minimum(eps, 1.0 - x[i]))
        gain = np.sum(np.abs(d) * room)
      else:
        gain = eps * np.linalg.norm(d)
      out[i] = min(out[i], z[i, y[i]] - z[i, j] - gain)
  return out


def break_radius(w, b, x, y, norm, hi=1.0):
  """Per example the smallest eps at which it can be misclassified (bisection on the monotone
  worst margin)."""
  lo_r, hi_r = np.zeros(len(x)), np.full(len(x), hi)
  for _ in range(60):
    mid = (lo_r + hi_r) / 2
    broken = np.array([worst_margin(w, b, x[i:i + 1], y[i:i + 1], mid[i], norm)[0] < 0
                       for i in range(len(x))])
    hi_r, lo_r = np.where(broken, mid, hi_r), np.where(broken, lo_r, mid)
  return hi_r


def radii_between(radius, quantiles=(0.25, 0.5, 0.75), min_gap=0.03):
  """Radii half-way between two consecutive break radii near the quantiles (the widest gap
  within 3 places), each at least `min_gap` (relative) from every break radius."""
  r = np.sort(radius)
  out = []
  for q in quantiles:
    centre = int(q * (len(r) - 2))
    ks = range(max(centre - 3, 0), min(centre + 4, len(r) - 1))
    k = max(ks, key=lambda k: (r[k + 1] - r[k]) / (r[k + 1] + r[k]))
    eps = (r[k] + r[k + 1]) / 2
    assert np.min(np.abs(radius - eps)) > min_gap * eps, "ill-conditioned fixture: change seed"
    out.append(float(eps))
  return out


def in_ball_and_box(x, adv, eps, norm):
  d = (np.asarray(adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
  size = np.abs(d).max(-1) if norm == "linf" else np.linalg.norm(d, axis=-1)
  return bool(np.all(size <= eps * (1 + 1e-5) + 1e-6) and np.min(adv) >= 0.0
              and np.max(adv) <= 1.0)


# --- tests ---------------------------------------------------------------------------------------


@pytest.mark.core
def test_checkpoints_follow_the_papers_recursion():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); w_j = ceil(p_j N).
  p = [0.0, 0.22]
  while True:
    nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
    if nxt > 1.0:
      break
    p.append(nxt)
  expected = [int(np.ceil(round(q * 100, 9))) for q in p[1:]]
  assert checkpoints(100) == expected == [22, 41, 57, 70, 80, 87, 93, 99]
  is_ck, interval = checkpoint_schedule(100)
  chex.assert_shape((is_ck, interval), (100,))
  assert list(interval[is_ck]) == list(np.diff([0] + expected))


@pytest.mark.core
@pytest.mark.parametrize("norm,loss,num_classes", [
    ("linf", "ce", 2), ("l2", "ce", 2),  # two classes: the CE gradient is normal to the boundary
    ("linf", "dlr-targeted", 10), ("l2", "dlr", 10)])
def test_exact_robust_accuracy_on_an_affine_classifier(norm, loss, num_classes):
  w, b, x, y, logits_fn = affine_problem(num_classes, norm, seed=1)
  radius = break_radius(w, b, x, y, norm)
  radii = radii_between(radius)
  if norm == "l2":
    assert max(radii) <= 0.25  # the box cannot bind (x in [0.25, 0.75])

  @jax.jit
  def attack(eps, key):  # eps traced: one compilation for all radii
    return apgd_with_info(logits_fn, x, y, key, norm=norm, eps=eps, loss=loss,
                          num_target_classes=num_classes - 1)

  for eps in radii:
    exact_robust = worst_margin(w, b, x, y, eps, norm) > 0
    assert np.all(exact_robust == (radius > eps))
    res = attack(eps, jax.random.PRNGKey(0))
    assert isinstance(res, APGDResult)
    chex.assert_shape(res.adv, x.shape)
    chex.assert_shape((res.fooled, res.loss_best, res.loss_start, res.step_size), (len(y),))
    adv = np.asarray(res.adv)
    assert in_ball_and_box(x, adv, eps, norm)
    predicted_wrong = np.argmax(np.asarray(logits_fn(adv)), -1) != y
    np.testing.assert_array_equal(np.asarray(res.fooled), predicted_wrong)
    np.testing.assert_array_equal(~predicted_wrong, exact_robust)
    again = attack(eps, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again.adv), adv)   # deterministic for a key


@pytest.mark.core
def test_step_halves_at_every_checkpoint_when_the_loss_never_improves():
  # A constant model: zero gradient, the loss never increases, so rule 1 (fewer than 75% of the
  # steps improved) halves the step at each of the 8 checkpoints of a 100-step run.
  x = jnp.full((2, 4, 4, 1), 0.5)
  y = jnp.zeros(2, jnp.int32)

  def logits_fn(v):
    return jnp.zeros((v.shape[0], 3)) + 0.0 * jnp.sum(v)

  res = jax.jit(lambda x, y: apgd_with_info(logits_fn, x, y, jax.random.PRNGKey(0),
                                            norm="linf", eps=0.1))(x, y)
  np.testing.assert_allclose(np.asarray(res.step_size), 2 * 0.1 / 2 ** 8, rtol=1e-6)
  assert not np.any(np.asarray(res.fooled))


def tiny_conv_net(key):
  """SmallCNN's layout (conv, conv, pool, dense, dense) at a tenth of its width, random
  weights, in plain JAX (eager Flax initialisation is slow on a loaded CPU)."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  c1 = jax.random.normal(k1, (3, 3, 1, 4)) / 3.0
  c2 = jax.random.normal(k2, (3, 3, 4, 4)) / 6.0
  d1 = jax.random.normal(k3, (64, 20)) / 8.0
  d2 = jax.random.normal(k4, (20, 10)) / 4.5

  def conv(v, k):
    return jax.lax.conv_general_dilated(v, k, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def logits_fn(v):
    h = jax.nn.relu(conv(jax.nn.relu(conv(v, c1)), c2))                     # (B, 8, 8, 4)
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return jax.nn.relu(h.reshape(h.shape[0], -1) @ d1) @ d2

  return logits_fn


def test_apgd_ce_raises_the_loss_on_a_conv_net():
  logits_fn = tiny_conv_net(jax.random.PRNGKey(2))
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 12, 12, 1))
  y = jnp.argmax(logits_fn(x), -1)
  eps = 0.05

  @jax.jit
  def run(x, y, k):
    res = apgd_with_info(logits_fn, x, y, k, norm="linf", eps=eps, num_steps=20)
    ce = lambda v: optax.softmax_cross_entropy_with_integer_labels(logits_fn(v), y)
    return res, ce(res.adv), ce(x)

  res, ce_adv, ce_clean = run(x, y, jax.random.PRNGKey(3))
  adv = np.asarray(res.adv)
  assert in_ball_and_box(np.asarray(x), adv, eps, "linf")
  assert np.all(np.asarray(res.loss_best) >= np.asarray(res.loss_start))
  assert np.all(np.asarray(ce_adv) > np.asarray(ce_clean))
  kept = ~np.asarray(res.fooled)  # where nothing was found, adv is the best point
  assert 0 < kept.sum() < len(kept)
  np.testing.assert_allclose(np.asarray(ce_adv)[kept], np.asarray(res.loss_best)[kept],
                             rtol=1e-4)
  # The host loop (one jitted iteration driven from Python, the fast choice on CPU) computes
  # the same iterates as the traced loop.
  host = apgd_with_info(logits_fn, x, y, jax.random.PRNGKey(3), norm="linf", eps=eps,
                        num_steps=20, loop="host")
  np.testing.assert_array_equal(np.asarray(host.fooled), np.asarray(res.fooled))
  np.testing.assert_allclose(np.asarray(host.adv), adv, atol=1e-6)
  np.testing.assert_allclose(np.asarray(host.loss_best), np.asarray(res.loss_best), rtol=1e-5)


@pytest.mark.core
def test_apgd_targeted_on_cross_entropy_returns_points_of_the_ball():
  _, _, x, y, logits_fn = affine_problem(4, "linf", seed=2, batch=6, side=3)
  adv = jax.jit(lambda x, y: apgd_targeted(
      logits_fn, x, y, jax.random.PRNGKey(0), norm="linf", eps=0.05, loss="ce-targeted",
      num_steps=5, num_target_classes=3))(x, y)
  chex.assert_shape(adv, x.shape)
  assert in_ball_and_box(x, np.asarray(adv), 0.05, "linf")


@pytest.mark.parametrize("kwargs,name", [
    ({"norm": "l1"}, "norm"), ({"eps": 0.0}, "eps"), ({"eps": -0.1}, "eps"),
    ({"eps": float("nan")}, "eps"), ({"loss": "hinge"}, "loss"), ({"num_steps": 0}, "num_steps"),
    ({"num_restarts": 1.5}, "num_restarts"), ({"rho": 1.5}, "rho"),
    ({"loss": "dlr-targeted", "num_target_classes": 4}, "num_target_classes"),
    ({"loop": "gpu"}, "loop"),
])
@pytest.mark.core
def test_bad_arguments_raise_value_errors_naming_them(kwargs, name):
  _, _, x, y, logits_fn = affine_problem(4, "linf", batch=2, side=2)
  args = {"norm": "linf", "eps": 0.1, **kwargs}
  with pytest.raises(ValueError, match=name):
    apgd(logits_fn, x, y, jax.random.PRNGKey(0), **args)


@pytest.mark.core
def test_bad_models_and_labels_raise_value_errors():
  _, _, x, y, logits_fn = affine_problem(4, "linf", batch=2, side=2)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="logits_fn"):   # (B,) instead of (B, C)
    apgd(lambda v: logits_fn(v)[:, 0], x, y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="logits_fn"):   # (B, C, 1)
    apgd(lambda v: logits_fn(v)[..., None], x, y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="logits_fn"):   # DLR needs 3 classes
    apgd(lambda v: logits_fn(v)[:, :2], x, y % 2, key, norm="linf", eps=0.1, loss="dlr")
  with pytest.raises(ValueError, match="y has shape"):
    apgd(logits_fn, x, y[:1], key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="loss"):
    apgd_targeted(logits_fn, x, y, key, norm="linf", eps=0.1, loss="ce")
