"""One input-space optimiser that serves the ATENT sampler and the gradient attacks.

ATENT's Langevin sampler, PGD (l_inf, l_2), CW-l_inf and ATENT-as-an-attack are all the same
loop over a perturbed input x':

    x' <- clip(project?(x' + step * direction(grad L(x')) + gamma * (x - x') + noise))

and differ only in the loss, the direction rule (sign, per-example l_2 normalised, raw), the
noise, the pull towards x (gamma) and when the projection onto the eps-ball happens (every step
for PGD, only at the last step for ATENT). `optimize_input` is that loop; `sample_langevin` and
the attacks in `atent_jax.attacks` are thin, named wrappers around it.

Everything is written for ONE example and `jax.vmap`ped over the leading axis of the batch, so
per-example quantities (the l_2 normalisation, the projection, the noise) never mix examples,
and an example's sample depends only on its own PRNG key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

NORMS = ("linf", "l2")
DIRECTIONS = ("sign", "l2", "raw")
PROJECTIONS = ("every", "last", "none")
INITS = ("zero", "uniform", "corner", "normal", "normal_projected", "tiny_normal")
UPDATES = ("code", "paper")

_TINY = 1e-12


def default_unroll() -> bool:
  """fori_loop unrolling per backend.

  On CPU a rolled `lax.fori_loop` whose body holds conv gradients ran 4-12x slower than the same
  steps unrolled (jax issue 12868; measured here: PGD K 10, 4859 ms rolled vs 1287 ms with
  `unroll=True`). On GPU/TPU a rolled loop compiles much faster and costs little.
  """
  return jax.default_backend() == "cpu"


def check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not valid: use one of {', '.join(map(repr, choices))}")


def validate_optimizer_args(*, norm, eps, step_size, num_steps, noise_scale=0.0, gamma=0.0):
  """One-line errors for the arguments every sampler and attack takes."""
  check_choice("norm", norm, NORMS)
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
    raise ValueError(f"num_steps={num_steps!r} is not valid: use an integer >= 1")
  for name, value in (("eps", eps), ("step_size", step_size)):
    if not is_number(value) or not value > 0:
      raise ValueError(f"{name}={value!r} is not valid: use a number > 0")
  for name, value in (("noise_scale", noise_scale), ("gamma", gamma)):
    if not is_number(value) or value < 0:
      raise ValueError(f"{name}={value!r} is not valid: use a number >= 0")


def is_number(v) -> bool:
  """A finite real number (the check of every numeric argument of the sampler and attacks)."""
  try:
    return math.isfinite(float(v))
  except (TypeError, ValueError):
    return False


def per_example_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """The per-example keys used by the samplers and attacks.

  A single key is split into `jax.random.split(key, batch_size)`; a batch of keys (leading axis
  `batch_size`) is used as it is. Example i's randomness depends only on its key, so
  `sample(x[i:i+1], keys[i:i+1])` equals `sample(x, keys)[i]`.
  """
  key = jnp.asarray(key) if not _is_typed_key(key) else key
  if _is_typed_key(key):
    if key.ndim == 0:
      return jax.random.split(key, batch_size)
    if key.shape == (batch_size,):
      return key
  else:
    if key.shape == (2,):
      return jax.random.split(key, batch_size)
    if key.shape == (batch_size, 2):
      return key
  raise ValueError(f"key has shape {key.shape}: pass one PRNG key or one key per example "
                   f"(leading axis {batch_size})")


def _is_typed_key(key) -> bool:
  return hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def project(delta: jax.Array, norm: str, eps) -> jax.Array:
  """Projects ONE example's perturbation onto the eps-ball of the given norm."""
  if norm == "linf":
    return jnp.clip(delta, -eps, eps)
  n = jnp.sqrt(jnp.sum(delta * delta))
  return delta * jnp.minimum(1.0, eps / jnp.maximum(n, _TINY))


