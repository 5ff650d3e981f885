"""AutoAttack (Croce and Hein, ICML 2020): an ensemble of diverse parameter-free attacks, run in
sequence, each only on the points that all the previous ones failed to break.

    result = autoattack(logits_fn, x, y, key, norm="linf", eps=0.3)
    result.robust.mean()        # robust accuracy: correct on x and under every member
    result.per_attack["apgd-t"] # which examples APGD-T broke (it ran on the points still robust)

Versions, as the reference implementation (fra31/auto-attack) sets them:
  standard: APGD-CE, APGD-T (targeted DLR, 9 target classes), FAB-T (9 targets), Square (5,000
    queries, p_init 0.8); one restart each.
  plus: APGD-CE and APGD-DLR with 5 restarts, FAB (untargeted, 5 restarts), Square, APGD-T,
    FAB-T.
  rand: APGD-CE and APGD-DLR with Expectation over Transformation (20 gradients averaged per
    iteration), for randomized models (`stochastic=True`: `logits_fn(x, key)`).

The runner works host-side: it gathers the points still robust, cuts them into batches, pads
each batch to a bucket size (a power of two, at most `batch_size`) so that jit compiles once per
bucket, not once per count (and keeps the compilations for the next call on the same logits_fn
object), and, with several devices, shards each batch along a 1-D 'data' mesh
(`NamedSharding`, as the training step). Every member gets per-example keys derived from
the example's index in x, so an example's outcome does not depend on which others are still
robust or on the batch size. Every member's output is projected onto the eps-ball and [0, 1]
(a no-op for a correct member) before the model is queried on it.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from atent_jax import distributed, langevin
from atent_jax.attacks import common
from atent_jax.attacks.apgd import apgd, apgd_targeted
from atent_jax.attacks.fab import fab
from atent_jax.attacks.square import square

VERSIONS = ("standard", "plus", "rand")
# The smallest padded batch: fewer distinct shapes (compilations) for a little padding.
MIN_BUCKET = 16

# Each member: (name, attack function, its keyword arguments besides norm and eps).
_APGD_CE = ("apgd-ce", apgd, {"loss": "ce", "num_steps": 100, "num_restarts": 1})
_APGD_DLR = ("apgd-dlr", apgd, {"loss": "dlr", "num_steps": 100, "num_restarts": 1})
_APGD_T = ("apgd-t", apgd_targeted, {"loss": "dlr-targeted", "num_steps": 100,
                                     "num_restarts": 1, "num_target_classes": 9})
_FAB = ("fab", fab, {"targeted": False, "num_steps": 100, "num_restarts": 5})
_FAB_T = ("fab-t", fab, {"targeted": True, "num_steps": 100, "num_restarts": 1,
                         "num_target_classes": 9})
# The reference's AutoAttack runs Square with resc_schedule=False: the p schedule's iteration
# numbers are used as they are, not rescaled to the query budget.
_SQUARE = ("square", square, {"num_queries": 5000, "p_init": 0.8, "num_restarts": 1,
                              "rescale_schedule": False})


def _with(member, **changes):
  name, fn, kwargs = member
  return name, fn, {**kwargs, **changes}


def members(version: str) -> tuple[tuple[str, Callable, dict], ...]:
  """The (name, function, keyword arguments) of each attack of a version, in order."""
  langevin.check_choice("version", version, VERSIONS)
  if version == "standard":
    return (_APGD_CE, _APGD_T, _FAB_T, _SQUARE)
  if version == "plus":
    return (_with(_APGD_CE, num_restarts=5), _with(_APGD_DLR, num_restarts=5), _FAB, _SQUARE,
            _APGD_T, _FAB_T)
  return (_with(_APGD_CE, eot_iter=20), _with(_APGD_DLR, eot_iter=20))


class AutoAttackResult(NamedTuple):
  """What `autoattack` returns (NumPy arrays on the host).

  adv: (B, ...) per example the point of the first member that broke it, else x.
  robust: bool (B,), correct on the clean input and under every member.
  clean_correct: bool (B,).
  per_attack: member name -> bool (B,), the examples that member broke (it ran only on the
    points still robust after the members before it, so these sets are disjoint).
  order: the members' names in the order they ran.
  seconds: member name -> wall time of that member (compilation included).
  """
  adv: np.ndarray
  robust: np.ndarray
  clean_correct: np.ndarray
  per_attack: dict
  order: tuple
  seconds: dict

  @property
  def robust_accuracy(self) -> float:
    return float(np.mean(self.robust))

  @property
  def clean_accuracy(self) -> float:
    return float(np.mean(self.clean_correct))


def bucket_size(count: int, batch_size: int, num_devices: int = 1) -> int:
  """The padded batch for `count` (<= batch_size) points: the next power of two (at least
  MIN_BUCKET), at most batch_size, rounded up to a multiple of the device count."""
  size = min(max(MIN_BUCKET, 1 << max(count - 1, 0).bit_length()), batch_size)
  return -(-max(size, count) // num_devices) * num_devices


def _data_sharding():
  """The batch sharding over a 1-D 'data' mesh of this process's devices, or None for one
  device. (Several processes each evaluate their own inputs on their own devices.)"""
  devices = distributed.mesh_devices() if jax.process_count() == 1 else np.asarray(
      jax.local_devices())
  if len(devices) < 2:
    return None
  return NamedSharding(Mesh(devices, ("data",)), PartitionSpec("data"))


def _model(logits_fn, stochastic):
  """logits_fn as a function of (x, key); a deterministic model ignores the key."""
  return logits_fn if stochastic else (lambda v, k: logits_fn(v))


def _first_key(keys):
  """The key of a stochastic model's draw for a whole batch."""
  return jax.random.fold_in(keys[0], 0xC1EA)


