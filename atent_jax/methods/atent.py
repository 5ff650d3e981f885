"""ATENT (Algorithms 1 and 2): l_inf-ATENT and l_2-ATENT.

The two-pass form (`make_atent`) draws the K Langevin samples on the model in eval mode (dropout
off, batch-norm running averages: it works per example under vmap, where train-mode batch
statistics would be statistics of one image), then takes one value_and_grad of the EMA-weighted
train-mode loss over them. The fused step (`make_atent_fused`, config.sampler.fused, the
default) samples in train mode, as the authors' code does: one batched pass at each sample gives
its input gradient and its weight gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from atent_jax import attacks, langevin
from atent_jax.errors import ConfigError
from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def atent_samples(config, model, params, batch_stats, x, y, key):
  """The K Langevin samples x'1..x'K (K, B, ...) of the batch, held constant (no gradient)."""
  s = config.sampler
  logits_fn = common.eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  samples = langevin.sample_langevin(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm=s.norm, eps=s.eps,
      step_size=s.step_size, num_steps=s.num_steps, gamma=s.gamma, noise_scale=s.noise_scale,
      random_init=s.random_init, update=s.update_rule,
      project_every_step=s.get("project_every_step", False), return_all=True,
      unroll=common.unroll_from_config(config))
  return jax.lax.stop_gradient(samples)


def atent_ema_loss(model, params, batch_stats, samples, y, rng, weights):
  """sum_k c_k L(w; x'k): the EMA of the sample losses, one train-mode forward per sample.

  A scan (not one K*B batch) so batch-norm statistics are those of each sample's batch, as in
  the authors' K separate forward passes. Returns (loss, (batch_stats, last logits)).
  """
  def body(bs, inputs):
    k, xs, c = inputs
    logits, bs = common.train_forward(model, params, bs, xs, jax.random.fold_in(rng, k))
    return bs, (c * common.mean_ce(logits, y), logits)

  ks = jnp.arange(samples.shape[0])
  new_bs, (losses, logits) = jax.lax.scan(body, batch_stats, (ks, samples, weights))
  return losses.sum(), (new_bs, logits[-1])


def make_atent(config, model) -> GradFn:
  """ATENT (Algorithms 1 and 2): grad_w of the EMA of the losses at the K Langevin samples.

  This is the two-pass form: draw the samples (held constant), then one value_and_grad of the
  EMA-weighted loss over them.
  """
  s = config.sampler
  weights = langevin.ema_weights(s.num_steps, s.alpha)

  def loss_fn(params, batch_stats, x, y, rng):
    k_sample, k_drop = jax.random.split(rng)
    samples = atent_samples(config, model, params, batch_stats, x, y, k_sample)
    loss, (new_bs, logits) = atent_ema_loss(model, params, batch_stats, samples, y, k_drop,
                                            weights)
    return loss, (new_bs, {"train_accuracy": common.accuracy(logits, y)})
  return common.from_loss(loss_fn)


def first_weighted_sample(num_steps: int, alpha: float, tolerance: float) -> int:
  """The first sample index k (1-based) whose EMA weight c_k is >= tolerance."""
  c = np.asarray(langevin.ema_weights(num_steps, alpha))
  return int(np.argmax(c >= tolerance)) + 1 if tolerance > 0 else 1


def skipped_weight_mass(num_steps: int, alpha: float, tolerance: float) -> float:
  """Total EMA weight of the samples whose weight gradient the tolerance skips."""
  c = np.asarray(langevin.ema_weights(num_steps, alpha))
  return float(c[c < tolerance].sum()) if tolerance > 0 else 0.0


def make_atent_fused(config, model) -> GradFn:
  """ATENT with one forward and one backward per Langevin step.

  The pass at sample x'k gives both the input gradient that moves x'k to x'k+1 and the weight
  gradient of L(w; x'k), which is accumulated with its EMA weight c_k; one more pass at x'K gives
  its weight gradient. K + 1 passes instead of the two-pass form's K input gradients plus K
  retained forward graphs, and memory flat in K (only the running weight-gradient sum is kept).
  The samples are the same as the two-pass form's (same keys, same `InputOptimizer.update`).

  Samples whose EMA weight is below config.sampler.ema_tolerance (alpha 0.9: 0.9, 0.09, 0.009, ...
  from the last) get only an input gradient; the weight-gradient error is then at most the
  skipped weight mass times the largest per-sample gradient norm. 0 (default) is exact.

  The model is in train mode for every pass (dropout on, batch-norm batch statistics), as one
  pass serves both the sampler and the weight loss; this is what the authors' PyTorch code does.
  Without dropout and batch norm the result equals `make_atent`'s to float precision.
  """
  s = config.sampler
  num_steps = s.num_steps
  weights = langevin.ema_weights(num_steps, s.alpha)
  opt = langevin.langevin_optimizer(
      norm=s.norm, eps=s.eps, step_size=s.step_size, num_steps=num_steps, gamma=s.gamma,
      noise_scale=s.noise_scale, random_init=s.random_init, update=s.update_rule,
      project_every_step=s.get("project_every_step", False))
  # Steps i < i_both compute the input gradient only (the sample x'i has weight 0 or < tol).
  i_both = min(first_weighted_sample(num_steps, s.alpha, s.ema_tolerance), num_steps)
  unroll = common.unroll_from_config(config)
  unroll = langevin.default_unroll() if unroll is None else unroll

  def grad_fn(params, batch_stats, x, y, rng):
    k_sample, k_drop = jax.random.split(rng)
    keys = langevin.per_example_keys(k_sample, x.shape[0])
    xp, noise_keys = jax.vmap(opt.init)(x, keys)
    step = jax.vmap(opt.update, in_axes=(None, 0, 0, 0, 0))

    def batch_loss(p, bs, xs, k):
      logits, new_bs = common.train_forward(model, p, bs, xs, jax.random.fold_in(k_drop, k))
      per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      # Sum over examples: its x-gradient is each example's own gradient.
      return per_example.sum(), (new_bs, logits)

    def input_only(i, carry):
      xp, bs = carry
      gx, (bs, _) = jax.grad(batch_loss, argnums=2, has_aux=True)(params, bs, xp, i)
      return step(i, x, xp, gx, noise_keys), bs

    xp, bs = jax.lax.fori_loop(0, i_both, input_only, (xp, batch_stats), unroll=unroll)

    def both(i, carry):
      xp, bs, gsum, lsum = carry
      value_and_grads = jax.value_and_grad(batch_loss, argnums=(0, 2), has_aux=True)
      (sample_loss, (bs, _)), (gw, gx) = value_and_grads(params, bs, xp, i)
      c = weights[i - 1] / x.shape[0]  # x'i is sample i (1-based); mean over the batch
      gsum = jax.tree_util.tree_map(lambda a, b: a + (c * b).astype(a.dtype), gsum, gw)
      lsum = (lsum + c * sample_loss).astype(lsum.dtype)
      return step(i, x, xp, gx, noise_keys), bs, gsum, lsum

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    # The accumulators follow the dtypes in use (float64 under jax_enable_x64).
    carry = (xp, bs, zeros, jnp.zeros((), weights.dtype))
    if i_both < num_steps:
      xp, bs, gsum, lsum = jax.lax.fori_loop(i_both, num_steps, both, carry, unroll=unroll)
    else:
      _, bs, gsum, lsum = carry
    # The last sample x'K: its weight gradient only.
    (last_loss, (bs, logits)), gw = jax.value_and_grad(batch_loss, has_aux=True)(params, bs, xp,
                                                                          num_steps)
    c = weights[num_steps - 1] / x.shape[0]
    grads = jax.tree_util.tree_map(lambda a, b: a + (c * b).astype(a.dtype), gsum, gw)
    loss = lsum + c * last_loss
    return loss, grads, bs, {"train_accuracy": common.accuracy(logits, y)}

  return grad_fn


def make_atent_method(config, model) -> GradFn:
  """ATENT: the fused step (config.sampler.fused, default) or the two-pass reference."""
  if config.sampler.get("fused", False):
    return make_atent_fused(config, model)
  return make_atent(config, model)


def sampler_norm_check(norm: str):
  """validate(config) of an ATENT method: its name fixes the sampler's ball."""
  def validate(config):
    if config.sampler.norm != norm:
      raise ConfigError(f"config.sampler.norm={config.sampler.norm!r} does not match "
                        f"config.method={config.method!r}: set config.sampler.norm='{norm}'")
  return validate


common.register(Method("atent_linf", make_atent_method, "l_inf-ATENT", sampler_norm_check("linf")))
common.register(Method("atent_l2", make_atent_method, "l_2-ATENT", sampler_norm_check("l2")))