def initial_perturbation(key, x, *, norm: str, eps, init: str) -> jax.Array:
  """The starting perturbation delta of one example (x'0 = clip(x + delta)).

  zero: no perturbation. uniform: U(-eps, eps) per pixel (l_2: then projected onto the l_2
  ball, as the authors' l_2 PGD evaluation does). corner: eps * sign(N(0, I)), a random corner
  of the l_inf box (the authors' ATENT-l_inf start). normal_projected: N(0, I) projected onto the
  eps-ball (the authors' ATENT-l_2 start). normal: eps * N(0, I). tiny_normal: 0.001 * N(0, I)
  (TRADES' start).
  """
  if init == "zero":
    return jnp.zeros_like(x)
  if init == "uniform":
    delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
    return delta if norm == "linf" else project(delta, "l2", eps)
  if init == "corner":
    return eps * jnp.sign(jax.random.normal(key, x.shape, x.dtype))
  if init == "normal_projected":
    return project(jax.random.normal(key, x.shape, x.dtype), norm, eps)
  if init == "normal":
    return eps * jax.random.normal(key, x.shape, x.dtype)
  if init == "tiny_normal":
    return 0.001 * jax.random.normal(key, x.shape, x.dtype)
  raise ValueError(f"init={init!r} is not valid: use one of {', '.join(map(repr, INITS))}")


def _direction(g: jax.Array, rule: str) -> jax.Array:
  if rule == "sign":
    return jnp.sign(g)
  if rule == "l2":
    return g / jnp.maximum(jnp.sqrt(jnp.sum(g * g)), _TINY)
  return g


@dataclasses.dataclass(frozen=True)
class InputOptimizer:
  """An optimiser in input space, optax-style: `init` and `update` for ONE example.

  `run` vmaps the loop over a batch with a per-example gradient of a per-example loss; the fused
  ATENT step (atent_jax.methods) calls `init`/`update` itself with gradients from a batched
  forward/backward that also yields the weight gradient. Both give the same iterates.
  """
  norm: str
  eps: Any
  step_size: Any
  num_steps: int
  direction: str
  projection: str = "every"
  init_kind: str = "zero"
  noise_scale: Any = 0.0
  gamma: Any = 0.0
  gamma_times_step: bool = False
  clip: tuple[float, float] | None = (0.0, 1.0)

  def __post_init__(self):
    check_choice("direction", self.direction, DIRECTIONS)
    check_choice("projection", self.projection, PROJECTIONS)
    check_choice("init", self.init_kind, INITS)
    check_choice("norm", self.norm, NORMS)

  def _clamp(self, v):
    return v if self.clip is None else jnp.clip(v, self.clip[0], self.clip[1])

  def init(self, x0, key):
    """(x'0, noise key) of one example; x'0 = clip(x + delta)."""
    k_init, k_noise = jax.random.split(key)
    delta = initial_perturbation(k_init, x0, norm=self.norm, eps=self.eps, init=self.init_kind)
    return self._clamp(x0 + delta), k_noise

  def update(self, i, x0, xp, g, noise_key):
    """x'(i+1) of one example from x'i and the gradient g of the loss at x'i."""
    new = xp + self.step_size * _direction(g, self.direction)
    if not _is_static_zero(self.gamma):
      pull = self.gamma * self.step_size if self.gamma_times_step else self.gamma
      new = new + pull * (x0 - xp)
    if not _is_static_zero(self.noise_scale):
      std = self.noise_scale * jnp.sqrt(2.0 * jnp.asarray(self.step_size, x0.dtype))
      new = new + std * jax.random.normal(jax.random.fold_in(noise_key, i), x0.shape, x0.dtype)
    if self.projection == "every":
      new = x0 + project(new - x0, self.norm, self.eps)
    elif self.projection == "last":
      new = jnp.where(i == self.num_steps - 1, x0 + project(new - x0, self.norm, self.eps), new)
    return self._clamp(new)

  def run(self, loss_fn: LossFn, x, y, key, *, return_all: bool = False,
          unroll: bool | int | None = None):
    """The whole loop, vmapped over the batch; see `optimize_input`."""
    if unroll is None:
      unroll = default_unroll()
    x = jnp.asarray(x)
    keys = per_example_keys(key, x.shape[0])
    grad_fn = jax.grad(loss_fn)
    k_total = self.num_steps

    def one_example(x0, y0, k):
      xp, k_noise = self.init(x0, k)

      def body(i, carry):
        xp, samples = carry
        new = self.update(i, x0, xp, grad_fn(xp, y0), k_noise)
        if return_all:
          samples = samples.at[i].set(new)
        return new, samples

      samples = jnp.zeros((k_total,) + x0.shape, x0.dtype) if return_all else None
      xp, samples = jax.lax.fori_loop(0, k_total, body, (xp, samples), unroll=unroll)
      return samples if return_all else xp

    out = jax.vmap(one_example)(x, y, keys)
    return jnp.swapaxes(out, 0, 1) if return_all else out  # (B, K, ...) -> (K, B, ...)


