"""Square Attack: succeeds where gradients are masked, stays in the ball and the box, is
deterministic, never gets worse with more queries, and follows the reference's schedule."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax.attacks import classic, square, square_with_stats
from atent_jax.attacks.square import (
    l2_proposal,
    l2_window_pattern,
    p_schedule_level,
    window_sides,
)

pytestmark = pytest.mark.core  # the mutation-testing subset (setup.cfg [mutmut])

B, H, W, C, K = 12, 12, 12, 1, 10
EPS = {"linf": 0.15, "l2": 1.5}


def _quantised(seed=0, batch=B, channels=C):
  """logits = round(4 x) / 4 through a fixed affine map: the input gradient is zero almost
  everywhere, so gradient attacks cannot move."""
  rng = np.random.default_rng(seed)
  d = H * W * channels
  w = jnp.asarray(rng.normal(size=(d, K)) / np.sqrt(d), jnp.float32)
  x = rng.uniform(0, 1, (batch, H, W, channels)).astype(np.float32)
  logits_fn = lambda v: (jnp.round(v * 4) / 4).reshape(v.shape[0], -1) @ w
  y = np.asarray(jnp.argmax(logits_fn(x), -1), np.int32)
  return logits_fn, x, y


def _affine(seed=0, batch=B):
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=(H * W * C, K)) / (H * W), jnp.float32)
  x = rng.uniform(0, 1, (batch, H, W, C)).astype(np.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  y = np.asarray(jnp.argmax(logits_fn(x), -1), np.int32)
  return logits_fn, x, y


def _norm(v, norm):
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  return np.abs(v).max(1) if norm == "linf" else np.sqrt((v * v).sum(1))


def _fooled(logits_fn, adv, y):
  return np.asarray(jnp.argmax(logits_fn(jnp.asarray(adv)), -1)) != y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_succeeds_where_gradients_are_masked(norm):
  logits_fn, x, y = _quantised()
  eps = EPS[norm]
  pgd_adv = classic.pgd(logits_fn, x, y, jax.random.PRNGKey(0), norm=norm, eps=eps,
                        step_size=eps / 4, num_steps=10, random_init=False)
  np.testing.assert_array_equal(np.asarray(pgd_adv), x)   # zero gradient: PGD never moves
  res = square_with_stats(logits_fn, x, y, jax.random.PRNGKey(0), norm=norm, eps=eps,
                          num_queries=300)
  chex.assert_shape(res.adv, x.shape)
  chex.assert_shape([res.success, res.queries, res.margin], (B,))
  adv = np.asarray(res.adv)
  fooled = _fooled(logits_fn, adv, y)
  np.testing.assert_array_equal(fooled, np.asarray(res.success))
  assert fooled.mean() >= 0.75, fooled.mean()
  assert np.all(_norm(adv - x, norm) <= eps * (1 + 1e-6))
  assert adv.min() >= 0 and adv.max() <= 1
  assert np.all(adv[~fooled] == x[~fooled])       # x itself where the attack failed


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_more_queries_never_do_worse_on_the_same_key(norm):
  """With the schedule's iterations taken as they are (rescale_schedule=False), a run with more
  queries repeats the shorter run's queries first: success and best margin only improve."""
  logits_fn, x, y = _affine(seed=1)
  run = functools.partial(square_with_stats, logits_fn, x, y, jax.random.PRNGKey(3), norm=norm,
                          eps=EPS[norm] / 3, rescale_schedule=False)
  short, long = run(num_queries=20), run(num_queries=80)
  s_short, s_long = np.asarray(short.success), np.asarray(long.success)
  assert np.all(s_long >= s_short)
  assert np.all(np.asarray(long.margin) <= np.asarray(short.margin))
  np.testing.assert_array_equal(np.asarray(long.adv)[s_short], np.asarray(short.adv)[s_short])
  assert 0 < s_long.sum() < B                      # the comparison is not trivial


