"""Evaluates a trained run against a set of attacks (the paper's Tables 1-3, and AutoAttack).

  python experiments/evaluate.py --workdir=RUN [--attacks=pgd20_linf,cw_linf,autoattack,...] \
      [--num_examples=N] [--batch_size=500] [--restarts=1] [--eps=...] [--which=best] \
      [--chunk_size=N [--max_seconds=S]]

Loads the run's model in eval mode (atent_jax.load_run: the best checkpoint, else the latest)
and a split of its data (default: the whole test set; --split), runs the attacks with
atent_jax.evaluation.evaluate_attacks (a progress bar per attack shows the points still robust)
and writes
  RUN/robustness.json  clean accuracy; per attack name, norm, eps, steps, restarts, robust
                       accuracy, number of examples and the per-example outcome
                       (robust_examples: a bitmap, see atent_jax.evaluation.encode_mask; for
                       AutoAttack also what each member broke); the examples used (indices in
                       the split, a checksum of their labels); the sanity checks, the
                       gradient-masking flags and their warnings
  RUN/robustness.md    a markdown table (rows: defenses, columns: Benign + attacks), the attacks'
                       budgets and times, the sanity checks and the gradient-masking flags
Two robustness.json files of the same examples compare example by example with
experiments/compare_robustness.py.

Resumable evaluations in chunks (--chunk_size=C, a multiple of --batch_size): examples
[0, C), [C, 2C), ... are evaluated one chunk at a time and each chunk's result is written, as
it finishes (a temporary file renamed), to RUN/robustness_chunks/START-STOP.json. Rerun the same
command after a kill, or after --max_seconds=S stopped it (after the chunk that crossed S
seconds; it prints how many chunks remain): the chunks done are read back, not recomputed. When
every chunk exists, they are merged into robustness.json and robustness.md. Each chunk draws the
keys and batches that the unchunked evaluation (same --batch_size and --seed) gives its
examples, and the sanity checks and masking flags run at the merge on the first examples, so
the merged file equals the unchunked one (times aside). A chunk written with other settings
(checkpoint, split, seed, batch size, attacks, norm, eps, or other examples) is an error naming
the field; delete RUN/robustness_chunks to start over. Several processes may run the same
command at once (e.g. one per core, `taskset -c 0` and `taskset -c 1`): each takes the next chunk
no other process holds (a lock file beside it, START-STOP.lock), and the one that writes the
last chunk merges.

Attack names (--attacks, comma separated), derived from atent_jax.attacks.registry:
NAME[@EPS][:key=value]..., e.g. pgd20_linf@0.3:step=0.0375 or square:num_queries=1000.
  pgd                  the run's own evaluation PGD (config.eval: norm, eps, steps, step size)
  pgdN_linf, pgdN_l2   PGD with N steps (e.g. pgd20_linf, pgd40_l2)
  cw_linf, cw_linf_tanh, cw_l2, deepfool_linf, deepfool_l2, fgsm_linf, fgsm_l2,
  atentN_linf, atentN_l2 (ATENT as an attack, N steps)
  autoattack           AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), in the run's norm
                       (autoattack_linf, autoattack_l2; :version=plus or rand)
  apgd_ce, apgd_t, fab_t, square   one AutoAttack member alone, with AutoAttack's settings and
                       randomness (what it breaks alone, it breaks inside the ensemble)
  and the registry names fgsm, pgd_linf, pgd_l2, cw_l2, cw_linf, deepfool, atent_attack, ...
  (their registry defaults). A stem without _NORM takes the run's norm.
:key=value sets any default argument of the attack (:step=X is :step_size=X).
The default set follows the run's norm (config.eval.norm): l_inf: the run's PGD (MNIST:
PGD-20 step 0.01 eps 0.3), CW-l_inf and AutoAttack; l_2: the run's PGD (MNIST: PGD-40 step 0.25
eps 2), CW-l_2 and AutoAttack. Radii default to config.eval.eps for attacks of the run's norm
(0.3 l_inf / 2.0 l_2 otherwise); --eps overrides every attack's radius.
User errors (unknown attack names, eps <= 0, a norm an attack does not support, a model whose
output is not (batch, classes), a workdir without a checkpoint, a checkpoint of another
architecture, a chunk of other settings) print one `error:` line and exit with code 2, writing
nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from absl import flags

import atent_jax  # noqa: F401  (sets the XLA flags; JAX reads them at its first computation)
from atent_jax import chunks, cli, evaluation, runs
from atent_jax.attacks import registry
from atent_jax.data import load_dataset
from atent_jax.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run to evaluate.")
flags.DEFINE_list("attacks", [], "Attacks to run (see the module docstring); empty: the default "
                  "set for the run's norm.")
flags.DEFINE_enum("split", "test", ["test", "validation", "eval"],
                  "Which data to attack: the whole test set (default), the validation split "
                  "held out of the training images, or the split the run reported on.")
flags.DEFINE_integer("num_examples", -1, "Evaluate the first N examples of the split (-1: all).")
flags.DEFINE_integer("batch_size", 500, "Examples per attack call.")
flags.DEFINE_integer("restarts", 1, "Random restarts of the PGD attacks (and CW-l_inf's PGD).")
flags.DEFINE_float("eps", None, "Radius for every attack (overrides the defaults).")
flags.DEFINE_integer("seed", 0, "PRNG seed of the attacks.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint to evaluate.")
flags.DEFINE_string("data_dir", None, "Override config.data.dir (where the run's data lies).")
flags.DEFINE_bool("sanity_checks", True, "Run the sanity checks (monotonicity, unbounded "
                  "attack, vanishing gradients) on a subset.")
flags.DEFINE_integer("sanity_examples", 200, "Examples used by the sanity checks and the "
                     "gradient-masking flags.")
flags.DEFINE_bool("progress", True, "Show a progress bar per attack (stderr).")
flags.DEFINE_integer("chunk_size", None, "Evaluate in chunks of N examples (a multiple of "
                     "--batch_size), each written to RUN/robustness_chunks/ as it finishes; "
                     "rerunning the same command skips the chunks done (see the docstring).")
flags.DEFINE_float("max_seconds", None, "With --chunk_size: stop after the chunk that crosses "
                   "this many seconds, leaving the rest to a rerun of the same command.")

CHUNK_DIR = "robustness_chunks"


def run_defaults(eval_config) -> registry.RunDefaults:
  """What the attack tokens take from the run: its eval norm, eps, step size and steps."""
  return registry.RunDefaults(norm=eval_config.norm, eps=float(eval_config.eps),
                              step_size=float(eval_config.step_size),
                              num_steps=int(eval_config.num_steps))


def parse_attack(token: str, eval_config, eps_override=None, restarts=1) -> dict:
  """One --attacks token -> an evaluate_attacks spec item; ConfigError when unknown/bad eps."""
  try:
    spec = registry.parse_token(token, run_defaults(eval_config), eps_override, restarts)
    evaluation.normalise_spec(spec)  # the same checks as the API (norm, arguments)
  except ValueError as e:
    raise ConfigError(f"--attacks: {e}") from None
  return spec


def default_attacks(eval_config) -> list[str]:
  """The paper's attacks for the run's norm, next to AutoAttack standard."""
  paper = ["pgd", "cw_linf"] if eval_config.norm == "linf" else ["pgd", "cw_l2"]
  return [*paper, "autoattack"]


def report_lines(results: dict) -> list[str]:
  """The markdown report below the table: budgets, AutoAttack's breakdown, checks, warnings."""
  lines = ["Attacks: " + "; ".join(
      f"{r['name']}: {r['attack']} {r['norm']} eps {r['eps']:g}, {r['budget']}, "
      f"{r['seconds']:.0f} s" for r in results["attacks"]) + "."]
  for r in results["attacks"]:
    if "members" in r:
      parts = ", ".join(f"{m['name']} {m['broken']}" for m in r["members"])
      robust = round(r["robust_accuracy"] * r["num_examples"])
      lines += ["", (f"{r['name']} ({r['norm']} eps {r['eps']:g}): examples broken by each "
                     f"member on the points still robust: {parts}; robust {robust} of "
                     f"{r['num_examples']}.")]
  if "sanity_checks" in results:
    sc = results["sanity_checks"]
    lines.append("")
    lines.append(f"Sanity checks ({sc['num_examples']} examples, {sc['attack']} "
                 f"{sc['base']}): base {100 * sc['base_robust_accuracy']:.2f}%, "
                 f"eps/2 {100 * sc['eps_monotone']['robust_accuracy']:.2f}% "
                 f"({'ok' if sc['eps_monotone']['passed'] else 'FAILED'}), stronger "
                 f"{100 * sc['strength_monotone']['robust_accuracy']:.2f}% "
                 f"({'ok' if sc['strength_monotone']['passed'] else 'FAILED'}), unbounded "
                 f"{100 * sc['unbounded']['robust_accuracy']:.2f}% "
                 f"({'ok' if sc['unbounded']['passed'] else 'FAILED'}), vanishing gradients "
                 f"{100 * sc['vanishing_gradients']['fraction_of_correct']:.1f}% "
                 f"({'ok' if sc['vanishing_gradients']['passed'] else 'WARNING'}).")
  if "gradient_masking" in results:
    lines += ["", evaluation.masking_summary(results["gradient_masking"]) + "."]
  if results["warnings"]:
    lines.append("")
  for w in results["warnings"]:
    lines.append(f"- warning: {w}")
  return lines


