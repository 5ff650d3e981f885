"""FAB: the box-constrained projection against a generic LP/QP solver, and the minimal
perturbation on affine classifiers against its closed form."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from atent_jax.attacks import fab, fab_minimal
from atent_jax.attacks.fab import project_to_hyperplane_in_box

pytestmark = pytest.mark.core  # the mutation-testing subset (setup.cfg [mutmut])

H, W, C, K = 4, 4, 1, 10
D = H * W * C
DUAL_ORD = {"linf": 1, "l2": 2, "l1": np.inf}   # the dual norm of each attack norm
NP_ORD = {"linf": np.inf, "l2": 2, "l1": 1}


def _affine(seed=0, batch=6, classes=K, scale=1.0):
  """logits = flatten(x) W + b on images in [0.3, 0.7]: the minimal perturbations below are
  small enough that the box [0, 1] does not bind."""
  rng = np.random.default_rng(seed)
  w = (scale * rng.normal(size=(D, classes))).astype(np.float32)
  b = rng.normal(size=classes).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(batch, H, W, C)).astype(np.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w) + jnp.asarray(b)
  y = np.argmax(x.reshape(batch, -1) @ w + b, -1).astype(np.int32)
  return logits_fn, x, y, w, b


def _distances(x, y, w, b, norm):
  """(B, K): the exact distance from x_i to the boundary z_j = z_y (inf for j = y), in NumPy:
  |z_y - z_j| / ||w_y - w_j||_dual."""
  xf = x.reshape(len(x), -1).astype(np.float64)
  z = xf @ w + b
  out = np.full(z.shape, np.inf)
  for i in range(len(x)):
    for j in range(w.shape[1]):
      if j != y[i]:
        diff = w[:, y[i]].astype(np.float64) - w[:, j]
        out[i, j] = (z[i, y[i]] - z[i, j]) / np.linalg.norm(diff, DUAL_ORD[norm])
  return out


def _np_norm(v, norm):
  return np.linalg.norm(np.asarray(v, np.float64).reshape(len(v), -1), NP_ORD[norm], axis=1)


# --- the projection ---------------------------------------------------------------------------

def _solve_reference(p, w, s, norm):
  """The smallest ||d|| with w.d = -s and 0 <= p + d <= 1, by scipy (linprog for l_inf and
  l_1, SLSQP for l_2)."""
  n = len(p)
  bounds = [(-pi, 1 - pi) for pi in p]
  if norm == "linf":   # variables (d, t): min t, -t <= d_i <= t
    c = np.r_[np.zeros(n), 1.0]
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    res = optimize.linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None],
                           b_eq=[-s], bounds=bounds + [(0, None)])
    return res.x[:n]
  if norm == "l1":     # variables (d, u): min sum u, -u <= d <= u
    c = np.r_[np.zeros(n), np.ones(n)]
    a_ub = np.block([[np.eye(n), -np.eye(n)], [-np.eye(n), -np.eye(n)]])
    res = optimize.linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n),
                           A_eq=np.r_[w, np.zeros(n)][None], b_eq=[-s],
                           bounds=bounds + [(0, None)] * n)
    return res.x[:n]
  res = optimize.minimize(lambda d: d @ d, np.zeros(n), jac=lambda d: 2 * d, method="SLSQP",
                          bounds=bounds, constraints=[{"type": "eq", "fun": lambda d: w @ d + s,
                                                       "jac": lambda d: w}],
                          options={"ftol": 1e-14, "maxiter": 500})
  return res.x


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_matches_a_generic_solver(norm):
  rng = np.random.default_rng(1)
  n, rows = 7, 24
  p = rng.uniform(0, 1, (rows, n))
  p[:, 0] = 1.0                       # a coordinate already on the box
  w = rng.normal(size=(rows, n))
  w[::4, 1] = 0.0                     # zero weights must not move
  # Targets from easy (box does not bind) to ones that need most of the box's room.
  sign = np.where(np.arange(rows) % 2, 1.0, -1.0)            # the sign of s
  reach = np.sum(np.abs(w) * np.where(w * sign[:, None] > 0, p, 1 - p), 1)
  s = sign * reach * rng.uniform(0.05, 0.95, rows)
  d = np.asarray(project_to_hyperplane_in_box(jnp.asarray(p, jnp.float32),
                                              jnp.asarray(w, jnp.float32),
                                              jnp.asarray(s, jnp.float32), norm))
  chex.assert_shape(d, (rows, n))
  for i in range(rows):
    want = _solve_reference(p[i], w[i], s[i], norm)
    np.testing.assert_allclose(np.linalg.norm(d[i], NP_ORD[norm]),
                               np.linalg.norm(want, NP_ORD[norm]), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(w[i] @ d[i], -s[i], rtol=1e-4, atol=1e-5)   # on the hyperplane
    assert np.all(p[i] + d[i] >= -1e-6) and np.all(p[i] + d[i] <= 1 + 1e-6)
  assert np.all(d[::4, 1] == 0)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_out_of_reach_goes_to_the_best_corner(norm):
  p = jnp.asarray([[0.2, 0.7, 0.5]])
  w = jnp.asarray([[1.0, -2.0, 0.0]])
  s = jnp.asarray([10.0])             # w.(p + d) can fall by at most 0.2 + 2 * 0.3 = 0.8
  d = np.asarray(project_to_hyperplane_in_box(p, w, s, norm))
  np.testing.assert_allclose(d, [[-0.2, 0.3, 0.0]], atol=1e-6)


# --- FAB on affine classifiers ----------------------------------------------------------------

# Targeted l_inf and l_2 against the minimum: test_fab_reaches_the_minimum_where_the_box_binds
# (FAB-T's defaults); the untargeted runs here cover the dual norms of every class's boundary.
@pytest.mark.parametrize("norm,targeted", [("linf", False), ("l2", False), ("l1", True)])
def test_fab_reaches_the_closed_form_minimum(norm, targeted):
  logits_fn, x, y, w, b = _affine()
  want = _distances(x, y, w, b, norm).min(1)
  adv, dist, success = fab_minimal(logits_fn, x, y, jax.random.PRNGKey(0), norm=norm,
                                   targeted=targeted)
  chex.assert_shape(adv, x.shape)
  chex.assert_shape([dist, success], (len(x),))
  assert success.dtype == jnp.bool_
  assert np.all(np.asarray(success))
  adv = np.asarray(adv)
  assert np.all(np.argmax(logits_fn(adv), -1) != y)
  found = _np_norm(adv - x, norm)
  np.testing.assert_allclose(np.asarray(dist), found, rtol=1e-5)
  # FAB cannot beat the true minimum, and should be within 1% of it.
  assert np.all(found >= want * (1 - 1e-4)), found / want
  assert np.all(found <= want * 1.01), found / want


def test_fab_t_attacks_the_targets_ranked_by_clean_logit():
  """With one target class FAB-T finds the boundary of the class with the 2nd largest clean
  logit, which need not be the closest one."""
  logits_fn, x, y, w, b = _affine(seed=3, batch=8)
  second = np.argsort(x.reshape(len(x), -1) @ w + b, 1)[:, -2]
  dists = _distances(x, y, w, b, "l2")
  want = dists[np.arange(len(x)), second]
  assert np.any(want > dists.min(1) * 1.05)          # the test can tell the two apart
  adv, _, success = fab_minimal(logits_fn, x, y, jax.random.PRNGKey(0), norm="l2",
                                num_target_classes=1)
  assert np.all(np.asarray(success))
  found = _np_norm(np.asarray(adv) - x, "l2")
  np.testing.assert_allclose(found, want, rtol=0.01)


def test_fab_at_eps_keeps_points_in_the_ball_and_box():
  logits_fn, x, y, w, b = _affine(seed=4, batch=8)
  want = _distances(x, y, w, b, "linf").min(1)
  eps = float(np.median(want)) * 1.02
  key = jax.random.PRNGKey(0)
  adv = np.asarray(fab(logits_fn, x, y, key, norm="linf", eps=eps))
  chex.assert_shape(adv, x.shape)
  fooled = np.argmax(logits_fn(adv), -1) != y
  dist = _np_norm(adv - x, "linf")
  assert np.all(dist <= eps * (1 + 1e-6))
  assert adv.min() >= 0 and adv.max() <= 1
  np.testing.assert_array_equal(fooled, want * 1.01 <= eps)   # found where one exists
  assert np.all(adv[~fooled] == x[~fooled])                   # else x itself
  # Nothing is closer than the true minimum: just below it, every point stays clean.
  adv_below = np.asarray(fab(logits_fn, x, y, key, norm="linf", eps=float(want.min()) * 0.99))
  np.testing.assert_array_equal(adv_below, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_overshoot_past_the_boundary_stays_in_the_box(norm):
  """FAB steps 1.05x the projection (the reference's overshoot eta); where the projection takes
  a pixel to the box's edge, the overshoot would leave [0, 1] unless clipped. Two classes,
  w_1 - w_0 > 0 everywhere: the boundary is reached by raising every pixel, half of which start
  at 0.95 (room 0.05) and half at 0.5, so the nearest boundary point puts the first half at 1."""
  rng = np.random.default_rng(7)
  w = np.zeros((D, 2), np.float32)
  w[:, 1] = rng.uniform(0.5, 1.5, size=D)
  x = np.where(np.arange(D) % 2 == 0, 0.95, 0.5).astype(np.float32)
  x = np.stack([x, x[::-1]]).reshape(2, H, W, C)
  # z_1 - z_0 = w_1 . x + b: -0.15 * sum(w_1) at x, so a uniform rise of 0.15 would reach it.
  b = np.array([0.0, -float(x[0].reshape(-1) @ w[:, 1]) - 0.15 * float(w[:, 1].sum())],
               np.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w) + jnp.asarray(b)
  y = np.zeros(2, np.int32)
  assert np.all(np.argmax(logits_fn(x), -1) == y)
  adv, _, success = fab_minimal(logits_fn, x, y, jax.random.PRNGKey(0), norm=norm,
                                num_target_classes=1)
  adv = np.asarray(adv)
  assert np.all(np.asarray(success))
  assert np.any(adv == 1.0)            # the edge was reached
  assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_reaches_the_minimum_where_the_box_binds(norm):
  """Pixels at 0, 0.5 and 1: the minimal perturbation inside [0, 1] is larger than the
  unconstrained one. For an affine model it is the smallest, over the other classes j, of the
  box-constrained distance to the half-space z_j >= z_y (computed by scipy)."""
  logits_fn, _, _, w, b = _affine(seed=5, batch=6)
  rng = np.random.default_rng(5)
  x = rng.choice([0.0, 0.5, 1.0], size=(6, H, W, C)).astype(np.float32)
  xf = x.reshape(6, -1).astype(np.float64)
  z = xf @ w + b
  y = np.argmax(z, -1).astype(np.int32)
  want = np.array([min(np.linalg.norm(_solve_reference(xf[i], (w[:, j] - w[:, y[i]]).astype(
      np.float64), z[i, j] - z[i, y[i]], norm), NP_ORD[norm]) for j in range(K) if j != y[i])
      for i in range(6)])
  assert np.all(_distances(x, y, w, b, norm).min(1) < want * 0.95)   # the box does bind
  adv, _, success = fab_minimal(logits_fn, x, y, jax.random.PRNGKey(0), norm=norm)
  adv = np.asarray(adv)
  assert np.all(np.asarray(success)) and adv.min() >= 0 and adv.max() <= 1
  assert np.all(np.argmax(logits_fn(adv), -1) != y)
  found = _np_norm(adv - x, norm)
  assert np.all(found >= want * (1 - 1e-4)) and np.all(found <= want * 1.01), found / want


def test_restarts_are_deterministic_for_a_key_and_jit_gives_the_same():
  logits_fn, x, y, w, b = _affine(seed=5, batch=6)
  run = functools.partial(fab_minimal, logits_fn, norm="l2", num_restarts=2, num_steps=20,
                          num_target_classes=3, eps=0.5)
  key = jax.random.PRNGKey(7)
  adv, dist, success = run(x, y, key)
  adv2, dist2, _ = run(x, y, key)
  adv3, _, _ = jax.jit(run)(x, y, key)
  np.testing.assert_array_equal(np.asarray(adv), np.asarray(adv2))
  np.testing.assert_array_equal(np.asarray(dist), np.asarray(dist2))
  np.testing.assert_allclose(np.asarray(adv3), np.asarray(adv), atol=1e-6)
  assert np.all(np.asarray(success))
  assert np.all(np.argmax(logits_fn(np.asarray(adv)), -1) != y)
  assert np.all(np.asarray(dist) >= _distances(x, y, w, b, "l2").min(1) * (1 - 1e-4))


def _small_cnn(seed=0, batch=8):
  """A random two-layer CNN on 8x8 images (weights passed as arrays, not baked constants)."""
  rng = np.random.default_rng(seed)
  k1 = jnp.asarray(rng.normal(0, 0.5, (3, 3, 1, 4)), jnp.float32)
  w2 = jnp.asarray(rng.normal(0, 0.3, (6 * 6 * 4, K)), jnp.float32)

  def logits_fn(v):
    h = jax.lax.conv_general_dilated(v, k1, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h).reshape(v.shape[0], -1) @ w2

  x = rng.uniform(0, 1, (batch, 8, 8, 1)).astype(np.float32)
  y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)).astype(np.int32)
  y[0] = (y[0] + 1) % K     # one point the model already gets wrong
  return logits_fn, x, y


# The targeted runs go through both loops at the two radii; the minimal distances (no radius)
# are compared on the untargeted run.
@pytest.mark.parametrize("targeted,radius", [(False, None), (True, 0.05), (True, 0.5)])
def test_host_loop_computes_the_device_loops_iterates(targeted, radius):
  """The host loop (one jitted step driven from Python, the default on CPU) and the traced loop
  find the same points, including when the runs stop early (fab at a radius)."""
  logits_fn, x, y = _small_cnn()
  key = jax.random.PRNGKey(2)
  kw = dict(norm="linf", num_steps=15, num_restarts=2, targeted=targeted, num_target_classes=3)
  if radius is None:
    outs = [fab_minimal(logits_fn, x, y, key, eps=0.2, loop=loop, **kw)
            for loop in ("host", "device")]
    (adv_h, dist_h, ok_h), (adv_d, dist_d, ok_d) = outs
    np.testing.assert_array_equal(np.asarray(ok_h), np.asarray(ok_d))
    np.testing.assert_allclose(np.asarray(dist_h), np.asarray(dist_d), rtol=1e-5, atol=1e-6)
    assert np.asarray(ok_h)[1:].any()   # the comparison covers points that FAB moved
  else:
    calls = {"host": [], "device": []}   # model evaluations, counted as they run

    def counted(loop):
      def fn(v):
        jax.debug.callback(lambda: calls[loop].append(1))
        return logits_fn(v)
      return fn

    adv_h, adv_d = (fab(counted(loop), x, y, key, eps=radius, loop=loop, **kw)
                    for loop in ("host", "device"))
    jax.effects_barrier()
    # Both stop after the same run; at radius 0.5 every point is found in the first one.
    assert len(calls["host"]) == len(calls["device"])
    if radius == 0.5:
      assert len(calls["host"]) < 2 * kw["num_steps"] + 3
  np.testing.assert_allclose(np.asarray(adv_h), np.asarray(adv_d), atol=1e-5)


def test_host_loop_needs_concrete_inputs():
  logits_fn, x, y = _small_cnn()
  with pytest.raises(ValueError, match="loop='host'"):
    jax.jit(lambda v: fab(logits_fn, v, y, jax.random.PRNGKey(0), norm="linf", eps=0.1,
                          num_steps=2, loop="host"))(x)
  with pytest.raises(ValueError, match="loop"):
    fab(logits_fn, x, y, jax.random.PRNGKey(0), norm="linf", eps=0.1, loop="gpu")


def test_misclassified_points_are_returned_at_distance_zero():
  logits_fn, x, y, _, _ = _affine(seed=6, batch=4)
  y_wrong = (y + 1) % K
  adv, dist, success = fab_minimal(logits_fn, x, y_wrong, jax.random.PRNGKey(0), norm="linf",
                                   num_steps=3)
  np.testing.assert_array_equal(np.asarray(adv), x)
  np.testing.assert_array_equal(np.asarray(dist), 0.0)
  assert np.all(np.asarray(success))


@pytest.mark.parametrize("kwargs,name", [
    ({"norm": "l3", "eps": 0.1}, "norm"),
    ({"norm": "linf", "eps": 0.0}, "eps"),
    ({"norm": "linf", "eps": -1.0}, "eps"),
    ({"norm": "linf", "eps": None}, "eps"),
    ({"norm": "linf", "eps": 0.1, "num_steps": 0}, "num_steps"),
    ({"norm": "linf", "eps": 0.1, "num_restarts": 0}, "num_restarts"),
    ({"norm": "linf", "eps": 0.1, "num_target_classes": 0}, "num_target_classes"),
    ({"norm": "linf", "eps": 0.1, "alpha_max": 1.5}, "alpha_max"),
    ({"norm": "linf", "eps": 0.1, "beta": 0.0}, "beta"),
    ({"norm": "linf", "eps": 0.1, "eta": -1.0}, "eta"),
    ({"norm": "linf", "eps": 0.1, "targeted": "yes"}, "targeted"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
  logits_fn, x, y, _, _ = _affine(batch=2)
  with pytest.raises(ValueError, match=name):
    fab(logits_fn, x, y, jax.random.PRNGKey(0), **kwargs)


def test_bad_model_output_or_labels():
  logits_fn, x, y, _, _ = _affine(batch=2)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="logits_fn"):
    fab(lambda v: logits_fn(v)[:, 0], x, y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="logits_fn"):
    fab(lambda v: logits_fn(v)[:1], x, y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="y"):
    fab_minimal(logits_fn, x, y[:1], key, norm="l2")
