"""Tests of randomized smoothing (atent_jax.smoothing) and the certify CLI (experiments/certify.py).

Toy models with known smoothed classifiers:
  * linear f(x) = sign(w.x + b): P(f(x + sigma*eps) = 0) = Phi((w.x + b) / (sigma ||w||)), so the
    certified radius has the closed form sigma * Phi^-1(pA) = |w.x + b| / ||w||;
  * a "wedge" (class 0 iff two pixels both exceed thresholds): pA = Phi(m0/sigma) Phi(m1/sigma);
  * a "coin" that looks only at the sign of the noise on one pixel: counts ~ 50/50.

Each (classifier, chunk size) pair compiles sample_counts' jitted chunk once (seconds, mostly the
noise generator), so the tests share a few chunk sizes: N0_CHUNK for selection, EST_CHUNK for
estimation and the attacks' bisection, PREDICT_CHUNK for predict. The linear classifiers are a
jax.tree_util.Partial of one module-level function (their weights are traced arguments), so all
of them share those compilations; the plain-function path is the coin's and the wedge's (and
test_sample_counts_accepts_tree_util_partial checks that both paths count alike).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from atent_jax import smoothing
from atent_jax.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (4, 4, 1)  # tiny NHWC images
DIM = int(np.prod(SHAPE))
N0_CHUNK = 100        # n0 = 100 selection samples: one chunk
EST_CHUNK = 5000      # estimation: n = 20,000 or 100,000 in chunks of 5,000
PREDICT_CHUNK = 500   # predict: n = 1,000 in two chunks


# ----------------------------------------------------------------------------------------------
# Toy models
# ----------------------------------------------------------------------------------------------

def _linear_problem(margin: float, seed: int = 0):
  """(logits_fn, x, w, b) with x in [0, 1] at signed l_2 distance `margin` from w.x + b = 0.
  logits_fn is class 0 iff w.z + b > 0: a Partial of _linear_apply (see the module docstring)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=DIM).astype(np.float64)
  w *= 2.7 / np.linalg.norm(w)  # ||w|| != 1, so a missing normalisation shows
  x = np.clip(0.5 + 0.1 * rng.normal(size=SHAPE), 0.0, 1.0).astype(np.float32)
  b = margin * np.linalg.norm(w) - float(w @ x.reshape(-1).astype(np.float64))
  logits_fn = jax.tree_util.Partial(_linear_apply, jnp.asarray(w, jnp.float32), jnp.float32(b))
  return logits_fn, x, w, b


def _linear_apply(w, b, z):
  s = z.reshape(z.shape[0], -1) @ w + b
  return jnp.stack([s, -s], axis=-1)  # class 0 iff w.z + b > 0


def _coin(z):
  """Class 0 iff the first pixel exceeds 0.5: for x = 0.5 this is the sign of its noise."""
  s = z.reshape(z.shape[0], -1)[:, 0] - 0.5
  return jnp.stack([s, -s], axis=-1)


WEDGE_THRESHOLD = 0.2


def _wedge(z):
  """Class 0 iff pixels 0 and 1 both exceed WEDGE_THRESHOLD."""
  flat = z.reshape(z.shape[0], -1)
  s = jnp.minimum(flat[:, 0], flat[:, 1]) - WEDGE_THRESHOLD
  return jnp.stack([s, -s], axis=-1)


def _half():
  return np.full(SHAPE, 0.5, np.float32)


def _smoothed_top(logits_fn, x, sigma, key, n=EST_CHUNK):
  counts = smoothing.sample_counts(logits_fn, x, n, sigma, key, batch_size=EST_CHUNK)
  return int(np.argmax(counts))


