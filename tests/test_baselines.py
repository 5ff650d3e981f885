"""Baseline defenses (atent_jax.methods: trades, mart, mma, entropy_sgd, noise_aug modules)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atent_jax import attacks, configuration, langevin, methods


class _TinyNet(nn.Module):
  """8x8x1 inputs; conv + batch norm + dense, so batch statistics are threaded too."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    return nn.Dense(10)(x)


def _assert_grads_close(actual, expected, rtol, floor):
  """Leaf by leaf within rtol, with an absolute floor of `floor` times the largest expected
  entry of the whole tree: entries that are ~0 by cancellation (a conv bias's gradient summed
  over a batch) differ by float32 round-off of the tree's scale, which depends on the summation
  order XLA picks for the backend and its flags."""
  scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(expected))
  chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=floor * scale)


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


@pytest.mark.core
def test_registered_in_methods():
  for name in METHOD_NAMES:
    record = methods.get(name)
    assert record.name == name and record.make_grad_fn is getattr(methods, f"make_{name}")
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


@pytest.mark.core
def test_trades_with_beta_zero_is_clean_cross_entropy(setup):
  model, params, bs, x, y = setup
  rng = jax.random.PRNGKey(3)
  loss_t, grads_t, _, _ = methods.make_grad_fn(_config("trades", trades_beta=0.0), model)(
      params, bs, x, y, rng)
  loss_s, grads_s, _, aux = methods.make_grad_fn(_config("sgd"), model)(params, bs, x, y, rng)
  assert "train_accuracy" in aux  # what the trainer reads
  np.testing.assert_allclose(float(loss_t), float(loss_s), rtol=1e-6)
  chex.assert_trees_all_close(grads_t, grads_s, rtol=1e-5, atol=1e-7)


@pytest.mark.core
def test_trades_loss_matches_its_formula(setup):
  model, params, bs, x, y = setup
  config = _config("trades", trades_beta=6.0)
  rng = jax.random.PRNGKey(4)
  loss, _, _, _ = methods.make_grad_fn(config, model)(params, bs, x, y, rng)
  adv = methods.trades_examples(config, model, params, bs, x, jax.random.fold_in(rng, 1))
  assert float(jnp.max(jnp.abs(adv - x))) <= 0.3 + 1e-6
  logits, bs1 = methods.train_forward(model, params, bs, x, rng)
  adv_logits, _ = methods.train_forward(model, params, bs1, adv, jax.random.fold_in(rng, 2))
  p = jax.nn.softmax(logits)
  kl = jnp.sum(p * (jax.nn.log_softmax(logits) - jax.nn.log_softmax(adv_logits)), -1).mean()
  want = methods.mean_ce(logits, y) + 6.0 * kl
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert float(kl) > 0


@pytest.mark.core
def test_mart_loss_by_hand():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
  adv = jnp.array([[0.0, 1.0, -1.0], [0.1, 0.3, 0.2]])
  y = jnp.array([0, 2])
  got = methods.mart_loss(logits, adv, y, beta=6.0)
  pa, pn = np.asarray(jax.nn.softmax(adv)), np.asarray(jax.nn.softmax(logits))
  total = 0.0
  for i, yi in enumerate([0, 2]):
    other = max((pa[i, j], j) for j in range(3) if j != yi)[1]
    bce = -np.log(pa[i, yi]) - np.log(1.0001 - pa[i, other])
    kl = np.sum(pn[i] * (np.log(pn[i] + 1e-12) - np.log(pa[i] + 1e-12)))
    total += bce + 6.0 * kl * (1.0000001 - pn[i, yi])
  np.testing.assert_allclose(float(got), total / 2, rtol=1e-5)


