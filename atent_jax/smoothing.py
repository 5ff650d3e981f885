"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): PREDICT and CERTIFY.

The smoothed classifier is g(x) = argmax_c P(f(x + sigma * eps) = c), eps ~ N(0, I), where f is
the argmax of `logits_fn`. The noise is in [0, 1] pixel units (any normalisation belongs inside
`logits_fn`), and noisy images are NOT clipped to [0, 1], as in Cohen et al.

CERTIFY (their Algorithm 1): guess the top class cA from n0 selection samples, count it in a fresh
set of n estimation samples, take the one-sided (1 - alpha) Clopper-Pearson lower bound pA_lower
of P(f(x + noise) = cA); abstain (-1) if pA_lower < 0.5, else certify cA within the l_2 radius
sigma * Phi^-1(pA_lower). With probability >= 1 - alpha over the noise, a returned certificate is
correct. PREDICT: take the top two counts of n samples and abstain unless a two-sided binomial test
(p = 0.5) rejects their equality at level alpha.

Noise sampling and the forward pass run in ONE jitted function of (key, chunk index), so noise
never reaches the host; chunk i uses fold_in(key, i), and the last chunk is masked, so exactly
`num_samples` predictions are counted whatever the batch size.

`logits_fn` maps float32 NHWC images (N, H, W, C) to logits (N, num_classes). It is a static jit
argument (the compiled counter is cached per function object, so pass the same object every time);
if it is a `jax.tree_util.Partial`, its bound arguments (e.g. the parameters) are passed as traced
arguments instead of being baked into the compiled function as constants.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from atent_jax.errors import ConfigError, DataError

ABSTAIN = -1

LogitsFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_sigma(sigma) -> float:
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    raise ConfigError(f"sigma={sigma!r} is not valid: use a number > 0") from None
  if not math.isfinite(value) or value <= 0:
    raise ConfigError(f"sigma={sigma!r} is not valid: use a finite number > 0")
  return value


def _check_count(name: str, value) -> int:
  if not _is_int(value) or value < 1:
    raise ConfigError(f"{name}={value!r} is not valid: use an integer >= 1")
  return int(value)


def _check_alpha(alpha) -> float:
  try:
    value = float(alpha)
  except (TypeError, ValueError):
    raise ConfigError(f"alpha={alpha!r} is not valid: use a number in (0, 1)") from None
  if not 0.0 < value < 1.0:
    raise ConfigError(f"alpha={alpha!r} is not valid: use a number in (0, 1)")
  return value


def _check_images(images, *, batched: bool) -> np.ndarray:
  """Float32 copy of the image(s); one-line errors: bad rank, NaN/Inf, pixels outside [0, 1]."""
  arr = np.asarray(images, dtype=np.float32)
  what = "images" if batched else "x"
  want = 4 if batched else 3
  if arr.ndim != want:
    layout = "(N, H, W, C)" if batched else "(H, W, C)"
    raise DataError(f"{what} has shape {arr.shape}: expected {want} dims {layout}")
  if arr.size == 0:
    raise DataError(f"{what} is empty (shape {arr.shape})")
  if not np.all(np.isfinite(arr)):
    raise DataError(f"{what} contains NaN or Inf")
  lo, hi = float(arr.min()), float(arr.max())
  if lo < 0.0 or hi > 1.0:
    raise DataError(f"{what} has pixels in [{lo:.4g}, {hi:.4g}]: expected images scaled to [0, 1] "
                    "(normalisation belongs inside logits_fn)")
  return arr


def check_settings(*, sigma, n0, n, alpha) -> tuple[float, int, int, float]:
  """Validated (sigma, n0, n, alpha): one-line ConfigError (a ValueError) for a bad value."""
  return (_check_sigma(sigma), _check_count("n0", n0), _check_count("n", n), _check_alpha(alpha))


def _as_key(key):
  if _is_int(key):
    return jax.random.key(int(key))
  return key


# ----------------------------------------------------------------------------------------------
# Monte-Carlo counts
# ----------------------------------------------------------------------------------------------

def _chunk_counts_impl(logits_fn, key, x, sigma, chunk_index, num_valid, chunk_size, num_classes):
  chunk_key = jax.random.fold_in(key, chunk_index)
  noise = jax.random.normal(chunk_key, (chunk_size,) + x.shape, dtype=x.dtype)
  logits = logits_fn(x[None] + sigma * noise)
  if logits.ndim != 2 or logits.shape[0] != chunk_size:
    raise ValueError(f"logits_fn returned shape {logits.shape} for a batch of {chunk_size}: "
                     "expected (batch, num_classes)")
  width = logits.shape[-1]
  if num_classes is None:
    num_classes = width
  elif width > num_classes:
    raise ValueError(f"logits_fn returned {width} classes but num_classes={num_classes}")
  preds = jnp.argmax(logits, axis=-1)
  valid = (jnp.arange(chunk_size) < num_valid).astype(jnp.int32)
  return jnp.zeros((num_classes,), jnp.int32).at[preds].add(valid)


