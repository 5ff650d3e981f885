"""SmallCNN at batch 128 with its conv2 forward as blocked im2col (the library's choice on CPU
since 2026-12-07) against the same model with XLA's forward conv everywhere, in one process,
rounds alternated. Process CPU time per call, median of 7 rounds: forward, input gradient,
weight gradient, and per-example input gradients under vmap (the sampler's and PGD's form).

  taskset -c 0 python results/benchmark_cpu/smallcnn_im2col_ab.py

The XLA side is made by calling ops.conv2d with forward="xla" forced (a wrapper installed while
that side's functions are traced); the weights and data are the same.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import atent_jax  # noqa: E402,F401  (the library's XLA flags)
from atent_jax import models, ops  # noqa: E402
from atent_jax.configuration import default_config  # noqa: E402

ROUNDS = 7
_LIBRARY_CONV2D = ops.conv2d


def conv2d_forcing_xla(*args, **kwargs):
  kwargs["forward"] = "xla"
  return _LIBRARY_CONV2D(*args, **kwargs)


def functions(model, labels):
  def loss(params, x):
    logits = model.apply({"params": params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def example_loss(params, x1, y1):
    logits = model.apply({"params": params}, x1[None], train=False)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y1)
  return {"forward": jax.jit(lambda params, x: model.apply({"params": params}, x, train=False)),
          "input gradient": jax.jit(jax.grad(loss, 1)),
          "weight gradient": jax.jit(jax.grad(loss, 0)),
          "per-example input gradients (vmap)": jax.jit(
              lambda params, x: jax.vmap(jax.grad(example_loss, 1), (None, 0, 0))(
                  params, x, labels))}


def main():
  model = models.get_model(default_config().model)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(128, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 128), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  sides = {}
  for side, conv in (("XLA forward", conv2d_forcing_xla), ("im2col conv2", _LIBRARY_CONV2D)):
    ops.conv2d = conv
    sides[side] = functions(model, y)
    for f in sides[side].values():  # traced and compiled while this side's conv2d is installed
      jax.block_until_ready(f(params, x))
      jax.block_until_ready(f(params, x))
  ops.conv2d = _LIBRARY_CONV2D
  times = {(side, name): [] for side in sides for name in sides[side]}
  for _ in range(ROUNDS):
    for side, fns in sides.items():
      for name, f in fns.items():
        t = time.process_time()
        jax.block_until_ready(f(params, x))
        times[(side, name)].append(time.process_time() - t)
  print(f"jax {jax.__version__}, SmallCNN, batch 128, ms of process CPU (median of {ROUNDS})")
  for name in sides["XLA forward"]:
    a = 1000 * np.median(times[("XLA forward", name)])
    b = 1000 * np.median(times[("im2col conv2", name)])
    print(f"{name}: XLA forward {a:.1f}, im2col conv2 {b:.1f}, ratio {b / a:.2f}", flush=True)


if __name__ == "__main__":
  main()
