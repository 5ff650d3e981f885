"""Two training runs compared by what the backend promises.

On CPU the same config and seed give bit-identical parameters and metrics, and a resumed run
equals the uninterrupted one bit for bit (README: exact resume on CPU). Elsewhere (GPU, TPU)
reductions need not be ordered the same way twice, so parameters agree to float tolerance and
an example at a decision tie may flip an accuracy.
"""

import chex
import jax
import pytest

# Accuracies off CPU: a flipped tie among the tests' few dozen evaluation images.
ACCURACY_TOLERANCE = 0.05


def bit_identical() -> bool:
  """Whether this backend promises bit-identical reruns and resumes (CPU only)."""
  return jax.default_backend() == "cpu"


def assert_same_params(a, b):
  if bit_identical():
    chex.assert_trees_all_equal(a, b)
  else:
    chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-6)


def assert_same_metrics(a, b):
  """Lists of metrics.jsonl records (or single records), wall times already dropped."""
  if bit_identical():
    assert a == b
    return
  a, b = ([r] if isinstance(r, dict) else r for r in (a, b))
  assert len(a) == len(b)
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys(), (ra, rb)
    for key, va in ra.items():
      if isinstance(va, float) and key.endswith("accuracy"):
        assert abs(va - rb[key]) <= ACCURACY_TOLERANCE, (key, va, rb[key])
      elif isinstance(va, float):
        assert va == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (key, va, rb[key])
      else:
        assert va == rb[key], (key, va, rb[key])
