"""MART (Wang et al., 2020): boosted cross-entropy at a PGD point plus a weighted KL.

The inner maximisation runs on the model in eval mode on the shared optimiser
(`langevin.optimize_input`); the adversarial points are held constant for the weight gradient,
whose losses use train mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from atent_jax import attacks, langevin
from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def mart_examples(config, model, params, batch_stats, x, y, key):
  """x' from PGD on the cross-entropy started at x + 0.001 N(0, I) (MART's code); eval mode."""
  s = config.sampler
  logits_fn = common.eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  adv = langevin.optimize_input(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm=s.norm, eps=s.eps,
      step_size=s.step_size, num_steps=s.num_steps, direction=common.ascent_direction(s.norm),
      projection="every", init="tiny_normal", unroll=common.unroll_from_config(config))
  return jax.lax.stop_gradient(adv)


def mart_loss(logits, adv_logits, y, beta):
  """MART: BCE(f(x'), y) + beta * mean(KL(f(x) || f(x')) * (1 - p_y(x))).

  BCE is the boosted cross-entropy: CE(f(x'), y) - log(1 - max_{j != y} p_j(x')).
  """
  num_classes = logits.shape[-1]
  adv_probs = jax.nn.softmax(adv_logits, -1)
  is_y = jax.nn.one_hot(y, num_classes, dtype=bool)
  other = jnp.argmax(jnp.where(is_y, -jnp.inf, adv_probs), -1)
  p_other = jnp.take_along_axis(adv_probs, other[:, None], -1)[:, 0]
  bce = (optax.softmax_cross_entropy_with_integer_labels(adv_logits, y)
         - jnp.log(1.0001 - p_other))
  nat_probs = jax.nn.softmax(logits, -1)
  p_true = jnp.take_along_axis(nat_probs, y[:, None], -1)[:, 0]
  kl = jnp.sum(nat_probs * (jnp.log(nat_probs + 1e-12) - jnp.log(adv_probs + 1e-12)), -1)
  return jnp.mean(bce) + beta * jnp.mean(kl * (1.0000001 - p_true))


def make_mart(config, model) -> GradFn:
  """MART with beta = config.mart_beta."""
  beta = config.mart_beta

  def loss_fn(params, batch_stats, x, y, rng):
    adv = mart_examples(config, model, params, batch_stats, x, y, jax.random.fold_in(rng, 1))
    logits, bs = common.train_forward(model, params, batch_stats, x, rng)
    adv_logits, bs = common.train_forward(model, params, bs, adv, jax.random.fold_in(rng, 2))
    loss = mart_loss(logits, adv_logits, y, beta)
    return loss, (bs, {"train_accuracy": common.accuracy(adv_logits, y)})
  return common.from_loss(loss_fn)


common.register(Method("mart", make_mart, "MART"))
