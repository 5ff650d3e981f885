"""Robustness evaluation: a list of attacks on a fixed classifier, sanity checks and
gradient-masking flags.

    results = evaluate_attacks(logits_fn, images, labels,
                               [{"attack": "pgd_linf", "name": "PGD-20", "eps": 0.3},
                                {"attack": "autoattack", "eps": 0.3, "norm": "linf"}],
                               jax.random.PRNGKey(0), batch_size=500)

Attacks are resolved through the registry (`atent_jax.attacks.registry`): names, defaults,
norms and display names all come from there. An example counts as robust under an attack when
the model classifies BOTH the clean x and the attack's point correctly (the attacker may always
choose the zero perturbation; `atent_jax.metrics.robust_correct`), so robust accuracy <= clean
accuracy by construction. Minimal-perturbation attacks (CW-l_2, DeepFool, FAB) return x where
their perturbation is larger than eps, so they count as robust there.

AutoAttack and its members (APGD-CE, APGD-T, FAB-T, Square) run through the AutoAttack runner
with one key for the whole family, so a member run alone breaks exactly the examples it breaks
inside the ensemble (where it only sees the points the members before it left robust).

Every attack's record keeps its per-example outcome (`robust_examples`, see `encode_mask`) and
the result names the examples (`examples`), so two evaluations can be compared example by example
(`compare_results`).

Sanity checks (on a subset; reported, and warned about when they fail), after Carlini et al.'s
"On evaluating adversarial robustness" checklist:
  - eps monotonicity: PGD at eps/2 must not be less robust than at eps;
  - strength monotonicity: PGD with twice the steps and more restarts must not be more robust;
  - an unbounded attack (the whole [0, 1] box) must reach ~0% robust accuracy;
  - vanishing gradients: the fraction of correctly classified examples whose input gradient of
    the cross-entropy is ~0 (a sign of gradient masking that makes PGD on CE look strong).

Gradient-masking flags (always computed; the reference AutoAttack's checks and Carlini et al.'s):
  - randomized outputs: two identical calls of the model differ;
  - zero gradients: examples whose input gradient of the margin loss is exactly zero;
  - probability outputs: the outputs look like probabilities (rows in [0, 1] summing to 1), not
    logits;
  - gradient-free beats white-box: Square breaks points that every white-box attack at the same
    radius left robust;
  - robust accuracy rising with eps among this evaluation's attacks, and the sanity checks'
    eps monotonicity and unbounded attack where they ran.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from atent_jax.attacks import common as attack_common
from atent_jax.attacks import registry
from atent_jax.attacks.autoattack import autoattack, members
from atent_jax.attacks.classic import flat_norm, keep_stronger, restart_score
from atent_jax.metrics import robust_correct

# Tolerances of the sanity checks (fractions of the subset).
MONOTONE_TOLERANCE = 0.01
UNBOUNDED_MAX_ACCURACY = 0.02
VANISHING_GRAD_THRESHOLD = 1e-10
VANISHING_GRAD_WARN_FRACTION = 0.1
# Gradient-masking flags (the reference AutoAttack's thresholds).
RANDOMIZED_TOLERANCE = 1e-4      # max l_2 distance between two calls' normalised output rows
PROBABILITY_TOLERANCE = 1e-5
GRADIENT_FREE_MARGIN = 0.002     # Square may lower the white-box robust accuracy by this much
RANDOMIZED_EXAMPLES = 32         # examples the randomness check calls the model on (eagerly)
# The key of the AutoAttack family (fold_in(key, AUTOATTACK_KEY)), whatever its position in
# the spec list, so that a member alone and in the ensemble sees the same randomness.
AUTOATTACK_KEY = 0xAA

_NORM_TEXT = registry.NORM_TEXT

# The registry resolves spec items; these stay here as the evaluator's public names.
normalise_spec = registry.normalise_spec


def default_name(attack: str, kwargs: dict) -> str:
  """'PGD-20', 'CW-l_inf', 'DeepFool-l_2', 'ATENT-20', 'FGSM-l_inf', 'AutoAttack'."""
  return registry.get(attack).title(kwargs)


# --- per-example outcomes ---------------------------------------------------------------------

def encode_mask(mask) -> str:
  """A boolean (N,) mask as text: base64 of its bits packed 8 per byte, first example in the
  most significant bit (numpy.packbits). 10,000 examples take 1,668 characters."""
  return base64.b64encode(np.packbits(np.asarray(mask, bool)).tobytes()).decode("ascii")


def decode_mask(text: str, count: int) -> np.ndarray:
  """The inverse of encode_mask for a mask of `count` examples."""
  bits = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))
  if len(bits) < count:
    raise ValueError(f"the mask holds {len(bits)} examples, not {count}")
  return bits[:count].astype(bool)


def examples_record(labels, indices=None) -> dict:
  """Which examples an evaluation used: their indices in the split ({'start', 'stop'} for a
  contiguous range, else a list) and a checksum of their labels."""
  labels = np.asarray(labels, np.int32)
  idx = np.arange(len(labels)) if indices is None else np.asarray(indices, np.int64)
  if len(idx) != len(labels):
    raise ValueError(f"indices has {len(idx)} entries for {len(labels)} labels: pass one index "
                     "per example")
  contiguous = len(idx) > 0 and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
  where = ({"start": int(idx[0]), "stop": int(idx[0] + len(idx))} if contiguous
           else [int(i) for i in idx])
  return {"count": len(labels), "indices": where, "encoding": "packbits-base64",
          "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}


def robust_mask(record: dict, count: int) -> np.ndarray:
  """The per-example robust mask of one attack record of evaluate_attacks."""
  return decode_mask(record["robust_examples"], count)


def mcnemar_p(only_a: int, only_b: int) -> float:
  """Exact two-sided McNemar p-value of `only_a` vs `only_b` discordant examples:
  2 P(X <= min) for X ~ Binomial(only_a + only_b, 1/2), at most 1."""
  n, k = only_a + only_b, min(only_a, only_b)
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(k + 1))
  return min(1.0, 2 * tail / 2 ** n)  # Python integers: exact for any n


def compare_results(a: dict, b: dict) -> dict:
  """Two evaluate_attacks results (or robustness.json files) compared example by example.

  For each attack (name, norm and eps) present in both: how many examples are robust in both,
  only in a, only in b, in neither, the fraction on which they agree, and `mcnemar_p`: the
  exact two-sided McNemar p-value (a binomial test of the examples on which they disagree), the
  chance of a split at least this uneven if both defenses were equally robust on these
  examples. ValueError when the two evaluations did not use the same examples (indices and
  labels).
  """
  ea, eb = a.get("examples"), b.get("examples")
  if ea is None or eb is None:
    raise ValueError("a result has no 'examples' record (an evaluation from before per-example "
                     "outcomes were stored): rerun it")
  if (ea["count"], ea["indices"], ea["labels_sha1"]) != (eb["count"], eb["indices"],
                                                          eb["labels_sha1"]):
    raise ValueError("the two evaluations used different examples (indices or labels differ): "
                     "compare evaluations of the same split and --num_examples")
  n = ea["count"]
  by_b = {column_title(r): r for r in b["attacks"]}
  out = {"num_examples": n, "attacks": []}
  for ra in a["attacks"]:
    rb = by_b.get(column_title(ra))
    if rb is None or "robust_examples" not in ra or "robust_examples" not in rb:
      continue
    ma, mb = robust_mask(ra, n), robust_mask(rb, n)
    out["attacks"].append({
        "name": column_title(ra), "robust_accuracy_a": float(ma.mean()),
        "robust_accuracy_b": float(mb.mean()), "both_robust": int((ma & mb).sum()),
        "only_a": int((ma & ~mb).sum()), "only_b": int((~ma & mb).sum()),
        "neither": int((~ma & ~mb).sum()), "agreement": float((ma == mb).mean()),
        "mcnemar_p": mcnemar_p(int((ma & ~mb).sum()), int((~ma & mb).sum()))})
  return out


# --- running attacks --------------------------------------------------------------------------

class _Runner:
  """Batches, pads and jits `fn(logits_fn, x, y, key, **kwargs)` over a dataset."""

  def __init__(self, logits_fn, params, batch_size):
    self.logits_fn, self.params, self.batch_size = logits_fn, params, batch_size
    self._clean = jax.jit(lambda p, x: jnp.argmax(self._bind(p)(x), -1))
    self._logits = jax.jit(lambda p, x: self._bind(p)(x))
    self._cache = {}
    # One x -> logits function for the whole evaluation: the AutoAttack runner keeps its
    # compilations per function object.
    self.bound = self._bind(params)

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

  def logits(self, images):
    out = []
    for _, m, x, _ in self._batches(images, np.zeros(len(images), np.int32)):
      out.append(np.asarray(self._logits(self.params, x))[:m])
    return np.concatenate(out)

  def attack(self, attack, kwargs, images, labels, key, on_batch=None, first_batch=0):
    """(predictions on the attack's points, max perturbation norm, min pixel, max pixel).
    Batch i draws the key fold_in(key, first_batch + i); on_batch(start, predictions) is called
    after each batch."""
    record = registry.get(attack)
    norm = record.norm_of(kwargs)
    cache_key = (attack, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if cache_key not in self._cache:
      self._cache[cache_key] = self._attack_program(record, kwargs, norm)
    run = self._cache[cache_key]
    preds, dist, lo, hi = [], 0.0, np.inf, -np.inf
    for i, m, x, y in self._batches(images, labels):
      p, d, a, b = run(self.params, x, y, jax.random.fold_in(key, first_batch + i))
      preds.append(np.asarray(p)[:m])
      dist = max(dist, float(np.max(np.asarray(d)[:m])))
      lo, hi = min(lo, float(a)), max(hi, float(b))
      if on_batch is not None:
        on_batch(i * self.batch_size, preds[-1])
    return np.concatenate(preds), dist, lo, hi

  def _attack_program(self, record, kwargs, norm):
    """run(params, x, y, key) -> (predictions, perturbation norms, min pixel, max pixel)."""
    def outcome(p, x, adv):
      pred = jnp.argmax(self._bind(p)(adv), -1)
      return pred, flat_norm(adv - x, norm), adv.min(), adv.max()

    restarts = kwargs.get("restarts", 1)
    if record.one_restart is None or restarts == 1:
      return jax.jit(lambda p, x, y, k: outcome(p, x, record.fn(self._bind(p), x, y, k, **kwargs)))
    # Restarts one at a time: the same points as record.fn's (tests/test_evaluation.py), from
    # one compiled restart; with the steps unrolled (CPU), one program holding all restarts
    # took minutes to compile (PGD-40, 20 restarts: 8-11 min).
    if not isinstance(restarts, int) or restarts < 1:
      raise ValueError(f"restarts={restarts!r} is not valid: use an integer >= 1")
    one_kwargs = {k: v for k, v in kwargs.items() if k != "restarts"}
    one = jax.jit(lambda p, x, y, k, r: record.one_restart(self._bind(p), x, y, k, r,
                                                           **one_kwargs))
    score = jax.jit(lambda p, y, adv: restart_score(self._bind(p), y, adv))
    keep = jax.jit(lambda p, y, best, kept, cand: keep_stronger(self._bind(p), y, best, kept,
                                                                cand))
    finish = jax.jit(outcome)

    def run(p, x, y, k):
      best = one(p, x, y, k, 0)
      kept = score(p, y, best)
      for r in range(1, restarts):
        best, kept = keep(p, y, best, kept, one(p, x, y, k, r))
      return finish(p, x, best)

    return run

  def input_gradient_norms(self, images, labels, loss="ce"):
    """Per-example l_1 norm of d loss / dx; loss 'ce' (cross-entropy) or 'margin'
    (max_{j != y} z_j - z_y, whose gradient does not vanish when the softmax saturates)."""
    if ("grad", loss) not in self._cache:
      def g(p, x, y):
        logits_fn = self._bind(p)

        def total(v):
          z = logits_fn(v)
          if loss == "ce":
            return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(z, y))
          is_y = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
          other = jnp.max(jnp.where(is_y, -jnp.inf, z), -1)
          return jnp.sum(other - jnp.take_along_axis(z, y[:, None], -1)[:, 0])
        gr = jax.grad(total)(x)
        return jnp.sum(jnp.abs(gr.reshape(gr.shape[0], -1)), -1)
      self._cache[("grad", loss)] = jax.jit(g)
    out = [np.asarray(self._cache[("grad", loss)](self.params, x, y))[:m]
           for _, m, x, y in self._batches(images, labels)]
    return np.concatenate(out)


_LAST_RUNNER: list = []


def _runner(logits_fn, params, batch_size) -> _Runner:
  """The runner of the previous call when it has the same model, weights and batch size: the
  chunks of one evaluation then compile each attack once, not once per chunk. Only the most
  recent one is kept (it holds the weights)."""
  if _LAST_RUNNER:
    last = _LAST_RUNNER[0]
    if last.logits_fn is logits_fn and last.params is params and last.batch_size == batch_size:
      return last
  _LAST_RUNNER[:] = [_Runner(logits_fn, params, batch_size)]
  return _LAST_RUNNER[0]


def _bar(show: bool, **kwargs):
  return tqdm(disable=not show, file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)


def _run_classic(runner, spec, images, labels, clean_predictions, key, show_progress,
                 first_batch=0):
  """A non-AutoAttack attack batch by batch: (predictions, max perturbation, min, max pixel)."""
  n = len(labels)
  with _bar(show_progress, total=n, desc=spec["name"], unit="img") as bar:
    robust_so_far = [0]

    def on_batch(start, preds):
      stop = start + len(preds)
      robust_so_far[0] += int(robust_correct(labels[start:stop], clean_predictions[start:stop],
                                             preds).sum())
      bar.update(len(preds))
      bar.set_postfix_str(f"still robust {robust_so_far[0]}/{stop}")

    return runner.attack(spec["attack"], spec["kwargs"], images, labels, key, on_batch,
                         first_batch)


def _run_autoattack(runner, spec, images, labels, key, show_progress, index_offset=0):
  """AutoAttack or one of its members through the AutoAttack runner: (its result, the adversarial
  images)."""
  record = registry.get(spec["attack"])
  kwargs = dict(spec["kwargs"])
  norm, eps = kwargs.pop("norm"), kwargs.pop("eps")
  if record.member:
    options = {"version": "standard", "attacks": (record.member,),
               "attack_kwargs": {record.member: kwargs}}
  else:
    options = kwargs
  total = len(options.get("attacks") or members(options.get("version", "standard")))
  with _bar(show_progress, total=total, desc=spec["name"], unit="attack") as bar:
    def progress(name, still_robust):
      if name != "clean":
        bar.update(1)
      bar.set_postfix_str(f"{name}: still robust {still_robust}/{len(labels)}")

    result = autoattack(runner.bound, images, labels, key, norm=norm, eps=eps,
                        batch_size=runner.batch_size, progress=progress,
                        index_offset=index_offset, **options)
  return result


def _check_inputs(runner, images, labels) -> int:
  """The number of classes; ValueError naming the argument for inputs of the wrong shape."""
  if images.ndim < 2 or len(images) != len(labels) or labels.ndim != 1:
    raise ValueError(f"images of shape {images.shape} and labels of shape {labels.shape} do not "
                     "match: pass images (N, H, W, C) and labels (N,)")
  num_classes = attack_common.num_classes_of(runner.bound, images[:runner.batch_size])
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels holds values in [{labels.min()}, {labels.max()}] but logits_fn "
                     f"returns {num_classes} classes: pass labels in [0, {num_classes})")
  return num_classes


def evaluate_attacks(logits_fn: Callable, images, labels, attacks_spec: Sequence, key,
                     batch_size: int = 500, *, params: Any = None, sanity_checks: bool = True,
                     sanity_examples: int = 200, verbose: bool = False, progress: bool = False,
                     masking_checks: bool = True, indices=None, offset: int = 0) -> dict:
  """Clean accuracy and robust accuracy under each attack of `attacks_spec`.

  Args:
    logits_fn: `logits_fn(x) -> logits` of the model in eval mode, or `logits_fn(params, x)`
      when `params` is given (then the weights are jit arguments, not baked-in constants).
    images, labels: the evaluation examples (NHWC in [0, 1]; int labels).
    attacks_spec: items for `normalise_spec`: registry names or dicts
      {'attack': 'pgd_linf', 'name': 'PGD-20', 'eps': 0.3, 'num_steps': 20, ...}.
    key: PRNG key; attack j, batch i uses fold_in(fold_in(key, j), offset / batch_size + i);
      the AutoAttack family shares fold_in(key, AUTOATTACK_KEY) (per-example keys from
      offset + the example's index).
    batch_size: examples per attack call (the last batch is padded).
    sanity_checks: run the checks listed in the module docstring on the first
      `sanity_examples` examples.
    progress: show a progress bar per attack (stderr) with the points still robust.
    masking_checks: compute the gradient-masking flags (on the first `sanity_examples`).
    indices: the examples' indices in their split (default offset..offset+N-1), stored in
      'examples'.
    offset: the position of images[0] in a longer evaluation that this call is a chunk of (a
      multiple of batch_size): the chunk draws the keys and batches that one call on the whole
      evaluation gives these examples, so `merge_results` of the chunks (evaluated without
      checks) followed by `add_checks` equals that call (experiments/evaluate.py --chunk_size).

  Returns: {'clean_accuracy', 'num_examples', 'examples', 'attacks': [one dict per attack: name,
    attack, norm, eps, steps, restarts, budget, robust_accuracy, num_examples, robust_examples,
    max_perturbation, pixel_range, in_ball, in_range, kwargs, seconds; AutoAttack adds members
    and order],
    'sanity_checks': {...}, 'gradient_masking': {...}, 'warnings': [...]}.

  Raises ValueError naming the argument for an unknown attack, eps <= 0, a norm an attack does
  not support, or a logits_fn whose output is not (batch, num_classes).
  """
  specs = [normalise_spec(s) for s in attacks_spec]
  if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} is not valid: use an integer >= 1")
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if len(labels) == 0:
    raise ValueError("no examples to evaluate")
  if (isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0
      or offset % batch_size):
    raise ValueError(f"offset={offset!r} is not valid: use a multiple of batch_size="
                     f"{batch_size} (chunks hold whole batches)")
  # The batch of the whole evaluation up to this chunk's end: a last chunk shorter than a batch
  # is padded as the unchunked evaluation pads it (random draws depend on the batch shape).
  runner = _runner(logits_fn, params, min(batch_size, offset + len(labels)))
  _check_inputs(runner, images, labels)
  if indices is None:
    indices = np.arange(offset, offset + len(labels))
  examples = examples_record(labels, indices)
  clean_predictions = runner.predict(images, labels)
  clean_correct = clean_predictions == labels
  out = {"clean_accuracy": float(clean_correct.mean()), "num_examples": len(labels),
         "examples": examples, "attacks": [], "warnings": []}
  family_key = jax.random.fold_in(key, AUTOATTACK_KEY)
  for j, spec in enumerate(specs):
    t0 = time.time()
    attack, kwargs = spec["attack"], spec["kwargs"]
    record = registry.get(attack)
    norm = record.norm_of(kwargs)
    extra = {}
    if record.ensemble or record.member:
      result = _run_autoattack(runner, spec, images, labels, family_key, progress, offset)
      preds = runner.predict(result.adv, labels)
      d = flat_norm(np.asarray(result.adv - images), norm)
      dist = float(np.max(np.asarray(d)))
      lo, hi = float(result.adv.min()), float(result.adv.max())
      if record.ensemble:
        extra = {"order": list(result.order), "members": [
            {"member": m, "name": registry.RECORDS[registry.MEMBER_RECORDS[m]].display
             if m in registry.MEMBER_RECORDS else m.upper(),
             "broken": int(result.per_attack[m].sum()),
             "broken_examples": encode_mask(result.per_attack[m]),
             "seconds": result.seconds[m]} for m in result.order]}
    else:
      preds, dist, lo, hi = _run_classic(runner, spec, images, labels, clean_predictions,
                                         jax.random.fold_in(key, j), progress,
                                         offset // runner.batch_size)
    robust = robust_correct(labels, clean_predictions, preds)
    eps = kwargs.get("eps")
    entry = {
        "name": spec["name"], "attack": attack, "norm": norm, "eps": eps,
        "steps": record.steps(kwargs),
        "restarts": kwargs.get("restarts", kwargs.get("num_restarts", 1)),
        "budget": record.budget(kwargs),
        "robust_accuracy": float(robust.mean()), "num_examples": len(labels),
        "robust_examples": encode_mask(robust),
        "max_perturbation": dist, "pixel_range": [lo, hi], **_bounds(eps, dist, lo, hi),
        "kwargs": dict(kwargs), **extra, "seconds": time.time() - t0}
    out["warnings"].extend(_bound_warnings(entry))
    out["attacks"].append(entry)
    if verbose:
      print(f"{spec['name']}: robust accuracy {entry['robust_accuracy']:.4f} "
            f"({entry['seconds']:.1f}s)", flush=True)
  _add_checks(runner, images, labels, clean_predictions, specs, key, out, sanity_checks,
              sanity_examples, masking_checks)
  for w in out["warnings"]:
    warnings.warn(w, stacklevel=2)
  return out


def _bounds(eps, dist, lo, hi) -> dict:
  return {"in_ball": bool(eps is None or dist <= eps * (1 + 1e-5) + 1e-6),
          "in_range": bool(lo >= -1e-6 and hi <= 1 + 1e-6)}


def _bound_warnings(entry) -> list[str]:
  (lo, hi), dist = entry["pixel_range"], entry["max_perturbation"]
  texts = (("in_ball", f"perturbations up to {dist:.4g} exceed eps {entry['eps']}"),
           ("in_range", f"points outside [0, 1] ({lo:.4g}, {hi:.4g})"))
  return [f"{entry['name']}: {text}" for flag, text in texts if not entry[flag]]


def _add_checks(runner, images, labels, clean_predictions, specs, key, out, sanity_checks,
                sanity_examples, masking_checks):
  """Adds the sanity checks and the gradient-masking flags (first sanity_examples) to out."""
  n = min(sanity_examples, len(labels))
  if sanity_checks:
    out["sanity_checks"] = run_sanity_checks(
        runner, images[:n], labels[:n], clean_predictions[:n], specs,
        jax.random.fold_in(key, 10_000),
        default_norm=out["attacks"][0]["norm"] if out["attacks"] else "linf")
    out["warnings"].extend(out["sanity_checks"]["warnings"])
  if masking_checks:
    out["gradient_masking"] = gradient_masking_checks(
        runner, images[:n], labels[:n], out["attacks"], len(labels), out.get("sanity_checks"))
    out["warnings"].extend(out["gradient_masking"]["warnings"])


# --- evaluations in chunks --------------------------------------------------------------------

# What differs from chunk to chunk of one attack's record (the rest must be equal).
_PER_CHUNK = ("robust_accuracy", "num_examples", "robust_examples", "max_perturbation",
              "pixel_range", "in_ball", "in_range", "seconds", "members")


def merge_results(parts: Sequence[dict], labels) -> dict:
  """One evaluate_attacks result from those of consecutive chunks of its examples.

  parts: evaluate_attacks results (or their JSON) of the chunks in order, each evaluated with
    `offset` = its position and without sanity or masking checks; labels: the labels of all
    the examples. Per-example outcomes are concatenated and the figures recomputed from them,
    so the result equals one call on all the examples (times aside); `add_checks` then adds the
    checks. ValueError when the chunks do not follow each other, hold other labels or ran other
    attacks.
  """
  labels = np.asarray(labels, np.int32)
  if not parts:
    raise ValueError("no chunks to merge")
  first = parts[0]["examples"]["indices"]
  if not isinstance(first, dict):
    raise ValueError("a chunk's examples are not a contiguous range: chunks are ranges")
  pos = first["start"]
  for i, part in enumerate(parts):
    n = part["num_examples"]
    have = part["examples"]
    want = examples_record(labels[pos - first["start"]:pos - first["start"] + n],
                           np.arange(pos, pos + n))
    if (have["indices"], have["labels_sha1"]) != (want["indices"], want["labels_sha1"]):
      raise ValueError(f"chunk {i} holds examples {have['indices']}, labels sha1 "
                       f"{have['labels_sha1'][:12]}, where examples {want['indices']}, labels "
                       f"sha1 {want['labels_sha1'][:12]} follow: merge consecutive chunks of "
                       "the same examples")
    static = [{k: v for k, v in r.items() if k not in _PER_CHUNK} for r in part["attacks"]]
    if i == 0:
      static0 = static
    elif static != static0:
      raise ValueError(f"chunk {i} ran other attacks than chunk 0 "
                       f"({[r['name'] for r in static]} vs {[r['name'] for r in static0]})")
    pos += n
  count = pos - first["start"]
  if count != len(labels):
    raise ValueError(f"the chunks hold {count} examples and labels {len(labels)}")
  clean = sum(round(p["clean_accuracy"] * p["num_examples"]) for p in parts)
  out = {"clean_accuracy": clean / count, "num_examples": count,
         "examples": examples_record(labels, np.arange(first["start"], pos)), "attacks": [],
         "warnings": []}
  for j in range(len(static0)):
    records = [p["attacks"][j] for p in parts]
    robust = np.concatenate([robust_mask(r, r["num_examples"]) for r in records])
    dist = max(r["max_perturbation"] for r in records)
    lo = min(r["pixel_range"][0] for r in records)
    hi = max(r["pixel_range"][1] for r in records)
    entry = dict(records[0])
    entry.update({"robust_accuracy": float(robust.mean()), "num_examples": count,
                  "robust_examples": encode_mask(robust), "max_perturbation": dist,
                  "pixel_range": [lo, hi], **_bounds(entry["eps"], dist, lo, hi),
                  "seconds": sum(r["seconds"] for r in records)})
    if "members" in entry:
      entry["members"] = []
      for k, member in enumerate(records[0]["members"]):
        of = [r["members"][k] for r in records]
        broken = np.concatenate([decode_mask(m["broken_examples"], r["num_examples"])
                                 for m, r in zip(of, records, strict=True)])
        entry["members"].append(dict(member, broken=int(broken.sum()),
                                     broken_examples=encode_mask(broken),
                                     seconds=sum(m["seconds"] for m in of)))
    out["warnings"].extend(_bound_warnings(entry))
    out["attacks"].append(entry)
  return out


def add_checks(logits_fn: Callable, images, labels, attacks_spec: Sequence, key, result: dict,
               batch_size: int = 500, *, params: Any = None, sanity_checks: bool = True,
               sanity_examples: int = 200, masking_checks: bool = True) -> dict:
  """`result` (merge_results' merge of chunks of (images, labels)) with the sanity checks and
  gradient-masking flags that evaluate_attacks, called on (images, labels) with the same
  arguments, adds; they run on the first `sanity_examples` examples, with that call's keys."""
  specs = [normalise_spec(s) for s in attacks_spec]
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  runner = _runner(logits_fn, params, min(batch_size, len(labels)))
  n = min(sanity_examples, len(labels))
  clean_predictions = runner.predict(images[:n], labels[:n])  # the checks' subset only
  out = dict(result, warnings=list(result["warnings"]))
  _add_checks(runner, images, labels, clean_predictions, specs, key, out, sanity_checks,
              sanity_examples, masking_checks)
  return out


# --- sanity checks ----------------------------------------------------------------------------

def _base_pgd(specs, default_norm):
  for s in specs:
    if s["attack"] in ("pgd_linf", "pgd_l2"):
      return s["attack"], dict(s["kwargs"])
  attack = "pgd_linf" if default_norm == "linf" else "pgd_l2"
  kwargs = dict(registry.RECORDS[attack].defaults)
  for s in specs:  # same radius as the first attack of the same norm
    if (registry.attack_norm(s["attack"], s["kwargs"]) == default_norm
        and s["kwargs"].get("eps") is not None):
      kwargs["eps"] = s["kwargs"]["eps"]
      break
  return attack, kwargs


def run_sanity_checks(runner, images, labels, clean_predictions, specs, key,
                      default_norm="linf"):
  """The sanity checks of the module docstring on (images, labels); see evaluate_attacks."""
  clean_correct = clean_predictions == labels
  attack, base = _base_pgd(specs, default_norm)
  norm = "linf" if attack == "pgd_linf" else "l2"

  def robust(kwargs, k):
    preds, _, _, _ = runner.attack(attack, kwargs, images, labels, jax.random.fold_in(key, k))
    return float(robust_correct(labels, clean_predictions, preds).mean())

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


# --- gradient-masking flags -------------------------------------------------------------------

def _normalised_rows(z):
  z = np.asarray(z, np.float64).reshape(len(z), -1)
  return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-10)


def _randomized_outputs(runner, images) -> dict:
  """Two identical calls, eagerly and jitted: do the outputs differ?"""
  x = images[:RANDOMIZED_EXAMPLES]
  eager = [np.asarray(runner.bound(jnp.asarray(x))) for _ in range(2)]
  jitted = [runner.logits(x) for _ in range(2)]
  diff = max(float(np.max(np.linalg.norm(_normalised_rows(a) - _normalised_rows(b), axis=-1)))
             for a, b in (eager, jitted))
  preds_differ = any(not np.array_equal(a.argmax(-1), b.argmax(-1)) for a, b in (eager, jitted))
  return {"num_examples": len(x), "max_difference": diff, "predictions_differ": preds_differ,
          "flag": bool(diff > RANDOMIZED_TOLERANCE or preds_differ)}


def _probability_outputs(logits) -> dict:
  sums = logits.sum(-1)
  looks = bool(logits.min() > -PROBABILITY_TOLERANCE and logits.max() < 1 + PROBABILITY_TOLERANCE
               and np.all(np.abs(sums - 1) < PROBABILITY_TOLERANCE))
  return {"min": float(logits.min()), "max": float(logits.max()),
          "max_row_sum_error": float(np.max(np.abs(sums - 1))), "flag": looks}


def _gradient_free_versus_white_box(records, count) -> list[dict]:
  """Square's successes on points every white-box attack at the same radius left robust."""
  out = []
  for r in records:
    if r["attack"] == "autoattack" and "square" in r.get("order", ()):
      member = next(m for m in r["members"] if m["member"] == "square")
      white = [m["name"] for m in r["members"] if m["member"] != "square"
               and r["order"].index(m["member"]) < r["order"].index("square")]
      broken = member["broken"]
      out.append({"attack": r["name"], "versus": white, "count": broken,
                  "fraction": broken / count, "flag": broken / count > GRADIENT_FREE_MARGIN})
    elif registry.get(r["attack"]).gradient_free:
      peers = [p for p in records if p is not r and p["norm"] == r["norm"]
               and p["eps"] is not None and r["eps"] is not None
               and math.isclose(p["eps"], r["eps"], rel_tol=1e-9)
               and not registry.get(p["attack"]).gradient_free
               and p["attack"] != "autoattack"]
      if not peers:
        continue
      white_robust = np.ones(count, bool)
      for p in peers:
        white_robust &= robust_mask(p, count)
      broken = int((white_robust & ~robust_mask(r, count)).sum())
      out.append({"attack": r["name"], "versus": [p["name"] for p in peers], "count": broken,
                  "fraction": broken / count, "flag": broken / count > GRADIENT_FREE_MARGIN})
  return out


def eps_monotone_groups(records, count) -> list[dict]:
  """Among this evaluation's attacks, the same attack at several radii: robust accuracy must not
  rise with eps."""
  groups: dict[tuple, list] = {}
  for r in records:
    if r["eps"] is None:
      continue
    rest = tuple(sorted((k, repr(v)) for k, v in r["kwargs"].items() if k != "eps"))
    groups.setdefault((r["attack"], rest), []).append(r)
  tol = max(MONOTONE_TOLERANCE, 1.0 / count)
  out = []
  for group in groups.values():
    if len({r["eps"] for r in group}) < 2:
      continue
    group = sorted(group, key=lambda r: r["eps"])
    accs = [r["robust_accuracy"] for r in group]
    rises = any(later > earlier + tol for earlier, later in itertools.pairwise(accs))
    out.append({"attack": group[0]["attack"], "eps": [r["eps"] for r in group],
                "robust_accuracy": accs, "flag": rises})
  return out


def gradient_masking_checks(runner, images, labels, records, count, sanity=None) -> dict:
  """The gradient-masking flags of the module docstring. images/labels: the subset the model is
  probed on; records: evaluate_attacks' attack records (per-example outcomes over `count`
  examples); sanity: run_sanity_checks' result, if it ran."""
  checks = {"num_examples": len(labels)}
  checks["randomized_outputs"] = _randomized_outputs(runner, images)
  gnorm = runner.input_gradient_norms(images, labels, loss="margin")
  zero = gnorm == 0
  checks["zero_gradients"] = {"loss": "margin", "count": int(zero.sum()),
                              "fraction": float(zero.mean()), "flag": bool(zero.any())}
  checks["probability_outputs"] = _probability_outputs(runner.logits(images))
  checks["gradient_free_beats_white_box"] = _gradient_free_versus_white_box(records, count)
  checks["eps_monotone"] = eps_monotone_groups(records, count)
  if sanity is not None:
    checks["sanity"] = {k: bool(sanity[k]["passed"]) for k in
                        ("eps_monotone", "strength_monotone", "unbounded", "vanishing_gradients")}
  flags, w = [], []
  if checks["randomized_outputs"]["flag"]:
    flags.append("randomized_outputs")
    w.append(f"gradient masking: two identical calls of the model differ (by up to "
             f"{checks['randomized_outputs']['max_difference']:.3g}): a randomized defense; "
             "use AutoAttack version 'rand' (EoT)")
  if checks["zero_gradients"]["flag"]:
    flags.append("zero_gradients")
    w.append(f"gradient masking: {checks['zero_gradients']['count']} of {len(labels)} examples "
             "have an all-zero input gradient of the margin loss: gradient-based attacks cannot "
             "move there (quantisation, saturation); trust Square or use BPDA")
  if checks["probability_outputs"]["flag"]:
    flags.append("probability_outputs")
    w.append("gradient masking: the model's outputs look like probabilities (in [0, 1], rows "
             "summing to 1), not logits: pass the logits to the attacks")
  for g in checks["gradient_free_beats_white_box"]:
    if g["flag"]:
      flags.append("gradient_free_beats_white_box")
      w.append(f"gradient masking: {g['attack']} (gradient-free) broke {g['count']} examples "
               f"({g['fraction']:.1%}) that {', '.join(g['versus'])} left robust: the white-box "
               "evaluation overestimates robustness")
  for g in checks["eps_monotone"]:
    if g["flag"]:
      flags.append("eps_not_monotone")
      pairs = ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(g["eps"], g["robust_accuracy"],
                                                        strict=True))
      w.append(f"gradient masking: {g['attack']} robust accuracy rose with eps ({pairs})")
  if sanity is not None:
    for name, flag in (("eps_monotone", "eps_not_monotone"), ("unbounded", "unbounded_not_zero"),
                       ("vanishing_gradients", "vanishing_ce_gradients")):
      if not checks["sanity"][name] and flag not in flags:
        flags.append(flag)  # the sanity check's own warning says why
  checks["flags"] = sorted(set(flags), key=flags.index)
  checks["warnings"] = w
  return checks


def masking_summary(checks: dict) -> str:
  """One line for the console and the report."""
  if not checks["flags"]:
    return (f"gradient masking: no flag ({checks['num_examples']} examples: outputs "
            "deterministic and logits, no zero gradients, Square found nothing the white-box "
            "attacks missed, robust accuracy falls with eps)")
  return "gradient masking: FLAGS " + ", ".join(checks["flags"])


# --- tables -----------------------------------------------------------------------------------

def _fmt_eps(eps, norm):
  if eps is None:
    return "unbounded"
  for d in (255,):
    v = eps * d
    if abs(v - round(v)) < 1e-6 and eps < 0.2:
      return f"{round(v)}/{d}"
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
