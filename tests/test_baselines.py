"""Baseline defenses (atent_jax.baselines): TRADES, MART, MMA, Entropy-SGD, noise augmentation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax import baselines, configuration, methods


class _TinyNet(nn.Module):
  """8x8x1 inputs; conv + batch norm + dense, so batch statistics are threaded too."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    return nn.Dense(10)(x)


def _config(method, **over):
  config = configuration.default_config()
  config.method = method
  config.sampler.num_steps = 3
  config.sampler.step_size = 0.1
  config.sampler.eps = 0.3
  config.entropy_sgd.num_steps = 4
  config.entropy_sgd.gamma = 0.1
  config.entropy_sgd.step_size = 0.1
  for k, v in over.items():
    node = config
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return config


@pytest.fixture(scope="module")
def setup():
  model = _TinyNet()
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.uniform(kx, (16, 8, 8, 1))
  y = jax.random.randint(ky, (16,), 0, 10)
  variables = model.init(jax.random.PRNGKey(1), x)
  return model, variables["params"], variables["batch_stats"], x, y


METHOD_NAMES = ["trades", "mart", "mma", "entropy_sgd", "noise_aug"]


def test_registered_in_methods():
  for name in METHOD_NAMES:
    assert methods.METHODS[name] is baselines.METHODS[name]
    configuration.validate_config(_config(name))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_grad_fn_runs_and_one_step_lowers_its_loss(setup, name):
  model, params, bs, x, y = setup
  config = _config(name)
  grad_fn = jax.jit(methods.make_grad_fn(config, model))
  rng = jax.random.PRNGKey(2)
  loss, grads, new_bs, aux = grad_fn(params, bs, x, y, rng)
  assert np.isfinite(float(loss))
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_bs, bs)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  assert sum(float(jnp.sum(g * g)) for g in jax.tree_util.tree_leaves(grads)) > 0
  assert "train_accuracy" in aux
  # Entropy-SGD's outer step is w <- w - lr * gamma (w - mu): lr = 0.5 / gamma moves halfway
  # to mu; the others take a plain gradient step.
  lr = 0.5 / config.entropy_sgd.gamma if name == "entropy_sgd" else 0.05
  new_params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
  loss2, _, _, _ = grad_fn(new_params, bs, x, y, rng)
  assert float(loss2) < float(loss), (float(loss), float(loss2))


def test_trades_with_beta_zero_is_clean_cross_entropy(setup):
  model, params, bs, x, y = setup
  rng = jax.random.PRNGKey(3)
  loss_t, grads_t, _, _ = methods.make_grad_fn(_config("trades", trades_beta=0.0), model)(
      params, bs, x, y, rng)
  loss_s, grads_s, _, _ = methods.make_grad_fn(_config("sgd"), model)(params, bs, x, y, rng)
  np.testing.assert_allclose(float(loss_t), float(loss_s), rtol=1e-6)
  chex.assert_trees_all_close(grads_t, grads_s, rtol=1e-5, atol=1e-7)


def test_trades_loss_matches_its_formula(setup):
  model, params, bs, x, y = setup
  config = _config("trades", trades_beta=6.0)
  rng = jax.random.PRNGKey(4)
  loss, _, _, _ = methods.make_grad_fn(config, model)(params, bs, x, y, rng)
  adv = baselines.trades_examples(config, model, params, bs, x, jax.random.fold_in(rng, 1))
  assert float(jnp.max(jnp.abs(adv - x))) <= 0.3 + 1e-6
  logits, bs1 = methods.train_forward(model, params, bs, x, rng)
  adv_logits, _ = methods.train_forward(model, params, bs1, adv, jax.random.fold_in(rng, 2))
  p = jax.nn.softmax(logits)
  kl = jnp.sum(p * (jax.nn.log_softmax(logits) - jax.nn.log_softmax(adv_logits)), -1).mean()
  want = methods.mean_ce(logits, y) + 6.0 * kl
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert float(kl) > 0


def test_mart_loss_by_hand():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
  adv = jnp.array([[0.0, 1.0, -1.0], [0.1, 0.3, 0.2]])
  y = jnp.array([0, 2])
  got = baselines.mart_loss(logits, adv, y, beta=6.0)
  pa, pn = np.asarray(jax.nn.softmax(adv)), np.asarray(jax.nn.softmax(logits))
  total = 0.0
  for i, yi in enumerate([0, 2]):
    other = max((pa[i, j], j) for j in range(3) if j != yi)[1]
    bce = -np.log(pa[i, yi]) - np.log(1.0001 - pa[i, other])
    kl = np.sum(pn[i] * (np.log(pn[i] + 1e-12) - np.log(pa[i] + 1e-12)))
    total += bce + 6.0 * kl * (1.0000001 - pn[i, yi])
  np.testing.assert_allclose(float(got), total / 2, rtol=1e-5)


def test_mma_margin_points(setup):
  model, params, bs, x, y = setup
  config = _config("mma", **{"mma.max_eps": 0.3})
  points, dist, found = baselines.mma_margin_points(config, model, params, bs, x, y,
                                                    jax.random.PRNGKey(5))
  logits_fn = methods.eval_logits_fn(model, params, bs)
  assert float(jnp.max(jnp.abs(points - x))) <= 0.3 + 1e-6
  assert float(points.min()) >= 0.0 and float(points.max()) <= 1.0
  assert np.all(np.asarray(dist) <= 0.3 + 1e-6)
  wrong = np.asarray(jnp.argmax(logits_fn(points), -1) != y)
  found = np.asarray(found)
  assert found.any()
  assert np.all(wrong[found])  # margin points of successful examples are misclassified
  # ... and lie on the boundary: halfway to x they would be less far than the found distance
  assert np.all(np.asarray(dist)[found] <= 0.3 + 1e-6)


def test_noise_aug_with_zero_sigma_is_clean_training(setup):
  model, params, bs, x, y = setup
  rng = jax.random.PRNGKey(6)
  loss_n, grads_n, _, _ = methods.make_grad_fn(_config("noise_aug", noise_aug_sigma=0.0),
                                                model)(params, bs, x, y, rng)
  loss_c = methods.mean_ce(methods.train_forward(model, params, bs, x, rng)[0], y)
  np.testing.assert_allclose(float(loss_n), float(loss_c), rtol=1e-6)


def test_entropy_sgd_gradient_is_gamma_times_w_minus_mu(setup):
  """Without noise and with alpha 1 (mu = the last iterate), one inner step: the gradient is
  gamma * eta' * grad L(w) (w'_1 = w - eta' grad L(w))."""
  model, params, bs, x, y = setup
  config = _config("entropy_sgd", **{"entropy_sgd.num_steps": 1, "entropy_sgd.alpha": 1.0,
                                     "entropy_sgd.noise_scale": 0.0})
  rng = jax.random.PRNGKey(7)
  _, grads, _, _ = methods.make_grad_fn(config, model)(params, bs, x, y, rng)

  def ce(p):
    return methods.mean_ce(methods.train_forward(model, p, bs, x, jax.random.fold_in(rng, 1))[0],
                           y)
  g = jax.grad(ce)(params)
  e = config.entropy_sgd
  want = jax.tree_util.tree_map(lambda a: e.gamma * e.step_size * a, g)
  chex.assert_trees_all_close(grads, want, rtol=1e-4, atol=1e-8)
