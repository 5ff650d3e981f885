"""Evaluates a trained run against a set of attacks (the paper's Tables 1-3).

  python experiments/evaluate.py --workdir=RUN [--attacks=pgd20_linf,cw_linf,...] \
      [--num_examples=N] [--batch_size=500] [--restarts=1] [--eps=...] [--which=best]

Loads the run's model in eval mode (atent_jax.load_run: the best checkpoint, else the latest)
and a split of its data (default: the whole test set; --split), runs the attacks with
atent_jax.evaluation.evaluate_attacks and writes
  RUN/robustness.json  clean accuracy; per attack name, norm, eps, steps, restarts, robust
                       accuracy, number of examples; the sanity checks and their warnings
  RUN/robustness.md    a markdown table (rows: defenses, columns: Benign + attacks)

Attack names (--attacks, comma separated; an optional @EPS sets that attack's radius and an
optional :step=STEP its step size, e.g. pgd20_linf@0.3:step=0.0375):
  pgd                  the run's own evaluation PGD (config.eval: norm, eps, steps, step size)
  pgdN_linf, pgdN_l2   PGD with N steps (e.g. pgd20_linf, pgd40_l2)
  cw_linf, cw_linf_tanh, cw_l2, deepfool_linf, deepfool_l2, fgsm_linf, fgsm_l2,
  atentN_linf, atentN_l2 (ATENT as an attack, N steps), and the registry names fgsm, pgd_linf,
  pgd_l2, cw_l2, cw_linf, deepfool, atent_attack.
The default set follows the run's norm (config.eval.norm): l_inf: the run's PGD (MNIST:
PGD-20 step 0.01 eps 0.3) and CW-l_inf; l_2: the run's PGD (MNIST: PGD-40 step 0.25 eps 2) and
CW-l_2. Radii default to config.eval.eps for attacks of the run's norm (0.3 l_inf / 2.0 l_2
otherwise); --eps overrides every attack's radius.
User errors (unknown attack names, eps <= 0, a workdir without a checkpoint, a checkpoint of
another architecture) print one line and exit with code 2.
"""

from __future__ import annotations

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atent_jax  # noqa: E402,F401  (first: sets XLA flags before JAX starts)
from absl import flags  # noqa: E402

from atent_jax import cli  # noqa: E402
from atent_jax.errors import ConfigError  # noqa: E402

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
flags.DEFINE_integer("sanity_examples", 200, "Examples used by the sanity checks.")

_STANDARD_EPS = {"linf": 0.3, "l2": 2.0}
_STANDARD_PGD_STEP = {"linf": 0.01, "l2": 0.25}