def _example_keys(member_key, idx):
  return jax.vmap(jax.random.fold_in, (None, 0))(member_key, jnp.asarray(idx, jnp.uint32))


# The jitted clean pass and member runs of the most recent logits_fn: a second call with the
# same logits_fn object (another radius, a test) reuses the compilations.
_COMPILED = common.PerModelCache()


def _predict_fn(logits_fn, *, stochastic):
  model = _model(logits_fn, stochastic)
  return jax.jit(lambda xb, kb: jnp.argmax(model(xb, _first_key(kb)), -1))


def _member_fn(logits_fn, *, fn, norm, eps, options, stochastic):
  """One member on one padded batch: (its points, projected onto the ball and the box; the
  mask of the examples the model misclassifies there).

  APGD and FAB on the CPU backend run their host loops (see apgd._host_loop: several times
  faster there), so they are called outside jit; everything else is one jitted function.
  """
  model = _model(logits_fn, stochastic)
  options = dict(options)
  loop = options.pop("loop", "auto")
  looped = fn in (apgd, apgd_targeted, fab)
  host = looped and (
      loop == "host" or (loop == "auto" and jax.default_backend() == "cpu"))

  def finish(xb, xa, yb, kb):
    xa = common.project_ball_box(xb, xa, norm, eps)
    return xa, jnp.argmax(model(xa, _first_key(kb)), -1) != yb

  if host:
    finish = jax.jit(finish)
    return lambda xb, yb, kb: finish(
        xb, fn(logits_fn, xb, yb, kb, norm=norm, eps=eps, loop="host", **options), yb, kb)
  if looped:
    options["loop"] = "device"
  return jax.jit(lambda xb, yb, kb: finish(
      xb, fn(logits_fn, xb, yb, kb, norm=norm, eps=eps, **options), yb, kb))


def _validate(logits_fn, x, y, *, norm, eps, version, batch_size, progress, attacks,
              attack_kwargs, stochastic):
  langevin.check_choice("version", version, VERSIONS)
  common.check_norm(norm)
  common.check_eps(eps)
  if batch_size is not None:
    common.check_int("batch_size", batch_size)
  if progress is not None and not callable(progress):
    raise ValueError(f"progress={progress!r} is not valid: use a callable "
                     "progress(name, num_still_robust) or None")
  if not isinstance(stochastic, bool):
    raise ValueError(f"stochastic={stochastic!r} is not valid: use True or False")  # noqa: TRY004
  if stochastic and version != "rand":
    raise ValueError("stochastic=True is only supported with version='rand': FAB and Square "
                     "query a deterministic logits_fn(x)")
  names = [m[0] for m in members(version)]
  if attacks is not None and (isinstance(attacks, str) or not attacks
                              or any(a not in names for a in attacks)):
    raise ValueError(f"attacks={attacks!r} is not valid for version {version!r}: use a "
                     f"non-empty sequence of {', '.join(map(repr, names))}")
  for name, kw in (attack_kwargs or {}).items():
    if name not in names:
      raise ValueError(f"attack_kwargs names {name!r}, not a member of version {version!r}: "
                       f"use {', '.join(map(repr, names))}")
    if not isinstance(kw, Mapping) or {"norm", "eps"} & set(kw):
      raise ValueError(f"attack_kwargs[{name!r}]={kw!r} is not valid: use a dict of that "
                       "attack's keyword arguments other than norm and eps")
    for k, v in kw.items():
      try:
        hash(v)
      except TypeError:
        raise ValueError(f"attack_kwargs[{name!r}][{k!r}]={v!r} is not valid: use a hashable "
                         "value (a number, string, bool or tuple)") from None
  if np.ndim(x) < 2 or len(x) == 0:
    raise ValueError(f"x has shape {np.shape(x)}: pass a non-empty batch (B, H, W, C) of images")
  if np.min(x) < 0.0 or np.max(x) > 1.0:
    raise ValueError(f"x has values in [{np.min(x):.4g}, {np.max(x):.4g}]: images must be in "
                     "[0, 1] (normalisation belongs inside the model)")
  fn = (lambda v: logits_fn(v, jax.random.PRNGKey(0))) if stochastic else logits_fn
  return common.num_classes_of(fn, x, y)


