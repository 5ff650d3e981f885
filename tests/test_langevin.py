"""The ATENT sampler (`sample_langevin`) and the shared input-space optimiser."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import atent_jax
from atent_jax import langevin

D, C = 12, 4


def _linear_problem(batch=8, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D, C)).astype(np.float32)
  b = rng.normal(size=(C,)).astype(np.float32)
  x = rng.uniform(0.2, 0.8, size=(batch, D)).astype(np.float32)
  y = rng.integers(0, C, size=(batch,)).astype(np.int32)
  return w, b, x, y


def _ce_loss(w, b):
  def loss(x, y):
    logits = x @ w + b
    return jax.nn.logsumexp(logits) - logits[y]
  return loss


def _ce_grad_numpy(w, b, x, y):
  """d CE(x W + b, y) / dx, by hand."""
  logits = x @ w + b
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return p @ w.T


def _numpy_sampler(w, b, x, y, *, norm, eps, step, k, direction, gamma=0.0,
                   gamma_times_step=False, project_every_step=False):
  """ATENT's sampler from x' = x without noise, in float64 NumPy: Algorithm 1/2 written out."""
  x = x.astype(np.float64)
  xp = x.copy()
  samples = []
  for i in range(k):
    g = _ce_grad_numpy(w, b, xp, y)
    if direction == "sign":
      d = np.sign(g)
    elif direction == "l2":
      d = g / np.linalg.norm(g, axis=1, keepdims=True)
    else:
      d = g
    pull = gamma * step if gamma_times_step else gamma
    new = xp + step * d + pull * (x - xp)
    if project_every_step or i == k - 1:
      delta = new - x
      if norm == "linf":
        delta = np.clip(delta, -eps, eps)
      else:
        n = np.linalg.norm(delta, axis=1, keepdims=True)
        delta = delta * np.minimum(1.0, eps / n)
      new = x + delta
    xp = np.clip(new, 0.0, 1.0)
    samples.append(xp)
  return np.stack(samples)


def _flat_loss(x, y):
  """A loss with zero gradient everywhere: the sampler's moves are then its init and its noise."""
  del y
  return 0.0 * jnp.sum(x)


@pytest.mark.core
def test_linf_without_noise_equals_sign_gradient_ascent_by_hand():
  w, b, x, y = _linear_problem()
  eps, step, k = 0.05, 0.02, 6
  out = atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), norm="linf",
                                  eps=eps, step_size=step, num_steps=k, noise_scale=0.0,
                                  random_init=False)
  xp = x.copy()
  for i in range(k):
    xp = xp + step * np.sign(_ce_grad_numpy(w, b, xp, y))
    if i == k - 1:  # projection onto the eps-box only at the last step
      xp = x + np.clip(xp - x, -eps, eps)
    xp = np.clip(xp, 0.0, 1.0)
  chex.assert_shape(out, x.shape)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(np.asarray(out), xp, atol=1e-6)
  # The unprojected walk went further than eps: the projection really happened at the end.
  assert np.abs(out - x).max() == pytest.approx(eps, abs=1e-6)


@pytest.mark.core
def test_paper_update_uses_the_raw_gradient():
  w, b, x, y = _linear_problem()
  step, gamma = 0.01, 0.5
  out = atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), norm="l2",
                                  eps=10.0, step_size=step, num_steps=1, gamma=gamma,
                                  noise_scale=0.0, random_init=False, update="paper")
  expected = np.clip(x + step * _ce_grad_numpy(w, b, x, y), 0, 1)  # x' = x: no gamma pull yet
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
  code = atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), norm="l2",
                                   eps=10.0, step_size=step, num_steps=1, gamma=gamma,
                                   noise_scale=0.0, random_init=False, update="code")
  g = _ce_grad_numpy(w, b, x, y)
  expected_code = np.clip(x + step * g / np.linalg.norm(g, axis=1, keepdims=True), 0, 1)
  np.testing.assert_allclose(np.asarray(code), expected_code, atol=1e-6)


@pytest.mark.core
@pytest.mark.parametrize("norm,update,project_every_step", [
    ("l2", "code", False), ("l2", "paper", False), ("linf", "paper", False),
    ("l2", "code", True), ("linf", "code", True)])