@pytest.mark.core
def test_mma_margin_points_lie_on_the_boundary_along_the_pgd_direction(setup):
  """The bisection's invariant, checked from outside: per found example the margin point is
  x + t * delta (delta: the PGD point at max_eps minus x) with t a multiple of 2^-10, it is
  misclassified, and the point 2^-10 closer to x is not (the boundary lies between them)."""
  model, params, bs, x, _ = setup
  config = _config("mma", **{"mma.max_eps": 0.3})
  s = config.sampler
  key = jax.random.PRNGKey(5)
  logits_fn = methods.eval_logits_fn(model, params, bs)
  y = jnp.argmax(logits_fn(x), -1)  # every clean x correct: each found margin is searched
  points, dist, found = methods.mma_margin_points(config, model, params, bs, x, y, key)
  chex.assert_shape([points], [x.shape])
  # The documented search direction: one PGD run (shared optimiser, random start) at max_eps.
  adv = langevin.optimize_input(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm="linf", eps=0.3,
      step_size=s.step_size, num_steps=s.num_steps, direction="sign", projection="every",
      init="uniform")
  x, points, adv, found = (np.asarray(a, np.float64) for a in (x, points, adv, found))
  found = found.astype(bool)
  delta = (adv - x).reshape(len(x), -1)
  step = 2.0 ** -methods.MMA_BISECTION_STEPS
  t = np.abs((points - x).reshape(len(x), -1)).max(-1) / np.abs(delta).max(-1)
  np.testing.assert_allclose((points - x).reshape(len(x), -1), t[:, None] * delta, atol=1e-6)
  np.testing.assert_allclose(t[found], np.round(t[found] / step) * step, atol=1e-5)
  np.testing.assert_allclose(t[~found], 1.0, atol=1e-6)        # PGD failed: the PGD point
  np.testing.assert_allclose(np.asarray(dist), np.abs((points - x).reshape(len(x), -1)).max(-1),
                             rtol=1e-5, atol=1e-7)
  pred = lambda p: np.asarray(jnp.argmax(logits_fn(jnp.asarray(p, jnp.float32)), -1))
  assert found.any() and np.all(pred(points)[found] != np.asarray(y)[found])
  closer = x + ((t - step)[:, None] * delta).reshape(x.shape)
  inner = found & (t > 1.5 * step)                             # lo > 0 was tested as correct
  assert inner.any() and np.all(pred(closer)[inner] == np.asarray(y)[inner])
  assert np.any(t[found] < 0.5)  # the margin is really searched, not left at max_eps
  assert float(points.min()) >= 0.0 and float(points.max()) <= 1.0


def _kl_numpy(p_logits, q_logits):
  p = np.asarray(jax.nn.log_softmax(p_logits, -1), np.float64)
  q = np.asarray(jax.nn.log_softmax(q_logits, -1), np.float64)
  return np.sum(np.exp(p) * (p - q), -1)


@pytest.mark.core
def test_trades_and_mart_inner_maximisations_raise_their_objectives(setup):
  """TRADES' x' maximises KL(f(x) || f(x')), MART's the cross-entropy: both beat random points
  of the same ball by far, per example, and stay in the ball and in [0, 1]."""
  model, params, bs, x, y = setup
  config = _config("trades")
  eps = config.sampler.eps
  logits_fn = methods.eval_logits_fn(model, params, bs)
  rnd = jnp.clip(x + jax.random.uniform(jax.random.PRNGKey(8), x.shape, minval=-eps,
                                        maxval=eps), 0, 1)
  trades = methods.trades_examples(config, model, params, bs, x, jax.random.PRNGKey(9))
  mart = methods.mart_examples(_config("mart"), model, params, bs, x, y,
                                 jax.random.PRNGKey(9))
  for adv in (trades, mart):
    chex.assert_shape(adv, x.shape)
    assert float(jnp.abs(adv - x).max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  clean = logits_fn(x)
  kl_adv, kl_rnd = _kl_numpy(clean, logits_fn(trades)), _kl_numpy(clean, logits_fn(rnd))
  assert kl_adv.mean() > 3 * kl_rnd.mean() and np.mean(kl_adv > kl_rnd) >= 0.9, (kl_adv, kl_rnd)
  ce = lambda p: np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits_fn(p), y))
  assert ce(mart).mean() > ce(rnd).mean() + 0.5 and np.mean(ce(mart) > ce(rnd)) >= 0.9


