"""Cross-checks our AutoAttack against torchattacks' independent PyTorch implementation.

  python experiments/crosscheck_autoattack.py --workdir=RUN [--num_test=1000] [--eps=0.3] \
      [--norm=linf] [--out=results/crosscheck_<run>]

Loads the run's model (atent_jax.load_run, eval mode) and the first --num_test test images, then
attacks the same model three ways:
  ours                 atent_jax.attacks.autoattack, version standard (APGD-CE, APGD-T, FAB-T,
                       Square with the reference's settings: 100 iterations, 9 targets, 5,000
                       queries);
  torchattacks (ref)   torchattacks' APGD, APGDT, FAB (multi-targeted) and Square, with the
                       reference's settings (100 iterations, 9 targets, Square without the
                       schedule rescaling), chained as AutoAttack does (each on the points still
                       robust);
  torchattacks (as shipped)  torchattacks.AutoAttack(version='standard'), which runs APGD, APGD-T
                       and FAB with torchattacks' default of 10 iterations, not the reference's 100.
--num_steps, --num_target_classes and --num_queries reduce the budget of both ours and
torchattacks (ref) alike (recorded, and said in the README). --ours_from=RUN/robustness.json
takes our outcomes from an evaluation already made (same weights, checked by their SHA-1; the
first --num_test test images; the full budget), so only the PyTorch side runs. The PyTorch
attacks see the JAX model through atent_jax.interop.torch_module (forward in JAX, backward by
jax.vjp). Every outcome is judged by the same forward pass: robust = correct on the clean image
and on the attack's image.

Resumable and shareable (atent_jax.chunks): our side is one chunk, each PyTorch side one chunk
per --batch_size images, written to OUT/chunks/ as each finishes. Rerun the same command after
a kill: what is done is read back, not attacked again (torchattacks' attacks reseed from their
seed at every call, so a batch's outcome does not depend on the batches before it). Several
processes may run the command at once (e.g. `taskset -c 0` and `taskset -c 1`): each takes the
next batch nobody holds, and the one that finishes last writes the result. A chunk written with
other settings is an error naming the field; delete OUT/chunks to start over. The times are
summed over the batches.

Writes OUT/crosscheck.json (robust accuracies, per-example outcomes as bitmaps, the example-by-
example agreement, times, versions) and OUT/README.md (the table, the command, the machine).
User errors print one `error:` line and exit with code 2.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
import torch
import torchattacks
from absl import flags
from tqdm.auto import tqdm

import atent_jax
from atent_jax import chunks, cli, evaluation, interop
from atent_jax import runs as runs_lib
from atent_jax.attacks import autoattack
from atent_jax.data import load_dataset
from atent_jax.errors import ConfigError
from atent_jax.runs import load_run

FLAGS = flags.FLAGS
def define_flags() -> None:
  """The command's flags: defined when it runs as a script, not on import (a test that imports
  this module next to another script's would otherwise define --workdir twice)."""
  flags.DEFINE_string("workdir", None, "The training run whose model is attacked.")
  flags.DEFINE_integer("num_test", 1000, "Attack the first N test images.")
  flags.DEFINE_float("eps", None, "Radius (default: the run's config.eval.eps).")
  flags.DEFINE_enum("norm", None, ["linf", "l2"], "Norm (default: the run's config.eval.norm).")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint to attack.")
  flags.DEFINE_integer("batch_size", 250, "Images per attack call.")
  flags.DEFINE_integer("seed", 0, "Seed of both implementations.")
  flags.DEFINE_string("out", None, "Output folder (default: results/crosscheck_<run name>).")
  flags.DEFINE_string("data_dir", None, "Override config.data.dir.")
  flags.DEFINE_bool("shipped", True, "Also run torchattacks.AutoAttack as shipped (10 iterations).")
  flags.DEFINE_integer("num_steps", 100, "Iterations of APGD, APGD-T and FAB-T on both sides "
                       "(the reference: 100; fewer is a reduced-budget check).")
  flags.DEFINE_integer("num_target_classes", 9, "Target classes of APGD-T and FAB-T, both sides.")
  flags.DEFINE_integer("num_queries", 5000, "Square's queries on both sides (the reference: 5000).")
  flags.DEFINE_string("ours_from", None, "Take our side from this robustness.json (written by "
                      "experiments/evaluate.py with --attacks=...autoattack... on the same run's "
                      "weights and the first --num_test or more test images, full budget) instead "
                      "of running our AutoAttack again: half the time.")


