"""Certifies a trained classifier with randomized smoothing (Cohen, Rosenfeld & Kolter, 2019).

  python experiments/certify.py --workdir=RUN --sigma=0.12 --n0=100 --n=100000 --alpha=0.001 \
      [--num_examples=500] [--skip=1] [--batch_size=1000] [--radii=0,0.25,0.435,0.5,1.0] [--seed=0]

Loads the run's model (`atent_jax.load_classifier`) and evaluation split
(`atent_jax.runs.load_eval_split`), certifies examples skip*0, skip*1, ... (at most num_examples)
and writes into RUN/certify_sigma{sigma}/:
  results.jsonl             one line per example: index, label, prediction, radius, correct, time
                            (written as it goes, so a long run can be watched)
  certified_accuracy.json   settings, certified accuracy at --radii, accuracy-vs-radius curve
  certified_accuracy.png    the curve
The noise is Gaussian in [0, 1] pixel units; prediction -1 means abstain (counted as wrong).
"""

from __future__ import annotations

import json
import os
import sys
import time

if __package__ in (None, ""):
  # `python experiments/certify.py` from a checkout: make `atent_jax` importable.
  _ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np
from absl import app, flags, logging

from atent_jax import smoothing
from atent_jax.errors import AtentError, ConfigError

FLAGS = flags.FLAGS
CURVE_POINTS = 201


def define_flags():
  """Defines the CLI flags (only when run as a script, so importing this module in tests
  never collides with flags that other modules define)."""
  flags.DEFINE_string("workdir", None, "Training run directory (holds the checkpoint and config).")
  flags.DEFINE_float("sigma", None, "Noise standard deviation in [0, 1] pixel units (> 0).")
  flags.DEFINE_integer("n0", 100, "Selection samples per example.")
  flags.DEFINE_integer("n", 100_000, "Estimation samples per example.")
  flags.DEFINE_float("alpha", 0.001, "Failure probability of each certificate.")
  flags.DEFINE_integer("num_examples", 500, "Certify at most this many examples.")
  flags.DEFINE_integer("skip", 1, "Certify every skip-th example of the evaluation split "
                       "(Cohen et al. use 20 on the 10,000 CIFAR-10 test images).")
  flags.DEFINE_integer("batch_size", 1000, "Noisy copies per forward pass.")
  flags.DEFINE_list("radii", ["0", "0.25", "0.435", "0.5", "1.0"],
                    "l_2 radii at which to report certified accuracy.")
  flags.DEFINE_enum("split", "test", ["test", "validation", "eval"],
                    "Data to certify: the whole test set (default), the validation split, or "
                    "the split the run reported on during training.")
  flags.DEFINE_integer("seed", 0, "PRNG seed; example i uses fold_in(key(seed), i).")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")


def output_dir(workdir: str, sigma: float) -> str:
  """RUN/certify_sigma{sigma}, e.g. certify_sigma0.12, certify_sigma1.0."""
  return os.path.join(workdir, f"certify_sigma{float(sigma)!r}")


def parse_radii(values) -> list[float]:
  radii = []
  for value in values:
    try:
      radius = float(value)
    except (TypeError, ValueError):
      raise ConfigError(f"radii: {value!r} is not a number") from None
    if not np.isfinite(radius) or radius < 0:
      raise ConfigError(f"radii: {value!r} is not valid: use numbers >= 0")
    radii.append(radius)
  if not radii:
    raise ConfigError("radii is empty: give at least one radius, e.g. --radii=0,0.5")
  return radii


def _curve_grid(results, radii) -> np.ndarray:
  max_radius = max([r["radius"] for r in results] + list(radii) + [0.0])
  top = max_radius * 1.05 if max_radius > 0 else 1.0
  return np.linspace(0.0, top, CURVE_POINTS)


