"""The attack registry: one record per attack, from which everything else is derived.

A record names the attack's function, the norms it supports, its default keyword arguments, its
display name, its command-line token and whether it is an ensemble. The evaluator
(`atent_jax.evaluation`) resolves spec items through `normalise_spec`, its report tables take
their column titles from `AttackRecord.title`, and experiments/evaluate.py parses `--attacks`
with `parse_token`; nothing else lists attacks.

Adding an attack is one module: write `fn(logits_fn, x, y, key, *, eps, [norm,] **options) ->
adversarial x` and call `register(AttackRecord(...))` (README.md, "Extending", has an example).
The built-in attacks are registered below the same way.

Command-line tokens (`parse_token`), NAME[@EPS][:key=value]...:
  STEM[N][_NORM]   a record's stem (pgd, cw, fgsm, deepfool, atent, apgd_ce, apgd_t, fab_t,
                   square, autoattack); N sets the number of steps where the record takes one
                   (pgd20_linf); _NORM (linf, l2) defaults to the run's norm. Attacks that follow
                   the run use its eval step size, and its number of steps at its norm.
  ALIAS            a record's named variant (cw_linf_tanh).
  REGISTRY NAME    any record by its registry name, with its defaults (pgd_linf, atent_attack).
  @EPS             the radius (default: the run's eps at its norm, else the standard radius).
  :key=value       any default keyword argument of the record (:step=X is :step_size=X;
                   AutoAttack's :attacks=apgd-ce+square runs a subset of its members).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
from collections.abc import Callable, Mapping
from typing import Any

from atent_jax.attacks import classic
from atent_jax.attacks.apgd import apgd, apgd_targeted
from atent_jax.attacks.autoattack import VERSIONS, autoattack, members
from atent_jax.attacks.fab import fab
from atent_jax.attacks.square import square

NORMS = ("linf", "l2")
NORM_TEXT = {"linf": "l_inf", "l2": "l_2"}
# Radii and PGD step sizes of an attack whose norm is not the run's (MNIST's standards).
STANDARD_EPS = {"linf": 0.3, "l2": 2.0}
STANDARD_STEP_SIZE = {"linf": 0.01, "l2": 0.25}
# Keyword arguments that the evaluator sets itself, never a spec.
_EVALUATOR_OWNED = ("batch_size", "progress")


@dataclasses.dataclass(frozen=True)
class AttackRecord:
  """Everything the library knows about one attack.

  name: registry name (API and JSON), e.g. 'pgd_linf'.
  fn: `fn(logits_fn, x, y, key, **kwargs) -> adversarial x` (an ensemble returns its result).
  norms: the norms it supports; with one norm and takes_norm=False the norm is implied.
  defaults: default keyword arguments, merged under a spec's.
  display: the name in reports ('PGD', 'AutoAttack').
  cli: the command-line stem ('pgd'); records sharing a stem differ by norm.
  takes_norm: fn has a `norm` argument.
  ensemble: runs several attacks, each on the points still robust (AutoAttack).
  member: the name of the AutoAttack member this attack is; the evaluator runs it through the
    AutoAttack runner, so its per-example outcome equals the member's in the ensemble.
  gradient_free: queries only the model's outputs (Square): the gradient-masking check compares
    it with the white-box attacks.
  cli_steps: the stem takes a step count (pgd20_linf).
  follows_run: on the command line, its step size (and, at the run's norm, its number of steps
    when no N is given) come from the run's eval config.
  title_suffix: what the default display name adds: 'steps' (PGD-20), 'norm' (FGSM-l_inf),
    'variant' (CW-l_inf (tanh)), 'version' (AutoAttack-plus) or None.
  aliases: command-line names of variants: token -> keyword arguments.
  eps_optional: eps=None is allowed (minimal-perturbation attacks: no radius).
  count_steps: the gradient steps a run takes, from its kwargs (default: num_steps).
  one_restart: `one_restart(logits_fn, x, y, key, restart, **kwargs without restarts)`, the
    attack's restart number `restart` where `fn` keeps the strongest of its `restarts` by
    `classic.keep_stronger` (PGD): the evaluator then compiles one restart and calls it once per
    restart instead of compiling all of them into one program.
  """
  name: str
  fn: Callable
  norms: tuple[str, ...]
  defaults: Mapping[str, Any]
  display: str
  cli: str
  takes_norm: bool = True
  ensemble: bool = False
  member: str | None = None
  gradient_free: bool = False
  cli_steps: bool = False
  follows_run: bool = False
  title_suffix: str | None = None
  aliases: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  eps_optional: bool = False
  count_steps: Callable[[Mapping], int] | None = None
  one_restart: Callable | None = None

  def norm_of(self, kwargs: Mapping) -> str:
    """The norm an eps of this attack is measured in."""
    if not self.takes_norm:
      return self.norms[0]
    return kwargs.get("norm", self.defaults.get("norm", self.norms[0]))

  def title(self, kwargs: Mapping) -> str:
    """The default display name: 'PGD-20', 'FGSM-l_inf', 'CW-l_inf', 'AutoAttack'."""
    if self.title_suffix == "steps":
      return f"{self.display}-{kwargs.get('num_steps')}"
    if self.title_suffix == "norm":
      return f"{self.display}-{NORM_TEXT[self.norm_of(kwargs)]}"
    if self.title_suffix == "variant" and kwargs.get("variant", "pgd") != "pgd":
      return f"{self.display} ({kwargs['variant']})"
    if self.title_suffix == "version" and kwargs.get("version", "standard") != "standard":
      return f"{self.display}-{kwargs['version']}"
    return self.display

  def steps(self, kwargs: Mapping) -> int | None:
    """Gradient steps per run (None: not a gradient-step attack, or an ensemble)."""
    if self.ensemble or self.gradient_free:
      return None
    if self.count_steps is not None:
      return self.count_steps(kwargs)
    return kwargs.get("num_steps")

  def budget(self, kwargs: Mapping) -> str:
    """The attack's effort in words, for reports."""
    if self.ensemble:
      chosen = kwargs.get("attacks")
      names = [RECORDS[_MEMBER_RECORD[m]].display if m in _MEMBER_RECORD else m.upper()
               for m, _, _ in members(kwargs.get("version", "standard"))
               if chosen is None or m in chosen]
      return f"version {kwargs.get('version', 'standard')}: " + ", ".join(names)
    if self.gradient_free:
      return f"{kwargs.get('num_queries')} queries"
    restarts = kwargs.get("restarts", kwargs.get("num_restarts", 1))
    targets = (f", {kwargs['num_target_classes']} target classes"
               if "num_target_classes" in kwargs and kwargs.get("targeted", True) else "")
    return f"{self.steps(kwargs)} steps{targets}, {restarts} restart(s)"

  def arguments(self) -> set[str] | None:
    """The keyword arguments fn accepts (None: any)."""
    params = inspect.signature(self.fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
      return None
    return set(list(params)[4:]) - set(_EVALUATOR_OWNED if self.ensemble else ())


def _member_defaults(member: str) -> dict:
  """An AutoAttack member's settings in the standard version (the reference's)."""
  for name, _, kwargs in members("standard"):
    if name == member:
      return dict(kwargs)
  raise KeyError(member)


def _aa(name, fn, member, display, **kw) -> AttackRecord:
  defaults = {"eps": STANDARD_EPS["linf"], "norm": "linf", **_member_defaults(member)}
  return AttackRecord(name=name, fn=fn, norms=NORMS, defaults=defaults, display=display,
                      cli=name, member=member, **kw)


_BY_NAME: dict[str, AttackRecord] = {}
_MEMBER_RECORD: dict[str, str] = {}
# Read-only live views: what `register` adds appears here.
RECORDS: Mapping[str, AttackRecord] = types.MappingProxyType(_BY_NAME)
# AutoAttack member name ('apgd-t') -> the record that runs it alone ('apgd_t').
MEMBER_RECORDS: Mapping[str, str] = types.MappingProxyType(_MEMBER_RECORD)


def register(record: AttackRecord) -> AttackRecord:
  """Adds `record` to the registry: the evaluator, `parse_token` (its `cli` stem) and the report
  tables then know it. ValueError when its name is taken, its norms are not among NORMS, or its
  command-line stem already names an attack of one of its norms (a token would be ambiguous)."""
  if not isinstance(record, AttackRecord):
    raise ValueError(f"register() takes an AttackRecord, not {type(record).__name__}")
  if record.name in _BY_NAME:
    raise ValueError(f"attack {record.name!r} is already registered")
  if not record.norms or set(record.norms) - set(NORMS):
    raise ValueError(f"attack {record.name!r}: norms={record.norms!r} is not valid: use some of "
                     f"{', '.join(map(repr, NORMS))}")
  for other in _BY_NAME.values():
    if other.cli == record.cli and set(other.norms) & set(record.norms):
      raise ValueError(f"attack {record.name!r}: the command-line stem {record.cli!r} is taken "
                       f"by {other.name!r} for the same norm: choose another cli")
  _BY_NAME[record.name] = record
  if record.member:
    _MEMBER_RECORD[record.member] = record.name
  return record


def unregister(name: str) -> AttackRecord:
  """Removes a registered attack (e.g. one a test or notebook cell added); returns its record."""
  record = get(name)
  del _BY_NAME[name]
  if record.member:
    _MEMBER_RECORD.pop(record.member, None)
  return record


for _record in (
    AttackRecord("fgsm", classic.fgsm, NORMS, {"eps": 0.3, "norm": "linf"}, "FGSM", "fgsm",
                 title_suffix="norm", count_steps=lambda kw: 1),
    AttackRecord("pgd_linf", classic.pgd_linf, ("linf",),
                 {"eps": 0.3, "step_size": 0.01, "num_steps": 20, "restarts": 1,
                  "random_init": True},
                 "PGD", "pgd", takes_norm=False, cli_steps=True, follows_run=True,
                 title_suffix="steps",
                 one_restart=functools.partial(classic.pgd_restart, norm="linf")),
    AttackRecord("pgd_l2", classic.pgd_l2, ("l2",),
                 {"eps": 2.0, "step_size": 0.25, "num_steps": 40, "restarts": 1,
                  "random_init": True},
                 "PGD", "pgd", takes_norm=False, cli_steps=True, follows_run=True,
                 title_suffix="steps",
                 one_restart=functools.partial(classic.pgd_restart, norm="l2")),
    AttackRecord("cw_l2", classic.cw_l2, ("l2",),
                 {"eps": 2.0, "binary_search_steps": 9, "num_steps": 100, "learning_rate": 0.01,
                  "kappa": 0.0},
                 "CW-l_2", "cw", takes_norm=False, eps_optional=True,
                 count_steps=lambda kw: kw["num_steps"] * kw["binary_search_steps"]),
    AttackRecord("cw_linf", classic.cw_linf, ("linf",),
                 {"eps": 0.3, "step_size": 0.01, "num_steps": 20, "kappa": 50.0, "restarts": 1,
                  "variant": "pgd"},
                 "CW-l_inf", "cw", takes_norm=False, follows_run=True, title_suffix="variant",
                 aliases={"cw_linf_tanh": {"variant": "tanh", "num_steps": 100}}),
    AttackRecord("deepfool", classic.deepfool, NORMS,
                 {"eps": 0.3, "norm": "linf", "num_steps": 50, "overshoot": 0.02,
                  "num_candidates": 10},
                 "DeepFool", "deepfool", title_suffix="norm", eps_optional=True),
    AttackRecord("atent_attack", classic.atent_attack, NORMS,
                 {"eps": 0.3, "norm": "linf", "step_size": 0.01, "num_steps": 20,
                  "noise_scale": 1e-3},
                 "ATENT", "atent", cli_steps=True, follows_run=True, title_suffix="steps"),
    _aa("apgd_ce", apgd, "apgd-ce", "APGD-CE"),
    _aa("apgd_t", apgd_targeted, "apgd-t", "APGD-T"),
    _aa("fab_t", fab, "fab-t", "FAB-T"),
    _aa("square", square, "square", "Square", gradient_free=True),
    AttackRecord("autoattack", autoattack, NORMS,
                 {"eps": 0.3, "norm": "linf", "version": "standard", "attacks": None},
                 "AutoAttack", "autoattack", ensemble=True, title_suffix="version"),
):
  register(_record)
del _record


class _FunctionAndDefaults(Mapping):
  """`ATTACKS[name] -> (fn, defaults)`, a read-only view of the registry (the older API)."""

  def __getitem__(self, name):
    record = RECORDS[name]
    return record.fn, dict(record.defaults)

  def __iter__(self):
    return iter(RECORDS)

  def __len__(self):
    return len(RECORDS)


ATTACKS: Mapping[str, tuple[Callable, dict]] = _FunctionAndDefaults()


def get(name: str) -> AttackRecord:
  """The record of `name`; ValueError naming it (and the known names) when unknown."""
  if not isinstance(name, str) or name not in RECORDS:
    raise ValueError(f"attack {name!r} is not known: use one of {', '.join(RECORDS)}")
  return RECORDS[name]


def attack_norm(name: str, kwargs: Mapping) -> str:
  """The norm an attack's eps is measured in."""
  return get(name).norm_of(kwargs)


def _check_eps(attack: AttackRecord, eps) -> None:
  if eps is None and attack.eps_optional:
    return
  ok = (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps)
        and eps > 0)
  if not ok:
    raise ValueError(f"eps={eps!r} for attack {attack.name!r} is not valid: use a number > 0")