def autoattack(logits_fn, x, y, key, *, norm: str, eps, version: str = "standard",
               batch_size: int | None = None,
               progress: Callable[[str, int], None] | None = None,
               attacks: Sequence[str] | None = None,
               attack_kwargs: Mapping[str, Mapping] | None = None,
               stochastic: bool = False, index_offset: int = 0) -> AutoAttackResult:
  """Runs AutoAttack on (x, y); see the module docstring.

  Args:
    logits_fn: `logits_fn(x) -> logits` (B, num_classes) of the model in eval mode (with
      stochastic=True, `logits_fn(x, key)`).
    x: images (B, H, W, C) in [0, 1]; y: integer labels (B,).
    key: PRNG key; member m, example i use fold_in(fold_in(key, crc32(m)), index_offset + i).
    norm: 'linf' or 'l2'; eps: the radius (> 0).
    version: 'standard', 'plus' or 'rand'.
    batch_size: examples per attack call (default: all of them, at most 500).
    progress: optional `progress(name, num_still_robust)`, called after the clean pass (name
      'clean') and after each member.
    attacks: optional subset of the version's members to run (in the version's order), e.g.
      ('apgd-t',) for APGD-T alone with AutoAttack's settings. A member's keys depend on its
      name, not its position, so an example's outcome under a member is the same alone and in
      the ensemble.
    attack_kwargs: optional {member name: {keyword: value}} overriding a member's settings
      (e.g. {'square': {'num_queries': 1000}} for a reduced-scale run).
    stochastic: the model is randomized (version 'rand' only).
    index_offset: the position of x[0] in a larger set that x is a chunk of: example i draws
      the keys of example index_offset + i, so chunks evaluated one by one give the outcomes of
      one call on the whole set.

  Returns: AutoAttackResult. Raises ValueError for an unknown version, eps <= 0, an unsupported
  norm, or a logits_fn whose output is not (B, num_classes).
  """
  num_classes = _validate(logits_fn, x, y, norm=norm, eps=eps, version=version,
                          batch_size=batch_size, progress=progress, attacks=attacks,
                          attack_kwargs=attack_kwargs, stochastic=stochastic)
  if isinstance(index_offset, bool) or not isinstance(index_offset, (int, np.integer)) or (
      index_offset < 0):
    raise ValueError(f"index_offset={index_offset!r} is not valid: use an integer >= 0")
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  n = len(y)
  batch_size = batch_size or min(n, 500)
  sharding = _data_sharding()
  num_devices = 1 if sharding is None else sharding.mesh.size
  eps = float(eps)

  def put(*arrays):
    if sharding is None:
      return arrays
    return tuple(jax.device_put(a, sharding) for a in arrays)

  def batches(indices):
    """(real count, padded indices) per batch; padding repeats the batch's first index."""
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      size = bucket_size(len(chunk), batch_size, num_devices)
      yield len(chunk), np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk))])

  clean_key = jax.random.fold_in(key, 0x7FFFFFFF)
  clean_pred = np.zeros(n, np.int32)
  for m, idx in batches(np.arange(n)):
    xb, kb = put(x[idx], _example_keys(clean_key, idx + index_offset))
    predict = _COMPILED.get(logits_fn, ("clean", stochastic),
                            functools.partial(_predict_fn, stochastic=stochastic))
    pred = predict(xb, kb)
    clean_pred[idx[:m]] = np.asarray(pred)[:m]
  clean_correct = clean_pred == y
  robust = clean_correct.copy()
  adv = x.copy()
  if progress is not None:
    progress("clean", int(robust.sum()))

  per_attack, seconds, order = {}, {}, []
  overrides = attack_kwargs or {}
  for name, fn, kwargs in members(version):
    if attacks is not None and name not in attacks:
      continue
    t0 = time.time()
    kwargs = {**kwargs, **overrides.get(name, {})}
    if "num_target_classes" in kwargs:  # at most every other class
      kwargs["num_target_classes"] = min(kwargs["num_target_classes"], num_classes - 1)
    if fn in (apgd, apgd_targeted) and stochastic:
      kwargs["stochastic"] = True
    options = tuple(sorted(kwargs.items()))
    run = _COMPILED.get(logits_fn, (name, fn, norm, eps, options, stochastic),
                        functools.partial(_member_fn, fn=fn, norm=norm, eps=eps, options=options,
                                          stochastic=stochastic))
    broke = np.zeros(n, bool)
    member_key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
    for m, idx in batches(np.flatnonzero(robust)):
      xb, yb, kb = put(x[idx], y[idx], _example_keys(member_key, idx + index_offset))
      xa, fooled = run(xb, yb, kb)
      fooled = np.asarray(fooled)[:m]
      hit = idx[:m][fooled]
      broke[hit] = True
      adv[hit] = np.asarray(xa)[:m][fooled]
    robust &= ~broke
    per_attack[name] = broke
    order.append(name)
    seconds[name] = time.time() - t0
    if progress is not None:
      progress(name, int(robust.sum()))
  return AutoAttackResult(adv=adv, robust=robust, clean_correct=clean_correct,
                          per_attack=per_attack, order=tuple(order), seconds=seconds)