def _attack_distance(logits_fn, x, direction, c_a, sigma, key, t_max, iters=12):
  """l_2 attack on the SMOOTHED classifier along `direction`: bisection for the smallest step t
  at which the (sampled) smoothed prediction is no longer c_a."""
  u = direction / np.linalg.norm(direction)
  u = u.reshape(x.shape).astype(np.float32)
  k_hi, key = jax.random.split(key)
  assert _smoothed_top(logits_fn, x - t_max * u, sigma, k_hi) != c_a, "t_max does not flip"
  lo, hi = 0.0, t_max
  for i in range(iters):
    mid = 0.5 * (lo + hi)
    if _smoothed_top(logits_fn, x - mid * u, sigma, jax.random.fold_in(key, i)) == c_a:
      lo = mid
    else:
      hi = mid
  return hi


# ----------------------------------------------------------------------------------------------
# Clopper-Pearson
# ----------------------------------------------------------------------------------------------

@pytest.mark.core
@pytest.mark.parametrize("n_a,n,alpha", [
    (0, 100, 0.001), (100, 100, 0.001), (100_000, 100_000, 0.001), (0, 1, 0.05), (1, 1, 0.05),
    (50, 100, 0.001), (51, 100, 0.01), (99_000, 100_000, 0.001), (7, 10, 0.2),
    (63_214, 100_000, 0.001), (990, 1000, 1e-6),
])
def test_lower_confidence_bound_matches_statsmodels(n_a, n, alpha):
  expected = proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
  got = smoothing.lower_confidence_bound(n_a, n, alpha)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)
  assert 0.0 <= got <= n_a / n


@pytest.mark.core
def test_lower_confidence_bound_vectorised_and_known_values():
  n_a = np.array([0, 5, 10, 999])
  n = np.array([10, 10, 10, 1000])
  got = smoothing.lower_confidence_bound(n_a, n, 0.001)
  chex.assert_shape(got, (4,))
  expected = [proportion_confint(a, m, alpha=0.002, method="beta")[0] for a, m in zip(n_a, n)]
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  # n_a = n: the bound solves p^n = alpha, i.e. alpha^(1/n) (one-sided: NOT (alpha/2)^(1/n)).
  np.testing.assert_allclose(smoothing.lower_confidence_bound(1000, 1000, 0.001),
                             0.001 ** (1 / 1000), rtol=1e-12)
  # Counts held in floats of any width are counts too, when they are whole numbers.
  for dtype in (np.float32, np.float64):
    assert smoothing.lower_confidence_bound(dtype(5), dtype(10), 0.001) == \
        smoothing.lower_confidence_bound(5, 10, 0.001)


# ----------------------------------------------------------------------------------------------
# CERTIFY on the linear classifier: closed form
# ----------------------------------------------------------------------------------------------

@pytest.mark.core
@pytest.mark.parametrize("sigma,margin,seed", [(0.25, 0.5, 0), (0.5, -0.3, 1)])
def test_certified_radius_linear_matches_closed_form(sigma, margin, seed):
  logits_fn, x, w, b = _linear_problem(margin, seed)
  n, alpha = 100_000, 0.001
  # Closed form: pA = Phi(|w.x + b| / (sigma ||w||)), radius sigma * Phi^-1(pA) = |w.x + b| / ||w||.
  dist = abs(float(w @ x.reshape(-1).astype(np.float64)) + b) / np.linalg.norm(w)
  np.testing.assert_allclose(dist, abs(margin), rtol=1e-5)
  p_a = stats.norm.cdf(dist / sigma)
  np.testing.assert_allclose(sigma * stats.norm.ppf(p_a), dist, rtol=1e-9)

  pred, radius = smoothing.certify(logits_fn, x, sigma=sigma, n0=100, n=n, alpha=alpha,
                                   key=jax.random.key(seed), batch_size=EST_CHUNK)
  assert pred == (0 if margin > 0 else 1)
  assert isinstance(radius, float)
  # Sound: never more than the true radius (holds with probability >= 1 - alpha).
  assert radius <= dist
  # Tight up to Monte-Carlo error: n_a ~ Binomial(n, pA); allow 5 standard deviations.
  sd = math.sqrt(n * p_a * (1 - p_a))
  lo_count = int(math.floor(n * p_a - 5 * sd))
  hi_count = min(n, int(math.ceil(n * p_a + 5 * sd)))
  r_lo = sigma * stats.norm.ppf(smoothing.lower_confidence_bound(lo_count, n, alpha))
  r_hi = sigma * stats.norm.ppf(smoothing.lower_confidence_bound(hi_count, n, alpha))
  r_expected = sigma * stats.norm.ppf(
      proportion_confint(round(n * p_a), n, alpha=2 * alpha, method="beta")[0])
  assert r_lo <= r_expected <= r_hi
  assert r_lo <= radius <= r_hi, (radius, r_lo, r_expected, r_hi)
  # The band is narrow enough to catch a missing sigma (or dividing by it).
  assert r_hi - r_lo < 0.2 * dist