def test_several_steps_with_the_gamma_pull_match_numpy(norm, update, project_every_step):
  """K steps with the pull towards x (l_2: gamma (x - x') for 'code', step * gamma (x - x') for
  'paper'), projected at the last step or at every step, against the NumPy loop above."""
  w, b, x, y = _linear_problem()
  eps = 0.08 if norm == "l2" else 0.05
  step, gamma, k = 0.04, 0.3, 5
  direction = "raw" if update == "paper" else ("sign" if norm == "linf" else "l2")
  kw = {"norm": norm, "eps": eps, "step_size": step, "num_steps": k, "noise_scale": 0.0,
        "random_init": False, "update": update, "project_every_step": project_every_step,
        "return_all": True}
  got = np.asarray(atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0),
                                             gamma=gamma, **kw))
  chex.assert_shape(got, (k,) + x.shape)
  want = _numpy_sampler(w, b, x, y, norm=norm, eps=eps, step=step, k=k, direction=direction,
                        gamma=gamma if norm == "l2" else 0.0,
                        gamma_times_step=update == "paper",
                        project_every_step=project_every_step)
  np.testing.assert_allclose(got, want, atol=2e-5)
  if norm == "l2":  # the pull is really exercised: without it the samples differ
    no_pull = _numpy_sampler(w, b, x, y, norm=norm, eps=eps, step=step, k=k,
                             direction=direction, project_every_step=project_every_step)
    assert np.abs(no_pull - want).max() > 1e-3
  delta = (got - x[None]).reshape(k, len(x), -1)
  size = np.abs(delta).max(-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
  if project_every_step:
    assert (size <= eps + 1e-6).all()
  else:  # Algorithm 2: only the last sample is projected; the walk went beyond eps before
    assert (size[-1] <= eps + 1e-6).all() and (size[:-1] > eps + 1e-3).any()


@pytest.mark.core
def test_noise_has_the_langevin_scale_and_is_fresh_every_step_and_example():
  """With a zero gradient each step adds noise_scale * sqrt(2 step) * N(0, I): the increments
  x'k - x'(k-1) have that standard deviation, zero mean, and no correlation across steps or
  examples."""
  rng = np.random.default_rng(3)
  batch, dim, k = 64, 48, 4
  x = rng.uniform(0.3, 0.7, (batch, dim)).astype(np.float32)
  y = np.zeros(batch, np.int32)
  noise_scale, step = 0.05, 0.02
  samples = atent_jax.sample_langevin(
      _flat_loss, x, y, jax.random.PRNGKey(4), norm="l2", eps=1e3, step_size=step, num_steps=k,
      noise_scale=noise_scale, random_init=False, clip=None, return_all=True)
  chex.assert_shape(samples, (k, batch, dim))
  path = np.concatenate([x[None], np.asarray(samples, np.float64)])
  inc = np.diff(path, axis=0)                                   # (k, batch, dim)
  sd = noise_scale * np.sqrt(2 * step)
  n = inc.size
  assert abs(inc.std() / sd - 1) < 0.03, inc.std() / sd         # ~5 standard errors
  assert abs(inc.mean()) < 5 * sd / np.sqrt(n)
  across_steps = np.corrcoef(inc[:-1].ravel(), inc[1:].ravel())[0, 1]
  across_examples = np.corrcoef(inc[:, :-1].ravel(), inc[:, 1:].ravel())[0, 1]
  assert abs(across_steps) < 0.06 and abs(across_examples) < 0.06, (across_steps,
                                                                    across_examples)


@pytest.mark.core
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_a_corner_or_a_point_on_the_sphere(norm):
  """With a zero gradient and no noise the sample is the start: l_inf x + eps * sign(N(0, I))
  (every pixel moved by exactly eps, half of them up); l_2 N(0, I) projected onto the eps-ball
  (in 48 dimensions its norm is far above eps, so the projection lands on the sphere)."""
  rng = np.random.default_rng(5)
  x = rng.uniform(0.3, 0.7, (32, 48)).astype(np.float32)
  y = np.zeros(32, np.int32)
  eps = 0.1 if norm == "linf" else 0.5
  kw = {"norm": norm, "eps": eps, "step_size": 0.01, "num_steps": 2, "noise_scale": 0.0}
  out = np.asarray(atent_jax.sample_langevin(_flat_loss, x, y, jax.random.PRNGKey(6), **kw),
                   np.float64)
  delta = out - x
  if norm == "linf":
    np.testing.assert_allclose(np.abs(delta), eps, rtol=1e-5)
    assert abs((delta > 0).mean() - 0.5) < 0.05
  else:
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), eps, rtol=1e-5)
    assert np.abs(delta.mean(0)).max() < 4 * eps / np.sqrt(48 * 32) * 2
  fixed = atent_jax.sample_langevin(_flat_loss, x, y, jax.random.PRNGKey(6), random_init=False,
                                    **kw)
  np.testing.assert_array_equal(np.asarray(fixed), x)
  # Near the edge of the data range the start is clipped to [0, 1], unless clip=None.
  edge = np.full_like(x, 0.98)
  clipped, free = (np.asarray(atent_jax.sample_langevin(_flat_loss, edge, y,
                                                      jax.random.PRNGKey(6), clip=clip, **kw))
                   for clip in ((0.0, 1.0), None))
  assert clipped.max() == 1.0 and free.max() > 1.0 + 0.01


