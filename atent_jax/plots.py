"""Training curves of runs, drawn from their metrics.jsonl (the Figure 2 analogue).

`training_curves(workdirs, out)` writes one PNG: clean accuracy, robust accuracy and training
loss per epoch, one line per run. A run writes its own (WORKDIR/training_curves.png) at its end;
`experiments/figures.py curves` draws several runs together.

The figure is drawn on a `matplotlib.figure.Figure` with the Agg canvas, not through pyplot, so
drawing from a training run or a notebook never changes the caller's matplotlib backend or
open figures. matplotlib is imported when a figure is drawn (it costs about a second), not when
the training module is imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

CURVES_FILE = "training_curves.png"


def read_metrics(workdir: str) -> list[dict]:
  """The per-epoch records of a run's metrics.jsonl (blank lines skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} holds no metrics.jsonl: pass a training run's workdir")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def training_curves(workdirs: Sequence[str], out: str, labels: Sequence[str] | None = None,
                    title: str | None = None) -> str:
  """One PNG, three panels: clean accuracy on the evaluation split (and, dashed, on the method's
  own training inputs: clean for SGD, adversarial or sampled for the others), robust accuracy on
  the evaluation split, and the mean training loss per epoch, one line per workdir. Returns
  `out`."""
  # Imported here, not at the top: see the module docstring (import cost, no pyplot state).
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator
  workdirs = list(workdirs)
  labels = list(labels) if labels else [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    raise ValueError(f"labels: {len(labels)} labels for {len(workdirs)} workdirs: pass one "
                     "label per workdir")
  runs = [(read_metrics(w), label) for w, label in zip(workdirs, labels)]
  fig = Figure(figsize=(14, 4))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 3)
  split, attack = "evaluation split", ""
  for records, label in runs:
    evaluated = [r for r in records if "robust_accuracy" in r]
    if evaluated:
      split = evaluated[-1].get("eval_split", "evaluation") + " split"
      attack = evaluated[-1].get("eval_attack", attack)
      epochs = [r["epoch"] for r in evaluated]
      line, = axes[0].plot(epochs, [100 * r["clean_accuracy"] for r in evaluated], marker="o",
                           ms=3, label=label)
      train = [r for r in records if "train_accuracy" in r]
      if train:  # dashed, same colour: accuracy on the method's own training inputs
        axes[0].plot([r["epoch"] for r in train], [100 * r["train_accuracy"] for r in train],
                     ls="--", color=line.get_color(), lw=1)
      axes[1].plot(epochs, [100 * r["robust_accuracy"] for r in evaluated], marker="o", ms=3,
                   label=label)
    axes[2].plot([r["epoch"] for r in records], [r["train_loss"] for r in records], marker="o",
                 ms=3, label=label)
  axes[0].set_title(f"accuracy: {split} (solid), training inputs (dashed)", fontsize=10)
  axes[1].set_title(f"robust accuracy ({split})" + (f"\n{attack}" if attack else ""),
                    fontsize=10)
  axes[2].set_title("training loss (method's objective)")
  epochs = sorted({r["epoch"] for records, _ in runs for r in records})
  for ax, ylabel in zip(axes, ("accuracy (%)", "accuracy (%)", "loss")):
    ax.set_xlabel("epoch")
    if len(epochs) <= 12:  # every epoch a tick (one epoch: no fractional ticks around it)
      ax.set_xticks(epochs)
    else:
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  return out
