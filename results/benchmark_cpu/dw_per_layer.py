"""The weight gradient (dW) of each SmallCNN conv alone, batch 128: XLA's own and each of the
library's formulations (ops.DW_KERNEL: "shift" at chunks 8 and 2, "im2col" at chunk 2, and the
C++ kernel "native" of atent_jax.native). Process CPU ms per call, median (min-max) of 9 after
one warm-up; the error is max |dW - ref| / max |ref| against a float64 NumPy sum, and GFLOP/s
counts 2 * N * Ho * Wo * 9 * Cin * Cout.

  taskset -c 1 python results/benchmark_cpu/dw_per_layer.py

(Pinned to one core, XLA's thread pool has one thread, so every candidate runs single-threaded.)
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from atent_jax import native, ops  # noqa: E402

LAYERS = {"conv1": (28, 1, 32), "conv2": (26, 32, 32), "conv3": (12, 32, 64), "conv4": (10, 64, 64)}
CANDIDATES = {"xla": None, "shift, chunk 8": ("shift", 8), "shift, chunk 2": ("shift", 2),
              "im2col, chunk 2": ("im2col", 2), "native": ("native", 2)}


def dw_with(setting):
  def dw(x, kernel, dy):
    if setting is None:
      conv = lambda k: ops.conv2d(x, k, impl="xla")  # noqa: E731
    else:
      ops.DW_KERNEL = setting[0]  # read while this function is traced
      conv = lambda k: ops.conv2d(x, k, impl="chunked", chunk=setting[1])  # noqa: E731
    try:
      return jax.vjp(conv, kernel)[1](dy)[0]
    finally:
      ops.DW_KERNEL = "auto"
  return jax.jit(dw)


def reference(x, dy):
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  ho, wo = dy.shape[1:3]
  return np.stack([np.stack([np.einsum("nhwc,nhwo->co", x[:, i:i + ho, j:j + wo], dy)
                             for j in range(3)]) for i in range(3)])


def cpu_ms(f, *args, reps=9):
  f(*args).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.process_time()
    f(*args).block_until_ready()
    times.append(1e3 * (time.process_time() - t0))
  return np.median(times), min(times), max(times)


def main():
  if not native.conv_dw_available():
    sys.exit(f"the native kernel is not available: {native.build_error()}")
  rng = np.random.default_rng(0)
  print(f"load average {os.getloadavg()[0]:.2f}; CPUs {len(os.sched_getaffinity(0))}; "
        f"jax {jax.__version__}; native library {native.library_path()}")
  totals = dict.fromkeys(CANDIDATES, 0.0)
  for name, (h, cin, cout) in LAYERS.items():
    x = rng.normal(size=(128, h, h, cin)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
    dy = rng.normal(size=(128, h - 2, h - 2, cout)).astype(np.float32)
    ref = reference(x, dy)
    flops = 2 * 128 * (h - 2) ** 2 * 9 * cin * cout
    cells = []
    for label, setting in CANDIDATES.items():
      f = dw_with(setting)
      err = np.abs(np.asarray(f(x, kernel, dy), np.float64) - ref).max() / np.abs(ref).max()
      med, lo, hi = cpu_ms(f, x, kernel, dy)
      totals[label] += med
      cells.append(f"{label} {med:.1f} ({lo:.1f}-{hi:.1f}; {flops / med / 1e6:.0f} GFLOP/s; "
                   f"err {err:.0e})")
    print(f"{name}: " + " | ".join(cells), flush=True)
  print("sum: " + " | ".join(f"{label} {t:.1f}" for label, t in totals.items()))
  print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
