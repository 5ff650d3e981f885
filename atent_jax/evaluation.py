"""Robustness evaluation: a list of attacks on a fixed classifier, plus sanity checks.

    results = evaluate_attacks(logits_fn, images, labels,
                               [{"attack": "pgd_linf", "name": "PGD-20", "eps": 0.3},
                                {"attack": "cw_linf", "eps": 0.3}],
                               jax.random.PRNGKey(0), batch_size=500)

An example counts as robust under an attack when the model classifies BOTH the clean x and the
attack's point correctly (the attacker may always choose the zero perturbation), so robust
accuracy <= clean accuracy by construction. Minimal-perturbation attacks (CW-l_2, DeepFool)
return x where their perturbation is larger than eps, so they count as robust there.

Sanity checks (on a subset; reported, and warned about when they fail), after Carlini et al.'s
"On evaluating adversarial robustness" checklist:
  - eps monotonicity: PGD at eps/2 must not be less robust than at eps;
  - strength monotonicity: PGD with twice the steps and more restarts must not be more robust;
  - an unbounded attack (the whole [0, 1] box) must reach ~0% robust accuracy;
  - vanishing gradients: the fraction of correctly classified examples whose input gradient of
    the cross-entropy is ~0 (a sign of gradient masking that makes PGD on CE look strong).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from atent_jax import attacks as attacks_lib

# Tolerances of the sanity checks (fractions of the subset).
MONOTONE_TOLERANCE = 0.01
UNBOUNDED_MAX_ACCURACY = 0.02
VANISHING_GRAD_THRESHOLD = 1e-10
VANISHING_GRAD_WARN_FRACTION = 0.1

_DISPLAY = {"fgsm": "FGSM", "pgd_linf": "PGD", "pgd_l2": "PGD", "cw_l2": "CW-l_2",
            "cw_linf": "CW-l_inf", "deepfool": "DeepFool", "atent_attack": "ATENT"}
_NORM_TEXT = {"linf": "l_inf", "l2": "l_2"}


def normalise_spec(item) -> dict:
  """A spec item -> {'attack', 'name', 'kwargs'} with the registry defaults merged in.

  Items are a registry name ('pgd_linf') or a dict {'attack': name, 'name': display name
  (optional), **kwargs}. Unknown names and eps <= 0 raise ValueError.
  """
  if isinstance(item, str):
    item = {"attack": item}
  item = dict(item)
  attack = item.pop("attack", None) or item.get("name")
  if attack not in attacks_lib.ATTACKS:
    raise ValueError(f"attack {attack!r} is not known: use one of "
                     f"{', '.join(sorted(attacks_lib.ATTACKS))}")
  name = item.pop("name", None)
  extra = item.pop("kwargs", {}) or {}
  _, defaults = attacks_lib.ATTACKS[attack]
  kwargs = {**defaults, **item, **extra}
  eps = kwargs.get("eps")
  if eps is not None and (not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0):
    raise ValueError(f"eps={eps!r} for attack {attack!r} is not valid: use a number > 0")
  return {"attack": attack, "name": name or default_name(attack, kwargs), "kwargs": kwargs}


def default_name(attack: str, kwargs: dict) -> str:
  """'PGD-20', 'CW-l_inf', 'DeepFool-l_2', 'ATENT-20', 'FGSM'."""
  base = _DISPLAY.get(attack, attack)
  if attack in ("pgd_linf", "pgd_l2", "atent_attack"):
    return f"{base}-{kwargs.get('num_steps')}"
  if attack in ("deepfool", "fgsm"):
    return f"{base}-{_NORM_TEXT[attacks_lib.attack_norm(attack, kwargs)]}"
  return base


def _steps(attack, kwargs):
  if attack == "fgsm":
    return 1
  if attack == "cw_l2":
    return kwargs.get("num_steps", 0) * kwargs.get("binary_search_steps", 1)
  return kwargs.get("num_steps")


class _Runner:
  """Batches, pads and jits `fn(logits_fn, x, y, key, **kwargs)` over a dataset."""

  def __init__(self, logits_fn, params, batch_size):
    self.logits_fn, self.params, self.batch_size = logits_fn, params, batch_size
    self._clean = jax.jit(lambda p, x: jnp.argmax(self._bind(p)(x), -1))
    self._cache = {}

  def _bind(self, params):
    if self.params is None:
      return self.logits_fn
    return lambda x: self.logits_fn(params, x)

  def _batches(self, images, labels):
    n, b = len(labels), self.batch_size
    for i, start in enumerate(range(0, n, b)):
      x, y = images[start:start + b], labels[start:start + b]
      m = len(y)
      if m < b:  # pad so every batch has one shape (one compilation per attack)
        x = np.concatenate([x, np.repeat(x[:1], b - m, 0)])
        y = np.concatenate([y, np.repeat(y[:1], b - m, 0)])
      yield i, m, x, y

  def predict(self, images, labels):
    out = []
    for _, m, x, _ in self._batches(images, labels):
      out.append(np.asarray(self._clean(self.params, x))[:m])
    return np.concatenate(out)

  def attack(self, attack, kwargs, images, labels, key):
    """(predictions on the attack's points, max perturbation norm, min pixel, max pixel)."""
    fn, _ = attacks_lib.ATTACKS[attack]
    norm = attacks_lib.attack_norm(attack, kwargs)
    cache_key = (attack, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if cache_key not in self._cache:
      def run(p, x, y, k):
        logits_fn = self._bind(p)
        adv = fn(logits_fn, x, y, k, **kwargs)
        pred = jnp.argmax(logits_fn(adv), -1)
        return pred, attacks_lib._flat_norm(adv - x, norm), adv.min(), adv.max()  # pylint: disable=protected-access
      self._cache[cache_key] = jax.jit(run)
    run = self._cache[cache_key]
    preds, dist, lo, hi = [], 0.0, np.inf, -np.inf
    for i, m, x, y in self._batches(images, labels):
      p, d, a, b = run(self.params, x, y, jax.random.fold_in(key, i))
      preds.append(np.asarray(p)[:m])
      dist = max(dist, float(np.max(np.asarray(d)[:m])))
      lo, hi = min(lo, float(a)), max(hi, float(b))
    return np.concatenate(preds), dist, lo, hi

  def input_gradient_norms(self, images, labels):
    """Per-example l_1 norm of d CE / dx."""
    if "grad" not in self._cache:
      def g(p, x, y):
        logits_fn = self._bind(p)
        loss = lambda v: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(v), y))
        gr = jax.grad(loss)(x)
        return jnp.sum(jnp.abs(gr.reshape(gr.shape[0], -1)), -1)
      self._cache["grad"] = jax.jit(g)
    out = [np.asarray(self._cache["grad"](self.params, x, y))[:m]
           for _, m, x, y in self._batches(images, labels)]
    return np.concatenate(out)


