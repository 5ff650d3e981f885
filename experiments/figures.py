"""Figures of the paper, as analogues: training curves (Figure 2, drawn by atent_jax.plots) and
toy decision boundaries (Figure 1).

  # Figure 2 analogue: clean / robust accuracy per epoch and the training loss of any runs
  python experiments/figures.py curves --workdirs=runs/table2/sgd,runs/table2/atent_linf \
      [--labels=SGD,ATENT] --out=results/table2/training_curves.png

  # Figure 1 analogue: decision boundaries of SGD, PGD-AT, TRADES and l_inf-ATENT on two
  # interleaved moons in [0, 1]^2 (a small flax MLP, the library's training step); ~30 s on CPU
  python experiments/figures.py toy --out=results/figure1_toy.png [--eps=0.06] [--steps=600]

`curves` reads each workdir's metrics.jsonl only (a results folder works as well as a run).
`toy` trains each method with atent_jax.train.make_train_step (methods.make_grad_fn of
config.method) on the same data, initialisation and number of steps, and titles each panel with
its clean and PGD-20 robust accuracy on held-out points.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags

from atent_jax import cli

# The curves are drawn by the library (a run draws its own at its end); re-exported here for
# the `curves` command and experiments/reproduce.py.
from atent_jax.plots import read_metrics, training_curves  # noqa: F401


def _plt():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


# --- Figure 1 analogue: toy decision boundaries -----------------------------------------------

def two_moons(n: int, seed: int, noise: float = 0.06):
  """Two interleaved half circles, rescaled into [0.05, 0.95]^2; labels 0 / 1."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  n0 = n // 2
  t0, t1 = rng.uniform(0, np.pi, n0), rng.uniform(0, np.pi, n - n0)
  a = np.stack([np.cos(t0), np.sin(t0)], 1)
  b = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
  x = np.concatenate([a, b]) + noise * rng.normal(size=(n, 2))
  # The moons span about [-1, 2] x [-0.5, 1]: map them into the unit square (gap ~0.2).
  x = np.stack([0.05 + 0.9 * (x[:, 0] + 1.2) / 3.4, 0.1 + 0.8 * (x[:, 1] + 0.6) / 1.8], 1)
  x = np.clip(x, 0.0, 1.0).astype(np.float32)
  y = np.concatenate([np.zeros(n0), np.ones(n - n0)]).astype(np.int32)
  perm = rng.permutation(n)
  return x[perm], y[perm]


def _mlp():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class MLP(nn.Module):
    """2 -> 64 -> 64 -> 2 ReLU network; `train` is accepted (and unused) like the library's
    models."""
    hidden: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
      del train
      x = nn.relu(nn.Dense(self.hidden)(x))
      x = nn.relu(nn.Dense(self.hidden)(x))
      return nn.Dense(2)(x)

  return MLP()


TOY_METHODS = (("sgd", "SGD"), ("pgd_at", "PGD-AT"), ("trades", "TRADES"),
               ("atent_linf", "l_inf-ATENT"))


def toy_config(method: str, eps: float, steps_k: int, lr: float, batch: int):
  from atent_jax.configuration import default_config  # pylint: disable=import-outside-toplevel
  config = default_config()
  config.method = method
  config.seed = 0
  config.train.batch_size = batch
  config.train.learning_rate = lr
  config.train.momentum = 0.9
  config.train.weight_decay = 0.0
  config.sampler.norm = "linf"
  config.sampler.eps = eps
  config.sampler.num_steps = steps_k
  config.sampler.step_size = 2.5 * eps / steps_k
  config.sampler.noise_scale = 1e-3
  config.sampler.alpha = 0.9
  config.trades_beta = 6.0
  return config


