"""The ATENT sampler (`sample_langevin`) and the shared input-space optimiser."""

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
                                      gamma=0.01, return_all=True)
  chex.assert_shape(samples, (k,) + x.shape)
  chex.assert_type(samples, jnp.float32)
  assert samples.min() >= 0.0 and samples.max() <= 1.0
  delta = np.asarray(samples - x[None]).reshape(k, 6, -1)
  dist = np.abs(delta).max(-1) if norm == "linf" else np.linalg.norm(delta, axis=-1)
  assert (dist[-1] <= eps + 1e-5).all()
  assert (dist[:-1] > eps + 1e-3).any(), "earlier samples are unprojected (Algorithm 2)"
  last = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(3), norm=norm,
                                   eps=eps, step_size=step, num_steps=k, noise_scale=0.1,
                                   gamma=0.01)
  np.testing.assert_allclose(np.asarray(last), np.asarray(samples[-1]), atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_example_gives_same_sample_alone_or_in_batch(norm):
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, C, 8).astype(np.int32)
  keys = jax.random.split(jax.random.PRNGKey(7), 8)
  kw = dict(norm=norm, eps=0.5, step_size=0.1, num_steps=5, gamma=0.05, noise_scale=0.01)
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
  kw = dict(norm="l2", eps=100.0, step_size=0.2, num_steps=20, noise_scale=1e-3,
            random_init=False)
  far = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(0), gamma=0.0, **kw)
  near = atent_jax.sample_langevin(_conv_loss(), x, y, jax.random.PRNGKey(0), gamma=1.0, **kw)
  d_far = np.linalg.norm(np.asarray(far - x).reshape(8, -1), axis=1)
  d_near = np.linalg.norm(np.asarray(near - x).reshape(8, -1), axis=1)
  # gamma = 1 pulls x' back to x every step: it stays within one step (plus noise) of x.
  assert (d_near <= 0.2 + 0.05).all()
  assert d_far.mean() > 5 * d_near.mean()


def test_ema_weights_match_the_recursion():
  alpha, k = 0.9, 7
  losses = np.random.default_rng(0).uniform(0, 3, k)
  mu = 0.0
  for l in losses:
    mu = (1 - alpha) * mu + alpha * l
  c = np.asarray(atent_jax.ema_weights(k, alpha))
  chex.assert_shape(c, (k,))
  assert float(c @ losses) == pytest.approx(mu, rel=1e-6)
  np.testing.assert_allclose(c[-3:], [0.009, 0.09, 0.9], rtol=1e-5)
  assert c.sum() == pytest.approx(1 - (1 - alpha) ** k, rel=1e-6)


def test_jit_and_rolled_loop_agree():
  w, b, x, y = _linear_problem()
  kw = dict(norm="linf", eps=0.1, step_size=0.02, num_steps=5, noise_scale=0.01)
  f = jax.jit(lambda x, y, k: atent_jax.sample_langevin(_ce_loss(w, b), x, y, k, unroll=1, **kw))
  a = f(x, y, jax.random.PRNGKey(0))
  b_ = atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), unroll=True, **kw)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-6)


@pytest.mark.parametrize("kw,field", [
    (dict(norm="l3"), "norm"), (dict(eps=0.0), "eps"), (dict(eps=-1.0), "eps"),
    (dict(num_steps=0), "num_steps"), (dict(step_size=0), "step_size"),
    (dict(update="exact"), "update")])
def test_bad_arguments_name_the_field(kw, field):
  w, b, x, y = _linear_problem()
  args = dict(norm="linf", eps=0.1, step_size=0.01, num_steps=2)
  args.update(kw)
  with pytest.raises(ValueError, match=field):
    atent_jax.sample_langevin(_ce_loss(w, b), x, y, jax.random.PRNGKey(0), **args)


def test_per_example_keys_rejects_wrong_shape():
  with pytest.raises(ValueError, match="key"):
    langevin.per_example_keys(jax.random.split(jax.random.PRNGKey(0), 3), 5)
