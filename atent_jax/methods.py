"""Training methods: each turns a batch into a loss and weight gradients.

`make_grad_fn(config, model)` returns
    grad_fn(params, batch_stats, images, labels, rng) -> (loss, grads, new_batch_stats, aux)
so a method may compute its gradient any way it likes (value_and_grad of a loss for most;
weight-space Langevin for Entropy-SGD; one forward/backward per Langevin step for fused ATENT).

The inner maximisation of PGD-AT, TRADES, MART and the two-pass ATENT step sees the model in
eval mode (dropout off, batch-norm running averages): it works per example under vmap, where
train-mode batch statistics would be statistics of one image. The fused ATENT step (the
default) samples in train mode, as the authors' code does: one batched pass at each sample gives
its input gradient and its weight gradient. The weight loss always uses train mode.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from atent_jax import attacks, langevin
from atent_jax.errors import ConfigError

GradFn = Callable


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def eval_logits_fn(model, params, batch_stats):
  """logits_fn(x) of the model in eval mode (deterministic)."""
  variables = _variables(params, batch_stats)
  return lambda x: model.apply(variables, x, train=False)


def train_forward(model, params, batch_stats, x, rng):
  """Train-mode logits and the updated batch statistics."""
  variables = _variables(params, batch_stats)
  if batch_stats:
    logits, updates = model.apply(variables, x, train=True, rngs={"dropout": rng},
                                  mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, x, train=True, rngs={"dropout": rng}), batch_stats


def mean_ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def _from_loss(loss_fn) -> GradFn:
  """A grad_fn from loss_fn(params, batch_stats, x, y, rng) -> (loss, (batch_stats, aux))."""
  def grad_fn(params, batch_stats, x, y, rng):
    (loss, (new_bs, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y, rng)
    return loss, grads, new_bs, aux
  return grad_fn


def unroll_from_config(config):
  """config.sampler.unroll -> lax.fori_loop's unroll: -1 backend default (None), 0 fully
  unrolled (True), 1 rolled, k > 1 unrolled by k."""
  u = config.sampler.unroll
  if u is None or u < 0:
    return None
  return True if u == 0 else int(u)


_unroll = unroll_from_config


# --- clean SGD --------------------------------------------------------------------------------

def make_sgd(config, model) -> GradFn:
  def loss_fn(params, batch_stats, x, y, rng):
    logits, new_bs = train_forward(model, params, batch_stats, x, rng)
    return mean_ce(logits, y), (new_bs, {"train_accuracy": _accuracy(logits, y)})
  return _from_loss(loss_fn)


# --- ATENT ------------------------------------------------------------------------------------

def atent_samples(config, model, params, batch_stats, x, y, key):
  """The K Langevin samples x'1..x'K (K, B, ...) of the batch, held constant (no gradient)."""
  s = config.sampler
  logits_fn = eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  samples = langevin.sample_langevin(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm=s.norm, eps=s.eps,
      step_size=s.step_size, num_steps=s.num_steps, gamma=s.gamma, noise_scale=s.noise_scale,
      random_init=s.random_init, update=s.update_rule,
      project_every_step=s.get("project_every_step", False), return_all=True,
      unroll=_unroll(config))
  return jax.lax.stop_gradient(samples)


def atent_ema_loss(model, params, batch_stats, samples, y, rng, weights):
  """sum_k c_k L(w; x'k): the EMA of the sample losses, one train-mode forward per sample.

  A scan (not one K*B batch) so batch-norm statistics are those of each sample's batch, as in
  the authors' K separate forward passes. Returns (loss, (batch_stats, last logits)).
  """
  def body(bs, inputs):
    k, xs, c = inputs
    logits, bs = train_forward(model, params, bs, xs, jax.random.fold_in(rng, k))
    return bs, (c * mean_ce(logits, y), logits)

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
    return loss, (new_bs, {"train_accuracy": _accuracy(logits, y)})
  return _from_loss(loss_fn)


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
  unroll = _unroll(config)
  unroll = langevin.default_unroll() if unroll is None else unroll

  def grad_fn(params, batch_stats, x, y, rng):
    k_sample, k_drop = jax.random.split(rng)
    keys = langevin.per_example_keys(k_sample, x.shape[0])
    xp, noise_keys = jax.vmap(opt.init)(x, keys)
    step = jax.vmap(opt.update, in_axes=(None, 0, 0, 0, 0))

    def batch_loss(p, bs, xs, k):
      logits, new_bs = train_forward(model, p, bs, xs, jax.random.fold_in(k_drop, k))
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
    return loss, grads, bs, {"train_accuracy": _accuracy(logits, y)}

  return grad_fn


def make_atent_method(config, model) -> GradFn:
  """ATENT: the fused step (config.sampler.fused, default) or the two-pass reference."""
  if config.sampler.get("fused", False):
    return make_atent_fused(config, model)
  return make_atent(config, model)


# --- PGD adversarial training (Madry et al.) --------------------------------------------------

def pgd_examples(config, model, params, batch_stats, x, y, key):
  s = config.sampler
  logits_fn = eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  adv = attacks.pgd(logits_fn, x, y, key, norm=s.norm, eps=s.eps, step_size=s.step_size,
                    num_steps=s.num_steps, random_init=s.random_init, unroll=_unroll(config))
  return jax.lax.stop_gradient(adv)


def make_pgd_at(config, model) -> GradFn:
  """PGD-AT: the loss at PGD examples (random start, projection every step) only."""
  def loss_fn(params, batch_stats, x, y, rng):
    k_adv, k_drop = jax.random.split(rng)
    adv = pgd_examples(config, model, params, batch_stats, x, y, k_adv)
    logits, new_bs = train_forward(model, params, batch_stats, adv, k_drop)
    return mean_ce(logits, y), (new_bs, {"train_accuracy": _accuracy(logits, y)})
  return _from_loss(loss_fn)


METHODS: dict[str, Callable] = {
    "sgd": make_sgd,
    "atent_linf": make_atent_method,
    "atent_l2": make_atent_method,
    "pgd_at": make_pgd_at,
}


def make_grad_fn(config, model) -> GradFn:
  if config.method not in METHODS:
    raise ConfigError(f"config.method={config.method!r} is not known: use one of "
                      f"{', '.join(sorted(METHODS))}")
  return METHODS[config.method](config, model)


def _register_baselines() -> None:
  """TRADES, MART, MMA, Entropy-SGD, noise augmentation live in atent_jax.baselines."""
  import importlib.util
  if importlib.util.find_spec("atent_jax.baselines") is None:  # pragma: no cover
    return
  from atent_jax import baselines
  METHODS.update(baselines.METHODS)


_register_baselines()
