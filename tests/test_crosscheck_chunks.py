"""experiments/crosscheck_autoattack.py's PyTorch side is resumable batch by batch
(atent_jax.chunks): each batch's outcome is written as it finishes, read back by a rerun instead
of attacked again, skipped while another process holds its lock, and refused when it was written
with other settings. A stand-in attack and classifier keep it fast and its outcome known."""

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchattacks")

from atent_jax import chunks, evaluation
from atent_jax.errors import ConfigError
from atent_jax.workdir import RunLock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import crosscheck_autoattack as crosscheck  # noqa: E402  (defines no flags on import)

N, BATCH = 10, 4
# Images whose mean brightness is their class (0 dark, 1 bright); the stand-in attack brightens
# every image by 0.3, which turns the dark ones with mean above 0.2 into bright ones.
_MEANS = np.array([0.1, 0.25, 0.7, 0.3, 0.05, 0.9, 0.15, 0.35, 0.6, 0.45], np.float32)
_IMAGES = np.broadcast_to(_MEANS[:, None, None, None], (N, 2, 2, 1)).copy()
_LABELS = (_MEANS > 0.5).astype(np.int32)
_EXPECTED = ~((_MEANS > 0.2) & (_MEANS <= 0.5))  # bright ones stay; dark ones above 0.2 flip
_SETTINGS = {"weights_sha1": "abc", "norm": "linf", "eps": 0.3, "seed": 0, "batch_size": BATCH}


def _predict(x):
  return (np.asarray(x).reshape(len(x), -1).mean(-1) > 0.5).astype(np.int32)


class _Brighten:
  def __init__(self):
    self.calls = 0

  def __call__(self, x, y):  # NCHW, as torchattacks takes it
    self.calls += 1
    return torch.clamp(x + 0.3, 0, 1)


def _run(chunk_dir, attack, settings=_SETTINGS):
  return crosscheck.run_torch_attack(attack, _predict, _IMAGES, _LABELS, BATCH, "stand-in",
                                     "linf", str(chunk_dir), settings)


def test_batches_are_written_and_read_back(tmp_path):
  attack = _Brighten()
  robust, worst, seconds = _run(tmp_path, attack)
  assert robust.tolist() == _EXPECTED.tolist()
  assert worst == pytest.approx(0.3, abs=1e-6) and seconds >= 0
  assert attack.calls == 3
  assert sorted(os.listdir(tmp_path)) == [
      "000000-000004.json", "000004-000008.json", "000008-000010.json"]
  with open(tmp_path / "000004-000008.json") as f:
    chunk = json.load(f)
  assert evaluation.decode_mask(chunk["result"]["robust_examples"], 4).tolist() == (
      _EXPECTED[4:8].tolist())
  assert chunk["settings"]["examples"]["start"] == 4

  again = _Brighten()
  robust2, worst2, _ = _run(tmp_path, again)  # a rerun attacks nothing
  assert again.calls == 0
  assert robust2.tolist() == robust.tolist() and worst2 == worst


def test_a_batch_another_process_holds_is_left_to_it(tmp_path):
  held = RunLock(str(tmp_path), name="000004-000008.lock").acquire()  # as a second process
  try:
    attack = _Brighten()
    assert _run(tmp_path, attack) is None  # not complete: no result yet
    assert attack.calls == 2
    assert not os.path.exists(chunks.chunk_path(str(tmp_path), 4, 8))
  finally:
    held.release()
  attack = _Brighten()
  robust, _, _ = _run(tmp_path, attack)  # the rerun does only the batch left
  assert attack.calls == 1
  assert robust.tolist() == _EXPECTED.tolist()


def test_a_batch_of_other_settings_is_refused_before_any_attack(tmp_path):
  _run(tmp_path, _Brighten())
  os.remove(chunks.chunk_path(str(tmp_path), 8, 10))
  attack = _Brighten()
  with pytest.raises(ConfigError, match=r"eps=0\.3, this command has 0\.2"):
    _run(tmp_path, attack, dict(_SETTINGS, eps=0.2))
  assert attack.calls == 0