@pytest.mark.core
@pytest.mark.parametrize("gamma_times_step", [False, True])
def test_optimize_input_matches_numpy_with_either_pull_and_returns_every_iterate(
    gamma_times_step):
  """The shared optimiser called directly (as the attacks and baselines do): l_2 steps with the
  pull gamma (x - x') or step * gamma (x - x'), projected every step, all iterates returned."""
  w, b, x, y = _linear_problem()
  k, eps, step, gamma = 4, 0.08, 0.04, 0.3
  got = langevin.optimize_input(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), norm="l2", eps=eps,
                                step_size=step, num_steps=k, direction="l2", gamma=gamma,
                                gamma_times_step=gamma_times_step, return_all=True)
  chex.assert_shape(got, (k,) + x.shape)
  want = _numpy_sampler(w, b, x, y, norm="l2", eps=eps, step=step, k=k, direction="l2",
                        gamma=gamma, gamma_times_step=gamma_times_step, project_every_step=True)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  # Defaults: no pull, the last iterate only.
  plain = langevin.optimize_input(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), norm="l2",
                                  eps=eps, step_size=step, num_steps=k, direction="l2")
  np.testing.assert_allclose(np.asarray(plain), _numpy_sampler(
      w, b, x, y, norm="l2", eps=eps, step=step, k=k, direction="l2",
      project_every_step=True)[-1], atol=2e-5)


@pytest.mark.core
@pytest.mark.parametrize("init,norm,eps,check", [
    ("zero", "linf", 0.1, "zero"), ("uniform", "linf", 0.1, "uniform"),
    ("uniform", "l2", 0.5, "in_ball"), ("corner", "linf", 0.1, "corner"),
    ("normal_projected", "l2", 0.5, "sphere"), ("normal", "linf", 0.1, "std"),
    ("tiny_normal", "linf", 0.1, "tiny")])
def test_each_start_has_its_documented_distribution_and_keeps_the_input_dtype(init, norm, eps,
                                                                            check):
  """The start alone (zero gradient, no noise, no projection, no clipping): its documented law,
  in the dtype of x even when JAX defaults to float64."""
  rng = np.random.default_rng(8)
  x = rng.uniform(0.3, 0.7, (32, 48)).astype(np.float32)
  y = np.zeros(32, np.int32)
  with jax.enable_x64(True):
    out = langevin.optimize_input(_flat_loss, x, y, jax.random.PRNGKey(9), norm=norm, eps=eps,
                                  step_size=0.01, num_steps=1, direction="sign", init=init,
                                  projection="none", clip=None)
  assert out.dtype == jnp.float32
  d = np.asarray(out, np.float64) - x
  n = d.size
  if check == "zero":
    assert np.all(d == 0)
  elif check == "uniform":   # U(-eps, eps): mean |d| = eps / 2, sd of |d| = eps / sqrt(12)
    assert np.abs(d).max() <= eps * (1 + 1e-6)
    assert abs(np.abs(d).mean() - eps / 2) < 5 * eps / np.sqrt(12 * n)
  elif check == "in_ball":   # U(-eps, eps) per pixel, then projected onto the l_2 ball
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), eps, rtol=1e-5)
  elif check == "corner":
    np.testing.assert_allclose(np.abs(d), eps, rtol=1e-5)
  elif check == "sphere":
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), eps, rtol=1e-5)
  elif check == "std":       # eps * N(0, I)
    assert abs(d.std() / eps - 1) < 0.05 and abs(d.mean()) < 5 * eps / np.sqrt(n)
  else:                      # 0.001 * N(0, I), whatever eps
    assert abs(d.std() / 0.001 - 1) < 0.05