def test_queries_stop_counting_once_fooled():
  """An example fooled at query q (the start point counts as query 1) needs exactly q: with one
  query fewer the same key leaves it robust, and robust examples spend the whole budget."""
  logits_fn, x, y = _affine(seed=1)
  key = jax.random.PRNGKey(3)
  run = functools.partial(square_with_stats, logits_fn, x, y, key, norm="linf",
                          eps=EPS["linf"] / 3, rescale_schedule=False)
  res = run(num_queries=80)
  queries, success = np.asarray(res.queries), np.asarray(res.success)
  assert np.all(queries[~success] == 81)
  late = np.flatnonzero(success & (queries > 2))
  assert len(late) > 0
  i = late[np.argmax(queries[late])]
  q = int(queries[i])
  assert np.asarray(run(num_queries=q - 1).success)[i]
  assert not np.asarray(run(num_queries=q - 2).success)[i]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_per_example_and_jit(norm):
  logits_fn, x, y = _affine(seed=2, batch=6)
  keys = jax.random.split(jax.random.PRNGKey(5), 6)
  run = jax.jit(functools.partial(square, logits_fn, norm=norm, eps=EPS[norm] / 3,
                                  num_queries=40))
  adv = np.asarray(run(x, y, keys))
  np.testing.assert_array_equal(np.asarray(run(x, y, keys)), adv)
  assert np.any(np.asarray(run(x, y, jax.random.split(jax.random.PRNGKey(6), 6))) != adv)
  # Example i's result depends on its own key only, not on the rest of the batch.
  np.testing.assert_allclose(np.asarray(run(x[2:4], y[2:4], keys[2:4])), adv[2:4], atol=1e-6)


def test_misclassified_points_are_left_alone():
  logits_fn, x, y = _affine(seed=4, batch=4)
  res = square_with_stats(logits_fn, x, (y + 1) % K, jax.random.PRNGKey(0), norm="l2", eps=1.0,
                          num_queries=5)
  np.testing.assert_array_equal(np.asarray(res.adv), x)
  np.testing.assert_array_equal(np.asarray(res.queries), 0)
  assert not np.any(np.asarray(res.success))


def test_restarts_and_colour_images():
  """Three channels and two restarts: the second restart only runs on points still robust."""
  logits_fn, x, y = _quantised(seed=7, batch=6, channels=3)
  res = square_with_stats(logits_fn, x, y, jax.random.PRNGKey(0), norm="l2", eps=0.5,
                          num_queries=10, num_restarts=2)
  adv, queries, success = np.asarray(res.adv), np.asarray(res.queries), np.asarray(res.success)
  assert np.all(_norm(adv - x, "l2") <= 0.5 * (1 + 1e-6)) and adv.min() >= 0 and adv.max() <= 1
  assert np.all(queries[~success] == 22)           # 2 x (start + 10)
  assert np.all(queries <= 22)


# --- the schedule and the l_2 window pattern against transcriptions of the reference -----------

def _reference_p(iteration, num_queries, p_init, rescale):
  it = int(iteration / num_queries * 10000) if rescale else iteration
  if 10 < it <= 50:
    return p_init / 2
  if 50 < it <= 200:
    return p_init / 4
  if 200 < it <= 500:
    return p_init / 8
  if 500 < it <= 1000:
    return p_init / 16
  if 1000 < it <= 2000:
    return p_init / 32
  if 2000 < it <= 4000:
    return p_init / 64
  if 4000 < it <= 6000:
    return p_init / 128
  if 6000 < it <= 8000:
    return p_init / 256
  if 8000 < it:
    return p_init / 512
  return p_init


@pytest.mark.parametrize("num_queries,rescale", [(5000, True), (300, True), (10000, False)])
def test_p_schedule_matches_the_reference(num_queries, rescale):
  for i in range(num_queries):
    want = _reference_p(i, num_queries, 0.8, rescale)
    assert 0.8 / 2 ** p_schedule_level(i, num_queries, rescale) == pytest.approx(want), i


def test_window_sides_on_mnist():
  # round(sqrt(p * 784)) for p = 0.8 / 2**level; l_2: at least 3 and odd.
  assert window_sides("linf", 0.8, 28, 28).tolist() == [25, 18, 13, 9, 6, 4, 3, 2, 2, 1]
  assert window_sides("l2", 0.8, 28, 28).tolist() == [25, 19, 13, 9, 7, 5, 3, 3, 3, 3]


