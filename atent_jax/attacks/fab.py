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
from typing import NamedTuple

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


class _Consts(NamedTuple):
  """What every step of one FAB call reads: the flat clean images and the per-example plan."""
  x0: jax.Array           # (B, D) clean images, flattened
  y: jax.Array            # (B,)
  targets: jax.Array      # (B, num_targets) target classes, by clean logit (targeted)
  keys: jax.Array         # (B,) per-example keys of the restarts
  best_dist0: jax.Array   # (B,) 0 where the model is already wrong (nothing to attack), else inf


class _State(NamedTuple):
  x1: jax.Array           # (B, D) the current iterate
  target: jax.Array       # (B,) this run's target class
  best_adv: jax.Array     # (B, D) the closest adversarial point so far
  best_dist: jax.Array    # (B,) its distance to x0 (inf: none yet)


def _program(logits_fn, *, norm, restart_eps, num_restarts, targeted, num_target_classes,
             alpha_max, eta, beta):
  """FAB's stages as pure functions; `_device_loop` and `_host_loop` drive them."""

  def prepare(x, y, key):
    batch = x.shape[0]
    logits0 = logits_fn(x)
    num_targets = min(num_target_classes, logits0.shape[-1] - 1) if targeted else 1
    # Only correctly classified points are attacked; the others are their own adversarial point.
    attackable = jnp.argmax(logits0, -1) == y
    return _Consts(x0=x.reshape(batch, -1), y=y,
                   targets=common.top_other_classes(logits0, y, num_targets),  # largest first
                   keys=langevin.per_example_keys(key, batch),
                   best_dist0=jnp.where(attackable, jnp.inf, 0.0).astype(x.dtype))

  def linearise(c, x1, target, image_shape):
    """(f, g): the value and input gradient of the logit difference whose boundary is next."""
    logits, vjp = jax.vjp(lambda v: logits_fn(v.reshape(image_shape)), x1)
    num_classes = logits.shape[-1]
    onehot_y = jax.nn.one_hot(c.y, num_classes, dtype=x1.dtype)
    if targeted:
      direction = jax.nn.one_hot(target, num_classes, dtype=x1.dtype) - onehot_y
      (g,) = vjp(direction)
      return jnp.sum(logits * direction, -1), g
    basis = jnp.eye(num_classes, dtype=x1.dtype)[:, None, :] - onehot_y[None]   # (K, B, K)
    (jac,) = jax.vmap(vjp)(basis)                                              # (K, B, D)
    jac = jnp.swapaxes(jac, 0, 1)                                              # (B, K, D)
    f = logits - jnp.sum(logits * onehot_y, -1, keepdims=True)                 # z_k - z_y
    dist = jnp.abs(f) / (_dual_norm(jac, norm) + _TINY)
    dist = jnp.where(onehot_y > 0, jnp.inf, dist)
    j = jnp.argmin(dist, -1)
    return _take(f, j[:, None])[:, 0], jnp.take_along_axis(jac, j[:, None, None], 1)[:, 0]

  def step_with_shape(c, state, image_shape):
    x0, x1 = c.x0, state.x1
    f, g = linearise(c, x1, state.target, image_shape)
    d1 = project_to_hyperplane_in_box(x1, g, f, norm)
    d0 = project_to_hyperplane_in_box(x0, g, f + jnp.sum(g * (x0 - x1), -1), norm)
    a1 = jnp.maximum(_norm(d1, norm), 1e-8)[:, None]
    a0 = jnp.maximum(_norm(d0, norm), 1e-8)[:, None]
    alpha = jnp.clip(a1 / (a1 + a0), 0.0, alpha_max)
    x_new = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d0) * alpha, 0.0, 1.0)
    fooled = jnp.argmax(logits_fn(x_new.reshape(image_shape)), -1) != c.y
    dist = _norm(x_new - x0, norm)
    better = fooled & (dist < state.best_dist)
    best_adv = jnp.where(better[:, None], x_new, state.best_adv)
    best_dist = jnp.where(better, dist, state.best_dist)
    # Back towards the clean image after a success, to look for a closer boundary point.
    x1 = jnp.where(fooled[:, None], x0 + beta * (x_new - x0), x_new)
    return _State(x1, state.target, best_adv, best_dist)

  def start_run(c, run, best_adv, best_dist):
    target = c.targets[:, run // num_restarts]
    restart = run % num_restarts
    radius = jnp.minimum(best_dist, restart_eps)
    run_keys = jax.vmap(jax.random.fold_in, (0, None))(c.keys, run)
    start = jax.vmap(_random_start, (0, 0, 0, None))(run_keys, c.x0, radius, norm)
    return _State(jnp.where(restart > 0, start, c.x0), target, best_adv, best_dist)

  return prepare, start_run, step_with_shape


def _num_runs(c: _Consts, num_restarts: int) -> int:
  return c.targets.shape[1] * num_restarts


def _device_loop(stages, x, y, key, *, num_steps, num_restarts, stop_radius):
  """The whole attack as one traced program (lax loops): jit-able; the choice on accelerators."""
  prepare, start_run, step = stages
  c = prepare(x, y, key)

  def one_run(carry):
    run, best_adv, best_dist = carry
    state = start_run(c, run, best_adv, best_dist)
    state = jax.lax.fori_loop(0, num_steps, lambda _, s: step(c, s, x.shape), state)
    return run + 1, state.best_adv, state.best_dist

  def unfinished(carry):
    run, _, best_dist = carry
    return (run < _num_runs(c, num_restarts)) & jnp.any(best_dist > stop_radius)

  _, best_adv, best_dist = jax.lax.while_loop(unfinished, one_run, (0, c.x0, c.best_dist0))
  return best_adv, best_dist


# Jitted stages of the host loop for the most recent logits_fn (see common.PerModelCache).
_HOST_STAGES = common.PerModelCache()


def _host_loop(logits_fn, settings, x, y, key, *, num_steps, num_restarts, stop_radius):
  """The same stages, each jitted once, driven by Python loops over runs and steps: several
  times faster on XLA:CPU, where a loop body holding a convolution's input gradient runs slowly
  (see apgd._host_loop). Runs stop, as in the device loop, once every example has an
  adversarial point within stop_radius."""
  def build(fn):
    prepare, start_run, step = _program(fn, **dict(settings))
    return jax.jit(prepare), jax.jit(start_run), jax.jit(step, static_argnums=2)

  prepare, start_run, step = _HOST_STAGES.get(logits_fn, settings, build)
  c = prepare(x, y, key)
  best_adv, best_dist = c.x0, c.best_dist0
  for run in range(_num_runs(c, num_restarts)):
    if not bool(jnp.any(best_dist > stop_radius)):
      break
    state = start_run(c, jnp.asarray(run, jnp.int32), best_adv, best_dist)
    for _ in range(num_steps):
      state = step(c, state, x.shape)
    best_adv, best_dist = state.best_adv, state.best_dist
  return best_adv, best_dist


def _fab_search(logits_fn, x, y, key, *, norm, restart_eps, num_steps, num_restarts, targeted,
                num_target_classes, alpha_max, eta, beta, stop_radius, loop):
  """(adversarial images, their distance, success). Runs (target, restart) pairs in order while
  some attackable example has no adversarial point within stop_radius."""
  loop = common.resolve_loop(loop, x, y, key, restart_eps)
  if loop == "host":
    restart_eps = float(restart_eps)  # part of the key of the host loop's compiled stages
  settings = (("norm", norm), ("restart_eps", restart_eps), ("num_restarts", num_restarts),
              ("targeted", targeted), ("num_target_classes", num_target_classes),
              ("alpha_max", float(alpha_max)), ("eta", float(eta)), ("beta", float(beta)))
  loops = {"num_steps": num_steps, "num_restarts": num_restarts, "stop_radius": stop_radius}
  if loop == "host":
    best_adv, best_dist = _host_loop(logits_fn, settings, x, y, key, **loops)
  else:
    best_adv, best_dist = _device_loop(_program(logits_fn, **dict(settings)), x, y, key,
                                       **loops)
  return best_adv.reshape(x.shape), best_dist, jnp.isfinite(best_dist)


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
                targeted=True, num_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9,
                loop="auto"):
  """FAB (targeted FAB-T by default): the smallest perturbation it finds per example.

  norm: 'linf', 'l2' or 'l1'. targeted=True runs FAB once per target class among the
  num_target_classes classes with the largest clean logits after the top one (all other classes
  when there are fewer), each with num_restarts restarts; targeted=False runs num_restarts
  untargeted runs (every class's boundary is linearised at each step). Restarts after the first
  start from a random point at distance min(best so far, eps) / 2 of the clean image; eps=None
  uses the reference's radius (0.3, 1.0, 5.0 for linf, l2, l1). Examples that the model already
  misclassifies are returned as they are, at distance 0.

  loop: 'device' traces the steps into `lax` loops (jit-able; the choice on GPU and TPU);
  'host' jits one step and loops in Python (needs concrete inputs; several times faster on
  CPU); 'auto' (default) picks 'host' on the CPU backend when the inputs are concrete, else
  'device'. Both compute the same iterates.

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
                     beta=beta, stop_radius=0.0, loop=loop)


def fab(logits_fn, x, y, key, *, norm, eps, num_steps=100, num_restarts=1, targeted=True,
        num_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9, loop="auto"):
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
      alpha_max=alpha_max, eta=eta, beta=beta, stop_radius=eps, loop=loop)
  take = success & (dist <= eps)
  return jnp.where(common.broadcast_mask(take, x), adv, x)