# logits_fn static: compiled once per function object (and shapes).
_chunk_counts_static = jax.jit(_chunk_counts_impl, static_argnums=(0, 6, 7))
# logits_fn a pytree (jax.tree_util.Partial): its leaves are traced arguments.
_chunk_counts_pytree = jax.jit(_chunk_counts_impl, static_argnums=(6, 7))


def sample_counts(logits_fn: LogitsFn, x, num_samples: int, sigma: float, key, *,
                  batch_size: int = 1000, num_classes: int | None = None) -> np.ndarray:
  """Counts of argmax logits_fn(x + sigma * N(0, I)) over exactly `num_samples` noise draws.

  Args:
    logits_fn: maps float32 images (B, *x.shape) to logits (B, C).
    x: one image (e.g. H, W, C). Its range is not checked here.
    num_samples: number of noisy copies to classify.
    sigma: noise standard deviation, in the units of x.
    key: a JAX PRNG key (or an int seed). Chunk i uses fold_in(key, i).
    batch_size: noisy copies per forward pass (the chunk is min(batch_size, num_samples)).
    num_classes: length of the result; defaults to the logits' width.

  Returns:
    int64 numpy array (num_classes,) that sums to num_samples.
  """
  sigma = _check_sigma(sigma)
  num_samples = _check_count("num_samples", num_samples)
  batch_size = _check_count("batch_size", batch_size)
  if num_classes is not None:
    num_classes = _check_count("num_classes", num_classes)
  key = _as_key(key)
  x = jnp.asarray(x, dtype=jnp.float32)
  chunk_size = min(batch_size, num_samples)
  num_chunks = -(-num_samples // chunk_size)
  if isinstance(logits_fn, jax.tree_util.Partial):
    fn = _chunk_counts_pytree
  else:
    fn = _chunk_counts_static
  total = None
  for i in range(num_chunks):
    num_valid = min(chunk_size, num_samples - i * chunk_size)
    counts = fn(logits_fn, key, x, sigma, i, num_valid, chunk_size, num_classes)
    total = counts if total is None else total + counts
  result = np.asarray(total, dtype=np.int64)
  if int(result.sum()) != num_samples:  # pragma: no cover - guards the masking logic
    raise AssertionError(f"counted {int(result.sum())} samples instead of {num_samples}")
  return result


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

def lower_confidence_bound(n_a, n, alpha):
  """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

  Equal to statsmodels' proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]:
  the alpha quantile of Beta(n_a, n - n_a + 1), and 0 when n_a = 0. Vectorised over n_a and n.
  """
  alpha = _check_alpha(alpha)
  n_a_arr = np.asarray(n_a)
  n_arr = np.asarray(n)
  for name, value, arr in (("n_a", n_a, n_a_arr), ("n", n, n_arr)):
    if not (np.issubdtype(arr.dtype, np.integer) or
            (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))):
      raise ConfigError(f"{name}={value!r} is not valid: use integer counts")
  if np.any(n_arr < 1):
    raise ConfigError(f"n={n!r} is not valid: use an integer >= 1")
  if np.any(n_a_arr < 0) or np.any(n_a_arr > n_arr):
    raise ConfigError(f"n_a={n_a!r} is not valid: use 0 <= n_a <= n (n={n!r})")
  a = np.where(n_a_arr == 0, 1, n_a_arr).astype(np.float64)
  bound = stats.beta.ppf(alpha, a, n_arr - n_a_arr + 1.0)
  bound = np.where(n_a_arr == 0, 0.0, bound)
  if bound.ndim == 0:
    return float(bound)
  return bound


def _split(key):
  k0, k1 = jax.random.split(_as_key(key))
  return k0, k1


def predict(logits_fn: LogitsFn, x, *, sigma: float, n: int = 1000, alpha: float = 0.001, key,
            batch_size: int = 1000, num_classes: int | None = None) -> int:
  """Cohen et al.'s PREDICT: the top class of n noisy samples, or -1 (abstain).

  Abstains when a two-sided binomial test of the top two counts (nA vs nB, p = 0.5) has
  p-value > alpha.
  """
  sigma = _check_sigma(sigma)
  n = _check_count("n", n)
  alpha = _check_alpha(alpha)
  x = _check_images(x, batched=False)
  counts = sample_counts(logits_fn, x, n, sigma, key, batch_size=batch_size,
                         num_classes=num_classes)
  return _predict_from_counts(counts, alpha)


def _predict_from_counts(counts: np.ndarray, alpha: float) -> int:
  order = np.argsort(-counts, kind="stable")
  top = int(order[0])
  count_a = int(counts[top])
  count_b = int(counts[order[1]]) if counts.size > 1 else 0
  p_value = stats.binomtest(count_a, count_a + count_b, p=0.5).pvalue
  return ABSTAIN if p_value > alpha else top


