"""Evaluations in chunks: evaluate_attacks(offset=...) + merge_results + add_checks equal one
evaluate_attacks call, and experiments/evaluate.py --chunk_size resumes, stops on a time budget
and refuses chunks of other settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax import evaluation


def _without_times(x):
  """x as JSON, without what may differ between two evaluations of the same examples."""
  x = json.loads(json.dumps(x, default=str))

  def strip(v):
    if isinstance(v, dict):
      return {k: strip(w) for k, w in v.items() if k not in ("seconds", "command", "chunks",
                                                              "workdir")}
    if isinstance(v, list):
      return [strip(w) for w in v]
    return v
  return strip(x)


# --- the API: a linear model whose outcomes depend on the attacks' random draws ---------------

_W = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
_X = np.random.default_rng(1).uniform(0.2, 0.8, size=(28, 4, 4, 1)).astype(np.float32)
_EPS = 0.3


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params


_Y = np.asarray(jnp.argmax(_linear(_W, _X), -1), np.int32)  # every clean example is correct
# One step of random-start PGD, and Square with few queries: what each breaks depends on its
# keys (test_the_chunk_test_sees_other_keys), so a chunk drawing other keys than the whole
# evaluation would show.
_SPECS = [
    {"attack": "pgd_linf", "eps": _EPS, "step_size": 0.09, "num_steps": 1},
    {"attack": "autoattack", "eps": _EPS, "norm": "linf", "attacks": ("square",),
     "attack_kwargs": {"square": {"num_queries": 5}}},
    {"attack": "square", "eps": _EPS, "norm": "linf", "num_queries": 3},
]


def _whole(key):
  return evaluation.evaluate_attacks(_linear, _X, _Y, _SPECS, key, batch_size=8, params=_W,
                                     sanity_examples=12)


def _in_chunks(size, key, offsets=True):
  parts = [evaluation.evaluate_attacks(
      _linear, _X[a:a + size], _Y[a:a + size], _SPECS, key, batch_size=8, params=_W,
      sanity_checks=False, masking_checks=False, offset=a if offsets else 0,
      indices=np.arange(a, min(a + size, len(_Y)))) for a in range(0, len(_Y), size)]
  merged = evaluation.merge_results(parts, _Y)
  return evaluation.add_checks(_linear, _X, _Y, _SPECS, key, merged, 8, params=_W,
                               sanity_examples=12)


@pytest.fixture(scope="module")
def whole():
  return _whole(jax.random.PRNGKey(0))


@pytest.mark.parametrize("size", [8, 16])  # 8: the last chunk (4) is shorter than a batch
def test_chunks_merge_to_the_whole_evaluation(whole, size):
  chunked = _in_chunks(size, jax.random.PRNGKey(0))
  assert _without_times(chunked) == _without_times(whole)
  assert chunked["examples"]["indices"] == {"start": 0, "stop": 28}
  assert [r["num_examples"] for r in chunked["attacks"]] == [28, 28, 28]
  assert "sanity_checks" in chunked and "gradient_masking" in chunked


def test_the_chunk_test_sees_other_keys(whole):
  """The equality above is not vacuous: other keys, or chunks each drawing the keys of the
  first examples, change the per-example outcomes of every attack."""
  masks = lambda res: [evaluation.robust_mask(r, 28) for r in res["attacks"]]
  for other in (_whole(jax.random.PRNGKey(1)), _in_chunks(8, jax.random.PRNGKey(0), False)):
    for a, b in zip(masks(whole), masks(other), strict=True):
      assert not np.array_equal(a, b)
  assert all(0 < m.sum() < 28 for m in masks(whole))


def test_merge_refuses_chunks_that_do_not_follow():
  parts = [evaluation.evaluate_attacks(_linear, _X[a:a + 8], _Y[a:a + 8], _SPECS[:1],
                                       jax.random.PRNGKey(0), batch_size=8, params=_W,
                                       sanity_checks=False, masking_checks=False, offset=a)
           for a in (0, 8)]
  with pytest.raises(ValueError, match="follow"):
    evaluation.merge_results(parts[::-1], _Y[:16])
  with pytest.raises(ValueError, match="offset=4"):
    evaluation.evaluate_attacks(_linear, _X[4:8], _Y[4:8], _SPECS[:1], jax.random.PRNGKey(0),
                                batch_size=8, params=_W, offset=4)