def evaluate_attacks(logits_fn: Callable, images, labels, attacks_spec: Sequence, key,
                     batch_size: int = 500, *, params: Any = None, sanity_checks: bool = True,
                     sanity_examples: int = 200, verbose: bool = False) -> dict:
  """Clean accuracy and robust accuracy under each attack of `attacks_spec`.

  Args:
    logits_fn: `logits_fn(x) -> logits` of the model in eval mode, or `logits_fn(params, x)`
      when `params` is given (then the weights are jit arguments, not baked-in constants).
    images, labels: the evaluation examples (NHWC in [0, 1]; int labels).
    attacks_spec: items for `normalise_spec`: registry names or dicts
      {'attack': 'pgd_linf', 'name': 'PGD-20', 'eps': 0.3, 'num_steps': 20, ...}.
    key: PRNG key; attack j, batch i uses fold_in(fold_in(key, j), i).
    batch_size: examples per attack call (the last batch is padded).
    sanity_checks: run the checks listed in the module docstring on the first
      `sanity_examples` examples.

  Returns: {'clean_accuracy', 'num_examples', 'attacks': [one dict per attack: name, attack,
    norm, eps, steps, restarts, robust_accuracy, num_examples, max_perturbation, in_ball,
    in_range, kwargs, seconds], 'sanity_checks': {...}, 'warnings': [...]}.
  """
  specs = [normalise_spec(s) for s in attacks_spec]
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} is not valid: use an integer >= 1")
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if len(labels) == 0:
    raise ValueError("no examples to evaluate")
  runner = _Runner(logits_fn, params, min(batch_size, len(labels)))
  clean_correct = runner.predict(images, labels) == labels
  out = {"clean_accuracy": float(clean_correct.mean()), "num_examples": int(len(labels)),
         "attacks": [], "warnings": []}
  for j, spec in enumerate(specs):
    t0 = time.time()
    attack, kwargs = spec["attack"], spec["kwargs"]
    preds, dist, lo, hi = runner.attack(attack, kwargs, images, labels, jax.random.fold_in(key, j))
    robust = clean_correct & (preds == labels)
    norm = attacks_lib.attack_norm(attack, kwargs)
    eps = kwargs.get("eps")
    record = {
        "name": spec["name"], "attack": attack, "norm": norm, "eps": eps,
        "steps": _steps(attack, kwargs), "restarts": kwargs.get("restarts", 1),
        "robust_accuracy": float(robust.mean()), "num_examples": int(len(labels)),
        "max_perturbation": dist,
        "in_ball": bool(eps is None or dist <= eps * (1 + 1e-5) + 1e-6),
        "in_range": bool(lo >= -1e-6 and hi <= 1 + 1e-6),
        "kwargs": {k: v for k, v in kwargs.items()}, "seconds": time.time() - t0}
    for flag, text in (("in_ball", f"perturbations up to {dist:.4g} exceed eps {eps}"),
                       ("in_range", f"points outside [0, 1] ({lo:.4g}, {hi:.4g})")):
      if not record[flag]:
        out["warnings"].append(f"{spec['name']}: {text}")
    out["attacks"].append(record)
    if verbose:
      print(f"{spec['name']}: robust accuracy {record['robust_accuracy']:.4f} "
            f"({record['seconds']:.1f}s)", flush=True)
  if sanity_checks:
    n = min(sanity_examples, len(labels))
    out["sanity_checks"] = run_sanity_checks(
        runner, images[:n], labels[:n], clean_correct[:n], specs, jax.random.fold_in(key, 10_000),
        default_norm=out["attacks"][0]["norm"] if out["attacks"] else "linf")
    out["warnings"].extend(out["sanity_checks"]["warnings"])
  for w in out["warnings"]:
    warnings.warn(w, stacklevel=2)
  return out