def _check_norm(attack: AttackRecord, kwargs: dict) -> None:
  if attack.takes_norm:
    norm = kwargs.get("norm")
    if norm not in attack.norms:
      raise ValueError(f"norm={norm!r} is not supported by attack {attack.name!r}: use one of "
                       f"{', '.join(map(repr, attack.norms))}")
    return
  if "norm" not in kwargs:
    return
  norm = kwargs.pop("norm")
  if norm != attack.norms[0]:
    siblings = [r.name for r in RECORDS.values() if r.cli == attack.cli and norm in r.norms]
    fix = f"use attack {siblings[0]!r}" if siblings else f"use norm {attack.norms[0]!r}"
    raise ValueError(f"norm={norm!r} is not supported by attack {attack.name!r} (it is "
                     f"{attack.norms[0]} only): {fix}")


def normalise_spec(item) -> dict:
  """A spec item -> {'attack', 'name', 'kwargs'}, the record's defaults merged in.

  Items are a registry name ('pgd_linf') or a dict {'attack': name, 'name': display name
  (optional), **kwargs} (or with the keyword arguments under 'kwargs'). ValueError, naming the
  argument, for an unknown attack, eps <= 0, a norm the attack does not support, or a keyword
  argument the attack does not take.
  """
  if isinstance(item, str):
    item = {"attack": item}
  if not isinstance(item, Mapping):  # a ValueError, as every bad argument here
    raise ValueError(f"attack spec {item!r} is not valid: use a registry name or a "  # noqa: TRY004
                     "dict {'attack': name, **kwargs}")
  item = dict(item)
  attack = get(item.pop("attack", None) or item.get("name"))
  name = item.pop("name", None)
  extra = item.pop("kwargs", {}) or {}
  kwargs = {**attack.defaults, **item, **extra}
  _check_norm(attack, kwargs)
  _check_eps(attack, kwargs.get("eps"))
  accepted = attack.arguments()
  unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
  if unknown:
    raise ValueError(f"{unknown[0]}={kwargs[unknown[0]]!r} is not an argument of attack "
                     f"{attack.name!r}: use some of {', '.join(sorted(accepted))}")
  if attack.ensemble and kwargs.get("version") not in VERSIONS:
    raise ValueError(f"version={kwargs.get('version')!r} for attack {attack.name!r} is not "
                     f"valid: use one of {', '.join(map(repr, VERSIONS))}")
  return {"attack": attack.name, "name": name or attack.title(kwargs), "kwargs": kwargs}


