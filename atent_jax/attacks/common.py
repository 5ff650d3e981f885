"""Shared pieces of the AutoAttack family (APGD, FAB, Square, the `autoattack` runner).

Per-example losses on a batch of logits (cross-entropy, DLR, targeted DLR), per-example norms
and normalisation, the projection onto the eps-ball intersected with the [0, 1] box, the
choice of target classes, and the argument checks that give one-line ValueErrors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from atent_jax import langevin
from atent_jax.attacks.classic import flat_norm

NORMS = ("linf", "l2")
# Added to denominators so that an all-zero vector normalises to zero instead of NaN.
TINY = 1e-12


# --- argument checks --------------------------------------------------------------------------

def check_norm(norm, supported=NORMS) -> None:
  if norm not in supported:
    raise ValueError(f"norm={norm!r} is not supported: use one of "
                     f"{', '.join(map(repr, supported))}")


def check_eps(eps) -> None:
  """eps must be a finite number > 0; a traced eps (an eps sweep under one jit) is not checked."""
  if isinstance(eps, jax.core.Tracer):
    return
  try:
    ok = math.isfinite(float(eps)) and float(eps) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok or isinstance(eps, bool):
    raise ValueError(f"eps={eps!r} is not valid: use a finite number > 0")


def check_int(name: str, value, lo: int = 1) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < lo:
    raise ValueError(f"{name}={value!r} is not valid: use an integer >= {lo}")


def check_fraction(name: str, value) -> None:
  try:
    ok = 0.0 < float(value) <= 1.0
  except (TypeError, ValueError):
    ok = False
  if not ok or isinstance(value, bool):
    raise ValueError(f"{name}={value!r} is not valid: use a number in (0, 1]")


def num_classes_of(logits_fn, x, y=None, *, min_classes: int = 2) -> int:
  """The number of classes of `logits_fn`, checked without running it (jax.eval_shape).

  Raises ValueError naming `logits_fn` when its output on x (B, ...) is not (B, num_classes),
  naming `y` when y is not (B,) integers, and naming `logits_fn` when there are fewer than
  `min_classes` classes (DLR needs 3, targeted DLR 4).
  """
  x_shape = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
  if len(x_shape.shape) < 2:
    raise ValueError(f"x has shape {tuple(x_shape.shape)}: pass a batch (B, ...) of images")
  batch = x_shape.shape[0]
  out = jax.eval_shape(logits_fn, x_shape)
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != batch:
    raise ValueError(f"logits_fn returns {shape if shape is not None else type(out).__name__} on "
                     f"a batch of {batch}: it must return logits of shape (batch, num_classes)")
  if shape[1] < min_classes:
    raise ValueError(f"logits_fn returns {shape[1]} classes: this attack needs at least "
                     f"{min_classes}")
  if y is not None:
    y_shape, y_dtype = tuple(jnp.shape(y)), jnp.result_type(y)
    if y_shape != (batch,) or not jnp.issubdtype(y_dtype, jnp.integer):
      raise ValueError(f"y has shape {y_shape} and dtype {y_dtype}: pass ({batch},) integer "
                       "labels")
  return int(shape[1])


# --- per-example geometry ---------------------------------------------------------------------

def broadcast_mask(mask: jax.Array, x: jax.Array) -> jax.Array:
  """A per-example (B,) array reshaped to broadcast against x (B, ...)."""
  return mask.reshape((-1,) + (1,) * (x.ndim - 1))


def per_example_norm(v: jax.Array, norm: str) -> jax.Array:
  """||v_i|| in `norm` for each example of v (B, ...)."""
  return flat_norm(v, norm)


def normalize(v: jax.Array, norm: str) -> jax.Array:
  """v_i / ||v_i|| per example (zero stays zero)."""
  return v / broadcast_mask(per_example_norm(v, norm) + TINY, v)


def project_ball_box(x: jax.Array, x_adv: jax.Array, norm: str, eps) -> jax.Array:
  """A point of the eps-ball around x (in `norm`) intersected with [0, 1].

  l_inf: the exact projection (clip to the ball, then to the box). l_2: radial projection onto
  the ball, then clipping to the box; clipping moves every pixel towards x (x is in the box), so
  the result stays in the ball. Points already feasible are returned unchanged.
  """
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = per_example_norm(delta, "l2")
    delta = delta * broadcast_mask(jnp.minimum(1.0, eps / jnp.maximum(n, TINY)), delta)
  return jnp.clip(x + delta, 0.0, 1.0)


# --- losses on a batch of logits (B, C) -> (B,) ------------------------------------------------

def ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Cross-entropy of the true class (ascended by untargeted attacks)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def ce_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  """Minus the cross-entropy of the target class (ascending it pulls towards the target)."""
  del y
  return -optax.softmax_cross_entropy_with_integer_labels(logits, target)


def _take(logits, idx):
  return jnp.take_along_axis(logits, idx[:, None], -1)[:, 0]


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Difference of logits ratio (Croce and Hein 2020, eq. 5), untargeted:

      -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)

  with z_pi1 >= z_pi2 >= z_pi3 the sorted logits; shift- and scale-invariant. Positive once
  the example is misclassified. Needs at least 3 classes.
  """
  top3 = jax.lax.top_k(logits, 3)[0]
  z_y = _take(logits, y)
  is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  best_other = jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)
  return -(z_y - best_other) / (top3[:, 0] - top3[:, 2] + TINY)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  """Targeted DLR (Croce and Hein 2020, eq. 6):

      -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

  Positive once the target's logit exceeds the true class's. Needs at least 4 classes.
  """
  top4 = jax.lax.top_k(logits, 4)[0]
  return -(_take(logits, y) - _take(logits, target)) / (
      top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + TINY)


def top_other_classes(logits: jax.Array, y: jax.Array, k: int) -> jax.Array:
  """(B, k): per example the k classes other than y with the highest logits, highest first.

  On a correctly classified example these are the classes ranked 2 .. k+1, the targets of the
  reference's APGD-T and FAB-T.
  """
  is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  return jax.lax.top_k(jnp.where(is_y, -jnp.inf, logits), k)[1]


# --- compilation cache -------------------------------------------------------------------------

class PerModelCache:
  """Built objects (jitted functions) for the most recent model only.

  `get(model, key, build)` returns `build(model)` made once per key while `model` (a logits_fn,
  compared by identity) stays the same; a call with another model drops everything, so at most
  one model's weights (closed over by its logits_fn) stay referenced here.
  """

  def __init__(self):
    self.model, self.items = None, {}

  def get(self, model, key, build):
    if self.model is not model:
      self.model, self.items = model, {}
    if key not in self.items:
      self.items[key] = build(model)
    return self.items[key]


LOOPS = ("auto", "device", "host")


def resolve_loop(loop: str, *inputs) -> str:
  """'host' or 'device' for an attack with a `loop` argument (APGD, FAB): 'auto' is the host
  loop of jitted steps on the CPU backend (several times faster there than a lax loop whose
  body holds a convolution's input gradient) when the inputs are concrete, else the device
  loop; 'host' under jit (traced inputs) is refused."""
  langevin.check_choice("loop", loop, LOOPS)
  traced = any(isinstance(v, jax.core.Tracer) for v in inputs)
  if loop == "host" and traced:
    raise ValueError("loop='host' needs concrete inputs: use loop='device' (or 'auto') under "
                     "jax.jit")
  if loop == "auto":
    return "host" if jax.default_backend() == "cpu" and not traced else "device"
  return loop
