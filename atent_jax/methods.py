"""Training methods: each turns a batch into a loss and weight gradients.

`make_grad_fn(config, model)` returns
    grad_fn(params, batch_stats, images, labels, rng) -> (loss, grads, new_batch_stats, aux)
so a method may compute its gradient any way it likes (value_and_grad of a loss for most;
weight-space Langevin for Entropy-SGD; one forward/backward per Langevin step for fused ATENT).

The inner maximisation (ATENT's sampler, PGD) always sees the model in eval mode (dropout off,
batch-norm running averages): it works per example under vmap, where train-mode batch
statistics would be statistics of one image. The weight loss uses train mode.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
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


def _unroll(config):
  u = config.sampler.unroll
  return None if u is None or u < 0 else bool(u) if u in (0, 1) else int(u)


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
      random_init=s.random_init, update=s.update_rule, return_all=True, unroll=_unroll(config))
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
    "atent_linf": make_atent,
    "atent_l2": make_atent,
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
