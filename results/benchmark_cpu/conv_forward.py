"""The forward convolution on XLA:CPU against the same convolution as blocked im2col (the
library's `ops.conv2d(forward="im2col")`: patches of `block` examples at a time, one matmul
each, lax.map over the blocks), per layer shape of
SmallCNN, ResNet-20 and the classic LeNet-5 (6 and 16 channels, not the library's LeNet5) at
batch 128. Process CPU time per call (median of 9 after 2 warm-up calls), so that a niced
process on the same core changes the figures little.

  taskset -c 0 python results/benchmark_cpu/conv_forward.py   # about 1 minute

A measurement for the performance issue's levers, not a library path: see README.md.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import atent_jax  # noqa: E402,F401  (the library's XLA flags, as training runs them)
from atent_jax import ops  # noqa: E402

BATCH = 128
# (input side, C in, C out, kernel side, padding): the model whose layer it is
SHAPES = [(28, 1, 32, 3, 0, "SmallCNN conv1"), (26, 32, 32, 3, 0, "SmallCNN conv2"),
          (12, 32, 64, 3, 0, "SmallCNN conv3"), (10, 64, 64, 3, 0, "SmallCNN conv4"),
          (32, 16, 16, 3, 1, "ResNet-20 stage 1"), (16, 32, 32, 3, 1, "ResNet-20 stage 2"),
          (8, 64, 64, 3, 1, "ResNet-20 stage 3"), (28, 1, 6, 5, 2, "classic LeNet-5 conv1"),
          (14, 6, 16, 5, 0, "classic LeNet-5 conv2")]


def cpu_ms(f, *args, repeats=9):
  jax.block_until_ready(f(*args))
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t = time.process_time()
    jax.block_until_ready(f(*args))
    times.append(time.process_time() - t)
  return 1000 * float(np.median(times))


def xla_conv(x, k, pad):
  return lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def im2col_blocked(x, k, pad, block):
  """The library's im2col forward (ops.conv2d forward="im2col") with `block` examples a block."""
  ops.IM2COL_BLOCK = block  # read when the function is traced
  return ops.conv2d(x, k, padding=pad, impl="chunked", forward="im2col")


def main():
  rng = np.random.default_rng(0)
  print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, batch {BATCH}, "
        "ms of process CPU per call")
  for side, cin, cout, ks, p, name in SHAPES:
    pad = ((p, p), (p, p))
    x = jnp.asarray(rng.uniform(size=(BATCH, side, side, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(ks, ks, cin, cout)) * 0.1, jnp.float32)
    xla = jax.jit(lambda x, k, pad=pad: xla_conv(x, k, pad))
    want = xla(x, k)
    cells = [f"{name} ({side}x{side}, {cin}->{cout}, {ks}x{ks}, pad {p}): "
             f"XLA {cpu_ms(xla, x, k):.1f}"]
    for block in (2, 4, 8, 16):
      f = jax.jit(lambda x, k, block=block, pad=pad: im2col_blocked(x, k, pad, block))
      np.testing.assert_allclose(f(x, k), want, rtol=1e-3, atol=1e-3)
      cells.append(f"im2col/{block} {cpu_ms(f, x, k):.1f}")
    print(", ".join(cells), flush=True)


if __name__ == "__main__":
  main()