@pytest.mark.core
def test_documented_defaults():
  """The defaults the docstrings and the README state (a silent change would change results)."""
  sig = lambda f: {k: p.default for k, p in inspect.signature(f).parameters.items()}
  assert {k: sig(atent_jax.sample_langevin)[k] for k in (
      "gamma", "noise_scale", "random_init", "clip", "return_all", "update",
      "project_every_step", "unroll")} == {
      "gamma": 0.0, "noise_scale": 1e-3, "random_init": True, "clip": (0.0, 1.0),
      "return_all": False, "update": "code", "project_every_step": False, "unroll": None}
  assert {k: sig(langevin.optimize_input)[k] for k in (
      "projection", "init", "noise_scale", "gamma", "gamma_times_step", "clip", "return_all",
      "unroll")} == {
      "projection": "every", "init": "zero", "noise_scale": 0.0, "gamma": 0.0,
      "gamma_times_step": False, "clip": (0.0, 1.0), "return_all": False, "unroll": None}
  assert {k: sig(langevin.langevin_optimizer)[k] for k in (
      "gamma", "noise_scale", "random_init", "clip", "update", "project_every_step")} == {
      "gamma": 0.0, "noise_scale": 1e-3, "random_init": True, "clip": (0.0, 1.0),
      "update": "code", "project_every_step": False}
  assert sig(langevin.ema_weights)["alpha"] == 0.9
  opt = langevin.InputOptimizer(norm="linf", eps=0.1, step_size=0.01, num_steps=2,
                                direction="sign")
  assert (opt.projection, opt.init_kind, opt.noise_scale, opt.gamma, opt.gamma_times_step,
          opt.clip) == ("every", "zero", 0.0, 0.0, False, (0.0, 1.0))


def _conv_loss():
  import flax.linen as nn

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      return nn.Dense(C)(x.reshape((x.shape[0], -1)))

  model = Tiny()
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)))
  logits_fn = lambda x: model.apply(params, x)
  return atent_jax.attacks.cross_entropy_loss(logits_fn)


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.05), ("l2", 0.5, 0.3)])
def test_last_sample_in_eps_ball_and_all_samples_in_clip_range(norm, eps, step):
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, C, 6).astype(np.int32)
  k = 8
  samples = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(3), norm=norm,
                                      eps=eps, step_size=step, num_steps=k, noise_scale=0.1,
                                      gamma=0.01, return_all=True, unroll=1)
  chex.assert_shape(samples, (k,) + x.shape)
  chex.assert_type(samples, jnp.float32)
  assert samples.min() >= 0.0 and samples.max() <= 1.0
  delta = np.asarray(samples - x[None]).reshape(k, 6, -1)
  dist = np.abs(delta).max(-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
  assert (dist[-1] <= eps + 1e-5).all()
  assert (dist[:-1] > eps + 1e-3).any(), "earlier samples are unprojected (Algorithm 2)"
  last = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(3), norm=norm,
                                   eps=eps, step_size=step, num_steps=k, noise_scale=0.1,
                                   gamma=0.01, unroll=1)
  np.testing.assert_allclose(np.asarray(last), np.asarray(samples[-1]), atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_example_gives_same_sample_alone_or_in_batch(norm):
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, C, 8).astype(np.int32)
  keys = jax.random.split(jax.random.PRNGKey(7), 8)
  kw = {"norm": norm, "eps": 0.5, "step_size": 0.1, "num_steps": 5, "gamma": 0.05,
        "noise_scale": 0.01, "unroll": 1}
  loss = _conv_loss()
  batch = atent_jax.sample_langevin(loss, x, y, keys, **kw)
  for i in (0, 3, 7):
    alone = atent_jax.sample_langevin(loss, x[i:i + 1], y[i:i + 1], keys[i:i + 1], **kw)
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(batch[i]), atol=1e-5)
  # One key for the batch is split per example, as documented.
  single = atent_jax.sample_langevin(loss, x, y, jax.random.PRNGKey(7), **kw)
  np.testing.assert_allclose(np.asarray(single), np.asarray(batch), atol=1e-6)


