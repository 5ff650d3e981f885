"""The conv input gradient (ops.DX_KERNEL: XLA's transpose of its conv, or blocked im2col for the
layers whose forward is im2col, i.e. SmallCNN's conv2) A/B'd in whole training steps and in
attacks. Process CPU ms per call, median (min-max) of ROUNDS alternated rounds, one process.

  taskset -c 1 python results/benchmark_cpu/dx_ab.py [B]   # B: im2col (default) or conv

Training steps: experiments/benchmark.py's (SmallCNN, batch 128, random MNIST-shaped data).
Attacks: the verdict's l_inf-ATENT model (results/verdict/table2/atent_linf, weights closed over
as `load_classifier` gives them) on the first 100 MNIST test images of ../shared/data/mnist:
PGD-20 (one jitted program) and APGD-CE, 20 iterations (the library's host loop on CPU). The
host loop keeps the compiled stages of one model only, so APGD is timed in a block per setting
after the alternated rounds, not alternated.
"""

import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "experiments"))

import benchmark  # noqa: E402  (experiments/benchmark.py: the same steps as its rows)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from atent_jax import attacks, ops, runs  # noqa: E402

ROUNDS = 5
STEPS = (("sgd", 0), ("pgd_at", 1), ("pgd_at", 10), ("atent_linf", 10))
MODEL = os.path.join(_ROOT, "results", "verdict", "table2", "atent_linf")


def pgd20(x, y):
  logits_fn = runs.load_classifier(MODEL)
  return jax.jit(lambda: attacks.pgd_linf(logits_fn, x, y, jax.random.PRNGKey(0), eps=0.3,
                                          step_size=0.01, num_steps=20))


def apgd20(x, y):
  logits_fn = runs.load_classifier(MODEL)
  return lambda: attacks.apgd(logits_fn, x, y, jax.random.PRNGKey(0), norm="linf", eps=0.3,
                              num_steps=20, early_stop=False)


def timed(f) -> float:
  t0 = time.process_time()
  jax.block_until_ready(f())
  return 1e3 * (time.process_time() - t0)


def main(other: str):
  os.chdir(_ROOT)  # the run's config names its data folder relative to the checkout
  x, y = runs.load_eval_split(MODEL, "test")
  x, y = jnp.asarray(x[:100]), jnp.asarray(y[:100])
  calls = {}
  for dx in ("xla", other):
    ops.DX_KERNEL = dx  # read while each call below is traced (its first call)
    for variant, k in STEPS:
      calls[(dx, f"{variant} K {k}")] = benchmark.build_jax_step(variant, k, 128)[0]
    calls[(dx, "PGD-20 (jit)")] = pgd20(x, y)
    jax.block_until_ready(calls[(dx, "PGD-20 (jit)")]())
  names = list(calls)
  for name in names:
    jax.block_until_ready(calls[name]())
  times = {name: [] for name in names}
  for r in range(ROUNDS):
    for name in names[r % len(names):] + names[:r % len(names)]:
      times[name].append(timed(calls[name]))
  for dx in ("xla", other):
    ops.DX_KERNEL = dx
    f = apgd20(x, y)
    f()  # compiles the host loop's stages with this setting
    times[(dx, "APGD-CE 20 (host loop, blocks)")] = [timed(f) for _ in range(ROUNDS)]
    names.append((dx, "APGD-CE 20 (host loop, blocks)"))
  ops.DX_KERNEL = "xla"
  print(f"load average {os.getloadavg()[0]:.2f}; CPUs {len(os.sched_getaffinity(0))}; "
        f"process CPU ms per call, median (min-max) of {ROUNDS} rounds")
  for what in dict.fromkeys(n for _, n in names):
    a, b = times[("xla", what)], times[(other, what)]
    print(f"{what}: xla {statistics.median(a):,.0f} ({min(a):,.0f}-{max(a):,.0f}) | {other} "
          f"{statistics.median(b):,.0f} ({min(b):,.0f}-{max(b):,.0f}) "
          f"x{statistics.median(b) / statistics.median(a):.2f}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "im2col")
