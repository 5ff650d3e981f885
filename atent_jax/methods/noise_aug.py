"""Gaussian noise augmentation (the smoothing baseline, Cohen et al., 2019)."""

from __future__ import annotations

import jax

from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def make_noise_aug(config, model) -> GradFn:
  """CE on x + sigma * N(0, I), sigma = config.noise_aug_sigma (no clipping, as Cohen et al.)."""
  sigma = config.noise_aug_sigma

  def loss_fn(params, batch_stats, x, y, rng):
    k_noise, k_drop = jax.random.split(rng)
    noisy = x + sigma * jax.random.normal(k_noise, x.shape, x.dtype)
    logits, bs = common.train_forward(model, params, batch_stats, noisy, k_drop)
    return common.mean_ce(logits, y), (bs, {"train_accuracy": common.accuracy(logits, y)})
  return common.from_loss(loss_fn)


common.register(Method("noise_aug", make_noise_aug, "Noise augmentation"))