# --- the command-line grammar -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunDefaults:
  """What a command-line token takes from the run being evaluated (its config.eval)."""
  norm: str = "linf"
  eps: float = STANDARD_EPS["linf"]
  step_size: float = STANDARD_STEP_SIZE["linf"]
  num_steps: int = 20

  def radius(self, norm: str) -> float:
    return float(self.eps) if norm == self.norm else STANDARD_EPS[norm]

  def pgd_step(self, norm: str) -> float:
    return float(self.step_size) if norm == self.norm else STANDARD_STEP_SIZE[norm]


def _stems() -> list[str]:
  # Longest first, so that a stem that is a prefix of another never shadows it.
  return sorted({r.cli for r in RECORDS.values()}, key=len, reverse=True)


def token_help() -> str:
  """The token forms, derived from the registry (for --help and error messages)."""
  forms = []
  for stem in sorted({r.cli for r in RECORDS.values()}):
    family = [r for r in RECORDS.values() if r.cli == stem]
    norms = [n for n in NORMS if any(n in r.norms for r in family)]
    steps = "[N]" if any(r.cli_steps for r in family) else ""
    forms.append(f"{stem}{steps}[_{'|'.join(norms)}]")
  aliases = [a for r in RECORDS.values() for a in r.aliases]
  return (", ".join(forms) + (", " + ", ".join(aliases) if aliases else "")
          + "; or a registry name: " + ", ".join(RECORDS))


