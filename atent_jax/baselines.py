"""Baseline defenses of the paper's tables: TRADES, MART, MMA, Entropy-SGD, noise augmentation.

Each `make_*(config, model)` returns a grad_fn with the signature of `atent_jax.methods`:
    grad_fn(params, batch_stats, images, labels, rng) -> (loss, grads, new_batch_stats, aux)
`methods.py` merges `METHODS` into its registry, so `config.method = 'trades'` etc. just work.

As in `methods.py`, every inner maximisation in input space runs on the model in eval mode and
is built on the shared optimiser (`langevin.optimize_input`); the adversarial points are held
constant for the weight gradient. The weight losses use the model in train mode.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from atent_jax import attacks, langevin

# `atent_jax.methods` imports this module at its end to merge METHODS into its registry, so its
# helpers are looked up at call time (importing this module first must work too).


def _methods():
  from atent_jax import methods  # pylint: disable=import-outside-toplevel
  return methods


def eval_logits_fn(model, params, batch_stats):
  return _methods().eval_logits_fn(model, params, batch_stats)


def train_forward(model, params, batch_stats, x, rng):
  return _methods().train_forward(model, params, batch_stats, x, rng)


def mean_ce(logits, labels):
  return _methods().mean_ce(logits, labels)


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def _from_loss(loss_fn):
  return _methods()._from_loss(loss_fn)  # pylint: disable=protected-access


def _unroll(config):
  return _methods().unroll_from_config(config)

# MMA: bisection steps along the PGD direction to locate the margin point (not a config field).
MMA_BISECTION_STEPS = 10


def _direction(norm):
  return "sign" if norm == "linf" else "l2"


def _kl_rows(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per row."""
  logp = jax.nn.log_softmax(p_logits, -1)
  logq = jax.nn.log_softmax(q_logits, -1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


# --- TRADES (Zhang et al., 2019) --------------------------------------------------------------

def trades_examples(config, model, params, batch_stats, x, key):
  """x' from PGD on KL(f(x) || f(x')), started at x + 0.001 N(0, I) (TRADES' code); eval mode."""
  s = config.sampler
  logits_fn = eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  clean_logits = jax.lax.stop_gradient(logits_fn(x))

  def kl_loss(xp, target_logits):
    return _kl_rows(target_logits[None], logits_fn(xp[None]))[0]

  adv = langevin.optimize_input(
      kl_loss, x, clean_logits, key, norm=s.norm, eps=s.eps, step_size=s.step_size,
      num_steps=s.num_steps, direction=_direction(s.norm), projection="every",
      init="tiny_normal", unroll=_unroll(config))
  return jax.lax.stop_gradient(adv)


def make_trades(config, model):
  """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x')), batch mean; beta = config.trades_beta.

  As in TRADES' code the KL's gradient flows through both f(x) and f(x'). The clean forward uses
  the step's rng itself, so beta = 0 is exactly clean training (`make_sgd`).
  """
  beta = config.trades_beta

  def loss_fn(params, batch_stats, x, y, rng):
    adv = trades_examples(config, model, params, batch_stats, x, jax.random.fold_in(rng, 1))
    logits, bs = train_forward(model, params, batch_stats, x, rng)
    adv_logits, bs = train_forward(model, params, bs, adv, jax.random.fold_in(rng, 2))
    ce = mean_ce(logits, y)
    kl = jnp.mean(_kl_rows(logits, adv_logits))
    loss = ce + beta * kl
    return loss, (bs, {"train_accuracy": _accuracy(logits, y)})
  return _from_loss(loss_fn)


# --- MART (Wang et al., 2020) -----------------------------------------------------------------

def mart_examples(config, model, params, batch_stats, x, y, key):
  """x' from PGD on the cross-entropy started at x + 0.001 N(0, I) (MART's code); eval mode."""
  s = config.sampler
  logits_fn = eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  adv = langevin.optimize_input(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm=s.norm, eps=s.eps,
      step_size=s.step_size, num_steps=s.num_steps, direction=_direction(s.norm),
      projection="every", init="tiny_normal", unroll=_unroll(config))
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


def make_mart(config, model):
  """MART with beta = config.mart_beta."""
  beta = config.mart_beta

  def loss_fn(params, batch_stats, x, y, rng):
    adv = mart_examples(config, model, params, batch_stats, x, y, jax.random.fold_in(rng, 1))
    logits, bs = train_forward(model, params, batch_stats, x, rng)
    adv_logits, bs = train_forward(model, params, bs, adv, jax.random.fold_in(rng, 2))
    loss = mart_loss(logits, adv_logits, y, beta)
    return loss, (bs, {"train_accuracy": _accuracy(adv_logits, y)})
  return _from_loss(loss_fn)


# --- MMA (Ding et al., 2020), simplified ------------------------------------------------------

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
  logits_fn = eval_logits_fn(model, jax.lax.stop_gradient(params), batch_stats)
  adv = langevin.optimize_input(
      attacks.cross_entropy_loss(logits_fn), x, y, key, norm=s.norm, eps=max_eps,
      step_size=s.step_size, num_steps=s.num_steps, direction=_direction(s.norm),
      projection="every", init="uniform" if s.random_init else "zero", unroll=_unroll(config))
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


def make_mma(config, model):
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
    logits, bs = train_forward(model, params, batch_stats, x, rng)
    margin_logits, bs = train_forward(model, params, bs, points, jax.random.fold_in(rng, 2))
    ce_clean = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    ce_margin = optax.softmax_cross_entropy_with_integer_labels(margin_logits, y)
    correct = jax.lax.stop_gradient(jnp.argmax(logits, -1) == y)
    margin_term = jnp.where(correct, ce_margin, ce_clean)
    loss = clean_weight * ce_clean.mean() + (1.0 - clean_weight) * margin_term.mean()
    aux = {"train_accuracy": _accuracy(logits, y),
           "mma_mean_eps": jnp.mean(jnp.where(found, dist, config.mma.max_eps))}
    return loss, (bs, aux)
  return _from_loss(loss_fn)


# --- Entropy-SGD (Chaudhari et al.; Algorithm 3 of the paper) -----------------------------------

def make_entropy_sgd(config, model):
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
    logits, new_bs = train_forward(model, params, bs, x, rng)
    return mean_ce(logits, y), (new_bs, logits)

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
    return loss, grads, bs, {"train_accuracy": _accuracy(logits, y)}
  return grad_fn


# --- Gaussian noise augmentation (the smoothing baseline, Cohen et al.) ------------------------

def make_noise_aug(config, model):
  """CE on x + sigma * N(0, I), sigma = config.noise_aug_sigma (no clipping, as Cohen et al.)."""
  sigma = config.noise_aug_sigma

  def loss_fn(params, batch_stats, x, y, rng):
    k_noise, k_drop = jax.random.split(rng)
    noisy = x + sigma * jax.random.normal(k_noise, x.shape, x.dtype)
    logits, bs = train_forward(model, params, batch_stats, noisy, k_drop)
    return mean_ce(logits, y), (bs, {"train_accuracy": _accuracy(logits, y)})
  return _from_loss(loss_fn)


METHODS: dict[str, Callable] = {
    "trades": make_trades,
    "mart": make_mart,
    "mma": make_mma,
    "entropy_sgd": make_entropy_sgd,
    "noise_aug": make_noise_aug,
}
