"""The weight gradient (dW) of each SmallCNN conv alone, batch 128: XLA's own, the library's
chunked kernel at chunks 8 / 2 / 4 (ops.conv2d's vjp), and dW as im2col patches times dy in blocks
of 2 examples (written here, a candidate kernel). Process CPU ms per call, median (min-max) of 9.

  taskset -c 1 python results/benchmark_cpu/dw_per_layer.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from atent_jax import ops  # noqa: E402

LAYERS = {"conv1": (28, 1, 32), "conv2": (26, 32, 32), "conv3": (12, 32, 64), "conv4": (10, 64, 64)}


def dw_of(conv):
  def dw(x, kernel, dy):
    return jax.vjp(lambda k: conv(x, k), kernel)[1](dy)[0]
  return jax.jit(dw)


def dw_im2col(x, kernel, dy, block=2):
  kh, kw, cin, cout = kernel.shape
  ho, wo = dy.shape[1], dy.shape[2]

  def piece(acc, xy):
    xb, yb = xy
    patches = jnp.concatenate([xb[:, i:i + ho, j:j + wo, :] for i in range(kh)
                               for j in range(kw)], -1)
    return acc + jnp.einsum("nhwp,nhwo->po", patches, yb), None
  n = x.shape[0]
  acc, _ = lax.scan(piece, jnp.zeros((kh * kw * cin, cout), jnp.float32),
                    (x.reshape((n // block, block) + x.shape[1:]),
                     dy.reshape((n // block, block) + dy.shape[1:])))
  return acc.reshape(kernel.shape)


def cpu_ms(f, *args, reps=9):
  f(*args).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.process_time()
    f(*args).block_until_ready()
    times.append(1e3 * (time.process_time() - t0))
  return np.median(times), min(times), max(times)


def main():
  rng = np.random.default_rng(0)
  print(f"load average {os.getloadavg()[0]:.2f}; CPUs {len(os.sched_getaffinity(0))}")
  for name, (h, cin, cout) in LAYERS.items():
    x = jnp.asarray(rng.normal(size=(128, h, h, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(128, h - 2, h - 2, cout)), jnp.float32)
    candidates = {"xla": dw_of(lambda x, k: ops.conv2d(x, k, impl="xla"))}
    for chunk in (8, 2, 4):
      candidates[f"chunk {chunk}"] = dw_of(
          lambda x, k, c=chunk: ops.conv2d(x, k, impl="chunked", chunk=c))
    candidates["im2col, blocks of 2"] = jax.jit(dw_im2col)
    ref = np.asarray(candidates["xla"](x, kernel, dy), np.float64)
    cells = []
    for label, f in candidates.items():
      err = np.abs(np.asarray(f(x, kernel, dy)) - ref).max() / np.abs(ref).max()
      med, lo, hi = cpu_ms(f, x, kernel, dy)
      cells.append(f"{label} {med:.1f} ({lo:.1f}-{hi:.1f}, rel. err {err:.0e})")
    print(f"{name}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
  main()