@pytest.mark.core
def test_pgd_at_trains_on_pgd_points_of_the_eval_mode_model(setup):
  """make_pgd_at against a reference written here: sign-gradient ascent of the eval-mode
  cross-entropy from x (no random start), projected and clipped every step; then the train-mode
  loss and its weight gradient at those points (held constant)."""
  model, params, bs, x, y = setup
  config = _config("pgd_at", **{"sampler.random_init": False})
  s = config.sampler
  loss, grads, new_bs, aux = jax.jit(methods.make_grad_fn(config, model))(
      params, bs, x, y, jax.random.PRNGKey(10))
  variables = {"params": params, "batch_stats": bs}
  eval_ce = lambda v: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(variables, v, train=False), y).sum()
  xp = x
  for _ in range(s.num_steps):
    xp = jnp.clip(x + jnp.clip(xp + s.step_size * jnp.sign(jax.grad(eval_ce)(xp)) - x,
                               -s.eps, s.eps), 0.0, 1.0)

  def train_loss(p):
    logits, updates = model.apply({"params": p, "batch_stats": bs}, xp, train=True,
                                  mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

  (ref_loss, updates), ref_grads = jax.value_and_grad(train_loss, has_aux=True)(params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  _assert_grads_close(grads, ref_grads, rtol=1e-4, floor=1e-5)
  chex.assert_trees_all_close(new_bs, updates["batch_stats"], rtol=1e-5, atol=1e-7)
  assert float(loss) > float(methods.mean_ce(methods.train_forward(
      model, params, bs, x, jax.random.PRNGKey(0))[0], y)) + 0.1   # the points are adversarial
  assert "train_accuracy" in aux


@pytest.mark.core
def test_noise_aug_with_zero_sigma_is_clean_training(setup):
  model, params, bs, x, y = setup
  rng = jax.random.PRNGKey(6)
  loss_n, _, _, _ = methods.make_grad_fn(_config("noise_aug", noise_aug_sigma=0.0),
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


class _MeanSquare(nn.Module):
  """logits [0, scale * mean(x^2)]: the class-0 cross-entropy is softplus(mean(x^2)), so at
  x = 0 the loss reveals the augmentation noise's variance."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    scale = self.param("scale", nn.initializers.ones, ())
    t = jnp.mean(jnp.square(x).reshape(x.shape[0], -1), -1)
    return jnp.stack([jnp.zeros_like(t), scale * t], -1)


@pytest.mark.core
@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_noise_aug_trains_on_unclipped_gaussian_noise_of_scale_sigma(sigma):
  """At x = 0 the noisy input is sigma * N(0, I), unclipped: mean(x^2) ~ sigma^2 (256 pixels), so
  the loss is softplus(sigma^2) (clipped noise would give about softplus(sigma^2 / 2))."""
  model = _MeanSquare()
  x = jnp.zeros((16, 16, 16, 1))
  y = jnp.zeros(16, jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  loss, grads, _, _ = methods.make_grad_fn(_config("noise_aug", noise_aug_sigma=sigma), model)(
      params, {}, x, y, jax.random.PRNGKey(1))
  want = np.log1p(np.exp(sigma ** 2))
  assert abs(float(loss) - want) < 0.02 * sigma ** 2, (float(loss), want)
  # d loss / d scale = mean(sigmoid(t) t) at t ~ sigma^2: the noise reaches the gradient too.
  sig = 1 / (1 + np.exp(-sigma ** 2))
  assert abs(float(grads["scale"]) - sig * sigma ** 2) < 0.03 * sigma ** 2


def _ce_at(model, bs, x, y):
  return lambda p: methods.mean_ce(model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                               mutable=["batch_stats"])[0], y)


@pytest.mark.core
def test_entropy_sgd_matches_its_recursion_over_several_steps(setup):
  """K = 3, alpha 0.75, no noise: w'(k+1) = w'k - eta (grad L(w'k) + gamma (w'k - w)),
  mu <- (1 - alpha) mu + alpha w'(k+1), gradient gamma (w - mu); written out here (the net has no
  dropout and train-mode batch norm uses batch statistics, so the keys do not matter)."""
  model, params, bs, x, y = setup
  config = _config("entropy_sgd", **{"entropy_sgd.num_steps": 3, "entropy_sgd.alpha": 0.75,
                                     "entropy_sgd.noise_scale": 0.0})
  e = config.entropy_sgd
  grad_fn = jax.jit(methods.make_grad_fn(config, model))
  _, grads, _, _ = grad_fn(params, bs, x, y, jax.random.PRNGKey(7))
  grad_ce = jax.jit(jax.grad(_ce_at(model, bs, x, y)))
  tm = jax.tree_util.tree_map
  wp, mu = params, params
  for _ in range(3):
    g = grad_ce(wp)
    wp = tm(lambda a, ga, w0: a - e.step_size * (ga + e.gamma * (a - w0)), wp, g, params)
    mu = tm(lambda m, a: (1 - e.alpha) * m + e.alpha * a, mu, wp)
  want = tm(lambda w0, m: e.gamma * (w0 - m), params, mu)
  _assert_grads_close(grads, want, rtol=1e-4, floor=1e-5)


@pytest.mark.core
def test_entropy_sgd_noise_has_scale_noise_scale_times_sqrt_2_eta(setup):
  """K = 1, alpha 1: gradient = gamma (eta grad L(w) - std n), std = noise_scale sqrt(2 eta),
  n ~ N(0, I): the residual over all parameters is N(0, (gamma std)^2)."""
  model, params, bs, x, y = setup
  config = _config("entropy_sgd", **{"entropy_sgd.num_steps": 1, "entropy_sgd.alpha": 1.0,
                                     "entropy_sgd.noise_scale": 0.01})
  e = config.entropy_sgd
  grad_fn = jax.jit(methods.make_grad_fn(config, model))
  _, grads, _, _ = grad_fn(params, bs, x, y, jax.random.PRNGKey(7))
  g = jax.jit(jax.grad(_ce_at(model, bs, x, y)))(params)
  residual = np.concatenate([np.ravel(a - e.gamma * e.step_size * b) for a, b in zip(
      jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(g))])
  z = residual / (e.gamma * e.noise_scale * np.sqrt(2 * e.step_size))
  assert z.size > 1000
  assert abs(z.std() - 1) < 0.1 and abs(z.mean()) < 5 / np.sqrt(z.size), (z.std(), z.mean())


class _DetachedLeaves(nn.Module):
  """A scale the loss depends on, and two leaves it does not (their gradient is exactly 0):
  Entropy-SGD's inner walk on those two is its pull towards w and its noise alone."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    scale = self.param("scale", nn.initializers.ones, ())
    free = [self.param(f"free_{i}", nn.initializers.zeros, (3000,)) for i in "ab"]
    t = jnp.mean(x.reshape(x.shape[0], -1), -1)
    detached = 0.0 * (jnp.sum(free[0]) + jnp.sum(free[1]))
    return jnp.stack([jnp.zeros_like(t), scale * t], -1) + detached


@pytest.mark.core
def test_entropy_sgd_noise_is_fresh_every_step_and_every_leaf():
  """K = 3, alpha 0.75, zero gradient: w'k - w = a (w'(k-1) - w) + s n_k (a = 1 - eta gamma,
  s = noise_scale sqrt(2 eta)) and mu - w = sum_k c_k (w'k - w), c_k = alpha (1 - alpha)^(K-k).
  The gradient gamma (w - mu) = -gamma s sum_j b_j n_j with b_j = sum_{k>=j} c_k a^(k-j): with
  independent n_j its variance is (gamma s)^2 sum_j b_j^2; one draw reused for every step would
  give (gamma s)^2 (sum_j b_j)^2, 1.7 times the standard deviation. The two leaves' noises are
  uncorrelated."""
  model = _DetachedLeaves()
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 1))
  y = jnp.zeros(8, jnp.int32)
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  config = _config("entropy_sgd", **{"entropy_sgd.num_steps": 3, "entropy_sgd.alpha": 0.75,
                                     "entropy_sgd.noise_scale": 0.05})
  e = config.entropy_sgd
  grad_fn = jax.jit(methods.make_grad_fn(config, model))  # one compilation, not op by op
  _, grads, _, _ = grad_fn(params, {}, x, y, jax.random.PRNGKey(2))
  k = np.arange(1, 4)
  c = e.alpha * (1 - e.alpha) ** (3 - k)
  a = 1 - e.step_size * e.gamma
  b = np.array([sum(c[kk - 1] * a ** (kk - j) for kk in range(j, 4)) for j in k])
  s = e.noise_scale * np.sqrt(2 * e.step_size)
  za, zb = (np.asarray(grads[f"free_{i}"], np.float64) / (e.gamma * s * np.sqrt(np.sum(b * b)))
            for i in "ab")
  n = za.size
  for z in (za, zb):
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * n) and abs(z.mean()) < 5 / np.sqrt(n), (
        z.std(), z.mean())
  assert abs(np.corrcoef(za, zb)[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.core
def test_accuracy_by_hand():
  logits = jnp.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, -1.0]])
  assert float(methods.accuracy(logits, jnp.array([1, 1, 1, 0]))) == pytest.approx(0.75)