@pytest.mark.core
def test_certified_radius_exact_when_saturated():
  """Margin 10 sigma: every sample is class 0, n_a = n, and the radius is known exactly:
  sigma * Phi^-1(alpha^(1/n)). A two-sided bound or a missing sigma would not match."""
  sigma, n, alpha = 0.2, 1000, 0.001
  logits_fn, x, _, _ = _linear_problem(10 * sigma, seed=2)
  pred, radius = smoothing.certify(logits_fn, x, sigma=sigma, n0=100, n=n, alpha=alpha,
                                   key=jax.random.key(3), batch_size=300)
  assert pred == 0
  expected = sigma * stats.norm.ppf(alpha ** (1.0 / n))
  np.testing.assert_allclose(radius, expected, rtol=1e-9)
  two_sided = sigma * stats.norm.ppf((alpha / 2) ** (1.0 / n))
  assert abs(radius - two_sided) > 1e-3


# ----------------------------------------------------------------------------------------------
# Abstention
# ----------------------------------------------------------------------------------------------

@pytest.mark.core
def test_abstains_on_tie():
  x = _half()
  counts = smoothing.sample_counts(_coin, x, 4000, 0.25, jax.random.key(0), batch_size=1000)
  assert abs(counts[0] - 2000) < 200  # the toy model really is a 50/50 coin
  pred, radius = smoothing.certify(_coin, x, sigma=0.25, n0=100, n=4000, alpha=0.001,
                                   key=jax.random.key(1), batch_size=1000)
  assert pred == smoothing.ABSTAIN == -1
  assert radius == 0.0
  assert smoothing.predict(_coin, x, sigma=0.25, n=1000, alpha=0.001, key=jax.random.key(2),
                           batch_size=1000) == -1


@pytest.mark.core
def test_predict_clear_case_does_not_abstain():
  logits_fn, x, _, _ = _linear_problem(-0.3, seed=4)
  assert smoothing.predict(logits_fn, x, sigma=0.25, n=1000, alpha=0.001,
                           key=jax.random.key(0), batch_size=PREDICT_CHUNK) == 1


# ----------------------------------------------------------------------------------------------
# The certificate against attacks on the smoothed classifier
# ----------------------------------------------------------------------------------------------

def test_certificate_not_contradicted_by_attack_linear():
  sigma = 0.25
  logits_fn, x, w, _ = _linear_problem(0.5, seed=5)
  pred, radius = smoothing.certify(logits_fn, x, sigma=sigma, n0=100, n=20_000, alpha=0.001,
                                   key=jax.random.key(0), batch_size=EST_CHUNK)
  assert pred == 0 and radius > 0.3
  u = (w / np.linalg.norm(w)).reshape(SHAPE).astype(np.float32)  # optimal attack: along -w
  d_attack = _attack_distance(logits_fn, x, w, pred, sigma, jax.random.key(1), t_max=1.0)
  np.testing.assert_allclose(d_attack, 0.5, atol=0.03)  # the attack finds the true boundary
  assert radius <= d_attack + 0.02
  margin = 0.1
  # Just outside the certified ball the smoothed prediction changes (or is uncertain) ...
  outside = smoothing.predict(logits_fn, x - (radius + margin) * u, sigma=sigma,
                              n=1000, alpha=0.001, key=jax.random.key(2),
                              batch_size=PREDICT_CHUNK)
  assert outside != pred
  # ... and just inside it does not.
  inside = smoothing.predict(logits_fn, x - (radius - margin) * u, sigma=sigma, n=1000,
                             alpha=0.001, key=jax.random.key(3), batch_size=PREDICT_CHUNK)
  assert inside == pred