def _parse_value(token: str, key: str, text: str, default):
  if key == "attacks":  # an ensemble's members: a '+'-separated list (',' separates tokens)
    return tuple(text.split("+"))
  try:
    if isinstance(default, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return text.lower() in ("true", "1")
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float) or default is None:
      return float(text)
    return text
  except ValueError:
    kind = "True or False" if isinstance(default, bool) else type(default).__name__
    raise ValueError(f"{token!r}: {key}={text} is not valid: use {kind}") from None


def _resolve(name: str, run: RunDefaults):
  """(record, steps or None, norm, alias kwargs, follows the run) for a token's name, or None."""
  for record in RECORDS.values():
    if name in record.aliases:
      return record, None, record.norm_of({}), dict(record.aliases[name]), record.follows_run
  for stem in _stems():
    # l1, l0 ...: parsed, so that the error can say the norm is not supported
    m = re.fullmatch(re.escape(stem) + r"(\d+)?(?:_(linf|l\d+))?", name)
    if not m:
      continue
    family = [r for r in RECORDS.values() if r.cli == stem]
    norm = m.group(2) or run.norm
    found = [r for r in family if norm in r.norms]
    if not found:
      raise ValueError(f"{name!r}: norm {norm!r} is not supported by {stem}: use one of "
                       f"{', '.join(sorted({n for r in family for n in r.norms}))}")
    record = found[0]
    if m.group(1) and not record.cli_steps:
      raise ValueError(f"{name!r}: {stem} takes no step count: set it with :num_steps=N")
    return record, (int(m.group(1)) if m.group(1) else None), norm, {}, record.follows_run
  if name in RECORDS:  # a registry name: the record's defaults, not the run's settings
    record = RECORDS[name]
    return record, None, record.norm_of(record.defaults), {}, False
  return None


