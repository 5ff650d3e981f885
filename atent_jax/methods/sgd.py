"""Clean training: the cross-entropy of the batch, model in train mode."""

from __future__ import annotations

from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def make_sgd(config, model) -> GradFn:
  def loss_fn(params, batch_stats, x, y, rng):
    logits, new_bs = common.train_forward(model, params, batch_stats, x, rng)
    return common.mean_ce(logits, y), (new_bs, {"train_accuracy": common.accuracy(logits, y)})
  return common.from_loss(loss_fn)


common.register(Method("sgd", make_sgd, "SGD"))