def _reference_rectangles(rows, cols):
  """The reference's concentric rectangles, accumulated with its loop."""
  delta = np.zeros((rows, cols))
  r, c = rows // 2, cols // 2
  for k in range(max(rows // 2 + 1, cols // 2 + 1)):
    delta[max(r, 0):min(r + 2 * k + 1, rows), max(c, 0):min(c + 2 * k + 1, cols)] += \
        1.0 / (k + 1) ** 2
    r, c = r - 1, c - 1
  return delta / np.sqrt((delta ** 2).sum())


@pytest.mark.parametrize("side", [3, 5, 6, 13, 25])
def test_l2_window_pattern_matches_the_reference(side):
  want = np.zeros((side, side))
  want[:side // 2] = _reference_rectangles(side // 2, side)
  want[side // 2:] = -_reference_rectangles(side - side // 2, side)
  want /= np.sqrt((want ** 2).sum())
  np.testing.assert_allclose(l2_window_pattern(side), want, rtol=1e-12)


@pytest.mark.parametrize("kwargs,name", [
    ({"norm": "l1", "eps": 0.1}, "norm"),
    ({"norm": "linf", "eps": 0.0}, "eps"),
    ({"norm": "linf", "eps": -0.1}, "eps"),
    ({"norm": "linf", "eps": 0.1, "num_queries": 0}, "num_queries"),
    ({"norm": "linf", "eps": 0.1, "p_init": 0.0}, "p_init"),
    ({"norm": "linf", "eps": 0.1, "p_init": 1.5}, "p_init"),
    ({"norm": "linf", "eps": 0.1, "num_restarts": 0}, "num_restarts"),
    ({"norm": "linf", "eps": 0.1, "rescale_schedule": "no"}, "rescale_schedule"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
  logits_fn, x, y = _affine(batch=2)
  with pytest.raises(ValueError, match=name):
    square(logits_fn, x, y, jax.random.PRNGKey(0), **kwargs)


def test_bad_model_output_or_inputs():
  logits_fn, x, y = _affine(batch=2)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="logits_fn"):
    square(lambda v: logits_fn(v)[:, :1], x, y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="logits_fn"):
    square(lambda v: logits_fn(v)[None], x, y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="x"):
    square(logits_fn, x.reshape(2, -1), y, key, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="y"):
    square(logits_fn, x, y.astype(np.float32), key, norm="linf", eps=0.1)


@pytest.mark.parametrize("seed", range(4))
def test_l2_proposal_moves_mass_between_two_windows_and_keeps_the_norm(seed):
  """One l_2 query (the reference's rule) on a one-channel image at distance eps: window 2's
  perturbation moves into window 1, so the perturbation keeps its l_2 norm eps and nothing
  outside the two side x side windows changes. (With C channels the reference gives window 1
  C times window 2's mass and renormalises the whole image: the invariant is for C = 1, as
  on MNIST.) x at 0.5 and eps 0.5 keep [0, 1] from binding (checked)."""
  rng = np.random.default_rng(seed)
  eps, side, channels = 0.5, 3, 1
  x = np.full((12, 12, channels), 0.5, np.float32)
  delta = rng.normal(size=x.shape)
  x_best = (x + eps * delta / np.linalg.norm(delta)).astype(np.float32)
  pattern = jnp.asarray(l2_window_pattern(side), jnp.float32)
  x_new = np.asarray(l2_proposal(jax.random.PRNGKey(seed), jnp.asarray(x), jnp.asarray(x_best),
                                 eps, side, pattern), np.float64)
  assert 0 < x_new.min() and x_new.max() < 1      # the box did not bind
  np.testing.assert_allclose(np.linalg.norm(x_new - x), eps, rtol=1e-4)
  changed = np.any(np.abs(x_new - x_best) > 1e-6, axis=-1)   # (H, W)
  assert 0 < changed.sum() <= 2 * side * side