def certify(logits_fn: LogitsFn, x, *, sigma: float, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, key, batch_size: int = 1000,
            num_classes: int | None = None) -> tuple[int, float]:
  """Cohen et al.'s CERTIFY: (class, l_2 radius), or (-1, 0.0) to abstain.

  The class is the most frequent among n0 selection samples; its count among n fresh samples
  gives the one-sided Clopper-Pearson bound pA_lower at level alpha; the radius is
  sigma * Phi^-1(pA_lower), abstaining when pA_lower < 0.5.
  """
  sigma = _check_sigma(sigma)
  n0 = _check_count("n0", n0)
  n = _check_count("n", n)
  alpha = _check_alpha(alpha)
  x = _check_images(x, batched=False)
  key_select, key_estimate = _split(key)
  counts0 = sample_counts(logits_fn, x, n0, sigma, key_select, batch_size=batch_size,
                          num_classes=num_classes)
  c_a = int(np.argmax(counts0))
  counts = sample_counts(logits_fn, x, n, sigma, key_estimate, batch_size=batch_size,
                         num_classes=num_classes)
  n_a = int(counts[c_a]) if c_a < counts.size else 0
  p_a_lower = lower_confidence_bound(n_a, n, alpha)
  if p_a_lower < 0.5:
    return ABSTAIN, 0.0
  return c_a, float(sigma * stats.norm.ppf(p_a_lower))


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------

def certify_dataset(logits_fn: LogitsFn, images, labels, *, sigma: float, n0: int = 100,
                    n: int = 100_000, alpha: float = 0.001, key, batch_size: int = 1000,
                    progress: bool = True, indices: Sequence[int] | None = None,
                    num_classes: int | None = None,
                    callback: Callable[[dict], Any] | None = None) -> list[dict]:
  """CERTIFY on every image; a list of dicts (index, label, prediction, radius, correct, time).

  Example i uses the key fold_in(key, indices[i]) (indices default to 0..N-1: pass the dataset
  indices of a subset so an example's result does not depend on which subset was taken).
  `time` is the wall-clock seconds of that example (the first one includes compilation).
  `callback(result)` is called after each example (e.g. to append it to a file).
  """
  sigma = _check_sigma(sigma)
  n0 = _check_count("n0", n0)
  n = _check_count("n", n)
  alpha = _check_alpha(alpha)
  batch_size = _check_count("batch_size", batch_size)
  images = _check_images(images, batched=True)
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise DataError(f"labels has shape {labels.shape}: expected ({images.shape[0]},), "
                    "one per image")
  if indices is None:
    indices = np.arange(images.shape[0])
  indices = np.asarray(indices)
  if indices.shape != (images.shape[0],):
    raise DataError(f"indices has shape {indices.shape}: expected ({images.shape[0]},)")
  key = _as_key(key)

  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  results = []
  num_correct = 0
  bar = tqdm(total=images.shape[0], desc=f"certify sigma={sigma:g}", unit="img",
             disable=not progress)
  try:
    for image, label, index in zip(images, labels, indices):
      start = time.perf_counter()
      prediction, radius = certify(logits_fn, image, sigma=sigma, n0=n0, n=n, alpha=alpha,
                                   key=jax.random.fold_in(key, int(index)),
                                   batch_size=batch_size, num_classes=num_classes)
      elapsed = time.perf_counter() - start
      correct = bool(prediction == int(label))
      result = {"index": int(index), "label": int(label), "prediction": int(prediction),
                "radius": float(radius), "correct": correct, "time": float(elapsed)}
      results.append(result)
      num_correct += correct
      if callback is not None:
        callback(result)
      bar.update(1)
      bar.set_postfix(acc_r0=f"{num_correct / len(results):.3f}", refresh=False)
  finally:
    bar.close()
  return results


def _radii_and_correct(results) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(results, Mapping):
    radius = np.asarray(results["radius"], dtype=np.float64)
    correct = np.asarray(results["correct"], dtype=bool)
  else:
    results = list(results)
    radius = np.asarray([r["radius"] for r in results], dtype=np.float64)
    correct = np.asarray([bool(r["correct"]) for r in results], dtype=bool)
  if radius.size == 0:
    raise DataError("no certification results: certified accuracy is undefined")
  return radius, correct


def certified_accuracy(results: Iterable[Mapping] | Mapping, radii) -> np.ndarray:
  """Fraction of examples that are correct AND certified at radius >= r, for each r in radii.

  `results`: the list from `certify_dataset` (or a mapping with arrays "radius" and "correct").
  Abstentions count as wrong. Returns float64 array shaped like radii.
  """
  radius, correct = _radii_and_correct(results)
  radii_arr = np.asarray(radii, dtype=np.float64)
  hit = correct[None, :] & (radius[None, :] >= radii_arr.reshape(-1, 1))
  return hit.mean(axis=1).reshape(radii_arr.shape)


__all__ = [
    "ABSTAIN", "check_settings", "sample_counts", "lower_confidence_bound", "predict", "certify",
    "certify_dataset", "certified_accuracy",
]
