"""Attacks on a fixed model in eval mode, built on the shared input-space optimiser.

Every attack takes `logits_fn(x_batch) -> logits` (NHWC images in [0, 1], model in eval
mode), a batch `x`, labels `y` and a key, and returns adversarial images of the shape of x.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from atent_jax import langevin

LogitsFn = Callable[[jax.Array], jax.Array]


def cross_entropy_loss(logits_fn: LogitsFn):
  """The per-example loss the optimiser ascends: cross-entropy of one example."""
  def loss(x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x[None])[0], y)
  return loss


def _pgd(logits_fn, x, y, key, *, norm, eps, step_size, num_steps, random_init, restarts,
         loss_fn=None, unroll=None):
  langevin.validate_optimizer_args(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps)
  if not isinstance(restarts, int) or restarts < 1:
    raise ValueError(f"restarts={restarts!r} is not valid: use an integer >= 1")
  loss_fn = loss_fn or cross_entropy_loss(logits_fn)
  init = "uniform" if random_init else "zero"
  direction = "sign" if norm == "linf" else "l2"

  def one_run(k):
    return langevin.optimize_input(
        loss_fn, x, y, k, norm=norm, eps=eps, step_size=step_size, num_steps=num_steps,
        direction=direction, projection="every", init=init, unroll=unroll)

  best = one_run(jax.random.fold_in(key, 0))
  if restarts == 1:
    return best
  # Keep, per example, the first restart that fools the model (else the highest loss).
  def score(xa):
    logits = logits_fn(xa)
    wrong = jnp.argmax(logits, -1) != y
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return wrong, ce

  best_wrong, best_ce = score(best)
  for r in range(1, restarts):
    cand = one_run(jax.random.fold_in(key, r))
    wrong, ce = score(cand)
    take = (wrong & ~best_wrong) | ((wrong == best_wrong) & (ce > best_ce))
    best = jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), cand, best)
    best_wrong, best_ce = best_wrong | wrong, jnp.where(take, ce, best_ce)
  return best


def pgd_linf(logits_fn, x, y, key, *, eps, step_size, num_steps, random_init=True, restarts=1,
             unroll=None):
  """PGD in the l_inf ball: sign-gradient ascent, projected and clipped to [0, 1] every step."""
  return _pgd(logits_fn, x, y, key, norm="linf", eps=eps, step_size=step_size,
              num_steps=num_steps, random_init=random_init, restarts=restarts, unroll=unroll)


def pgd_l2(logits_fn, x, y, key, *, eps, step_size, num_steps, random_init=True, restarts=1,
           unroll=None):
  """PGD in the l_2 ball: per-example normalised gradient ascent, projected every step.

  The random start is uniform(-eps, eps) per pixel projected onto the l_2 ball, as in the
  authors' evaluation code.
  """
  return _pgd(logits_fn, x, y, key, norm="l2", eps=eps, step_size=step_size,
              num_steps=num_steps, random_init=random_init, restarts=restarts, unroll=unroll)


def pgd(logits_fn, x, y, key, *, norm, **kw):
  """`pgd_linf` or `pgd_l2`, by `norm`."""
  langevin.check_choice("norm", norm, langevin.NORMS)
  return (pgd_linf if norm == "linf" else pgd_l2)(logits_fn, x, y, key, **kw)