@pytest.mark.core
def test_mart_step_is_its_loss_at_its_examples(setup):
  """make_mart wires mart_loss (checked by hand above) to the clean train-mode logits (the
  step's rng) and the logits at mart_examples (fold_in(rng, 1); dropout key fold_in(rng, 2))."""
  model, params, bs, x, y = setup
  config = _config("mart", mart_beta=6.0)
  rng = jax.random.PRNGKey(4)
  loss, _, _, aux = methods.make_grad_fn(config, model)(params, bs, x, y, rng)
  adv = methods.mart_examples(config, model, params, bs, x, y, jax.random.fold_in(rng, 1))
  logits, bs1 = methods.train_forward(model, params, bs, x, rng)
  adv_logits, _ = methods.train_forward(model, params, bs1, adv, jax.random.fold_in(rng, 2))
  want = methods.mart_loss(logits, adv_logits, y, 6.0)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert float(aux["train_accuracy"]) == pytest.approx(
      float(np.mean(np.argmax(np.asarray(adv_logits), -1) == np.asarray(y))))


@pytest.mark.core
def test_mma_step_is_its_loss_at_its_margin_points(setup):
  """make_mma: clean_weight * CE(x) + (1 - clean_weight) * (CE at the margin point where the
  clean x is classified correctly, else CE at x), margin points from mma_margin_points
  (fold_in(rng, 1)); written out here in NumPy. (The setup model has no dropout, so its keys,
  rng and fold_in(rng, 2), are not checked here.)"""
  model, params, bs, x, y = setup
  config = _config("mma", **{"mma.max_eps": 0.3, "mma.clean_weight": 0.25})
  rng = jax.random.PRNGKey(5)
  logits, bs1 = methods.train_forward(model, params, bs, x, rng)
  # Half the labels are the clean prediction, so both branches of the margin term are used.
  y = np.where(np.arange(len(y)) % 2 == 0, np.argmax(np.asarray(logits), -1), np.asarray(y))
  y = jnp.asarray(y, jnp.int32)
  loss, _, _, aux = methods.make_grad_fn(config, model)(params, bs, x, y, rng)
  points, dist, found = methods.mma_margin_points(config, model, params, bs, x, y,
                                                  jax.random.fold_in(rng, 1))
  margin_logits, _ = methods.train_forward(model, params, bs1, points, jax.random.fold_in(rng, 2))

  def ce(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(z)), np.asarray(y)]
  correct = np.argmax(np.asarray(logits), -1) == np.asarray(y)
  assert 0 < correct.sum() < len(correct)
  want = 0.25 * ce(logits).mean() + 0.75 * np.where(correct, ce(margin_logits), ce(logits)).mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(aux["train_accuracy"]) == pytest.approx(correct.mean())
  want_eps = np.where(np.asarray(found), np.asarray(dist), 0.3).mean()
  assert float(aux["mma_mean_eps"]) == pytest.approx(want_eps, rel=1e-5)