def optimize_input(
    loss_fn: LossFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str,
    eps,
    step_size,
    num_steps: int,
    direction: str,
    projection: str = "every",
    init: str = "zero",
    noise_scale=0.0,
    gamma=0.0,
    gamma_times_step: bool = False,
    clip: tuple[float, float] | None = (0.0, 1.0),
    return_all: bool = False,
    unroll: bool | int | None = None,
) -> jax.Array:
  """Runs `num_steps` ascent steps on `loss_fn` in input space, vmapped over the batch.

  Each step: x' <- clip(project?(x' + step * direction(g) + gamma * (x - x') + noise)).

  Args:
    loss_fn: loss of ONE example, `loss_fn(x_example, y_example) -> scalar`; it closes over the
      model weights. Ascended (attacks and samplers maximise the loss).
    x, y: the batch (leading axis) of clean inputs and their labels (or any per-example pytree
      of targets the loss needs).
    key: one PRNG key or one per example (see `per_example_keys`).
    norm, eps: the ball that `projection` projects onto.
    direction: 'sign' (l_inf steepest ascent), 'l2' (per-example normalised gradient) or 'raw'.
    projection: 'every' step (PGD), only at the 'last' step (ATENT, paper Eq. 11), or 'none'.
    init: the starting perturbation (see `initial_perturbation`).
    noise_scale: Langevin noise; each step adds noise_scale * sqrt(2 * step_size) * N(0, I).
    gamma: pull towards x, gamma * (x - x') (times step_size if gamma_times_step).
    clip: the data range, applied after every step (None: no clipping).
    return_all: return all iterates x'1..x'K stacked on a new leading axis (K, *x.shape).
    unroll: `lax.fori_loop` unrolling; None picks `default_unroll()`.
  """
  opt = InputOptimizer(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps,
                       direction=direction, projection=projection, init_kind=init,
                       noise_scale=noise_scale, gamma=gamma, gamma_times_step=gamma_times_step,
                       clip=clip)
  return opt.run(loss_fn, x, y, key, return_all=return_all, unroll=unroll)


def _is_static_zero(v) -> bool:
  return isinstance(v, (int, float)) and v == 0