def _base_pgd(specs, default_norm):
  for s in specs:
    if s["attack"] in ("pgd_linf", "pgd_l2"):
      return s["attack"], dict(s["kwargs"])
  attack = "pgd_linf" if default_norm == "linf" else "pgd_l2"
  kwargs = dict(attacks_lib.ATTACKS[attack][1])
  for s in specs:  # same radius as the first attack of the same norm
    if attacks_lib.attack_norm(s["attack"], s["kwargs"]) == default_norm and "eps" in s["kwargs"]:
      kwargs["eps"] = s["kwargs"]["eps"]
      break
  return attack, kwargs


def run_sanity_checks(runner, images, labels, clean_correct, specs, key, default_norm="linf"):
  """The sanity checks of the module docstring on (images, labels); see evaluate_attacks."""
  attack, base = _base_pgd(specs, default_norm)
  norm = "linf" if attack == "pgd_linf" else "l2"

  def robust(kwargs, k):
    preds, _, _, _ = runner.attack(attack, kwargs, images, labels, jax.random.fold_in(key, k))
    return float((clean_correct & (preds == labels)).mean())

  n = len(labels)
  tol = max(MONOTONE_TOLERANCE, 1.0 / n)
  base_acc = robust(base, 0)
  half = dict(base, eps=base["eps"] / 2)
  half_acc = robust(half, 1)
  strong = dict(base, num_steps=2 * base["num_steps"], restarts=max(2, 2 * base.get("restarts", 1)))
  strong_acc = robust(strong, 0)  # same key: its first restart starts where the base run did
  dim = int(np.prod(images.shape[1:]))
  if norm == "linf":
    unbounded = dict(base, eps=1.0, step_size=0.05, num_steps=max(40, base["num_steps"]),
                     restarts=1)
  else:
    big = float(math.sqrt(dim))  # the diameter of the [0, 1] cube
    unbounded = dict(base, eps=big, step_size=big / 10, num_steps=max(40, base["num_steps"]),
                     restarts=1)
  unbounded_acc = robust(unbounded, 2)
  gnorm = runner.input_gradient_norms(images, labels)
  vanishing = gnorm[clean_correct] < VANISHING_GRAD_THRESHOLD
  vanishing_frac = float(vanishing.mean()) if vanishing.size else 0.0

  checks = {
      "num_examples": n, "attack": attack, "base": _short(base), "base_robust_accuracy": base_acc,
      "eps_monotone": {"eps": half["eps"], "robust_accuracy": half_acc,
                       "passed": half_acc + tol >= base_acc},
      "strength_monotone": {"num_steps": strong["num_steps"], "restarts": strong["restarts"],
                            "robust_accuracy": strong_acc, "passed": strong_acc <= base_acc + tol},
      "unbounded": {"eps": unbounded["eps"], "step_size": unbounded["step_size"],
                    "num_steps": unbounded["num_steps"], "robust_accuracy": unbounded_acc,
                    "passed": unbounded_acc <= UNBOUNDED_MAX_ACCURACY},
      "vanishing_gradients": {"threshold_l1": VANISHING_GRAD_THRESHOLD,
                              "fraction_of_correct": vanishing_frac,
                              "median_grad_l1": float(np.median(gnorm)) if gnorm.size else 0.0,
                              "passed": vanishing_frac <= VANISHING_GRAD_WARN_FRACTION},
      "warnings": [],
  }
  w = checks["warnings"]
  if not checks["eps_monotone"]["passed"]:
    w.append(f"sanity: robust accuracy rose from {base_acc:.3f} to {half_acc:.3f} when eps "
             f"shrank to {half['eps']:g}: the attack is unreliable (randomness or too few steps)")
  if not checks["strength_monotone"]["passed"]:
    w.append(f"sanity: a stronger PGD ({strong['num_steps']} steps, {strong['restarts']} "
             f"restarts) gave higher robust accuracy ({strong_acc:.3f} > {base_acc:.3f})")
  if not checks["unbounded"]["passed"]:
    w.append(f"sanity: an unbounded PGD (eps {unbounded['eps']:g}) left {unbounded_acc:.1%} "
             "robust accuracy, not ~0%: a sign of gradient masking or a broken attack")
  if not checks["vanishing_gradients"]["passed"]:
    w.append(f"sanity: {vanishing_frac:.1%} of correctly classified examples have a ~0 input "
             "gradient of the cross-entropy (saturated softmax / gradient masking): trust the "
             "CW margin attacks more than PGD on cross-entropy")
  return checks