def _plot(path, grid, curve, radii, accuracies, *, sigma, n, num_examples):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.step(grid, curve, where="post", label=f"sigma={sigma:g}")
  ax.scatter(radii, accuracies, s=14, zorder=3)
  ax.set_xlabel("l_2 radius")
  ax.set_ylabel("certified accuracy")
  ax.set_ylim(0.0, 1.0)
  ax.set_xlim(0.0, float(grid[-1]))
  ax.set_title(f"randomized smoothing (n={n}, {num_examples} examples)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_certification(logits_fn, images, labels, out_dir, *, sigma, n0=100, n=100_000,
                      alpha=0.001, seed=0, batch_size=1000, radii=(0.0, 0.25, 0.5, 0.75, 1.0),
                      indices=None, progress=True, extra_metadata=None) -> dict:
  """Certifies `images` and writes results.jsonl, certified_accuracy.{json,png} into out_dir.

  Returns the summary written to certified_accuracy.json.
  """
  import jax  # pylint: disable=import-outside-toplevel

  radii = parse_radii(radii)
  # Validate the settings before creating any file.
  smoothing.check_settings(sigma=sigma, n0=n0, n=n, alpha=alpha)
  os.makedirs(out_dir, exist_ok=True)
  results_path = os.path.join(out_dir, "results.jsonl")
  start = time.perf_counter()
  with open(results_path, "w", encoding="utf-8") as f:
    def write(result):
      f.write(json.dumps(result) + "\n")
      f.flush()
    results = smoothing.certify_dataset(
        logits_fn, images, labels, sigma=sigma, n0=n0, n=n, alpha=alpha,
        key=jax.random.key(int(seed)), batch_size=batch_size, progress=progress,
        indices=indices, callback=write)
  total_time = time.perf_counter() - start

  accuracies = smoothing.certified_accuracy(results, radii)
  grid = _curve_grid(results, radii)
  curve = smoothing.certified_accuracy(results, grid)
  predictions = np.asarray([r["prediction"] for r in results])
  summary = {
      "sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha),
      "seed": int(seed), "batch_size": int(batch_size),
      "num_examples": len(results),
      "certified_accuracy": [{"radius": r, "accuracy": float(a)}
                             for r, a in zip(radii, accuracies)],
      "abstain_rate": float(np.mean(predictions == smoothing.ABSTAIN)),
      "mean_radius_correct": float(np.mean([r["radius"] for r in results if r["correct"]]
                                           or [0.0])),
      "total_time_s": float(total_time),
      "curve": {"radius": [float(v) for v in grid], "accuracy": [float(v) for v in curve]},
  }
  if extra_metadata:
    summary.update(extra_metadata)
  with open(os.path.join(out_dir, "certified_accuracy.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  _plot(os.path.join(out_dir, "certified_accuracy.png"), grid, curve, radii, accuracies,
        sigma=float(sigma), n=int(n), num_examples=len(results))
  return summary


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    workdir = FLAGS.workdir
    if not workdir:
      raise ConfigError("--workdir is required (the training run directory)")
    if not os.path.isdir(workdir):
      raise ConfigError(f"--workdir={workdir} does not exist or is not a directory")
    if FLAGS.sigma is None:
      raise ConfigError("--sigma is required (noise std in [0, 1] pixel units, e.g. 0.12)")
    sigma, n0, n, alpha = smoothing.check_settings(
        sigma=FLAGS.sigma, n0=FLAGS.n0, n=FLAGS.n, alpha=FLAGS.alpha)
    for name in ("num_examples", "skip", "batch_size"):
      if getattr(FLAGS, name) < 1:
        raise ConfigError(f"--{name}={getattr(FLAGS, name)} is not valid: use an integer >= 1")
    num_examples, skip, batch_size = FLAGS.num_examples, FLAGS.skip, FLAGS.batch_size
    radii = parse_radii(FLAGS.radii)

    from atent_jax import load_classifier  # pylint: disable=import-outside-toplevel
    from atent_jax.runs import load_eval_split  # pylint: disable=import-outside-toplevel

    logits_fn = load_classifier(workdir)
    images, labels = load_eval_split(workdir, FLAGS.split)
    indices = np.arange(0, len(images), skip)[:num_examples]
    if indices.size == 0:
      raise ConfigError(f"the evaluation split of {workdir} is empty")
    out_dir = output_dir(workdir, sigma)
    summary = run_certification(
        logits_fn, np.asarray(images)[indices], np.asarray(labels)[indices], out_dir,
        sigma=sigma, n0=n0, n=n, alpha=alpha, seed=FLAGS.seed, batch_size=batch_size,
        radii=radii, indices=indices, progress=FLAGS.progress,
        extra_metadata={"workdir": os.path.abspath(workdir), "skip": skip})
  except (AtentError, FileNotFoundError) as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  accs = ", ".join(f"r={d['radius']:g}: {d['accuracy']:.3f}" for d in summary["certified_accuracy"])
  print(f"certified accuracy ({summary['num_examples']} examples, sigma={sigma:g}): {accs}")
  print(f"wrote {out_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