def chunk_settings(specs, variables, split_name) -> dict:
  """What a chunk's figures depend on besides its examples, in the order fields are compared."""
  attacks = []
  for spec in specs:
    spec = evaluation.normalise_spec(spec)
    kwargs = spec["kwargs"]
    attacks.append({"norm": registry.get(spec["attack"]).norm_of(kwargs),
                    "eps": kwargs.get("eps"), "attack": spec["attack"], "name": spec["name"],
                    "kwargs": kwargs})
  settings = {"checkpoint": {"which": FLAGS.which, "weights_sha1": runs.weights_sha1(variables)},
              "split": split_name, "seed": FLAGS.seed, "batch_size": FLAGS.batch_size,
              "attacks": attacks}
  return json.loads(json.dumps(settings, default=str))  # as read back from a chunk file


def evaluate_in_chunks(apply, variables, images, labels, specs, split_name):
  """The chunked evaluation of the module docstring: the merged, checked result, or None when
  --max_seconds stopped it before the last chunk."""
  t_start = time.time()
  chunk_dir = os.path.join(FLAGS.workdir, CHUNK_DIR)
  n, size = len(labels), FLAGS.chunk_size
  plan = chunks.plan(n, size)
  common = chunk_settings(specs, variables, split_name)
  key = jax.random.PRNGKey(FLAGS.seed)

  def settings_of(a, b):
    return dict(common, examples=chunks.examples_of(images, labels, a, b))

  def compute(a, b):
    try:
      return evaluation.evaluate_attacks(
          apply, images[a:b], labels[a:b], specs, key, FLAGS.batch_size, params=variables,
          sanity_checks=False, masking_checks=False, verbose=True, progress=FLAGS.progress,
          offset=a)
    except ValueError as e:  # bad attack arguments, a model output of the wrong shape
      raise ConfigError(str(e)) from None

  stopped = []

  def on_written(i, chunk, seconds, done):
    a, b = chunk
    print(f"chunk {i + 1}/{len(plan)} (examples {a}-{b}) written to "
          f"{chunks.chunk_path(chunk_dir, a, b)} ({seconds:.0f} s)", flush=True)
    left = [c for c in plan if c not in done]
    if left and FLAGS.max_seconds is not None and time.time() - t_start >= FLAGS.max_seconds:
      print(f"stopped: --max_seconds={FLAGS.max_seconds:g} spent; {len(left)} of {len(plan)} "
            f"chunks remain (examples {left[0][0]}-{n}): rerun the same command to continue",
            flush=True)
      stopped.append(True)
      return True
    return False

  # chunks.run checks every chunk on disk against settings_of before anything runs, so a
  # mismatch costs no compute.
  on_disk = sum(os.path.exists(chunks.chunk_path(chunk_dir, *c)) for c in plan)
  others = chunks.foreign_files(chunk_dir, plan)
  if others:
    print(f"note: {len(others)} chunk files in {chunk_dir} are not chunks of this command "
          "(another --chunk_size or --num_examples): ignored", flush=True)
  print(f"chunks of {size}: {on_disk} of {len(plan)} done already in {chunk_dir}",
        flush=True)
  parts = chunks.run(chunk_dir, plan, settings_of, compute, on_written=on_written)
  if stopped:
    return None
  left = [c for c in plan if c not in parts]
  if left:
    print(f"{len(left)} of {len(plan)} chunks are being evaluated by other processes "
          f"(examples {', '.join(f'{a}-{b}' for a, b in left)}): the process that writes the "
          "last chunk merges them; or rerun this command once they have stopped", flush=True)
    return None
  try:
    merged = evaluation.merge_results([parts[c] for c in plan], labels)
    return evaluation.add_checks(
        apply, images, labels, specs, key, merged, FLAGS.batch_size, params=variables,
        sanity_checks=FLAGS.sanity_checks, sanity_examples=FLAGS.sanity_examples)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def main(argv):
  del argv  # cli.run has parsed the flags
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required (the training run directory)")
  for name in ("batch_size", "restarts", "sanity_examples"):
    if getattr(FLAGS, name) < 1:
      raise ConfigError(f"--{name}={getattr(FLAGS, name)} is not valid: use an integer >= 1")
  if FLAGS.num_examples == 0 or FLAGS.num_examples < -1:
    raise ConfigError(f"--num_examples={FLAGS.num_examples} is not valid: use -1 or N >= 1")
  if FLAGS.eps is not None and not FLAGS.eps > 0:
    raise ConfigError(f"--eps={FLAGS.eps} is not valid: use a number > 0")
  if FLAGS.chunk_size is not None and (FLAGS.chunk_size < 1
                                       or FLAGS.chunk_size % FLAGS.batch_size):
    raise ConfigError(f"--chunk_size={FLAGS.chunk_size} is not valid: use a multiple of "
                      f"--batch_size={FLAGS.batch_size} (chunks hold whole batches, so that "
                      "they draw the keys of the unchunked evaluation)")
  if FLAGS.max_seconds is not None and (FLAGS.chunk_size is None or not FLAGS.max_seconds >= 0):
    raise ConfigError(f"--max_seconds={FLAGS.max_seconds} is not valid: use a number >= 0, "
                      "with --chunk_size")
  workdir = FLAGS.workdir
  if not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} does not exist or is not a directory")

  config = runs.load_config(workdir)
  tokens = FLAGS.attacks or default_attacks(config.eval)
  specs = [parse_attack(t, config.eval, FLAGS.eps, FLAGS.restarts) for t in tokens if t.strip()]
  if not specs:
    raise ConfigError("--attacks is empty: name at least one attack")
  config, model, variables = runs.load_run(workdir, FLAGS.which)
  data_config = config.data
  if FLAGS.data_dir is not None:
    data_config = config.data.copy_and_resolve_references()
    data_config.dir = FLAGS.data_dir
  dataset = load_dataset(data_config)
  images, labels = dataset.split(FLAGS.split)
  split_name = dataset.eval_split if FLAGS.split == "eval" else FLAGS.split
  if FLAGS.num_examples > 0:
    images, labels = images[:FLAGS.num_examples], labels[:FLAGS.num_examples]

  apply = lambda v, x: model.apply(v, x, train=False)
  print(f"evaluating {workdir} ({config.method}, {config.model.name}) on {len(labels)} "
        f"{split_name} images: "
        f"{', '.join(evaluation.normalise_spec(s)['name'] for s in specs)}",
        flush=True)
  images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  if FLAGS.chunk_size is not None:
    results = evaluate_in_chunks(apply, variables, images, labels, specs, split_name)
    if results is None:
      return
  else:
    try:
      results = evaluation.evaluate_attacks(
          apply, images, labels, specs, jax.random.PRNGKey(FLAGS.seed), FLAGS.batch_size,
          params=variables, sanity_checks=FLAGS.sanity_checks,
          sanity_examples=FLAGS.sanity_examples, verbose=True, progress=FLAGS.progress)
    except ValueError as e:  # bad attack arguments, a model output of the wrong shape
      raise ConfigError(str(e)) from None
  results.update({"workdir": os.path.abspath(workdir), "method": config.method,
                  "model": config.model.name, "eval_split": split_name,
                  "checkpoint": FLAGS.which, "weights_sha1": runs.weights_sha1(variables),
                  "seed": FLAGS.seed,
                  "command": shlex.join(["python", "experiments/evaluate.py",
                                         *sys.argv[1:]])})
  results["examples"]["split"] = split_name
  if FLAGS.chunk_size is not None:
    results["chunks"] = {"chunk_size": FLAGS.chunk_size,
                         "dir": os.path.join(os.path.abspath(workdir), CHUNK_DIR)}
  chunks.write_atomically(os.path.join(workdir, "robustness.json"),
                   json.dumps(results, indent=2, default=str))
  table = evaluation.markdown_table([(config.method, results)])
  lines = [f"# Robustness of {os.path.basename(os.path.abspath(workdir))}", "",
           (f"Robust accuracy (%) on {len(labels)} {split_name} images "
            f"({dataset.source}); model {config.model.name}, eval mode."), "", table]
  lines += report_lines(results)
  chunks.write_atomically(os.path.join(workdir, "robustness.md"), "\n".join(lines) + "\n")
  print(table, flush=True)
  if "gradient_masking" in results:
    print(evaluation.masking_summary(results["gradient_masking"]), flush=True)
  for w in results["warnings"]:
    print(f"warning: {w}", file=sys.stderr)
  print(f"wrote {os.path.join(workdir, 'robustness.json')} and robustness.md", flush=True)


if __name__ == "__main__":
  cli.run(main, sys.argv)
