"""The 6 test images that torchattacks' AutoAttack broke and ours did not (crosscheck.json),
attacked again alone: torchattacks' members one by one, then our AutoAttack under seeds 0-3.

    python results/crosscheck_pgd_at_epoch9/edge_examples.py   # from the repository root
"""

import sys

import jax
import numpy as np
import torch

import atent_jax
from atent_jax.attacks.autoattack import autoattack
from atent_jax.data import mnist
from atent_jax.interop import torch_module

sys.path.insert(0, "experiments")
import crosscheck_autoattack  # noqa: E402  (a script, not a package)

INDICES = [112, 328, 466, 509, 710, 832]


def main():
  images, labels = mnist.load_idx_folder("../shared/data/mnist", "test")
  images = np.asarray(images, np.float32)
  if images.max() > 1:
    images = images / 255.0
  x, y = images[INDICES], np.asarray(labels, np.int32)[INDICES]
  logits_fn = atent_jax.load_classifier("results/autoattack_cpu/pgd_at_epoch9")

  def predict(a):
    return np.asarray(logits_fn(a)).argmax(-1)

  print("clean correct", predict(x) == y, flush=True)
  chain = crosscheck_autoattack.torchattacks_reference(torch_module(logits_fn), "linf", 0.3, 10, 0)
  for member in chain.attacks:
    adv = member(torch.tensor(np.transpose(x, (0, 3, 1, 2))), torch.tensor(y, dtype=torch.long))
    robust = predict(np.transpose(adv.detach().numpy(), (0, 2, 3, 1))) == y
    print("torch", type(member).__name__, "robust", robust.astype(int), flush=True)
  for seed in range(4):
    outcome = []
    for i, index in enumerate(INDICES):  # each with its own index, as in the 1,000-image run
      result = autoattack(logits_fn, x[i:i + 1], y[i:i + 1], jax.random.PRNGKey(seed),
                          norm="linf", eps=0.3, index_offset=index)
      broken_by = [name for name, mask in result.per_attack.items() if mask[0]]
      outcome.append(broken_by[0] if broken_by else "robust")
    print("ours seed", seed, outcome, flush=True)


if __name__ == "__main__":
  main()