def parse_attack(token: str, eval_config, eps_override=None, restarts=1) -> dict:
  """One --attacks token -> an evaluate_attacks spec item; ConfigError when unknown/bad eps."""
  from atent_jax import attacks, evaluation  # pylint: disable=import-outside-toplevel
  token = token.strip()
  head, _, options = token.partition(":")
  name, _, eps_text = head.partition("@")
  step_override = None
  if options:
    key, sep, value = options.partition("=")
    try:
      if key != "step" or not sep:
        raise ValueError
      step_override = float(value)
    except ValueError:
      raise ConfigError(f"--attacks: {token!r}: the only option is the step size: use "
                        "NAME[@EPS]:step=STEP, e.g. pgd20_linf@0.3:step=0.0375") from None
    if not step_override > 0:
      raise ConfigError(f"--attacks: {token!r}: step={value} is not valid: use a number > 0")
  eps = eps_override
  if eps_text:
    try:
      eps = float(eps_text)
    except ValueError:
      raise ConfigError(f"--attacks: {token!r} has a radius that is not a number: use "
                        "NAME@EPS, e.g. pgd20_linf@0.1") from None
  run_norm = eval_config.norm

  def radius(norm):
    if eps is not None:
      return eps
    return float(eval_config.eps) if norm == run_norm else _STANDARD_EPS[norm]

  def pgd_step(norm):
    return float(eval_config.step_size) if norm == run_norm else _STANDARD_PGD_STEP[norm]

  spec = None
  m = re.fullmatch(r"pgd(\d+)_(linf|l2)", name)
  if name == "pgd":
    norm = run_norm
    spec = {"attack": f"pgd_{norm}", "num_steps": int(eval_config.num_steps),
            "step_size": pgd_step(norm), "restarts": restarts, "eps": radius(norm)}
  elif m:
    norm = m.group(2)
    spec = {"attack": f"pgd_{norm}", "num_steps": int(m.group(1)), "step_size": pgd_step(norm),
            "restarts": restarts, "eps": radius(norm)}
  elif name in ("cw_linf", "cw_linf_tanh"):
    spec = {"attack": "cw_linf", "eps": radius("linf"), "step_size": pgd_step("linf"),
            "restarts": restarts}
    if name == "cw_linf_tanh":
      spec.update(variant="tanh", num_steps=100, name="CW-l_inf (tanh)")
    elif run_norm == "linf":
      spec["num_steps"] = int(eval_config.num_steps)
  elif name == "cw_l2":
    spec = {"attack": "cw_l2", "eps": radius("l2")}
  elif re.fullmatch(r"(deepfool|fgsm)_(linf|l2)", name):
    base, norm = name.split("_")
    spec = {"attack": base, "norm": norm, "eps": radius(norm)}
  elif re.fullmatch(r"atent(\d+)_(linf|l2)", name):
    steps, norm = re.fullmatch(r"atent(\d+)_(linf|l2)", name).groups()
    spec = {"attack": "atent_attack", "norm": norm, "num_steps": int(steps),
            "step_size": pgd_step(norm), "eps": radius(norm)}
  elif name in attacks.ATTACKS:
    defaults = attacks.ATTACKS[name][1]
    norm = attacks.attack_norm(name, defaults)
    spec = {"attack": name, "eps": radius(norm)}
    if "restarts" in defaults:
      spec["restarts"] = restarts
  if spec is None:
    raise ConfigError(f"--attacks: {name!r} is not a known attack: use pgd, pgdN_linf, pgdN_l2, "
                      "cw_linf, cw_linf_tanh, cw_l2, deepfool_linf, deepfool_l2, fgsm_linf, "
                      "fgsm_l2, atentN_linf, atentN_l2 or one of "
                      f"{', '.join(sorted(attacks.ATTACKS))}")
  if step_override is not None:
    if "step_size" not in spec:
      raise ConfigError(f"--attacks: {token!r}: {name} has no step size to set: drop ':step='")
    spec["step_size"] = step_override
    spec["name"] = (spec.get("name") or evaluation.default_name(spec["attack"], spec)) + \
        f" (step {step_override:g})"
  if spec["eps"] is None or not spec["eps"] > 0 or spec["eps"] != spec["eps"]:
    raise ConfigError(f"--attacks: {token!r}: eps={spec['eps']} is not valid: use a number > 0")
  return spec


def default_attacks(eval_config) -> list[str]:
  return ["pgd", "cw_linf"] if eval_config.norm == "linf" else ["pgd", "cw_l2"]


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
  workdir = FLAGS.workdir
  if not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} does not exist or is not a directory")

  from atent_jax import checkpoint, evaluation  # pylint: disable=import-outside-toplevel
  from atent_jax.data import load_dataset  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  config = checkpoint.load_config(workdir)
  tokens = FLAGS.attacks or default_attacks(config.eval)
  specs = [parse_attack(t, config.eval, FLAGS.eps, FLAGS.restarts) for t in tokens if t.strip()]
  if not specs:
    raise ConfigError("--attacks is empty: name at least one attack")
  config, model, variables = checkpoint.load_run(workdir, FLAGS.which)
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
  try:
    results = evaluation.evaluate_attacks(
        apply, np.asarray(images), np.asarray(labels), specs, jax.random.PRNGKey(FLAGS.seed),
        FLAGS.batch_size, params=variables, sanity_checks=FLAGS.sanity_checks,
        sanity_examples=FLAGS.sanity_examples, verbose=True)
  except ValueError as e:  # bad attack arguments
    raise ConfigError(str(e)) from None
  results.update({"workdir": os.path.abspath(workdir), "method": config.method,
                  "model": config.model.name, "eval_split": split_name,
                  "checkpoint": FLAGS.which, "seed": FLAGS.seed})
  with open(os.path.join(workdir, "robustness.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  table = evaluation.markdown_table([(config.method, results)])
  lines = [f"# Robustness of {os.path.basename(os.path.abspath(workdir))}", "",
           f"Robust accuracy (%) on {len(labels)} {split_name} images "
           f"({dataset.source}); model {config.model.name}, eval mode.", "", table]
  lines.append("Attacks: " + "; ".join(
      f"{r['name']}: {r['attack']} {r['norm']} eps {r['eps']:g}, {r['steps']} steps, "
      f"{r['restarts']} restart(s)" for r in results["attacks"]) + ".")
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
  for w in results["warnings"]:
    lines.append(f"- warning: {w}")
  with open(os.path.join(workdir, "robustness.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print(table, flush=True)
  for w in results["warnings"]:
    print(f"warning: {w}", file=sys.stderr)
  print(f"wrote {os.path.join(workdir, 'robustness.json')} and robustness.md", flush=True)


if __name__ == "__main__":
  cli.run(main, sys.argv)