def test_certificate_not_contradicted_by_attack_wedge():
  sigma = 0.25
  x = _half()
  x.reshape(-1)[:2] = WEDGE_THRESHOLD + 0.6  # margins 0.6 to both faces
  pred, radius = smoothing.certify(_wedge, x, sigma=sigma, n0=100, n=20_000, alpha=0.001,
                                   key=jax.random.key(0), batch_size=EST_CHUNK)
  assert pred == 0 and radius > 0.3
  # pA = Phi(0.6/sigma)^2: the certified radius is below sigma * Phi^-1(pA).
  assert radius <= sigma * stats.norm.ppf(stats.norm.cdf(0.6 / sigma) ** 2)
  for i, direction in enumerate([np.eye(DIM)[0], np.eye(DIM)[0] + np.eye(DIM)[1]]):
    d_attack = _attack_distance(_wedge, x, direction, pred, sigma, jax.random.key(10 + i),
                                t_max=1.2)
    assert radius <= d_attack + 0.02, (direction, radius, d_attack)


# ----------------------------------------------------------------------------------------------
# sample_counts
# ----------------------------------------------------------------------------------------------

@pytest.mark.core
@pytest.mark.parametrize("num_samples,batch_size", [(1001, 100), (5, 100), (200, 100), (3, 1)])
def test_sample_counts_counts_exactly_num_samples(num_samples, batch_size):
  counts = smoothing.sample_counts(_coin, _half(), num_samples, 0.25, jax.random.key(0),
                                   batch_size=batch_size)
  chex.assert_shape(counts, (2,))
  assert np.issubdtype(counts.dtype, np.integer)
  assert int(counts.sum()) == num_samples
  wide = smoothing.sample_counts(_coin, _half(), num_samples, 0.25, jax.random.key(0),
                                 batch_size=batch_size, num_classes=5)
  chex.assert_shape(wide, (5,))
  np.testing.assert_array_equal(wide[:2], counts)  # same key, same samples
  np.testing.assert_array_equal(wide[2:], 0)


@pytest.mark.core
def test_sample_counts_chunks_use_independent_noise():
  # With 4 samples per chunk, identical noise in every chunk would give counts in {0, 4, ..., 400}
  # concentrated on few values; independent chunks give a ~Binomial(400, 1/2) count.
  counts = smoothing.sample_counts(_coin, _half(), 400, 0.25, jax.random.key(7), batch_size=4)
  assert 140 < counts[0] < 260
  a = smoothing.sample_counts(_coin, _half(), 400, 0.25, jax.random.key(7), batch_size=100)
  b = smoothing.sample_counts(_coin, _half(), 400, 0.25, jax.random.key(7), batch_size=100)
  np.testing.assert_array_equal(a, b)  # reproducible


@pytest.mark.core
def test_sample_counts_accepts_tree_util_partial():
  part, x, w, b = _linear_problem(0.1, seed=6)
  assert isinstance(part, jax.tree_util.Partial)
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.float32(b)
  plain = lambda z: _linear_apply(w32, b32, z)  # the same classifier as a plain function
  # 1,000 samples in chunks of 300: a partial last chunk.
  got = smoothing.sample_counts(part, x, 1000, 0.3, jax.random.key(0), batch_size=300)
  want = smoothing.sample_counts(plain, x, 1000, 0.3, jax.random.key(0), batch_size=300)
  assert 0 < got[0] < 1000  # both classes drawn: the counts compare something
  np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