_TORCH_NORM = {"linf": "Linf", "l2": "L2"}
CHUNK_DIR = "chunks"


def torchattacks_reference(module, norm: str, eps: float, num_classes: int, seed: int, *,
                           steps: int = 100, targets: int = 9, queries: int = 5000):
  """torchattacks' members with the reference AutoAttack's settings, chained like AutoAttack."""
  n = _TORCH_NORM[norm]
  members = [
      torchattacks.APGD(module, norm=n, eps=eps, steps=steps, n_restarts=1, loss="ce",
                        seed=seed),
      torchattacks.APGDT(module, norm=n, eps=eps, steps=steps, n_restarts=1,
                         n_classes=num_classes, seed=seed),
      torchattacks.FAB(module, norm=n, eps=eps, steps=steps, n_restarts=1, multi_targeted=True,
                       n_classes=num_classes, seed=seed),
      torchattacks.Square(module, norm=n, eps=eps, n_queries=queries, n_restarts=1, p_init=0.8,
                          resc_schedule=False, seed=seed),
  ]
  for targeted in members[1:3]:  # torchattacks uses n_classes - 1 targets
    targeted.n_target_classes = min(targets, num_classes - 1)
  return torchattacks.MultiAttack(members)


def attack_batch(attack, predict, x, y, norm) -> dict:
  """One batch (NHWC) through a torchattacks attack: its per-example outcome and time."""
  t0 = time.time()
  adv = attack(torch.tensor(np.transpose(x, (0, 3, 1, 2))), torch.tensor(y, dtype=torch.long))
  adv = np.transpose(adv.detach().numpy(), (0, 2, 3, 1))
  robust = (predict(x) == y) & (predict(adv) == y)
  return {"robust_examples": evaluation.encode_mask(robust),
          "max_perturbation": max_perturbation(x, adv, norm), "seconds": time.time() - t0}


def run_torch_attack(attack, predict, images, labels, batch_size, desc, norm, chunk_dir,
                     settings):
  """The attack over (NHWC) images in batches, each batch a chunk (atent_jax.chunks) written
  to chunk_dir as it finishes: (robust mask, max perturbation, seconds summed over the
  batches), or None while batches remain that other processes hold. torchattacks' members
  reseed torch from their seed at every call, so a batch's outcome does not depend on the
  batches before it: resumed or shared by processes, the result is the uninterrupted one."""
  plan = chunks.plan(len(labels), batch_size)

  def settings_of(a, b):
    return dict(settings, examples=chunks.examples_of(images, labels, a, b))

  with tqdm(total=len(labels), desc=desc, unit="img", file=sys.stderr, leave=False) as bar:
    def on_written(i, chunk, seconds, done):
      bar.update(chunk[1] - chunk[0])
      print(f"{desc}: batch {i + 1}/{len(plan)} (examples {chunk[0]}-{chunk[1]}) written to "
            f"{chunks.chunk_path(chunk_dir, *chunk)} ({seconds:.0f} s)", flush=True)

    done = chunks.run(chunk_dir, plan, settings_of,
                      lambda a, b: attack_batch(attack, predict, images[a:b], labels[a:b], norm),
                      on_written=on_written)
  left = [c for c in plan if c not in done]
  if left:
    print(f"{desc}: {len(left)} of {len(plan)} batches are being attacked by other processes "
          f"(examples {', '.join(f'{a}-{b}' for a, b in left)}): the process that writes the "
          "last one writes the result; or rerun this command once they have stopped",
          flush=True)
    return None
  robust = np.concatenate([evaluation.decode_mask(done[c]["robust_examples"], c[1] - c[0])
                           for c in plan])
  return (robust, max(done[c]["max_perturbation"] for c in plan),
          sum(done[c]["seconds"] for c in plan))