def _short(kwargs):
  return {k: kwargs[k] for k in ("eps", "step_size", "num_steps", "restarts") if k in kwargs}


def _fmt_eps(eps, norm):
  if eps is None:
    return "unbounded"
  for d in (255,):
    v = eps * d
    if abs(v - round(v)) < 1e-6 and eps < 0.2:
      return f"{int(round(v))}/{d}"
  return f"{eps:g}"


def column_title(record) -> str:
  return f"{record['name']} ({_NORM_TEXT.get(record['norm'], record['norm'])} " \
         f"{_fmt_eps(record['eps'], record['norm'])})"


def markdown_table(rows: Sequence[tuple[str, dict]]) -> str:
  """A table in the layout of the paper's Tables 1-3: one row per defense (name, results of
  evaluate_attacks), columns Benign + each attack; robust accuracy in %."""
  columns: list[str] = []
  for _, res in rows:
    for r in res["attacks"]:
      if column_title(r) not in columns:
        columns.append(column_title(r))
  head = "| Defense | Benign | " + " | ".join(columns) + " |"
  sep = "|---|---:|" + "---:|" * len(columns)
  lines = [head, sep]
  for name, res in rows:
    by_col = {column_title(r): r["robust_accuracy"] for r in res["attacks"]}
    cells = [f"{100 * by_col[c]:.2f}" if c in by_col else "-" for c in columns]
    lines.append(f"| {name} | {100 * res['clean_accuracy']:.2f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
