"""FAB, the fast adaptive boundary attack (Croce and Hein, ICML 2020): a minimal-norm attack.

Each step linearises the model at the current point, takes the closest linearised decision
boundary (untargeted) or the boundary to one target class (targeted, FAB-T), projects both the
current point and the clean image onto that hyperplane inside the box [0, 1]^d, and moves to a
convex combination of the two projections (weight alpha on the clean image's projection, capped
at alpha_max) with an overshoot eta. When the new point is misclassified it is recorded if it is
the closest so far, and the iterate is pulled back towards the clean image by the factor beta.
FAB-T, as in AutoAttack, runs once per target among the classes with the 2nd to 10th largest
clean logits and keeps, per example, the smallest perturbation found.

Written from the paper and the constants of the reference implementation (fra31/auto-attack):
alpha_max 0.1, eta 1.05, beta 0.9, 100 steps, 9 target classes, restarts from a random point at
half the restart radius.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from atent_jax import langevin
from atent_jax.attacks import common

FAB_NORMS = ("linf", "l2", "l1")
# The reference's restart radius per norm when no eps is given (only restarts use it).
DEFAULT_RESTART_EPS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}

_TINY = common.TINY


# --- argument checks --------------------------------------------------------------------------

def _check_positive(name, value):
  try:
    ok = math.isfinite(float(value)) and float(value) > 0 and not isinstance(value, bool)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"{name}={value!r} is not valid: use a finite number > 0")


# --- norms and the box-constrained projection onto a hyperplane -------------------------------

def _norm(v, norm):
  """Per-row norm of v (B, D)."""
  if norm == "linf":
    return jnp.max(jnp.abs(v), -1)
  if norm == "l1":
    return jnp.sum(jnp.abs(v), -1)
  return jnp.sqrt(jnp.sum(v * v, -1))


def _dual_norm(g, norm):
  """Per-row dual norm of g (..., D): the distance to {f + g.d = 0} is |f| / dual(g)."""
  if norm == "linf":
    return jnp.sum(jnp.abs(g), -1)
  if norm == "l1":
    return jnp.max(jnp.abs(g), -1)
  return jnp.sqrt(jnp.sum(g * g, -1))


def _take(a, idx):
  return jnp.take_along_axis(a, idx, -1)


def project_to_hyperplane_in_box(p, w, s, norm):
  """The smallest step d (in `norm`) from p to the hyperplane {z : w.(z - p) + s = 0} that
  stays in the box, p + d in [0, 1]^D; rows are independent. p, w: (B, D), s: (B,) the signed
  value of the linear function at p. Where the hyperplane does not meet the box, d moves p to
  the corner of the box that gets closest to it.

  With v = sign(s) w the step must lower v.z by |s|; coordinate i can move by at most room_i
  (down to 0 if v_i > 0, up to 1 if v_i < 0). l_inf and l_2: the optimum moves every coordinate
  by min(lam, room_i) (l_inf) or |v_i| min(lam, room_i / |v_i|) (l_2), so the decrease
  sum_i a_i min(lam, r_i) is piecewise linear in lam; one sort of the breakpoints r_i and
  cumulative sums give the smallest lam that reaches |s|. l_1: a fractional knapsack, the
  coordinates with the largest |v_i| move first, each up to its room.
  """
  sign = jnp.where(s >= 0, 1.0, -1.0).astype(p.dtype)
  v = w * sign[:, None]
  need = jnp.abs(s)[:, None]
  av = jnp.abs(v)
  room = jnp.where(v > 0, p, 1.0 - p)
  room = jnp.where(av > 0, jnp.maximum(room, 0.0), 0.0)
  if norm == "l1":
    order = jnp.argsort(-av, -1)
    av_s, room_s = _take(av, order), _take(room, order)
    gain = av_s * room_s
    before = jnp.cumsum(gain, -1) - gain
    move_s = jnp.clip((need - before) / jnp.maximum(av_s, _TINY), 0.0, room_s)
    move = _take(move_s, jnp.argsort(order, -1))
    return -jnp.sign(v) * move
  if norm == "linf":
    a, r = av, room
  else:
    a, r = av * av, jnp.where(av > 0, room / jnp.maximum(av, _TINY), 0.0)
  order = jnp.argsort(r, -1)
  r_s, a_s = _take(r, order), _take(a, order)
  cum_a, cum_ar = jnp.cumsum(a_s, -1), jnp.cumsum(a_s * r_s, -1)
  total_a = cum_a[:, -1:]
  reach = cum_ar + r_s * (total_a - cum_a)          # the decrease at each breakpoint
  k = jnp.sum(reach < need, -1, keepdims=True)      # breakpoints that fall short
  km1 = jnp.maximum(k - 1, 0)
  base_ar = jnp.where(k > 0, _take(cum_ar, km1), 0.0)
  base_a = jnp.where(k > 0, _take(cum_a, km1), 0.0)
  lam = (need - base_ar) / jnp.maximum(total_a - base_a, _TINY)
  # Out of reach: every coordinate goes to its bound.
  lam = jnp.where(k == r.shape[-1], r_s[:, -1:], lam)
  move = jnp.minimum(lam, r)
  return -jnp.sign(v) * move if norm == "linf" else -v * move


# --- the attack -------------------------------------------------------------------------------

def _random_start(key, x0, radius, norm):
  """A point at distance radius / 2 from x0 (flat, one example), in a random direction."""
  if norm == "linf":
    t = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x0.shape, x0.dtype)
  t = t / jnp.maximum(_norm(t[None], norm)[0], _TINY)
  return jnp.clip(x0 + 0.5 * radius * t, 0.0, 1.0)


def _fab_search(logits_fn, x, y, key, *, norm, restart_eps, num_steps, num_restarts, targeted,
                num_target_classes, alpha_max, eta, beta, stop_radius):
  """(adversarial images, their distance, success). Runs (target, restart) pairs in order while
  some attackable example has no adversarial point within stop_radius."""
  batch = x.shape[0]
  x0 = x.reshape(batch, -1)
  to_image = lambda v: v.reshape(x.shape)
  logits_flat = lambda v: logits_fn(to_image(v))
  logits0 = logits_fn(x)
  num_classes = logits0.shape[-1]
  # Only correctly classified points are attacked; the others are their own adversarial point.
  attackable = jnp.argmax(logits0, -1) == y
  best_dist = jnp.where(attackable, jnp.inf, 0.0).astype(x.dtype)
  num_targets = min(num_target_classes, num_classes - 1) if targeted else 1
  targets = common.top_other_classes(logits0, y, num_targets)   # by clean logit, largest first
  keys = langevin.per_example_keys(key, batch)
  onehot_y = jax.nn.one_hot(y, num_classes, dtype=x.dtype)

  def linearise(x1, target):
    """(f, g): the value and input gradient of the logit difference whose boundary is next."""
    logits, vjp = jax.vjp(logits_flat, x1)
    if targeted:
      direction = jax.nn.one_hot(target, num_classes, dtype=x.dtype) - onehot_y
      (g,) = vjp(direction)
      return jnp.sum(logits * direction, -1), g
    basis = jnp.eye(num_classes, dtype=x.dtype)[:, None, :] - onehot_y[None]   # (K, B, K)
    (jac,) = jax.vmap(vjp)(basis)                                             # (K, B, D)
    jac = jnp.swapaxes(jac, 0, 1)                                             # (B, K, D)
    f = logits - jnp.sum(logits * onehot_y, -1, keepdims=True)                # z_k - z_y
    dist = jnp.abs(f) / (_dual_norm(jac, norm) + _TINY)
    dist = jnp.where(onehot_y > 0, jnp.inf, dist)
    j = jnp.argmin(dist, -1)
    return _take(f, j[:, None])[:, 0], jnp.take_along_axis(jac, j[:, None, None], 1)[:, 0]

  def step(_, state):
    x1, target, best_adv, best_dist = state
    f, g = linearise(x1, target)
    d1 = project_to_hyperplane_in_box(x1, g, f, norm)
    d0 = project_to_hyperplane_in_box(x0, g, f + jnp.sum(g * (x0 - x1), -1), norm)
    a1 = jnp.maximum(_norm(d1, norm), 1e-8)[:, None]
    a0 = jnp.maximum(_norm(d0, norm), 1e-8)[:, None]
    alpha = jnp.clip(a1 / (a1 + a0), 0.0, alpha_max)
    x_new = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d0) * alpha, 0.0, 1.0)
    fooled = jnp.argmax(logits_flat(x_new), -1) != y
    dist = _norm(x_new - x0, norm)
    better = fooled & (dist < best_dist)
    best_adv = jnp.where(better[:, None], x_new, best_adv)
    best_dist = jnp.where(better, dist, best_dist)
    # Back towards the clean image after a success, to look for a closer boundary point.
    x1 = jnp.where(fooled[:, None], x0 + beta * (x_new - x0), x_new)
    return x1, target, best_adv, best_dist

  def one_run(state):
    run, best_adv, best_dist = state
    target = targets[:, run // num_restarts]
    restart = run % num_restarts
    radius = jnp.minimum(best_dist, restart_eps)
    run_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, run)
    start = jax.vmap(_random_start, (0, 0, 0, None))(run_keys, x0, radius, norm)
    x1 = jnp.where(restart > 0, start, x0)
    _, _, best_adv, best_dist = jax.lax.fori_loop(0, num_steps, step,
                                                  (x1, target, best_adv, best_dist))
    return run + 1, best_adv, best_dist

  def unfinished(state):
    run, _, best_dist = state
    return (run < num_targets * num_restarts) & jnp.any(best_dist > stop_radius)

  _, best_adv, best_dist = jax.lax.while_loop(unfinished, one_run, (0, x0, best_dist))
  success = jnp.isfinite(best_dist)
  return to_image(best_adv), best_dist, success


def _validate(logits_fn, x, y, *, norm, num_steps, num_restarts, targeted, num_target_classes,
              alpha_max, eta, beta):
  common.check_norm(norm, FAB_NORMS)
  common.check_int("num_steps", num_steps)
  common.check_int("num_restarts", num_restarts)
  common.check_int("num_target_classes", num_target_classes)
  if targeted not in (True, False):
    raise ValueError(f"targeted={targeted!r} is not valid: use True or False")
  common.check_fraction("alpha_max", alpha_max)
  _check_positive("eta", eta)
  common.check_fraction("beta", beta)
  x, y = jnp.asarray(x), jnp.asarray(y)
  common.num_classes_of(logits_fn, x, y)
  return x, y


def fab_minimal(logits_fn, x, y, key, *, norm, eps=None, num_steps=100, num_restarts=1,
                targeted=True, num_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9):
  """FAB (targeted FAB-T by default): the smallest perturbation it finds per example.

  norm: 'linf', 'l2' or 'l1'. targeted=True runs FAB once per target class among the
  num_target_classes classes with the largest clean logits after the top one (all other classes
  when there are fewer), each with num_restarts restarts; targeted=False runs num_restarts
  untargeted runs (every class's boundary is linearised at each step). Restarts after the first
  start from a random point at distance min(best so far, eps) / 2 of the clean image; eps=None
  uses the reference's radius (0.3, 1.0, 5.0 for linf, l2, l1). Examples that the model already
  misclassifies are returned as they are, at distance 0.

  Returns (adversarial images, norm of their perturbation, success mask); where the attack
  failed the image is x and the norm +inf.
  """
  x, y = _validate(logits_fn, x, y, norm=norm, num_steps=num_steps, num_restarts=num_restarts,
                   targeted=targeted, num_target_classes=num_target_classes,
                   alpha_max=alpha_max, eta=eta, beta=beta)
  if eps is None:
    eps = DEFAULT_RESTART_EPS[norm]
  common.check_eps(eps)
  return _fab_search(logits_fn, x, y, key, norm=norm, restart_eps=eps, num_steps=num_steps,
                     num_restarts=num_restarts, targeted=targeted,
                     num_target_classes=num_target_classes, alpha_max=alpha_max, eta=eta,
                     beta=beta, stop_radius=0.0)


def fab(logits_fn, x, y, key, *, norm, eps, num_steps=100, num_restarts=1, targeted=True,
        num_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9):
  """FAB reported at radius eps: per example the closest adversarial point FAB found if its
  perturbation (in `norm`) is <= eps, else x; the point is in [0, 1]. The runs over targets and
  restarts stop once every example has an adversarial point within eps (as the reference runs
  later targets only on the points still robust). See fab_minimal for the arguments.
  """
  x, y = _validate(logits_fn, x, y, norm=norm, num_steps=num_steps, num_restarts=num_restarts,
                   targeted=targeted, num_target_classes=num_target_classes,
                   alpha_max=alpha_max, eta=eta, beta=beta)
  common.check_eps(eps)
  adv, dist, success = _fab_search(
      logits_fn, x, y, key, norm=norm, restart_eps=eps, num_steps=num_steps,
      num_restarts=num_restarts, targeted=targeted, num_target_classes=num_target_classes,
      alpha_max=alpha_max, eta=eta, beta=beta, stop_radius=eps)
  take = success & (dist <= eps)
  return jnp.where(common.broadcast_mask(take, x), adv, x)
