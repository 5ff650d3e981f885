"""PGD adversarial training (Madry et al., 2018).

The inner maximisation sees the model in eval mode (dropout off, batch-norm running averages):
it works per example under vmap, where train-mode batch statistics would be statistics of one
image. The weight loss uses train mode.
"""

from __future__ import annotations

import jax

from atent_jax import attacks
from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def pgd_examples(config, model, params, batch_stats, x, y, key):
  s = config.sampler
  logits_fn = common.eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  adv = attacks.pgd(logits_fn, x, y, key, norm=s.norm, eps=s.eps, step_size=s.step_size,
                    num_steps=s.num_steps, random_init=s.random_init,
                    unroll=common.unroll_from_config(config))
  return jax.lax.stop_gradient(adv)


def make_pgd_at(config, model) -> GradFn:
  """PGD-AT: the loss at PGD examples (random start, projection every step) only."""
  def loss_fn(params, batch_stats, x, y, rng):
    k_adv, k_drop = jax.random.split(rng)
    adv = pgd_examples(config, model, params, batch_stats, x, y, k_adv)
    logits, new_bs = common.train_forward(model, params, batch_stats, adv, k_drop)
    return common.mean_ce(logits, y), (new_bs, {"train_accuracy": common.accuracy(logits, y)})
  return common.from_loss(loss_fn)


common.register(Method("pgd_at", make_pgd_at, "PGD-AT"))