@pytest.mark.core
@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -0.1}, "sigma"), ({"n0": 0}, "n0"), ({"n": 0}, "n="),
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
])
def test_certify_rejects_bad_settings(kwargs, match):
  args = dict(sigma=0.25, n0=10, n=10, alpha=0.001, key=jax.random.key(0), batch_size=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    smoothing.certify(_coin, _half(), **args)


@pytest.mark.core
@pytest.mark.parametrize("value", [1.5, -0.2, np.nan])
def test_rejects_images_outside_unit_interval(value):
  images = np.stack([_half(), _half()])
  images[1, 0, 0, 0] = value
  with pytest.raises(ValueError, match="images"):
    smoothing.certify_dataset(_coin, images, np.zeros(2, np.int32), sigma=0.25, n0=10, n=10,
                              alpha=0.001, key=jax.random.key(0), batch_size=10, progress=False)
  with pytest.raises(ValueError, match="x"):
    smoothing.certify(_coin, images[1], sigma=0.25, n0=10, n=10, alpha=0.001,
                      key=jax.random.key(0), batch_size=10)


@pytest.mark.core
def test_certified_accuracy_counts_abstains_as_wrong():
  results = [{"radius": 0.0, "correct": False},   # abstain
             {"radius": 0.3, "correct": True},
             {"radius": 0.7, "correct": True},
             {"radius": 0.9, "correct": False}]   # certified, but wrong class
  acc = smoothing.certified_accuracy(results, [0.0, 0.3, 0.5, 0.7, 1.0])
  np.testing.assert_allclose(acc, [0.5, 0.5, 0.25, 0.25, 0.0])
  np.testing.assert_allclose(smoothing.certified_accuracy(results[1:2], [0.0, 0.5]), [1.0, 0.0])
  with pytest.raises(DataError, match="no certification results"):
    smoothing.certified_accuracy([], [0.0])


@pytest.mark.core
def test_certify_dataset_hands_each_result_to_the_callback():
  images = np.stack([_half(), _half()])
  seen = []
  results = smoothing.certify_dataset(_coin, images, np.zeros(2, np.int32), sigma=0.25,
                                      n0=N0_CHUNK, n=N0_CHUNK, alpha=0.001, key=jax.random.key(0),
                                      batch_size=N0_CHUNK, progress=False, callback=seen.append)
  assert len(results) == 2 and seen == results


# ----------------------------------------------------------------------------------------------
# experiments/certify.py
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certify_cli():
  path = os.path.join(REPO, "experiments", "certify.py")
  spec = importlib.util.spec_from_file_location("atent_certify_cli", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_run_certification_writes_outputs(certify_cli, tmp_path):
  logits_fn, x0, w, b = _linear_problem(0.4, seed=8)
  # Images at different margins along w (the last one at the boundary, so it abstains).
  u = (w / np.linalg.norm(w)).reshape(SHAPE)
  margins = [0.4, 0.25, 0.1, -0.2, 0.3, 0.0]
  images = np.stack([np.clip(x0 - (0.4 - m) * u, 0, 1) for m in margins]).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 0], np.int32)  # example 4 is labelled wrongly
  out = tmp_path / "certify_sigma0.25"
  radii = [0.0, 0.1, 0.2, 0.3]
  summary = certify_cli.run_certification(
      logits_fn, images, labels, str(out), sigma=0.25, n0=N0_CHUNK, n=2000, alpha=0.001, seed=0,
      batch_size=PREDICT_CHUNK, radii=radii, progress=False)

  lines = (out / "results.jsonl").read_text().splitlines()
  assert len(lines) == len(images)
  rows = [json.loads(line) for line in lines]
  for i, row in enumerate(rows):
    assert set(row) >= {"index", "label", "prediction", "radius", "correct", "time"}
    assert row["index"] == i and row["label"] == labels[i]
    assert row["correct"] == (row["prediction"] == row["label"])
    assert row["radius"] >= 0 and (row["prediction"] != -1 or row["radius"] == 0.0)
  assert rows[-1]["prediction"] == -1
  assert not rows[4]["correct"]

  data = json.loads((out / "certified_accuracy.json").read_text())
  assert data == summary
  assert data["sigma"] == 0.25 and data["n0"] == N0_CHUNK and data["n"] == 2000
  assert data["alpha"] == 0.001 and data["num_examples"] == len(images)
  assert [d["radius"] for d in data["certified_accuracy"]] == radii
  accs = [d["accuracy"] for d in data["certified_accuracy"]]
  np.testing.assert_allclose(accs[0], np.mean([r["correct"] for r in rows]))
  np.testing.assert_allclose(accs, smoothing.certified_accuracy(rows, radii))
  grid, curve = np.array(data["curve"]["radius"]), np.array(data["curve"]["accuracy"])
  assert grid[0] == 0.0 and np.all(np.diff(grid) > 0) and grid.shape == curve.shape
  assert np.all(np.diff(curve) <= 0)  # non-increasing in the radius
  assert curve[0] == accs[0] and curve[-1] == 0.0
  png = (out / "certified_accuracy.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_output_dir_name(certify_cli):
  assert certify_cli.output_dir("RUN", 0.12) == os.path.join("RUN", "certify_sigma0.12")
  assert certify_cli.output_dir("RUN", 1) == os.path.join("RUN", "certify_sigma1.0")


def test_cli_user_errors_exit_2(certify_cli, tmp_path, monkeypatch, capsys):
  """A user error is one `error:` line on stderr and exit code 2, before anything is loaded or
  written. The script itself is started once (absl's flag parsing and app.run, end to end); the
  other errors go through the same main() in this process, with its flags set directly."""
  script = os.path.join(REPO, "experiments", "certify.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, script, f"--workdir={tmp_path}", "--sigma=0"],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "sigma" in lines[0], proc.stderr
  defaults = dict(workdir=str(tmp_path), sigma=0.12, n0=100, n=100_000, alpha=0.001,
                  num_examples=500, skip=1, batch_size=1000, radii=["0", "0.5"], split="test",
                  seed=0, progress=False)
  cases = [
      ({"workdir": str(tmp_path / "missing")}, "workdir"),
      ({"sigma": 0.0}, "sigma"),
  ]
  verbosity = absl_logging.get_verbosity()  # main() lowers it: keep this process's
  for changes, word in cases:
    monkeypatch.setattr(certify_cli, "FLAGS", types.SimpleNamespace(**{**defaults, **changes}))
    try:
      with pytest.raises(SystemExit) as exit_info:
        certify_cli.main(["certify.py"])
    finally:
      absl_logging.set_verbosity(verbosity)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: ") and word in lines[0], err
  assert os.listdir(tmp_path) == []  # nothing written


@pytest.mark.core
@pytest.mark.parametrize("n_a,n,name", [(2.5, 10, "n_a"), (3, 7.5, "n"), (11, 10, "n_a"),
                                        (0, 0, "n")])
def test_lower_confidence_bound_names_the_bad_count_first(n_a, n, name):
  with pytest.raises(ValueError, match=rf"^{name}="):
    smoothing.lower_confidence_bound(n_a, n, 0.001)


@pytest.mark.core
def test_certify_dataset_defaults_to_cohens_alpha():
  """alpha defaults to 0.001 (Cohen et al.'s setting): for a classifier that always says class
  0, every radius is sigma * Phi^-1(alpha^(1/n)), the Clopper-Pearson bound of n out of n."""
  always_zero = lambda z: jnp.stack([jnp.ones(z.shape[0]), jnp.zeros(z.shape[0])], -1)
  images, labels = np.stack([_half(), _half()]), np.zeros(2, np.int32)
  results = smoothing.certify_dataset(always_zero, images, labels, sigma=0.25, n0=10, n=10,
                                      key=jax.random.key(0), batch_size=10, progress=False)
  want = 0.25 * stats.norm.ppf(0.001 ** (1 / 10))
  assert [r["radius"] for r in results] == pytest.approx([want, want], rel=1e-9)