def train_toy(method: str, x, y, *, eps: float, steps: int, steps_k: int = 10, lr: float = 0.1,
              batch: int = 128):
  """Trains the MLP with the library's train step for `method`; returns (model, variables)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from atent_jax import train  # pylint: disable=import-outside-toplevel
  config = toy_config(method, eps, steps_k, lr, batch)
  model = _mlp()
  steps_per_epoch = len(y) // batch
  tx, _ = train.make_optimizer(config, steps_per_epoch)
  state = train.init_state(config, model, tx, x.shape[1:])
  step_fn = jax.jit(train.make_train_step(config, model, tx))
  key = jax.random.PRNGKey(config.seed + 1)
  for s in range(steps):
    epoch, i = divmod(s, steps_per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(y))
    idx = order[i * batch:(i + 1) * batch]
    state, _ = step_fn(state, x[idx], y[idx], key)
  return model, {"params": state.params}


def toy_figure(out: str, *, eps: float = 0.06, steps: int = 600, n_train: int = 512,
               n_test: int = 1000, grid: int = 150, methods=TOY_METHODS) -> dict:
  """Figure 1 analogue: one panel per method (boundary, data, clean/robust accuracy)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from atent_jax import attacks  # pylint: disable=import-outside-toplevel
  plt = _plt()
  x, y = two_moons(n_train, seed=0)
  xt, yt = two_moons(n_test, seed=1)
  gx, gy = np.meshgrid(np.linspace(0, 1, grid), np.linspace(0, 1, grid))
  pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
  fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.4))
  axes = np.atleast_1d(axes)
  summary = {}
  for ax, (method, label) in zip(axes, methods):
    t0 = time.time()
    model, variables = train_toy(method, x, y, eps=eps, steps=steps)
    logits_fn = jax.jit(lambda v, model=model, variables=variables:
                        model.apply(variables, v, train=False))
    clean = float(np.mean(np.argmax(logits_fn(xt), -1) == yt))
    adv = attacks.pgd_linf(logits_fn, jnp.asarray(xt), jnp.asarray(yt), jax.random.PRNGKey(7),
                           eps=eps, step_size=eps / 8, num_steps=20, restarts=1)
    robust = float(np.mean((np.argmax(logits_fn(adv), -1) == yt) &
                           (np.argmax(logits_fn(xt), -1) == yt)))
    prob = np.asarray(jax.nn.softmax(logits_fn(pts), -1)[:, 1]).reshape(grid, grid)
    ax.contourf(gx, gy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.55)
    ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.5)
    ax.scatter(x[:, 0], x[:, 1], c=np.where(y == 1, "tab:red", "tab:blue"), s=6,
               edgecolors="none")
    # The eps-box of a few training points, for scale.
    for p in x[:6]:
      ax.add_patch(plt.Rectangle((p[0] - eps, p[1] - eps), 2 * eps, 2 * eps, fill=False,
                                 lw=0.6, ec="k"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(f"{label}\nclean {100 * clean:.1f}%, robust {100 * robust:.1f}% "
                 f"(PGD-20, l_inf {eps:g})", fontsize=10)
    summary[method] = {"clean_accuracy": clean, "robust_accuracy": robust,
                       "seconds": time.time() - t0}
  fig.suptitle(f"Decision boundaries on two moons in [0,1]^2: MLP 2-64-64-2, {steps} steps of "
               f"batch 128, training eps {eps:g} (K 10); boxes: the l_inf eps-ball", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return summary


# --- command line -----------------------------------------------------------------------------

FLAGS = flags.FLAGS
# The flags each command takes besides --out.
COMMAND_FLAGS = {"curves": ("workdirs", "labels", "title"), "toy": ("eps", "steps", "grid")}


def define_flags() -> None:
  """Called only when run as a script: reproduce.py and the tests import this module, and its
  flags (--out) would clash with theirs."""
  flags.DEFINE_string("out", None, "Output image (required), e.g. results/figure1_toy.png.")
  flags.DEFINE_list("workdirs", None, "curves: runs (or results folders), comma-separated.")
  flags.DEFINE_list("labels", None, "curves: one label per workdir (default: folder names).")
  flags.DEFINE_string("title", None, "curves: figure title.")
  flags.DEFINE_float("eps", 0.06, "toy: l_inf radius of training and attack, in (0, 0.5).")
  flags.DEFINE_integer("steps", 600, "toy: training steps per method.")
  flags.DEFINE_integer("grid", 150, "toy: grid points per side of the boundary plot.")


def _check_flags(argv) -> str:
  """The command; every user error is one line before anything is computed or written."""
  commands = " or ".join(COMMAND_FLAGS)
  if len(argv) < 2:
    cli.fail(f"give a command first: {commands}, e.g. figures.py toy --out=toy.png")
  command = argv[1]
  if command not in COMMAND_FLAGS:
    cli.fail(f"unknown command {command!r}: use {commands}")
  if len(argv) > 2:
    cli.fail(f"unexpected arguments after {command}: {' '.join(argv[2:])} (flags are "
             "--name=value)")
  for other, names in COMMAND_FLAGS.items():
    for name in names:
      if other != command and FLAGS[name].present:
        cli.fail(f"--{name} is a flag of `{other}`, not of `{command}`: drop it")
  if not FLAGS.out:
    cli.fail("--out is required: the image to write, e.g. --out=results/figure1_toy.png")
  if os.path.isdir(FLAGS.out):
    cli.fail(f"--out={FLAGS.out} is a folder: give a file name, e.g. --out={FLAGS.out}/fig.png")
  from matplotlib.backend_bases import FigureCanvasBase  # pylint: disable=import-outside-toplevel
  formats = FigureCanvasBase.get_supported_filetypes()
  ext = os.path.splitext(FLAGS.out)[1][1:].lower()
  if ext and ext not in formats:  # else matplotlib fails only after the figure is computed
    cli.fail(f"--out={FLAGS.out}: matplotlib cannot write .{ext}; use one of "
             f".{', .'.join(formats)}")
  if command == "curves" and not [w for w in FLAGS.workdirs or [] if w]:
    cli.fail("--workdirs is required: comma-separated runs, e.g. --workdirs=runs/sgd,runs/atent")
  if command == "toy":
    if not 0 < FLAGS.eps < 0.5:
      cli.fail(f"--eps={FLAGS.eps:g} must be in (0, 0.5), e.g. --eps=0.06")
    if FLAGS.steps < 1:
      cli.fail(f"--steps={FLAGS.steps} must be >= 1, e.g. --steps=600")
    if FLAGS.grid < 2:
      cli.fail(f"--grid={FLAGS.grid} must be >= 2, e.g. --grid=150")
  return command


def main(argv):
  if _check_flags(argv) == "curves":
    dirs = [w for w in FLAGS.workdirs if w]
    labels = [label for label in FLAGS.labels or [] if label] or None
    try:
      training_curves(dirs, FLAGS.out, labels, FLAGS.title)
    except (FileNotFoundError, ValueError) as e:
      cli.fail(str(e))
    print(f"wrote {FLAGS.out}")
  else:
    summary = toy_figure(FLAGS.out, eps=FLAGS.eps, steps=FLAGS.steps, grid=FLAGS.grid)
    for m, s in summary.items():
      print(f"{m}: clean {100 * s['clean_accuracy']:.1f}%, robust "
            f"{100 * s['robust_accuracy']:.1f}% ({s['seconds']:.1f}s)")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, sys.argv)
