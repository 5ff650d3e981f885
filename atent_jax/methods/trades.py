"""TRADES (Zhang et al., 2019): clean cross-entropy plus beta times the KL to an adversarial point.

The inner maximisation runs on the model in eval mode on the shared optimiser
(`langevin.optimize_input`); the adversarial points are held constant for the weight gradient,
whose losses use train mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from atent_jax import langevin
from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def kl_rows(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per row."""
  logp = jax.nn.log_softmax(p_logits, -1)
  logq = jax.nn.log_softmax(q_logits, -1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


def trades_examples(config, model, params, batch_stats, x, key):
  """x' from PGD on KL(f(x) || f(x')), started at x + 0.001 N(0, I) (TRADES' code); eval mode."""
  s = config.sampler
  logits_fn = common.eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  clean_logits = jax.lax.stop_gradient(logits_fn(x))

  def kl_loss(xp, target_logits):
    return kl_rows(target_logits[None], logits_fn(xp[None]))[0]

  adv = langevin.optimize_input(
      kl_loss, x, clean_logits, key, norm=s.norm, eps=s.eps, step_size=s.step_size,
      num_steps=s.num_steps, direction=common.ascent_direction(s.norm), projection="every",
      init="tiny_normal", unroll=common.unroll_from_config(config))
  return jax.lax.stop_gradient(adv)


def make_trades(config, model) -> GradFn:
  """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x')), batch mean; beta = config.trades_beta.

  As in TRADES' code the KL's gradient flows through both f(x) and f(x'). The clean forward uses
  the step's rng itself, so beta = 0 is exactly clean training (`make_sgd`).
  """
  beta = config.trades_beta

  def loss_fn(params, batch_stats, x, y, rng):
    adv = trades_examples(config, model, params, batch_stats, x, jax.random.fold_in(rng, 1))
    logits, bs = common.train_forward(model, params, batch_stats, x, rng)
    adv_logits, bs = common.train_forward(model, params, bs, adv, jax.random.fold_in(rng, 2))
    ce = common.mean_ce(logits, y)
    kl = jnp.mean(kl_rows(logits, adv_logits))
    loss = ce + beta * kl
    return loss, (bs, {"train_accuracy": common.accuracy(logits, y)})
  return common.from_loss(loss_fn)


common.register(Method("trades", make_trades, "TRADES"))