def run_ours(logits_fn, predict, images, labels, norm, eps, budget, chunk_dir, settings):
  """Our AutoAttack (standard) on all the images as one resumable chunk: its record, or None
  while another process computes it."""
  def compute(a, b):
    t0 = time.time()
    with tqdm(total=4, desc="ours", unit="attack", file=sys.stderr, leave=False) as bar:
      def progress(member, still_robust):
        if member != "clean":
          bar.update(1)
        bar.set_postfix_str(f"{member}: still robust {still_robust}")
      ours = autoattack(logits_fn, images[a:b], labels[a:b], jax.random.PRNGKey(FLAGS.seed),
                        norm=norm, eps=eps, batch_size=FLAGS.batch_size, progress=progress,
                        attack_kwargs=budget)
    seconds = time.time() - t0
    robust = (predict(images[a:b]) == labels[a:b]) & np.concatenate(
        [predict(ours.adv[i:i + FLAGS.batch_size]) == labels[a + i:a + i + FLAGS.batch_size]
         for i in range(0, b - a, FLAGS.batch_size)])
    return {"robust_accuracy": float(robust.mean()),
            "robust_examples": evaluation.encode_mask(robust),
            "broken_by_member": {m: int(ours.per_attack[m].sum()) for m in ours.order},
            "max_perturbation": max_perturbation(images[a:b], ours.adv, norm),
            "seconds": seconds}

  whole = (0, len(labels))
  settings_of = lambda a, b: dict(settings, examples=chunks.examples_of(images, labels, a, b))
  done = chunks.run(chunk_dir, [whole], settings_of, compute)
  if whole not in done:
    print(f"ours: another process is running it (lock in {chunk_dir})", flush=True)
  return done.get(whole)


def max_perturbation(x: np.ndarray, adv: np.ndarray, norm: str) -> float:
  d = (np.asarray(adv, np.float64) - x).reshape(len(x), -1)
  return float((np.abs(d).max(-1) if norm == "linf" else np.linalg.norm(d, axis=-1)).max())


