"""Which member breaks the 6 examples that torchattacks broke and ours did not?"""
import sys, time, json
import numpy as np, jax, torch
sys.path.insert(0, "experiments")
import atent_jax
from atent_jax.attacks.autoattack import autoattack
from atent_jax.data import mnist
from atent_jax.interop import torch_module
import crosscheck_autoattack as cc
IDX = [112, 328, 466, 509, 710, 832]
x, y = mnist.load_idx_folder("../shared/data/mnist", "test")
x = np.asarray(x, np.float32); x = x / 255.0 if x.max() > 1 else x
y = np.asarray(y, np.int32)
f = atent_jax.load_classifier("results/autoattack_cpu/pgd_at_epoch9")
predict = lambda a: np.asarray(f(a)).argmax(-1)
xs, ys = x[IDX], y[IDX]
print("clean correct", predict(xs) == ys, flush=True)
out = {}
# torchattacks members one by one
module = torch_module(f)
multi = cc.torchattacks_reference(module, "linf", 0.3, 10, 0)
for m in multi.attacks:
  t0 = time.time()
  adv = m(torch.tensor(np.transpose(xs, (0, 3, 1, 2))), torch.tensor(ys, dtype=torch.long))
  adv = np.transpose(adv.detach().numpy(), (0, 2, 3, 1))
  r = (predict(adv) == ys)
  print("torch", type(m).__name__, "robust", r.astype(int), f"{time.time()-t0:.0f}s", flush=True)
  out["torch_" + type(m).__name__] = r.tolist()
# ours, each example with its own index (the keys of the 1,000-image run), then other seeds
for seed in (0, 1, 2, 3):
  rows = []
  for i, idx in enumerate(IDX):
    res = autoattack(f, xs[i:i+1], ys[i:i+1], jax.random.PRNGKey(seed), norm="linf", eps=0.3,
                     index_offset=idx)
    rows.append("robust" if res.robust[0] else [k for k, v in res.per_attack.items() if v[0]][0])
  print("ours seed", seed, rows, flush=True)
