"""experiments/crosscheck_autoattack.py --ours_from: our side read from an evaluate.py
robustness.json, only when it is the same weights, the same first test images and the full
AutoAttack-standard budget; the outcome of the first --num_test images of it."""

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchattacks")

from atent_jax import evaluation
from atent_jax.errors import ConfigError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import crosscheck_autoattack as crosscheck  # noqa: E402  (defines no flags on import)

_LABELS = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.int32)  # the "test split"
_ROBUST = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], bool)
_APGD = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool)
_SQUARE = np.array([0, 0, 0, 0, 0, 1, 0, 1, 0, 0], bool)


def _record(**changes):
  """The fields evaluate.py writes, for 8 of the 10 test images (a hand-made file)."""
  n = 8
  entry = {"attack": "autoattack", "norm": "linf", "eps": 0.3, "max_perturbation": 0.3,
           "kwargs": {"eps": 0.3, "norm": "linf", "version": "standard", "attacks": None},
           "robust_examples": evaluation.encode_mask(_ROBUST[:n]), "seconds": 80.0,
           "members": [{"member": "apgd-ce", "broken_examples": evaluation.encode_mask(_APGD[:n])},
                       {"member": "square",
                        "broken_examples": evaluation.encode_mask(_SQUARE[:n])}]}
  entry.update(changes.pop("entry", {}))
  record = {"weights_sha1": "abc", "eval_split": "test", "attacks": [entry],
            "examples": evaluation.examples_record(_LABELS[:n])}
  record.update(changes)
  return record


def _read(tmp_path, record, n=6, sha="abc", labels=_LABELS):
  path = tmp_path / "robustness.json"
  path.write_text(json.dumps(record))
  return crosscheck.ours_from_file(str(path), sha, labels, n, "linf", 0.3)


def test_reads_the_first_n_outcomes(tmp_path):
  ours = _read(tmp_path, _record(), n=6)
  assert evaluation.decode_mask(ours["robust_examples"], 6).tolist() == _ROBUST[:6].tolist()
  assert ours["robust_accuracy"] == pytest.approx(3 / 6)
  assert ours["broken_by_member"] == {"apgd-ce": 2, "square": 1}
  assert ours["seconds_for_examples"] == 8


@pytest.mark.parametrize("record,kwargs,words", [
    (_record(), {"sha": "other"}, "weights_sha1='abc'"),
    (_record(eval_split="validation"), {}, "first 6 test images"),
    (_record(), {"n": 9}, "first 9 test images"),
    (_record(), {"labels": _LABELS[::-1].copy()}, "labels of its 8 examples"),
    (_record(entry={"eps": 0.2}), {}, "no full-budget AutoAttack standard"),
    (_record(entry={"kwargs": {"version": "standard", "attacks": ["apgd-ce"]}}), {},
     "no full-budget AutoAttack standard"),
    (_record(entry={"kwargs": {"version": "plus"}}), {}, "no full-budget AutoAttack standard"),
])
def test_refuses_another_evaluation(tmp_path, record, kwargs, words):
  with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
    _read(tmp_path, record, **kwargs)