def test_large_gamma_keeps_l2_samples_near_x():
  rng = np.random.default_rng(2)
  x = rng.uniform(0.3, 0.7, (8, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, C, 8).astype(np.int32)
  kw = {"norm": "l2", "eps": 100.0, "step_size": 0.2, "num_steps": 20, "noise_scale": 1e-3,
        "random_init": False, "unroll": 1}
  far = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(0), gamma=0.0, **kw)
  near = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(0), gamma=1.0, **kw)
  d_far = np.linalg.norm(np.asarray(far - x).reshape(8, -1), axis=1)
  d_near = np.linalg.norm(np.asarray(near - x).reshape(8, -1), axis=1)
  # gamma = 1 pulls x' back to x every step: it stays within one step (plus noise) of x.
  assert (d_near <= 0.2 + 0.05).all()
  assert d_far.mean() > 5 * d_near.mean()


@pytest.mark.core
def test_ema_weights_match_the_recursion():
  alpha, k = 0.9, 7
  losses = np.random.default_rng(0).uniform(0, 3, k)
  mu = 0.0
  for loss in losses:
    mu = (1 - alpha) * mu + alpha * loss
  c = np.asarray(atent_jax.ema_weights(k, alpha))
  chex.assert_shape(c, (k,))
  assert float(c @ losses) == pytest.approx(mu, rel=1e-6)
  np.testing.assert_allclose(c[-3:], [0.009, 0.09, 0.9], rtol=1e-5)
  assert c.sum() == pytest.approx(1 - (1 - alpha) ** k, rel=1e-6)


@pytest.mark.core
def test_ema_weights_follow_jax_default_float_unless_given_a_dtype():
  assert langevin.ema_weights(3).dtype == jnp.float32
  with jax.enable_x64(True):  # float64 weights when JAX computes in float64
    assert langevin.ema_weights(3).dtype == jnp.float64
  assert langevin.ema_weights(3, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_jit_and_rolled_loop_agree():
  w, b, x, y = _linear_problem()
  kw = {"norm": "linf", "eps": 0.1, "step_size": 0.02, "num_steps": 5, "noise_scale": 0.01}
  f = jax.jit(lambda x, y, k: atent_jax.sample_langevin(_ce_loss(w, b), x, y, k, unroll=1, **kw))
  a = f(x, y, jax.random.PRNGKey(0))
  b_ = atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), unroll=True, **kw)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-6)


@pytest.mark.core
@pytest.mark.parametrize("kw,field", [
    ({"norm": "l3"}, "norm"), ({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"),
    ({"num_steps": 0}, "num_steps"), ({"step_size": 0}, "step_size"),
    ({"update": "exact"}, "update")])
def test_bad_arguments_name_the_field(kw, field):
  w, b, x, y = _linear_problem()
  args = {"norm": "linf", "eps": 0.1, "step_size": 0.01, "num_steps": 2}
  args.update(kw)
  with pytest.raises(ValueError, match=field):
    atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), **args)


@pytest.mark.core
def test_typed_keys_draw_what_their_raw_keys_draw():
  """jax.random.key-style typed keys (one, or one per example) give the samples of the raw
  uint32 keys holding the same bits."""
  w, b, x, y = _linear_problem()
  kw = {"norm": "linf", "eps": 0.1, "step_size": 0.02, "num_steps": 2, "noise_scale": 0.1}
  raw = jax.random.PRNGKey(3)
  typed = jax.random.wrap_key_data(raw)
  want = np.asarray(atent_jax.sample_langevin(_ce_loss(w, b), x, y, raw, **kw))
  got = atent_jax.sample_langevin(_ce_loss(w, b), x, y, typed, **kw)
  np.testing.assert_array_equal(np.asarray(got), want)
  per_example = atent_jax.sample_langevin(_ce_loss(w, b), x, y,
                                          jax.random.split(typed, len(x)), **kw)
  np.testing.assert_array_equal(np.asarray(per_example), want)


@pytest.mark.core
def test_per_example_keys_rejects_wrong_shape():
  with pytest.raises(ValueError, match="key"):
    langevin.per_example_keys(jax.random.split(jax.random.PRNGKey(0), 3), 5)