def ours_from_file(path: str, weights_sha1: str, test_labels: np.ndarray, n: int, norm: str,
                   eps: float) -> dict:
  """Our side of the cross-check from an evaluate.py robustness.json: its AutoAttack-standard
  outcome on the first n test images. ConfigError naming what does not match."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"--ours_from={path} is not a readable robustness.json ({e})") from None
  if record.get("weights_sha1") != weights_sha1:
    raise ConfigError(f"--ours_from={path}: its weights_sha1={record.get('weights_sha1')!r} is "
                      f"not this run's checkpoint ({weights_sha1}): evaluate this checkpoint "
                      "with experiments/evaluate.py (a file from before 2026-12-07 has none: "
                      "rerun its command, which merges its chunks again)")
  examples = record.get("examples", {})
  if (record.get("eval_split") != "test" or examples.get("indices", {}).get("start") != 0
      or examples.get("count", 0) < n):
    raise ConfigError(f"--ours_from={path} did not evaluate the first {n} test images (split "
                      f"{record.get('eval_split')!r}, examples {examples.get('indices')}): use "
                      "a --num_test it covers")
  standard = [a for a in record.get("attacks", []) if a.get("attack") == "autoattack"
              and a.get("kwargs", {}).get("version") == "standard"
              and not a.get("kwargs", {}).get("attacks")
              and not a.get("kwargs", {}).get("attack_kwargs")
              and a.get("norm") == norm and abs(float(a.get("eps", -1)) - eps) < 1e-9]
  if not standard:
    raise ConfigError(f"--ours_from={path} holds no full-budget AutoAttack standard at {norm} "
                      f"eps {eps:g}: evaluate with --attacks=autoattack (and that norm and eps)")
  entry, count = standard[0], examples["count"]
  labels_sha1 = evaluation.examples_record(test_labels[:count])["labels_sha1"]
  if examples.get("labels_sha1") != labels_sha1:
    raise ConfigError(f"--ours_from={path}: the labels of its {count} examples are not those of "
                      "the first test images here: evaluate the same data (--data_dir)")
  robust = evaluation.decode_mask(entry["robust_examples"], count)[:n]
  members = entry.get("members", [])
  return {"robust_accuracy": float(robust.mean()),
          "robust_examples": evaluation.encode_mask(robust),
          "broken_by_member": {m["member"]: int(evaluation.decode_mask(
              m["broken_examples"], count)[:n].sum()) for m in members},
          "max_perturbation": entry.get("max_perturbation"),
          "seconds": entry.get("seconds"), "seconds_for_examples": count, "from": path}


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
  return {"both_robust": int((a & b).sum()), "only_first": int((a & ~b).sum()),
          "only_second": int((~a & b).sum()), "neither": int((~a & ~b).sum()),
          "agreement": float((a == b).mean())}


def machine() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "jax_devices": [str(d) for d in jax.devices()], "torch": torch.__version__,
          "torchattacks": torchattacks.__version__, "atent_jax": atent_jax.__version__}


def main(argv):
  del argv
  if not FLAGS.workdir or not os.path.isdir(FLAGS.workdir):
    raise ConfigError(f"--workdir={FLAGS.workdir} is not a training run directory")
  for name in ("num_test", "batch_size", "num_steps", "num_target_classes", "num_queries"):
    if getattr(FLAGS, name) < 1:
      raise ConfigError(f"--{name}={getattr(FLAGS, name)} is not valid: use an integer >= 1")
  if FLAGS.eps is not None and not FLAGS.eps > 0:
    raise ConfigError(f"--eps={FLAGS.eps} is not valid: use a number > 0")
  config, model, variables = load_run(FLAGS.workdir, FLAGS.which)
  norm = FLAGS.norm or config.eval.norm
  eps = float(FLAGS.eps if FLAGS.eps is not None else config.eval.eps)
  data_config = config.data
  if FLAGS.data_dir is not None:
    data_config = config.data.copy_and_resolve_references()
    data_config.dir = FLAGS.data_dir
  dataset = load_dataset(data_config)
  images, test_labels = dataset.split("test")
  split_size = len(test_labels)
  images = np.asarray(images[:FLAGS.num_test], np.float32)
  labels = np.asarray(test_labels[:FLAGS.num_test], np.int32)
  logits_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  num_classes = int(logits_fn(images[:1]).shape[-1])
  predict = lambda x: np.asarray(logits_fn(x)).argmax(-1)
  name = os.path.basename(os.path.abspath(FLAGS.workdir))
  out_dir = FLAGS.out or os.path.join("results", f"crosscheck_{name}")
  command = shlex.join(["python", "experiments/crosscheck_autoattack.py", *sys.argv[1:]])
  print(f"cross-check on {len(labels)} test images of {FLAGS.workdir} ({config.method}, "
        f"{config.model.name}), {norm} eps {eps:g}", flush=True)

  budget = {"apgd-ce": {"num_steps": FLAGS.num_steps},
            "apgd-t": {"num_steps": FLAGS.num_steps,
                       "num_target_classes": FLAGS.num_target_classes},
            "fab-t": {"num_steps": FLAGS.num_steps,
                      "num_target_classes": FLAGS.num_target_classes},
            "square": {"num_queries": FLAGS.num_queries}}
  reduced = (FLAGS.num_steps, FLAGS.num_target_classes, FLAGS.num_queries) != (100, 9, 5000)
  if FLAGS.ours_from and reduced:
    raise ConfigError("--ours_from reads a full-budget evaluation: leave --num_steps, "
                      "--num_target_classes and --num_queries at 100, 9 and 5000")
  weights_sha1 = runs_lib.weights_sha1(variables)
  # Every side is resumable: ours as one chunk, each PyTorch side batch by batch, all under
  # OUT/chunks (see atent_jax.chunks); a rerun of the same command reads back what is done.
  chunk_root = os.path.join(out_dir, CHUNK_DIR)
  common = {"weights_sha1": weights_sha1, "norm": norm, "eps": eps, "seed": FLAGS.seed,
            "batch_size": FLAGS.batch_size}
  if FLAGS.ours_from:
    ours_record = ours_from_file(FLAGS.ours_from, weights_sha1,
                                 np.asarray(test_labels, np.int32), len(labels), norm, eps)
  else:
    ours_record = run_ours(logits_fn, predict, images, labels, norm, eps, budget,
                           os.path.join(chunk_root, "ours"), dict(common, budget=budget))
  if ours_record is not None:
    ours_robust = evaluation.decode_mask(ours_record["robust_examples"], len(labels))
    print(f"ours: robust accuracy {ours_robust.mean():.4f} ({ours_record['seconds']:.0f} s"
          f"{', from ' + FLAGS.ours_from if FLAGS.ours_from else ''})", flush=True)

  module = interop.torch_module(logits_fn)
  torch_settings = dict(common, torchattacks=torchattacks.__version__)
  sides = {"torchattacks_reference": (
      "torchattacks (reference settings)",
      torchattacks_reference(module, norm, eps, num_classes, FLAGS.seed, steps=FLAGS.num_steps,
                             targets=FLAGS.num_target_classes, queries=FLAGS.num_queries),
      dict(torch_settings, budget=budget))}
  if FLAGS.shipped:
    sides["torchattacks_shipped"] = (
        "torchattacks.AutoAttack",
        torchattacks.AutoAttack(module, norm=_TORCH_NORM[norm], eps=eps, version="standard",
                                n_classes=num_classes, seed=FLAGS.seed),
        dict(torch_settings, budget="torchattacks.AutoAttack(version='standard') as shipped"))
  outcomes = {}
  for side, (desc, attack, settings) in sides.items():
    outcomes[side] = run_torch_attack(attack, predict, images, labels, FLAGS.batch_size, desc,
                                      norm, os.path.join(chunk_root, side), settings)
    if outcomes[side] is not None:
      print(f"{desc}: robust accuracy {outcomes[side][0].mean():.4f} "
            f"({outcomes[side][2]:.0f} s)", flush=True)
  if ours_record is None or any(o is None for o in outcomes.values()):
    print(f"not every side is done: {chunk_root} holds what is; the process that finishes "
          "last writes the result (or rerun this command)", flush=True)
    return
  runs = {side: {"robust_accuracy": float(robust.mean()),
                 "robust_examples": evaluation.encode_mask(robust), "max_perturbation": worst,
                 "seconds": seconds, "agreement_with_ours": agreement(ours_robust, robust)}
          for side, (robust, worst, seconds) in outcomes.items()}

  result = {
      "command": command, "workdir": os.path.abspath(FLAGS.workdir), "method": config.method,
      "model": config.model.name, "checkpoint": FLAGS.which, "norm": norm, "eps": eps,
      "seed": FLAGS.seed, "budget": budget, "reduced_budget": reduced,
      "examples": {**evaluation.examples_record(labels), "split": "test",
                   "split_size": split_size},
      "clean_accuracy": float((predict(images) == labels).mean()),
      "ours": ours_record,
      **runs, "machine": machine()}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "crosscheck.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(out_dir, "README.md"), "w") as f:
    f.write(readme(result, dataset.source))
  print(readme(result, dataset.source), flush=True)


def readme(r: dict, source: str) -> str:
  n = r["examples"]["count"]
  rows = [("ours (atent_jax.attacks.autoattack)", r["ours"], None)]
  labels = {"torchattacks_reference": "torchattacks, reference settings (100 iterations)",
            "torchattacks_shipped": "torchattacks.AutoAttack as shipped (10 iterations)"}
  rows += [(labels[k], r[k], r[k]["agreement_with_ours"]) for k in labels if k in r]
  lines = [f"# AutoAttack cross-check: {os.path.basename(r['workdir'])}", "",
           (f"Our JAX AutoAttack (standard) against torchattacks' PyTorch implementation on the "
           f"same model ({r['method']}, {r['model']}, {r['checkpoint']} checkpoint), first {n} "
           f"test images ({source}), {r['norm']} eps {r['eps']:g}, seed {r['seed']}. Clean "
           f"accuracy {100 * r['clean_accuracy']:.2f}%."), "",
           ("| Implementation | Robust accuracy (%) | Same outcome as ours | Robust only here "
           "| Robust only in ours | Time (s) |"), "|---|---:|---:|---:|---:|---:|"]
  for label, run, agree in rows:
    same = "-" if agree is None else f"{100 * agree['agreement']:.1f}%"
    only_here = "-" if agree is None else agree["only_second"]
    only_ours = "-" if agree is None else agree["only_first"]
    lines.append(f"| {label} | {100 * run['robust_accuracy']:.2f} | {same} | {only_here} | "
                 f"{only_ours} | {run['seconds']:.0f} |")
  members = ", ".join(f"{m} {c}" for m, c in r["ours"]["broken_by_member"].items())
  m = r["machine"]
  lines += ["", f"Ours, examples broken by each member (on the points still robust): {members}.",
            "", ("Per-example outcomes are in crosscheck.json (bitmaps: "
            "atent_jax.evaluation.decode_mask)."), "", "Reproduce:", "", "```bash",
            r["command"], "```", "",
            (f"Machine: {m['platform']}, {m['cpu_count']} CPUs, devices {m['jax_devices']}; "
            f"jax {m['jax']}, torch {m['torch']}, torchattacks {m['torchattacks']}.")]
  if "from" in r["ours"]:
    lines.append(f"Ours: read from {r['ours']['from']} (an evaluation of the same weights; its "
                 f"time is for its {r['ours']['seconds_for_examples']} images, with its "
                 "evaluate.py batch size), not run again here.")
  if n < r["examples"]["split_size"]:
    lines.append(f"Reduced scale: {n} of the {r['examples']['split_size']:,} test images.")
  if r["reduced_budget"]:
    lines.append(f"Reduced budget on both sides (the reference: 100 iterations, 9 targets, 5,000 "
                 f"Square queries): {json.dumps(r['budget'])}; torchattacks.AutoAttack as "
                 "shipped keeps its own settings.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  define_flags()
  cli.run(main, sys.argv)
