"""MMA (Ding et al., 2020), simplified: margin points from PGD + bisection.

The margin search runs on the model in eval mode on the shared optimiser
(`langevin.optimize_input`); the margin points are held constant for the weight gradient, whose
losses use train mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from atent_jax import attacks, langevin
from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method

# Bisection steps along the PGD direction to locate the margin point (not a config field).
MMA_BISECTION_STEPS = 10


def mma_margin_points(config, model, params, batch_stats, x, y, key):
  """Per example, an estimate of the closest misclassified point within config.mma.max_eps.

  Simplification of Ding et al.'s AN-PGD: one PGD run (the shared optimiser, config.sampler's
  norm, step and steps, random start) at the largest radius max_eps gives a direction delta;
  a bisection over t in [0, 1] on the segment x + t * delta (MMA_BISECTION_STEPS forward passes)
  finds the smallest t whose point is still misclassified: the margin point, whose distance is
  the example's adaptive eps. Where PGD fails at max_eps the margin point is the PGD point at
  max_eps (Ding et al.'s clip of the margin at d_max). Eval mode; returns (points, eps, found).
  """
  s = config.sampler
  max_eps = config.mma.max_eps
  logits_fn = common.eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  adv = langevin.optimize_input(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm=s.norm, eps=max_eps,
      step_size=s.step_size, num_steps=s.num_steps, direction=common.ascent_direction(s.norm),
      projection="every", init="uniform" if s.random_init else "zero",
      unroll=common.unroll_from_config(config))
  adv = jax.lax.stop_gradient(adv)
  delta = adv - x
  expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))
  wrong = lambda pts: jnp.argmax(logits_fn(pts), -1) != y
  found = wrong(adv)

  def bisect(_, carry):
    lo, hi = carry
    mid = (lo + hi) / 2
    w = wrong(x + expand(mid) * delta)
    return jnp.where(w, lo, mid), jnp.where(w, mid, hi)

  ones = jnp.ones(x.shape[0], x.dtype)
  _, hi = jax.lax.fori_loop(0, MMA_BISECTION_STEPS, bisect, (0.0 * ones, ones))
  t = jnp.where(found, hi, 1.0)
  points = x + expand(t) * delta
  dist = attacks.flat_norm(points - x, s.norm)
  return jax.lax.stop_gradient(points), dist, found


def make_mma(config, model) -> GradFn:
  """MMA (simplified): clean_weight * CE(x) + (1 - clean_weight) * margin loss.

  The margin loss is, per example, CE at its margin point (see `mma_margin_points`) if the clean
  x is classified correctly, else CE at x (Ding et al. train misclassified examples on the clean
  loss). Simplified from Ding et al.: the margin point comes from PGD + bisection instead of
  AN-PGD's initial-eps search, is held constant (no gradient through the margin eps), and there
  is no hinge on d_max beyond clipping the search at config.mma.max_eps.
  """
  clean_weight = config.mma.clean_weight

  def loss_fn(params, batch_stats, x, y, rng):
    points, dist, found = mma_margin_points(config, model, params, batch_stats, x, y,
                                            jax.random.fold_in(rng, 1))
    logits, bs = common.train_forward(model, params, batch_stats, x, rng)
    margin_logits, bs = common.train_forward(model, params, bs, points,
                                             jax.random.fold_in(rng, 2))
    ce_clean = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    ce_margin = optax.softmax_cross_entropy_with_integer_labels(margin_logits, y)
    correct = jax.lax.stop_gradient(jnp.argmax(logits, -1) == y)
    margin_term = jnp.where(correct, ce_margin, ce_clean)
    loss = clean_weight * ce_clean.mean() + (1.0 - clean_weight) * margin_term.mean()
    aux = {"train_accuracy": common.accuracy(logits, y),
           "mma_mean_eps": jnp.mean(jnp.where(found, dist, config.mma.max_eps))}
    return loss, (bs, aux)
  return common.from_loss(loss_fn)


common.register(Method("mma", make_mma, "MMA"))
