"""Auto-PGD (APGD; Croce and Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1), l_inf and l_2.

PGD with momentum whose step size adapts on a fixed schedule of checkpoints:

  - the step starts at 2 * eps; x1 = P(x0 + eta * d(grad f(x0))) and then, for k >= 1,
        z = P(x_k + eta * d(grad f(x_k)))
        x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})),   alpha = 0.75,
    with d = sign (l_inf) or g / ||g||_2 (l_2) and P the projection onto the ball and [0, 1];
  - checkpoints after w_j = ceil(p_j N) iterations, p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (the reference's integer version: the first
    interval is int(0.22 N) steps, each next one int(0.03 N) shorter, at least int(0.06 N));
  - at a checkpoint the step of an example is halved, and the example restarts from its best
    point, when fewer than rho = 75% of the steps since the last checkpoint increased its loss,
    or when its step was not halved at the previous checkpoint and its best loss has not changed
    since then.

Per example it keeps the point of highest loss and the first misclassified iterate. Losses: 'ce'
and 'dlr' (untargeted), 'dlr-targeted' and 'ce-targeted' (one run per target class, the classes
with the highest clean logits other than the label, as the reference's APGD-T). Restarts and
target classes are runs of the same compiled loop; a run stops early once every example of the
batch is misclassified (which changes no outcome: only already-fooled examples would move).
Memory does not grow with the number of iterations: the iterations run either as `lax` loops
carrying a fixed state (jit-able; the default under jit and on accelerators) or, on CPU, as a
Python loop over one jitted iteration (`loop='host'`: XLA:CPU runs a convolution's input
gradient several times slower inside a while loop; see `_host_loop`). Both give the same iterates.

Constants (rho 0.75, momentum 0.75, 2 * eps, the checkpoint fractions, the random starts: l_inf
x + eps * u / ||u||_inf with u uniform in [-1, 1]^d, l_2 x + eps * n / ||n||_2 with n Gaussian)
follow the reference implementation (fra31/auto-attack); the code is our own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from atent_jax import langevin
from atent_jax.attacks import common

UNTARGETED_LOSSES = ("ce", "dlr")
TARGETED_LOSSES = ("dlr-targeted", "ce-targeted")
LOSSES = UNTARGETED_LOSSES + TARGETED_LOSSES
# The fewest classes each loss is defined for (DLR uses the 3rd, targeted DLR the 4th logit).
_MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-targeted": 4, "ce-targeted": 2}


class APGDResult(NamedTuple):
  """What `apgd_with_info` returns, per example (B, ...) or (B,).

  adv: the first misclassified point found (over runs in order), else the point of highest loss
    over all runs (x itself where the clean input is already misclassified).
  fooled: whether adv is misclassified (clean misclassification counts).
  loss_best: the highest loss reached over all runs.
  loss_start: the loss at the first run's random start.
  step_size: the step size of each example at the end of the last run.
  """
  adv: jax.Array
  fooled: jax.Array
  loss_best: jax.Array
  loss_start: jax.Array
  step_size: jax.Array


class _RunState(NamedTuple):
  """The carry of one run's iteration loop: fixed size, whatever the number of iterations."""
  i: jax.Array
  x: jax.Array
  x_prev: jax.Array
  grad: jax.Array
  loss_prev: jax.Array
  step: jax.Array
  x_best: jax.Array
  grad_best: jax.Array
  loss_best: jax.Array
  loss_best_last_check: jax.Array
  reduced_last_check: jax.Array
  improved: jax.Array
  fooled: jax.Array
  x_fooled: jax.Array


