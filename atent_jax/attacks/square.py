"""Square Attack (Andriushchenko et al., ECCV 2020): score-based, gradient-free, l_inf and l_2.

Random search on the margin loss z_y - max_{j != y} z_j: each query changes the current best
point in a random square window and is kept when it lowers the margin. The side of the window
follows the reference's schedule: the fraction p of pixels changed starts at p_init and halves
after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query budget
(rescaled to num_queries). l_inf starts from vertical stripes of +-eps and sets a window to one
corner (+-eps per channel); l_2 starts from a grid of centred +/- bumps and moves l_2 mass
between two windows, keeping the perturbation's norm at eps.

Written from the paper and the constants of the reference implementation (fra31/auto-attack).
Unlike the reference, which draws one window and one sign per batch, every example draws its
own from its own key, so an example's result does not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from atent_jax import langevin
from atent_jax.attacks import common

SQUARE_NORMS = ("linf", "l2")
# The iterations (of 10,000) after which p halves.
P_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

_TINY = common.TINY


class SquareResult(NamedTuple):
  adv: jax.Array        # (B, H, W, C): the adversarial point where found, else x
  success: jax.Array    # (B,) bool: misclassified at adv within eps
  queries: jax.Array    # (B,) int: model queries spent on the example (0 for misclassified x)
  margin: jax.Array     # (B,) best margin z_y - max_{j != y} z_j of the last restart (<= 0:
                        # fooled; -inf for misclassified x)


# --- schedule and window patterns (static, NumPy) ---------------------------------------------

def p_schedule_level(iteration: int, num_queries: int, rescale_schedule: bool = True) -> int:
  """How many times p has halved at `iteration` (0-based): p = p_init / 2**level."""
  it = iteration * 10000 // num_queries if rescale_schedule else iteration
  return sum(it > t for t in P_HALVING_ITERATIONS)


def window_sides(norm: str, p_init: float, height: int, width: int) -> np.ndarray:
  """The window side per schedule level: round(sqrt(p * H * W)), at least 1 (l_inf) or 3 and odd
  (l_2), at most min(H, W) (the reference assumes it fits)."""
  sides = []
  for level in range(len(P_HALVING_ITERATIONS) + 1):
    s = round(math.sqrt(p_init / 2 ** level * height * width))
    if norm == "linf":
      s = max(s, 1)
    else:
      s = max(s, 3)
      s += 1 - s % 2
    sides.append(min(s, min(height, width)))
  return np.asarray(sides, np.int32)


def _bump(rows: int, cols: int) -> np.ndarray:
  """A centred pyramid on a rows x cols rectangle, unit l_2 norm: the sum of 1/(k+1)^2 over the
  concentric squares k (radius k around the centre (rows//2, cols//2)) that contain the pixel."""
  if rows == 0 or cols == 0:
    return np.zeros((rows, cols))
  num_rings = max(rows // 2, cols // 2) + 1
  tail = np.cumsum([1.0 / (k + 1) ** 2 for k in range(num_rings)][::-1])[::-1]  # sum_{k>=m}
  ring = np.maximum(np.abs(np.arange(rows) - rows // 2)[:, None],
                    np.abs(np.arange(cols) - cols // 2)[None, :])
  bump = tail[ring]
  return bump / np.sqrt(np.sum(bump ** 2))


def l2_window_pattern(side: int) -> np.ndarray:
  """The l_2 attack's pattern on a side x side window (unit l_2 norm): a positive bump on the
  top side//2 rows and a negative bump on the rest."""
  top = side // 2
  pattern = np.concatenate([_bump(top, side), -_bump(side - top, side)], 0)
  return pattern / np.sqrt(np.sum(pattern ** 2))


def _l2_init_patterns(height: int, width: int) -> np.ndarray:
  """(num_blocks, 2, H, W): the l_2 start's grid of windows of side H // 5 (the reference's
  layout, clipped to the image), each pattern and its transpose."""
  side = max(height // 5, 1)
  start = (height - side * 5) // 2
  pattern = l2_window_pattern(side)
  blocks = []
  for i in range(height // side):
    for j in range(width // side):
      r, c = start + i * side, start + j * side
      if r >= height or c >= width:
        continue
      both = np.zeros((2, height, width))
      h, w = min(side, height - r), min(side, width - c)
      both[0, r:r + h, c:c + w] = pattern[:h, :w]
      both[1, r:r + h, c:c + w] = pattern.T[:h, :w]
      blocks.append(both)
  return np.stack(blocks)


# --- per-example proposals --------------------------------------------------------------------

def _window(key, side, height, width):
  """A random side x side window: (mask (H, W), row offsets, column offsets in the window)."""
  k_row, k_col = jax.random.split(key)
  # Origins in [0, H - side), as the reference draws them (0 when the window fills the image).
  r0 = jnp.floor(jax.random.uniform(k_row) * (height - side)).astype(jnp.int32)
  c0 = jnp.floor(jax.random.uniform(k_col) * (width - side)).astype(jnp.int32)
  dr = jnp.arange(height)[:, None] - r0
  dc = jnp.arange(width)[None, :] - c0
  mask = (dr >= 0) & (dr < side) & (dc >= 0) & (dc < side)
  return mask, dr, dc


def _signs(key, shape, dtype):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def _linf_init(key, x, eps):
  """Vertical stripes: +-eps per (column, channel), the same down each column."""
  stripes = _signs(key, (1,) + x.shape[1:], x.dtype)
  return jnp.clip(x + eps * stripes, 0.0, 1.0)


def linf_proposal(key, x, x_best, eps, side):
  """One l_inf query of one image: a random side x side window of x_best moved to x +- eps (one
  random sign per channel), the result kept in the eps-ball around x and in [0, 1]."""
  k_win, k_sign = jax.random.split(key)
  mask, _, _ = _window(k_win, side, x.shape[0], x.shape[1])
  sign = _signs(k_sign, (x.shape[-1],), x.dtype)
  x_new = x_best + jnp.where(mask[..., None], 2.0 * eps * sign, 0.0)
  return jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)


def _unit_l2(delta):
  return delta / (jnp.sqrt(jnp.sum(delta * delta)) + _TINY)


def _l2_init(key, x, eps, blocks):
  k_sign, k_flip = jax.random.split(key)
  signs = _signs(k_sign, (blocks.shape[0], x.shape[-1]), x.dtype)            # (blocks, C)
  flip = jax.random.bernoulli(k_flip, 0.5, (blocks.shape[0],)).astype(jnp.int32)
  chosen = jnp.take_along_axis(blocks, flip[:, None, None, None], 1)[:, 0]  # (blocks, H, W)
  delta = jnp.einsum("khw,kc->hwc", chosen.astype(x.dtype), signs)
  return jnp.clip(x + eps * _unit_l2(delta), 0.0, 1.0)


def l2_proposal(key, x, x_best, eps, side, patterns):
  """Moves the l_2 mass of window 2 into window 1, where the old perturbation (per channel
  unit-normalised) plus a random signed bump replaces it, scaled so the perturbation's l_2 norm
  stays eps; the result is renormalised to eps and clipped to [0, 1]."""
  k_w1, k_w2, k_sign, k_flip = jax.random.split(key, 4)
  height, width, channels = x.shape
  delta = x_best - x
  mask1, dr, dc = _window(k_w1, side, height, width)
  mask2, _, _ = _window(k_w2, side, height, width)
  m1 = mask1[..., None]
  flip = jax.random.bernoulli(k_flip)
  rr, cc = jnp.where(flip, dc, dr), jnp.where(flip, dr, dc)
  last = patterns.shape[-1] - 1
  bump = patterns[jnp.clip(rr, 0, last), jnp.clip(cc, 0, last)]               # (H, W)
  sign = _signs(k_sign, (channels,), x.dtype)
  per_channel = lambda v: jnp.sqrt(jnp.sum(v * v, (0, 1), keepdims=True))
  old = jnp.where(m1, delta, 0.0)
  new = jnp.where(m1, bump[..., None] * sign, 0.0) + old / (_TINY + per_channel(old))
  norm_image2 = jnp.sum(delta * delta)
  union = jnp.where((mask1 | mask2)[..., None], delta, 0.0)
  budget = jnp.sqrt(jnp.maximum(eps ** 2 - norm_image2, 0.0) / channels + jnp.sum(union ** 2))
  new = new / (_TINY + per_channel(new)) * budget
  delta = jnp.where(m1, new, jnp.where(mask2[..., None], 0.0, delta))
  return jnp.clip(x + eps * _unit_l2(delta), 0.0, 1.0)


# --- the attack -------------------------------------------------------------------------------

def _margin(logits, y):
  """z_y - max_{j != y} z_j per example: <= 0 means misclassified (the reference's rule)."""
  is_y = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(is_y, logits, 0.0), -1)
  return z_y - jnp.max(jnp.where(is_y, -jnp.inf, logits), -1)


def square_with_stats(logits_fn, x, y, key, *, norm, eps, num_queries=5000, p_init=0.8,
                      num_restarts=1, rescale_schedule=True) -> SquareResult:
  """Square Attack with its per-example statistics; see `square`."""
  common.check_norm(norm, SQUARE_NORMS)
  common.check_eps(eps)
  common.check_int("num_queries", num_queries)
  common.check_fraction("p_init", p_init)
  common.check_int("num_restarts", num_restarts)
  if rescale_schedule not in (True, False):
    raise ValueError(f"rescale_schedule={rescale_schedule!r} is not valid: use True or False")
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim != 4:
    raise ValueError(f"x has shape {x.shape}: pass a batch of NHWC images (B, H, W, C)")
  common.num_classes_of(logits_fn, x, y)
  batch, height, width, _ = x.shape
  keys = langevin.per_example_keys(key, batch)
  attackable = jnp.argmax(logits_fn(x), -1) == y
  # Static tables: the schedule level of every iteration and the window side of every level.
  levels = jnp.asarray([p_schedule_level(i, num_queries, rescale_schedule)
                        for i in range(num_queries)], jnp.int32)
  sides = jnp.asarray(window_sides(norm, p_init, height, width))
  if norm == "l2":
    side_max = int(np.max(window_sides(norm, p_init, height, width)))
    patterns = np.zeros((len(P_HALVING_ITERATIONS) + 1, side_max, side_max))
    for level, s in enumerate(window_sides(norm, p_init, height, width)):
      patterns[level, :s, :s] = l2_window_pattern(int(s))
    patterns = jnp.asarray(patterns, x.dtype)
    blocks = jnp.asarray(_l2_init_patterns(height, width), x.dtype)
    init = jax.vmap(lambda k, xi: _l2_init(k, xi, eps, blocks))
    propose = jax.vmap(lambda k, xi, xb, level: l2_proposal(
        k, xi, xb, eps, sides[level], patterns[level]), (0, 0, 0, None))
  else:
    init = jax.vmap(lambda k, xi: _linf_init(k, xi, eps))
    propose = jax.vmap(lambda k, xi, xb, level: linf_proposal(k, xi, xb, eps, sides[level]),
                       (0, 0, 0, None))
  fold = jax.vmap(jax.random.fold_in, (0, None))

  def restart(r, state):
    adv, margin, queries = state
    active = attackable & (margin > 0)            # restarts only for the points still robust
    run_keys = fold(keys, r)
    x_best = jnp.where(common.broadcast_mask(active, x), init(fold(run_keys, 0), x), adv)
    m = jnp.where(active, _margin(logits_fn(x_best), y), margin)
    queries = queries + active

    def running(s):
      i, _, m, _ = s
      return (i < num_queries) & jnp.any(active & (m > 0))

    def query(s):
      i, x_best, m, queries = s
      todo = active & (m > 0)                     # only the points not fooled yet
      x_new = propose(fold(run_keys, i + 1), x, x_best, levels[i])
      m_new = _margin(logits_fn(x_new), y)
      # The loss is the margin itself, so "lower loss or misclassified" is "lower margin".
      better = todo & (m_new < m)
      x_best = jnp.where(common.broadcast_mask(better, x), x_new, x_best)
      return i + 1, x_best, jnp.where(better, m_new, m), queries + todo

    _, x_best, m, queries = jax.lax.while_loop(running, query, (0, x_best, m, queries))
    return x_best, m, queries

  start = (x, jnp.where(attackable, jnp.inf, -jnp.inf).astype(x.dtype),
           jnp.zeros(batch, jnp.int32))
  x_best, margin, queries = jax.lax.fori_loop(0, num_restarts, restart, start)
  success = attackable & (jnp.argmax(logits_fn(x_best), -1) != y)
  adv = jnp.where(common.broadcast_mask(success, x), x_best, x)
  return SquareResult(adv, success, queries, jnp.where(attackable, margin, -jnp.inf))


def square(logits_fn, x, y, key, *, norm, eps, num_queries=5000, p_init=0.8, num_restarts=1,
           rescale_schedule=True):
  """Square Attack at radius eps ('linf' or 'l2'): per example the first point of the random
  search that the model misclassifies, else x; always in the eps-ball and in [0, 1].

  Per restart (num_restarts, only for points still robust): one query at the start point, then
  up to num_queries queries, each for the points not fooled yet; the loop ends early once every
  point is fooled. p_init: the fraction of pixels the first windows change (reference 0.8);
  rescale_schedule=False applies the schedule's iteration numbers as they are instead of scaling
  them to num_queries. Deterministic for a key; example i's randomness comes from its own key
  (`langevin.per_example_keys`), so its result does not depend on its batch.
  """
  return square_with_stats(logits_fn, x, y, key, norm=norm, eps=eps, num_queries=num_queries,
                           p_init=p_init, num_restarts=num_restarts,
                           rescale_schedule=rescale_schedule).adv