def parse_token(token: str, run: RunDefaults = RunDefaults(), eps: float | None = None,
                restarts: int = 1) -> dict:
  """One command-line token (see the module docstring) -> a `normalise_spec` item.

  `eps` overrides every radius (an @EPS in the token wins); `restarts` sets the restarts of the
  attacks that have them. ValueError (starting with the token) for an unknown name, a bad option
  or eps <= 0.
  """
  token = token.strip()
  head, *options = token.split(":")
  name, _, eps_text = head.partition("@")
  resolved = _resolve(name, run)
  if resolved is None:
    raise ValueError(f"{name!r} is not a known attack: use {token_help()}")
  record, steps, norm, alias, follow = resolved
  if eps_text:
    try:
      eps = float(eps_text)
    except ValueError:
      raise ValueError(f"{token!r} has a radius that is not a number: use NAME@EPS, e.g. "
                       "pgd20_linf@0.1") from None
  spec: dict[str, Any] = {"attack": record.name}
  if record.takes_norm:
    spec["norm"] = norm
  spec["eps"] = run.radius(norm) if eps is None else eps
  if follow and "step_size" in record.defaults:
    spec["step_size"] = run.pgd_step(norm)
  if steps is not None:
    spec["num_steps"] = steps
  elif follow and norm == run.norm and "num_steps" in record.defaults:
    spec["num_steps"] = int(run.num_steps)
  if "restarts" in record.defaults:
    spec["restarts"] = restarts
  spec.update(alias)
  suffixes = []
  for option in options:
    key, sep, text = option.partition("=")
    key = "step_size" if key == "step" else key
    settable = sorted(k for k in record.defaults if k not in ("eps", "norm"))
    if not sep or key not in settable:
      fix = (f"set one of {', '.join(settable)}, e.g. NAME:{settable[0]}=VALUE" if settable
             else "it has no options")
      raise ValueError(f"{token!r}: {option!r} is not an option of {record.name}: {fix}")
    value = _parse_value(token, key, text, record.defaults[key])
    if key == "step_size" and not value > 0:
      raise ValueError(f"{token!r}: {option} is not valid: use a number > 0")
    title_before = record.title({**record.defaults, **spec})
    spec[key] = value
    if record.title({**record.defaults, **spec}) == title_before:  # else the title says it
      suffixes.append(f"step {value:g}" if key == "step_size" else f"{key}={text}")
  if suffixes:
    spec["name"] = (spec.get("name") or record.title({**record.defaults, **spec})) + \
        "".join(f" ({s})" for s in suffixes)
  if spec["eps"] is None or not spec["eps"] > 0 or not math.isfinite(spec["eps"]):
    raise ValueError(f"{token!r}: eps={spec['eps']} is not valid: use a number > 0")
  return spec