def checkpoint_schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The static step-size checkpoints of an N-iteration run.

  Returns (is_checkpoint, interval): bool and int arrays of length N; iteration i (0-based) ends
  a checkpoint interval when is_checkpoint[i], and interval[i] is that interval's length (the
  number of steps whose loss increases are counted).
  """
  common.check_int("num_steps", num_steps)
  first = max(int(0.22 * num_steps), 1)
  shortest = max(int(0.06 * num_steps), 1)
  shrink = max(int(0.03 * num_steps), 1)
  is_checkpoint = np.zeros(num_steps, bool)
  interval = np.zeros(num_steps, np.int32)
  length, end = first, first - 1
  while end < num_steps:
    is_checkpoint[end] = True
    interval[end] = length
    length = max(length - shrink, shortest)
    end += length
  return is_checkpoint, interval


def checkpoints(num_steps: int) -> list[int]:
  """The iteration counts w_1 < w_2 < ... after which the step size is checked."""
  is_checkpoint, _ = checkpoint_schedule(num_steps)
  return [int(i) + 1 for i in np.flatnonzero(is_checkpoint)]


def _loss_of(loss: str) -> Callable:
  return {"ce": lambda z, y, t: common.ce_loss(z, y),
          "dlr": lambda z, y, t: common.dlr_loss(z, y),
          "dlr-targeted": common.dlr_targeted_loss,
          "ce-targeted": common.ce_targeted_loss}[loss]


def _validate(logits_fn, x, y, *, norm, eps, loss, num_steps, num_restarts, num_target_classes,
              rho, momentum, eot_iter, stochastic):
  common.check_norm(norm)
  common.check_eps(eps)
  langevin.check_choice("loss", loss, LOSSES)
  common.check_int("num_steps", num_steps)
  common.check_int("num_restarts", num_restarts)
  common.check_int("num_target_classes", num_target_classes)
  common.check_int("eot_iter", eot_iter)
  common.check_fraction("rho", rho)
  common.check_fraction("momentum", momentum)
  fn = (lambda v: logits_fn(v, jax.random.PRNGKey(0))) if stochastic else logits_fn
  num_classes = common.num_classes_of(fn, x, y, min_classes=_MIN_CLASSES[loss])
  if loss in TARGETED_LOSSES and num_target_classes > num_classes - 1:
    raise ValueError(f"num_target_classes={num_target_classes} is not valid for a model with "
                     f"{num_classes} classes: use at most {num_classes - 1}")
  return num_classes


def _random_start(keys, x, norm, eps):
  """Per example x + eps * t / ||t|| (t uniform in [-1, 1]^d for l_inf, Gaussian for l_2),
  clipped to [0, 1]; example i's start depends only on keys[i]."""
  if norm == "linf":
    t = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0))(keys)
  else:
    t = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
  return jnp.clip(x + eps * common.normalize(t, norm), 0.0, 1.0)


class _Consts(NamedTuple):
  """The per-call arrays every stage of the attack reads."""
  x: jax.Array
  y: jax.Array
  eps: jax.Array
  keys: jax.Array
  batch_key: jax.Array
  targets: jax.Array       # (B, num_targets); unused zeros for the untargeted losses
  wrong_clean: jax.Array


class _Carry(NamedTuple):
  """What is kept across runs (restarts and target classes)."""
  fooled: jax.Array
  x_fooled: jax.Array
  x_best: jax.Array
  loss_best: jax.Array
  loss_start: jax.Array
  step: jax.Array


class _Program(NamedTuple):
  """The stages of APGD as pure functions of arrays (static settings closed over), so that
  they can be traced into one jitted loop (device loop) or jitted one by one and driven from
  Python (host loop)."""
  prepare: Callable
  start_run: Callable
  step: Callable
  merge: Callable
  finish: Callable


