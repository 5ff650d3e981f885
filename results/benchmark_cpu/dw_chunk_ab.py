"""The conv weight-gradient chunk (ops.DEFAULT_CHUNK: examples per piece of the dW sum) A/B'd in
whole training steps: SmallCNN, batch 128, random MNIST-shaped data, each step compiled once per
chunk in this process, rounds alternated (the order rotated each round). Process CPU ms per step
(median and min-max of ROUNDS), so a niced job on another core does not move the figures much.

  taskset -c 0 python results/benchmark_cpu/dw_chunk_ab.py [chunk ...]   # default: 8 2 4
  taskset -c 1 python results/benchmark_cpu/dw_chunk_ab.py 8 2 im2col:2 im2col:4

A bare number is a chunk of the shifted-slice kernel (ops.DW_KERNEL "shift"); "im2col:C" is
chunks of C examples as one patches^T dy matmul each (ops.DW_KERNEL "im2col").

DEFAULT_CHUNK 8 was chosen on 2026-11-28 with YNNPACK's element-wise fusion on (ops.py); that
flag is gone since 2026-12-01, so the choice is measured again here.
"""

import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "experiments"))

import benchmark  # noqa: E402  (experiments/benchmark.py: the same steps as its rows)

from atent_jax import ops  # noqa: E402

ROUNDS = 7
ROWS = (("sgd", 0), ("pgd_at", 10), ("atent_linf", 10))


def parse(arg: str) -> tuple[str, int]:
  kernel, _, chunk = arg.rpartition(":")
  return kernel or "shift", int(chunk)


def main(chunks):
  steps = {}
  for variant, k in ROWS:
    for chunk in chunks:
      ops.DW_KERNEL, ops.DEFAULT_CHUNK = parse(chunk)  # both read when the step is traced
      steps[(variant, k, chunk)] = benchmark.build_jax_step(variant, k, 128)[0]
  ops.DW_KERNEL, ops.DEFAULT_CHUNK = "shift", 8
  names = list(steps)
  for name in names:
    steps[name]()  # warm-up
  times = {name: [] for name in names}
  for r in range(ROUNDS):
    for name in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.process_time()
      steps[name]()
      times[name].append(1e3 * (time.process_time() - t0))
  print(f"load average {os.getloadavg()[0]:.2f}; CPUs {len(os.sched_getaffinity(0))}; "
        f"process CPU ms per step, median (min-max) of {ROUNDS} rounds")
  for variant, k in ROWS:
    base = statistics.median(times[(variant, k, chunks[0])])
    cells = []
    for chunk in chunks:
      t = times[(variant, k, chunk)]
      cells.append(f"chunk {chunk}: {statistics.median(t):,.0f} ({min(t):,.0f}-{max(t):,.0f}) "
                   f"x{statistics.median(t) / base:.2f}")
    print(f"{variant} K {k}: " + " | ".join(cells))


if __name__ == "__main__":
  main(sys.argv[1:] or ["8", "2", "4"])