class _InputBlind(nn.Module):
  """Logits of the input behind stop_gradient: sign steps are 0, an inner maximisation's point
  is its start."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(10)(jax.lax.stop_gradient(x).reshape((x.shape[0], -1)))


@pytest.mark.core
def test_inner_maximisations_start_where_their_authors_start():
  """TRADES and MART (their code): x + 0.001 N(0, I); PGD-AT: x + U(-eps, eps) with
  sampler.random_init, else x."""
  model = _InputBlind()
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 1), minval=0.35, maxval=0.65)
  y = jax.random.randint(jax.random.PRNGKey(1), (16,), 0, 10)
  params = model.init(jax.random.PRNGKey(2), x)["params"]
  key = jax.random.PRNGKey(3)
  n = x.size
  for d in (methods.trades_examples(_config("trades"), model, params, {}, x, key),
            methods.mart_examples(_config("mart"), model, params, {}, x, y, key)):
    d = np.asarray(d - x, np.float64)
    assert abs(d.std() / 0.001 - 1) < 0.1 and abs(d.mean()) < 5 * 0.001 / np.sqrt(n)
  eps = _config("pgd_at").sampler.eps
  start = methods.pgd_examples(_config("pgd_at", **{"sampler.random_init": True}), model, params,
                               {}, x, y, key)
  d = np.abs(np.asarray(start - x, np.float64))
  assert d.max() <= eps + 1e-6 and abs(d.mean() - eps / 2) < 5 * eps / np.sqrt(12 * n)
  none = methods.pgd_examples(_config("pgd_at", **{"sampler.random_init": False}), model, params,
                              {}, x, y, key)
  np.testing.assert_array_equal(np.asarray(none), np.asarray(x))