def _program(logits_fn, *, norm, loss, num_steps, num_restarts, num_targets, rho, momentum,
             num_evals, stochastic) -> _Program:
  loss_fn = _loss_of(loss)
  model = logits_fn if stochastic else (lambda v, k: logits_fn(v))
  is_ck_np, interval_np = checkpoint_schedule(num_steps)

  def mask(m, x):
    return common.broadcast_mask(m, x)

  def evaluate(c, xa, target, eval_key):
    """(per-example loss, its input gradient averaged over the EoT draws, logits)."""
    def total(v, k):
      z = model(v, k)
      per = loss_fn(z, c.y, target)
      return jnp.sum(per), (per, z)

    def one(e):
      grad_fn = jax.value_and_grad(total, has_aux=True)
      (_, (per, z)), g = grad_fn(xa, jax.random.fold_in(eval_key, e))
      return per, g, z

    if num_evals == 1:
      return one(0)
    per, g, z = jax.vmap(one)(jnp.arange(num_evals))
    # The loss and logits of the last draw decide best points and success, as the reference.
    return per[-1], jnp.mean(g, 0), z[-1]

  def prepare(x, y, keys, eps):
    # A stochastic model's randomness is drawn for the whole batch, from the first example's key.
    batch_key = jax.random.fold_in(keys[0], 0x5EED)
    clean_logits = model(x, jax.random.fold_in(batch_key, 0x7FFFFFFF))
    if loss in TARGETED_LOSSES:
      targets = common.top_other_classes(clean_logits, y, num_targets)
    else:
      targets = jnp.zeros((x.shape[0], 1), jnp.int32)
    return _Consts(x=x, y=y, eps=jnp.asarray(eps, x.dtype), keys=keys, batch_key=batch_key,
                   targets=targets, wrong_clean=jnp.argmax(clean_logits, -1) != y)

  def start_run(c, run, fooled, x_fooled):
    """The state at the random start of run `run` (restart / target), and its loss."""
    x = c.x
    target = c.targets[:, run // num_restarts]
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, run))(c.keys)
    x0 = _random_start(run_keys, x, norm, c.eps)
    eval_key = jax.random.fold_in(c.batch_key, run)
    loss0, grad0, z0 = evaluate(c, x0, target, jax.random.fold_in(eval_key, 0))
    wrong0 = (jnp.argmax(z0, -1) != c.y) & ~fooled
    batch = x.shape[0]
    state = _RunState(
        i=jnp.asarray(0), x=x0, x_prev=x0, grad=grad0, loss_prev=loss0,
        step=jnp.full((batch,), 2.0, x.dtype) * c.eps,
        x_best=x0, grad_best=grad0, loss_best=loss0, loss_best_last_check=loss0,
        reduced_last_check=jnp.ones((batch,), bool), improved=jnp.zeros((batch,), jnp.int32),
        fooled=fooled | wrong0, x_fooled=jnp.where(mask(wrong0, x), x0, x_fooled))
    return state, loss0

  def step(c, run, s):
    """One APGD iteration of run `run`."""
    x = c.x
    target = c.targets[:, run // num_restarts]
    eval_key = jax.random.fold_in(c.batch_key, run)
    i, xk = s.i, s.x
    project = lambda v: common.project_ball_box(x, v, norm, c.eps)
    direction = jnp.sign(s.grad) if norm == "linf" else common.normalize(s.grad, "l2")
    a = jnp.where(i == 0, 1.0, momentum).astype(x.dtype)
    z = project(xk + mask(s.step, x) * direction)
    x_new = project(xk + a * (z - xk) + (1.0 - a) * (xk - s.x_prev))
    loss_new, grad_new, logits = evaluate(c, x_new, target, jax.random.fold_in(eval_key, i + 1))
    wrong = (jnp.argmax(logits, -1) != c.y) & ~s.fooled
    improved = s.improved + (loss_new > s.loss_prev).astype(jnp.int32)
    better = loss_new > s.loss_best
    x_best = jnp.where(mask(better, x), x_new, s.x_best)
    grad_best = jnp.where(mask(better, x), grad_new, s.grad_best)
    loss_best = jnp.where(better, loss_new, s.loss_best)
    # Checkpoint (a static schedule, indexed by the iteration).
    at_ck = jnp.asarray(is_ck_np)[i]
    too_few = improved <= jnp.asarray(interval_np)[i] * rho
    stalled = ~s.reduced_last_check & (s.loss_best_last_check >= loss_best)
    halve = at_ck & (too_few | stalled)
    return _RunState(
        i=i + 1,
        x=jnp.where(mask(halve, x), x_best, x_new), x_prev=xk,
        grad=jnp.where(mask(halve, x), grad_best, grad_new), loss_prev=loss_new,
        step=jnp.where(halve, s.step / 2.0, s.step),
        x_best=x_best, grad_best=grad_best, loss_best=loss_best,
        loss_best_last_check=jnp.where(at_ck, loss_best, s.loss_best_last_check),
        reduced_last_check=jnp.where(at_ck, halve, s.reduced_last_check),
        improved=jnp.where(at_ck, 0, improved),
        fooled=s.fooled | wrong, x_fooled=jnp.where(mask(wrong, x), x_new, s.x_fooled))

  def merge(c, carry, run, s, loss0):
    """Folds a finished run into the carry: the highest-loss point over runs."""
    del c
    better = s.loss_best > carry.loss_best
    return _Carry(fooled=s.fooled, x_fooled=s.x_fooled,
                  x_best=jnp.where(mask(better, s.x_best), s.x_best, carry.x_best),
                  loss_best=jnp.where(better, s.loss_best, carry.loss_best),
                  loss_start=jnp.where(run == 0, loss0, carry.loss_start), step=s.step)

  def finish(c, carry):
    adv = jnp.where(mask(carry.fooled, c.x), carry.x_fooled, carry.x_best)
    return APGDResult(adv=adv, fooled=carry.fooled, loss_best=carry.loss_best,
                      loss_start=carry.loss_start, step_size=carry.step)

  return _Program(prepare, start_run, step, merge, finish)


def _initial_carry(c: _Consts) -> _Carry:
  neg_inf = jnp.full(c.y.shape, -jnp.inf, c.x.dtype)
  return _Carry(fooled=c.wrong_clean, x_fooled=c.x, x_best=c.x, loss_best=neg_inf,
                loss_start=neg_inf, step=jnp.full(c.y.shape, 2.0, c.x.dtype) * c.eps)


def _device_loop(prog, c, *, num_steps, num_runs, early_stop):
  """The whole attack as one traced program (lax loops): jit-able, memory independent of the
  number of iterations; the fast choice on accelerators."""
  def single_run(run, carry):
    state, loss0 = prog.start_run(c, run, carry.fooled, carry.x_fooled)

    def cond(s):
      go = s.i < num_steps
      return (go & ~jnp.all(s.fooled)) if early_stop else go

    s = jax.lax.while_loop(cond, lambda s: prog.step(c, run, s), state)
    return prog.merge(c, carry, run, s, loss0)

  def maybe_run(run, carry):
    if not early_stop:
      return single_run(run, carry)
    # Later runs are skipped once the whole batch is fooled; the first always runs, so that
    # loss_start and the best point are defined.
    skip = jnp.all(carry.fooled) & (run > 0)
    return jax.lax.cond(skip, lambda cr: cr, lambda cr: single_run(run, cr), carry)

  carry = _initial_carry(c)
  if num_runs == 1:  # no loop over runs: a smaller program to compile
    carry = single_run(0, carry)
  else:
    carry = jax.lax.fori_loop(0, num_runs, maybe_run, carry)
  return prog.finish(c, carry)


# Jitted stages of the host loop for the most recent logits_fn (see common.PerModelCache).
_HOST_STAGES = common.PerModelCache()


def _host_loop(logits_fn, settings, x, y, keys, eps, *, num_steps, num_runs, early_stop):
  """The same stages, each jitted once, driven by Python loops over runs and iterations.

  On XLA:CPU every operation inside a while loop whose body holds a convolution's input
  gradient runs several times slower than the same operation outside a loop (measured: PGD on
  SmallCNN, 20 steps on 100 MNIST images, 11 CPU-s in a lax loop, 1.6 unrolled, 2.0 as a Python
  loop of one jitted step; jax issue 12868). The host loop keeps one iteration per call, so
  memory stays independent of the number of iterations and nothing is compiled twice.
  """
  def build(fn):
    prog = _program(fn, **dict(settings))
    return _Program(*(jax.jit(f) for f in prog))

  prog = _HOST_STAGES.get(logits_fn, settings, build)
  c = prog.prepare(x, y, keys, eps)
  carry = _initial_carry(c)
  for r in range(num_runs):
    run = jnp.asarray(r, jnp.int32)
    if early_stop and r > 0 and bool(jnp.all(carry.fooled)):
      break
    s, loss0 = prog.start_run(c, run, carry.fooled, carry.x_fooled)
    for _ in range(num_steps):
      if early_stop and bool(jnp.all(s.fooled)):
        break
      s = prog.step(c, run, s)
    carry = prog.merge(c, carry, run, s, loss0)
  return prog.finish(c, carry)




def apgd_with_info(logits_fn, x, y, key, *, norm: str, eps, loss: str = "ce",
                   num_steps: int = 100, num_restarts: int = 1, num_target_classes: int = 9,
                   rho: float = 0.75, momentum: float = 0.75, eot_iter: int = 1,
                   stochastic: bool = False, early_stop: bool = True,
                   loop: str = "auto") -> APGDResult:
  """APGD with its per-example diagnostics (see the module docstring and `APGDResult`).

  Args:
    logits_fn: `logits_fn(x) -> logits` (B, C) of the model in eval mode; with stochastic=True
      `logits_fn(x, key)`, a randomized model (each evaluation gets its own key).
    x, y: images (B, ...) in [0, 1] and integer labels (B,).
    key: one PRNG key, or one key per example (B keys: example i's random starts depend only
      on keys[i], so its outcome does not depend on the rest of the batch).
    norm: 'linf' or 'l2'; eps: the radius.
    loss: 'ce', 'dlr', 'dlr-targeted' or 'ce-targeted'.
    num_steps: iterations per run; num_restarts: random restarts per run (per target class for
      the targeted losses); num_target_classes: targets of the targeted losses.
    rho: the fraction of improving steps below which the step is halved; momentum: alpha.
    eot_iter: gradients averaged per iteration (Expectation over Transformation) for a
      stochastic model; with a deterministic model they would all be equal, so one is computed.
    early_stop: stop a run once every example of the batch is misclassified (no outcome
      changes; False runs every iteration, e.g. to time the full attack).
    loop: 'device' traces the iterations into `lax` loops (jit-able; the fast choice on GPU and
      TPU); 'host' jits one iteration and loops in Python (needs concrete inputs; several times
      faster on CPU, see `_host_loop`); 'auto' (default) picks 'host' on the CPU backend when
      the inputs are concrete, else 'device'. Both compute the same iterates.
  """
  _validate(logits_fn, x, y, norm=norm, eps=eps, loss=loss, num_steps=num_steps,
            num_restarts=num_restarts, num_target_classes=num_target_classes, rho=rho,
            momentum=momentum, eot_iter=eot_iter, stochastic=stochastic)
  loop = common.resolve_loop(loop, x, y, key, eps)
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  keys = langevin.per_example_keys(key, x.shape[0])
  num_targets = num_target_classes if loss in TARGETED_LOSSES else 1
  settings = (("norm", norm), ("loss", loss), ("num_steps", num_steps),
              ("num_restarts", num_restarts), ("num_targets", num_targets), ("rho", float(rho)),
              ("momentum", float(momentum)), ("num_evals", eot_iter if stochastic else 1),
              ("stochastic", stochastic))
  loops = {"num_steps": num_steps, "num_runs": num_targets * num_restarts,
           "early_stop": early_stop}
  if loop == "host":
    return _host_loop(logits_fn, settings, x, y, keys, eps, **loops)
  prog = _program(logits_fn, **dict(settings))
  return _device_loop(prog, prog.prepare(x, y, keys, eps), **loops)


def apgd(logits_fn, x, y, key, *, norm: str, eps, loss: str = "ce", num_steps: int = 100,
         num_restarts: int = 1, num_target_classes: int = 9, rho: float = 0.75,
         momentum: float = 0.75, eot_iter: int = 1, stochastic: bool = False,
         early_stop: bool = True, loop: str = "auto") -> jax.Array:
  """APGD (see the module docstring): the adversarial images, shape of x.

  Per example: the first misclassified point found, else the highest-loss point. Untargeted
  losses 'ce' (APGD-CE) and 'dlr' (APGD-DLR); for the targeted ones use `apgd_targeted` (or
  loss='dlr-targeted' here). Arguments as `apgd_with_info`.
  """
  return apgd_with_info(
      logits_fn, x, y, key, norm=norm, eps=eps, loss=loss, num_steps=num_steps,
      num_restarts=num_restarts, num_target_classes=num_target_classes, rho=rho,
      momentum=momentum, eot_iter=eot_iter, stochastic=stochastic, early_stop=early_stop,
      loop=loop).adv


def apgd_targeted(logits_fn, x, y, key, *, norm: str, eps, loss: str = "dlr-targeted",
                  num_target_classes: int = 9, num_steps: int = 100, num_restarts: int = 1,
                  rho: float = 0.75, momentum: float = 0.75, eot_iter: int = 1,
                  stochastic: bool = False, early_stop: bool = True,
                  loop: str = "auto") -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss (or 'ce-targeted'), one run (x num_restarts) per
  target class, the `num_target_classes` classes with the highest clean logits other than y."""
  if loss not in TARGETED_LOSSES:
    raise ValueError(f"loss={loss!r} is not valid for apgd_targeted: use one of "
                     f"{', '.join(map(repr, TARGETED_LOSSES))}")
  return apgd(logits_fn, x, y, key, norm=norm, eps=eps, loss=loss, num_steps=num_steps,
              num_restarts=num_restarts, num_target_classes=num_target_classes, rho=rho,
              momentum=momentum, eot_iter=eot_iter, stochastic=stochastic,
              early_stop=early_stop, loop=loop)