def sample_langevin(
    loss_fn: LossFn,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    norm: str,
    eps,
    step_size,
    num_steps: int,
    gamma=0.0,
    noise_scale=1e-3,
    random_init: bool = True,
    clip: tuple[float, float] | None = (0.0, 1.0),
    return_all: bool = False,
    update: str = "code",
    project_every_step: bool = False,
    unroll: bool | int | None = None,
) -> jax.Array:
  """Draws ATENT's Langevin samples x' near each example, p(x') ~ exp(L(x') - gamma/2 ||x'-x||).

  Pure and jit-able (static: norm, num_steps, random_init, clip, return_all, update, unroll).
  The loop runs in `lax.fori_loop`; the per-example gradient of `loss_fn` is vmapped over the
  batch.

  Args:
    loss_fn: `loss_fn(x_example, y_example) -> scalar`, the loss of ONE example; it closes
      over the weights (use the model in eval mode: no dropout, batch-norm running averages).
    x: a batch of inputs (B, ...); y: their labels (B, ...).
    key: one PRNG key, split into one key per example with `jax.random.split(key, B)`, or a
      batch of B keys. An example's sample depends only on its own key, so it is the same alone
      or in a batch when given the same per-example key.
    norm: 'linf' (Algorithm 2) or 'l2' (Algorithm 1).
    eps: radius of the ball the LAST sample is projected onto (earlier samples are unprojected
      unless `project_every_step`).
    step_size: the Langevin step eta'.
    num_steps: K, the number of samples.
    gamma: l_2 only, the pull gamma * (x - x') towards the clean point.
    noise_scale: epsilon; each step adds noise_scale * sqrt(2 * step_size) * N(0, I).
    random_init: start at x + delta (l_inf: eps * sign(N(0, I)), a random corner of the box;
      l_2: N(0, I) projected onto the eps-ball), clipped to `clip`; False starts at x.
    clip: data range applied after every step.
    return_all: return x'1..x'K stacked on a new leading axis (K, B, ...) instead of x'K.
    update: 'code' (default) is the authors' public code, which produced the paper's tables:
      l_inf x' += step * sign(g) + noise; l_2 x' += step * g / ||g||_2 (per example) +
      gamma * (x - x') + noise. 'paper' is the literal Eq. 8 / Eq. 11 with the raw gradient:
      x' += step * (g + gamma * (x - x')) + noise (l_inf: x' += step * g + noise).
    project_every_step: project every sample onto the eps-ball, not only the last one. The
      paper's Algorithm 2 projects at the K-th step only (False); the authors' notebook behind
      Table 2 (MNIST l_inf) projects after every step (True).
    unroll: fori_loop unrolling; None picks the backend default (unrolled on CPU, where a
      rolled loop with conv gradients is 4-12x slower).

  Returns:
    x'K with the shape of x, or all samples (K, *x.shape) with `return_all=True`.
  """
  opt = langevin_optimizer(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps,
                           gamma=gamma, noise_scale=noise_scale, random_init=random_init,
                           clip=clip, update=update, project_every_step=project_every_step)
  return opt.run(loss_fn, x, y, key, return_all=return_all, unroll=unroll)


def langevin_optimizer(*, norm, eps, step_size, num_steps, gamma=0.0, noise_scale=1e-3,
                       random_init=True, clip=(0.0, 1.0), update="code",
                       project_every_step=False) -> InputOptimizer:
  """The InputOptimizer that `sample_langevin` runs (ATENT's sampler), validated."""
  validate_optimizer_args(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps,
                          noise_scale=noise_scale, gamma=gamma)
  check_choice("update", update, UPDATES)
  paper = update == "paper"
  direction = "raw" if paper else ("sign" if norm == "linf" else "l2")
  init = ("corner" if norm == "linf" else "normal_projected") if random_init else "zero"
  return InputOptimizer(norm=norm, eps=eps, step_size=step_size, num_steps=num_steps,
                        direction=direction, projection="every" if project_every_step else "last",
                        init_kind=init,
                        noise_scale=noise_scale, gamma=gamma if norm == "l2" else 0.0,
                        gamma_times_step=paper, clip=clip)


def ema_weights(num_samples: int, alpha: float = 0.9, dtype=None) -> jax.Array:
  """Weights c_k with mu_K = sum_k c_k L_k for mu <- (1 - alpha) mu + alpha L_k, mu_0 = 0.

  c_k = alpha * (1 - alpha)^(K - k): with alpha 0.9 the last sample weighs 0.9, the one before
  0.09, then 0.009, ...; they sum to 1 - (1 - alpha)^K. Computed in float64 with NumPy, then
  cast to dtype (JAX's default float, float64 under jax_enable_x64, unless given).
  """
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)
  k = np.arange(1, num_samples + 1)
  return jnp.asarray(alpha * (1.0 - alpha) ** (num_samples - k), dtype)
