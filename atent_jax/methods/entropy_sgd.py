"""Entropy-SGD (Chaudhari et al.; Algorithm 3 of the paper): Langevin steps in weight space."""

from __future__ import annotations

import jax

from atent_jax.methods import common
from atent_jax.methods.common import GradFn, Method


def make_entropy_sgd(config, model) -> GradFn:
  """Entropy-SGD: K Langevin steps in WEIGHT space around w on the batch's clean CE,

      w'_{k+1} = w'_k - eta' (grad L(w'_k) + gamma (w'_k - w)) + sqrt(2 eta') eps N(0, I)
      mu <- (1 - alpha) mu + alpha w'_{k+1}            (w'_0 = mu_0 = w)

  and the weight "gradient" gamma * (w - mu) (the outer step w <- w - eta gamma (w - mu) is the
  optimiser's). eta' = config.entropy_sgd.step_size, eps = .noise_scale, K = .num_steps,
  gamma = .gamma, alpha = .alpha. The inner gradients use train mode on the same batch; the
  reported loss is the clean CE at w.
  """
  e = config.entropy_sgd
  k_steps, gamma, eta, alpha = e.num_steps, e.gamma, e.step_size, e.alpha
  noise_std = e.noise_scale * (2.0 * eta) ** 0.5

  def ce(params, bs, x, y, rng):
    logits, new_bs = common.train_forward(model, params, bs, x, rng)
    return common.mean_ce(logits, y), (new_bs, logits)

  ce_grad = jax.value_and_grad(ce, has_aux=True)

  def grad_fn(params, batch_stats, x, y, rng):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    (loss, (bs, logits)), _ = ce_grad(params, batch_stats, x, y, rng)  # reported at w

    def body(k, carry):
      wp, mu, bs = carry
      (_, (bs, _)), g = ce_grad(wp, bs, x, y, jax.random.fold_in(rng, k + 1))
      nkey = jax.random.fold_in(jax.random.fold_in(rng, 10_000), k)
      keys = jax.random.split(nkey, len(leaves))
      noise = jax.tree_util.tree_unflatten(
          treedef,
          [jax.random.normal(kk, leaf.shape, leaf.dtype) for kk, leaf in zip(keys, leaves)])
      wp = jax.tree_util.tree_map(
          lambda a, ga, w0, n: a - eta * (ga + gamma * (a - w0)) + noise_std * n,
          wp, g, params, noise)
      mu = jax.tree_util.tree_map(lambda m, a: (1.0 - alpha) * m + alpha * a, mu, wp)
      return wp, mu, bs

    _, mu, bs = jax.lax.fori_loop(0, k_steps, body, (params, params, bs))
    grads = jax.tree_util.tree_map(lambda w, m: gamma * (w - m), params, mu)
    return loss, grads, bs, {"train_accuracy": common.accuracy(logits, y)}
  return grad_fn


common.register(Method("entropy_sgd", make_entropy_sgd, "Entropy-SGD"))
