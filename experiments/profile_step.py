"""Where the time of a SmallCNN training step goes, op by op, in JAX and in PyTorch (CPU).

  python experiments/profile_step.py [--batch=128] [--repeats=20] [--torch]

Times, at the SmallCNN's shapes (MNIST, batch 128), each conv layer's forward, input gradient
(dx) and weight gradient (dw) - JAX with XLA's conv and with atent_jax.ops' chunked dw, and
(--torch) PyTorch's - then the whole model: forward, input gradient only (what PGD needs),
weight gradient only (SGD), both (the fused ATENT step's Langevin step). Median of --repeats
after warm-up; one JSON object per line:
  {"impl": "jax_xla"|"jax_chunked"|"torch", "what": "conv2 dw", "ms": ...}
This is the profile behind the performance notes of results/benchmark_cpu/README.md.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

import atent_jax  # noqa: E402,F401  (first: sets the CPU XLA flags)
from atent_jax import cli  # noqa: E402

# SmallCNN's convs at MNIST shapes: (name, input H=W, in channels, out channels), 3x3 VALID.
CONVS = (("conv1", 28, 1, 32), ("conv2", 26, 32, 32), ("conv3", 12, 32, 64),
         ("conv4", 10, 64, 64))


def _median_ms(fn, repeats):
  fn()
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return round(1e3 * statistics.median(times), 2)


def jax_layers(batch, repeats):
  import jax
  import jax.numpy as jnp

  from atent_jax import ops
  out = []
  rng = jax.random.PRNGKey(0)
  for name, hw, cin, cout in CONVS:
    x = jax.random.uniform(rng, (batch, hw, hw, cin))
    k = jax.random.normal(rng, (3, 3, cin, cout)) * 0.1
    dy = jnp.ones((batch, hw - 2, hw - 2, cout))
    for impl in ("xla", "chunked"):
      conv = functools.partial(ops.conv2d, impl=impl)
      fwd = jax.jit(conv)
      dx = jax.jit(lambda a, b, conv=conv, dy=dy: jax.vjp(lambda u: conv(u, b), a)[1](dy)[0])
      dw = jax.jit(lambda a, b, conv=conv, dy=dy: jax.vjp(lambda w: conv(a, w), b)[1](dy)[0])
      for what, f in (("fwd", fwd), ("dx", dx), ("dw", dw)):
        if impl == "chunked" and what != "dw":
          continue  # same forward and dx as XLA's
        ms = _median_ms(lambda f=f, x=x, k=k: jax.block_until_ready(f(x, k)), repeats)
        out.append({"impl": f"jax_{impl}", "what": f"{name} {what}", "ms": ms})
  return out


def jax_model(batch, repeats):
  import jax
  import jax.numpy as jnp
  import optax

  from atent_jax import models
  from atent_jax.configuration import default_config
  config = default_config()
  config.model.name = "small_cnn"
  model = models.get_model(config.model)
  x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 28, 28, 1))
  y = jnp.arange(batch) % 10
  variables = model.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}, x,
                         train=False)
  params = variables["params"]

  def loss(p, xx):
    logits = model.apply({"params": p}, xx, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  cases = {"model forward": jax.jit(loss),
           "model dx (PGD step)": jax.jit(jax.grad(loss, argnums=1)),
           "model dw (SGD step's gradient)": jax.jit(jax.grad(loss, argnums=0)),
           "model dx+dw (fused ATENT step)": jax.jit(jax.grad(loss, argnums=(0, 1)))}
  return [{"impl": "jax", "what": what,
           "ms": _median_ms(lambda f=f: jax.block_until_ready(f(params, x)), repeats)}
          for what, f in cases.items()]


def torch_all(batch, repeats, threads=2):
  import torch
  import torch.nn.functional as F
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference
  torch.set_num_threads(threads)
  out = []
  for name, hw, cin, cout in CONVS:
    x = torch.rand(batch, cin, hw, hw)
    k = torch.randn(cout, cin, 3, 3) * 0.1
    dy = torch.ones(batch, cout, hw - 2, hw - 2)
    xg, kg = x.clone().requires_grad_(True), k.clone().requires_grad_(True)

    def fwd(x=x, k=k):
      with torch.no_grad():
        F.conv2d(x, k)

    def dx(xg=xg, k=k, dy=dy):
      torch.autograd.grad(F.conv2d(xg, k), xg, dy)

    def dw(x=x, kg=kg, dy=dy):
      torch.autograd.grad(F.conv2d(x, kg), kg, dy)

    for what, f in (("fwd", fwd), ("dx", dx), ("dw", dw)):
      out.append({"impl": "torch", "what": f"{name} {what}", "ms": _median_ms(f, repeats)})
  model = torch_reference.SmallCNN().eval()
  x = torch.rand(batch, 1, 28, 28)
  y = torch.arange(batch) % 10
  params = list(model.parameters())

  def loss(xx):
    return F.cross_entropy(model(xx), y)

  def forward():
    with torch.no_grad():
      loss(x)

  def grad_x():
    xx = x.clone().requires_grad_(True)
    torch.autograd.grad(loss(xx), xx)

  def grad_w():
    torch.autograd.grad(loss(x), params)

  def grad_both():
    xx = x.clone().requires_grad_(True)
    torch.autograd.grad(loss(xx), [xx] + params)

  for what, f in (("model forward", forward), ("model dx (PGD step)", grad_x),
                  ("model dw (SGD step's gradient)", grad_w),
                  ("model dx+dw (fused ATENT step)", grad_both)):
    out.append({"impl": "torch", "what": what, "ms": _median_ms(f, repeats)})
  return out


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Called only when run as a script, so that importing this module registers no flags."""
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 20, "Timed calls per row (median), after 2 warm-up calls.")
  flags.DEFINE_bool("torch", False, "Also time PyTorch (CPU, 2 threads).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  if FLAGS.batch < 1:
    cli.fail(f"--batch={FLAGS.batch} must be >= 1, e.g. --batch=128")
  if FLAGS.repeats < 1:
    cli.fail(f"--repeats={FLAGS.repeats} must be >= 1, e.g. --repeats=20")
  if FLAGS.torch and importlib.util.find_spec("torch") is None:
    # Checked first: the JAX rows take minutes before the PyTorch ones would fail.
    cli.fail("--torch needs PyTorch: pip install torch, or drop --torch")
  rows = jax_layers(FLAGS.batch, FLAGS.repeats) + jax_model(FLAGS.batch, FLAGS.repeats)
  if FLAGS.torch:
    rows += torch_all(FLAGS.batch, FLAGS.repeats)
  for r in rows:
    r["batch"] = FLAGS.batch
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main, sys.argv)
