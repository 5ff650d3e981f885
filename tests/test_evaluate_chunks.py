"""Evaluations in chunks: evaluate_attacks(offset=...) + merge_results + add_checks equal one
evaluate_attacks call, and experiments/evaluate.py --chunk_size resumes, stops on a time budget
and refuses chunks of other settings."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scripts import run_script

from atent_jax import chunks, evaluation, workdir
from atent_jax.errors import ConfigError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# --- experiments/evaluate.py --chunk_size ------------------------------------------------------

_ARGS = ("--attacks=pgd3_linf@0.05,fgsm_linf@0.05,square@0.05:num_queries=20",
         "--num_examples=20", "--batch_size=8", "--nosanity_checks", "--noprogress")
_CHUNKS = ["000000-000008.json", "000008-000016.json", "000016-000020.json"]


def _run(*args):
  return subprocess.run([sys.executable, os.path.join(_ROOT, "experiments", "evaluate.py"),
                         *args], capture_output=True, text=True, cwd=_ROOT, timeout=900,
                        check=False)


def _read(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def chunked_runs(tiny_run_template, tmp_path_factory):
  """One unchunked evaluation; the same in chunks of 8, stopped by --max_seconds=0 after the
  first chunk, then resumed (with the first chunk's times changed to show it is read back) while
  this process holds the last chunk's lock, as a second evaluation process would; then resumed
  once more, after the lock is released, which evaluates the last chunk and merges.
  (The sanity checks' equality after a merge is test_chunks_merge_to_the_whole_evaluation's.)
  The resumed run, which meets the lock of another live process, is a process of its own; the
  other three run evaluate.py in this process (tests/scripts.py: `run_script`)."""
  base = tmp_path_factory.mktemp("chunks")
  whole, chunked = str(base / "whole"), str(base / "chunked")
  shutil.copytree(tiny_run_template, whole)
  shutil.copytree(tiny_run_template, chunked)
  out = run_script("evaluate.py", [f"--workdir={whole}", *_ARGS])
  assert out.returncode == 0, out.stderr[-3000:]
  stopped = run_script("evaluate.py", [f"--workdir={chunked}", *_ARGS, "--chunk_size=8",
                                           "--max_seconds=0"])
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  chunk_dir = os.path.join(chunked, "robustness_chunks")
  after_stop = sorted(os.listdir(chunk_dir))
  merged_after_stop = os.path.exists(os.path.join(chunked, "robustness.json"))
  first = os.path.join(chunk_dir, _CHUNKS[0])
  chunk = _read(first)
  for r in chunk["result"]["attacks"]:
    r["seconds"] = 1000.0
  with open(first, "w") as f:
    json.dump(chunk, f)
  first_bytes, first_mtime = open(first, "rb").read(), os.stat(first).st_mtime_ns
  lock = workdir.RunLock(chunk_dir, name=_CHUNKS[2].replace(".json", ".lock")).acquire()
  try:
    resumed = _run(f"--workdir={chunked}", *_ARGS, "--chunk_size=8")
  finally:
    lock.release()
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  after_busy = sorted(os.listdir(chunk_dir))
  merged_after_busy = os.path.exists(os.path.join(chunked, "robustness.json"))
  last = run_script("evaluate.py", [f"--workdir={chunked}", *_ARGS, "--chunk_size=8"])
  assert last.returncode == 0, last.stderr[-3000:]
  return {"after_busy": after_busy, "merged_after_busy": merged_after_busy, "last": last,
          "whole": _read(os.path.join(whole, "robustness.json")),
          "chunked": _read(os.path.join(chunked, "robustness.json")), "stopped": stopped,
          "resumed": resumed, "after_stop": after_stop, "merged_after_stop": merged_after_stop,
          "first": (first, first_bytes, first_mtime), "chunk_dir": chunk_dir}


def test_chunked_cli_equals_unchunked(chunked_runs):
  whole, chunked = chunked_runs["whole"], chunked_runs["chunked"]
  assert _without_times(chunked) == _without_times(whole)
  assert chunked["chunks"]["chunk_size"] == 8
  assert sorted(os.listdir(chunked_runs["chunk_dir"])) == _CHUNKS


def test_chunked_cli_leaves_a_chunk_another_process_holds(chunked_runs):
  assert chunked_runs["after_busy"] == _CHUNKS[:2] and not chunked_runs["merged_after_busy"]
  assert ("1 of 3 chunks are being evaluated by other processes (examples 16-20)"
          in chunked_runs["resumed"].stdout)


def test_chunked_cli_stops_on_its_budget_and_resumes_without_recomputing(chunked_runs):
  assert chunked_runs["after_stop"] == _CHUNKS[:1] and not chunked_runs["merged_after_stop"]
  assert "2 of 3 chunks remain (examples 8-20)" in chunked_runs["stopped"].stdout
  assert "1 of 3 done already" in chunked_runs["resumed"].stdout
  assert "2 of 3 done already" in chunked_runs["last"].stdout
  written = [[line.split(" (examples ")[1].split(")")[0] for line in chunked_runs[run].stdout
              .splitlines() if line.startswith("chunk ")] for run in ("resumed", "last")]
  assert written == [["8-16"], ["16-20"]]
  path, data, mtime = chunked_runs["first"]
  assert open(path, "rb").read() == data and os.stat(path).st_mtime_ns == mtime
  # The first chunk's (edited) times are in the merge: it was read back, not evaluated again.
  assert all(r["seconds"] > 1000 for r in chunked_runs["chunked"]["attacks"])


# End to end for one attack setting (through a process) and the checkpoint (in this process); the
# other fields go through the same comparison (test_a_chunk_names_the_first_field_that_differs).
@pytest.mark.parametrize("change,field", [
    (("--attacks=pgd3_linf@0.1,fgsm_linf@0.05,square@0.05:num_queries=20",),
     "attacks[0].eps=0.05, this command has 0.1"),
    (("--which=latest",), "checkpoint.which"),
])
def test_chunk_of_other_settings_exits_2_writing_nothing(chunked_runs, tiny_run, change, field):
  chunk_dir = os.path.join(tiny_run, "robustness_chunks")
  os.makedirs(chunk_dir)
  first = chunked_runs["first"][0]
  shutil.copy(first, chunk_dir)
  args = [a for a in _ARGS if not a.startswith(tuple(c.split("=")[0] for c in change))]
  run = _run if field.startswith("attacks") else (lambda *a: run_script("evaluate.py", a))
  out = run(f"--workdir={tiny_run}", *args, *change, "--chunk_size=8")
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and field in errors[0] and _CHUNKS[0] in errors[0], out.stderr[-3000:]
  assert os.listdir(chunk_dir) == _CHUNKS[:1]
  assert open(os.path.join(chunk_dir, _CHUNKS[0]), "rb").read() == open(first, "rb").read()
  assert not os.path.exists(os.path.join(tiny_run, "robustness.json"))
  assert not os.path.exists(os.path.join(tiny_run, "robustness.md"))


@pytest.mark.parametrize("edit,field", [
    (lambda s: s["attacks"][0].update(norm="l2"), "attacks[0].norm='linf', this command has 'l2'"),
    (lambda s: s["attacks"].pop(), "'FGSM-l_inf', 'Square (num_queries=20)'], this command has "
                                    "['PGD-3', 'FGSM-l_inf']"),
    (lambda s: s.update(seed=1), "seed=0, this command has 1"),
    (lambda s: s["checkpoint"].update(weights_sha1="0"), "checkpoint.weights_sha1="),
])
def test_a_chunk_names_the_first_field_that_differs(chunked_runs, edit, field):
  first = chunked_runs["first"][0]
  settings = copy.deepcopy(_read(first)["settings"])
  assert chunks.read_chunk(first, settings) == _read(first)["result"]
  edit(settings)
  with pytest.raises(ConfigError, match=re.escape(field)):
    chunks.read_chunk(first, settings)
