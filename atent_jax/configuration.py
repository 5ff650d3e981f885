"""Config checks run before any training: one-line errors naming the field and the fix."""

from __future__ import annotations

import difflib

import ml_collections

from atent_jax import defaults, methods, models
from atent_jax.data import DATASETS, SOURCES
from atent_jax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
  """The full default config (atent_jax/defaults.py): every key that exists."""
  return defaults.get_config()


def flatten_config(cfg, prefix=""):
  """{"train.learning_rate": 0.05, ...}: every leaf of a (nested) config under its dotted key."""
  out = {}
  for k, v in cfg.items():
    name = f"{prefix}{k}"
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(flatten_config(v, name + "."))
    else:
      out[name] = v
  return out


def nearest_key(key: str, reference=None) -> str | None:
  """The known config key (or group) closest to `key`, e.g. 'train.learning_rate' for
  'train.lerning_rate'; None when nothing is close."""
  reference = reference if reference is not None else default_config()
  known = flatten_config(reference)
  groups = {k.rsplit(".", 1)[0] for k in known if "." in k}
  close = difflib.get_close_matches(key, list(known) + sorted(groups), n=1, cutoff=0.6)
  return close[0] if close else None


def check_keys(config, reference=None) -> None:
  """Unknown keys (e.g. misspelt) raise ConfigError with the nearest known key."""
  reference = reference if reference is not None else default_config()
  known = flatten_config(reference)
  known_groups = {k.rsplit(".", 1)[0] for k in known if "." in k}
  flat = flatten_config(config)
  for key in flat:
    if key in known:
      continue
    if key in known_groups:
      raise ConfigError(f"config.{key}={flat[key]!r} replaces a group of fields: set its fields "
                        f"(e.g. config.{min(k for k in known if k.startswith(key + '.'))}) instead")
    group = next((g for g in sorted(known_groups, key=len, reverse=True)
                  if key.startswith(g + ".")), None)
    if group is None and "." in key and key.split(".")[0] in known:
      head = key.split(".")[0]
      raise ConfigError(f"config.{head} is a value, not a group: config.{key} does not exist")
    close = nearest_key(key, reference)
    hint = f": did you mean config.{close}?" if close else ": remove it"
    raise ConfigError(f"config.{key} is not a known config key{hint}")
  for key in known:
    if key not in flat and not any(key.startswith(k + ".") for k in flat):
      raise ConfigError(f"config.{key} is missing: start configs from "
                        "atent_jax.configuration.default_config() (atent_jax/defaults.py)")


def _has(config, path) -> bool:
  try:
    _get(config, path)
    return True
  except (KeyError, AttributeError):
    return False


def _get(config, path):
  value = config
  for part in path.split("."):
    value = value[part]
  return value


def _bool(config, path):
  value = _get(config, path)
  if not isinstance(value, bool):
    raise ConfigError(f"config.{path}={value!r} has the wrong type: use True or False")
  return value


def _str(config, path):
  value = _get(config, path)
  if not isinstance(value, str):
    raise ConfigError(f"config.{path}={value!r} has the wrong type: use a string")
  return value


def _num(config, path, *, lo=None, hi=None, lo_open=False, hi_open=False, integer=False):
  value = _get(config, path)
  kind = "an integer" if integer else "a number"
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type:
    raise ConfigError(f"config.{path}={value!r} has the wrong type: use {kind}")
  bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
      hi is not None and (value >= hi if hi_open else value > hi))
  if bad or value != value or (isinstance(value, float) and abs(value) == float("inf")):
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    rng = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
    raise ConfigError(f"config.{path}={value!r} is out of range: use {kind} in {rng}")
  return value


def _choice(config, path, choices):
  value = _get(config, path)
  if value not in choices:
    raise ConfigError(f"config.{path}={value!r} is not valid: use one of "
                      f"{', '.join(map(repr, choices))}")
  return value


def check_devices(config, num_devices: int) -> None:
  """The one check that needs the device count (known only once JAX has started): the batch is
  split evenly across the devices. ConfigError with a one-line message."""
  batch = config.train.batch_size
  if batch % num_devices:
    raise ConfigError(f"config.train.batch_size={batch} is not divisible by the {num_devices} "
                      f"devices: use a multiple of {num_devices}")


def validate_config(config, num_devices: int = 1) -> None:
  """Checks keys, types and ranges; raises ConfigError with a one-line message."""
  check_keys(config)
  _choice(config, "method", sorted(methods.METHODS))
  _choice(config, "model.name", sorted(models.MODELS))
  _choice(config, "data.dataset", sorted(DATASETS))
  _choice(config, "data.source", SOURCES)
  _choice(config, "data.eval_split", ("test", "validation"))
  _choice(config, "sampler.norm", ("linf", "l2"))
  _choice(config, "sampler.update_rule", ("code", "paper"))
  _choice(config, "eval.norm", ("linf", "l2"))
  _choice(config, "early_stopping_metric", ("robust_accuracy", "clean_accuracy"))
  _num(config, "seed", integer=True)
  _num(config, "train.num_epochs", lo=1, integer=True)
  _num(config, "train.batch_size", lo=1, integer=True)
  check_devices(config, num_devices)
  _num(config, "train.learning_rate", lo=0, lo_open=True)
  _num(config, "train.momentum", lo=0, hi=1, hi_open=True)
  _num(config, "train.weight_decay", lo=0)
  _num(config, "train.lr_decay_factor", lo=0, lo_open=True)
  _num(config, "train.checkpoint_every_steps", lo=0, integer=True)
  _num(config, "train.keep_checkpoints", lo=1, integer=True)
  _num(config, "train.log_every_steps", lo=1, integer=True)
  for e in config.train.lr_decay_epochs:
    if not isinstance(e, (int, float)) or e <= 0:
      raise ConfigError(f"config.train.lr_decay_epochs={tuple(config.train.lr_decay_epochs)!r} "
                        "is not valid: use positive epoch numbers")
  _num(config, "sampler.eps", lo=0, lo_open=True)
  _num(config, "sampler.step_size", lo=0, lo_open=True)
  _num(config, "sampler.num_steps", lo=1, integer=True)
  _num(config, "sampler.gamma", lo=0)
  _num(config, "sampler.noise_scale", lo=0)
  _num(config, "sampler.alpha", lo=0, hi=1, lo_open=True)
  _num(config, "sampler.ema_tolerance", lo=0, hi=1, hi_open=True)
  _num(config, "sampler.unroll", lo=-1, integer=True)
  _num(config, "data.num_validation", lo=0, integer=True)
  _num(config, "eval.every_epochs", lo=1, integer=True)
  _num(config, "eval.num_examples", lo=-1, integer=True)
  _num(config, "eval.batch_size", lo=1, integer=True)
  _num(config, "eval.eps", lo=0, lo_open=True)
  _num(config, "eval.num_steps", lo=1, integer=True)
  _num(config, "eval.step_size", lo=0, lo_open=True)
  _num(config, "eval.restarts", lo=1, integer=True)
  method = methods.get(config.method)
  if method.validate is not None:
    method.validate(config)  # the method's own checks (ATENT: sampler.norm matches its name)
  if config.data.eval_split == "validation" and config.data.num_validation <= 0:
    raise ConfigError("config.data.eval_split='validation' needs config.data.num_validation > 0")
  want_shape = DATASETS[config.data.dataset][0]
  if models.INPUT_SHAPES[config.model.name] != want_shape:
    raise ConfigError(f"config.model.name={config.model.name!r} expects inputs of shape "
                      f"{models.INPUT_SHAPES[config.model.name]} but config.data.dataset="
                      f"{config.data.dataset!r} has {want_shape}: pick a matching model")
  _validate_more(config, want_shape, DATASETS[config.data.dataset][1])


def _validate_more(config, shape, num_classes) -> None:
  """Types of flags and strings, model and method fields, eps ranges of l_inf balls."""
  for path in ("train.nesterov", "train.progress_bar", "sampler.random_init", "sampler.fused",
               "sampler.project_every_step",
               "eval.random_init", "early_stopping", "data.augment", "train.mixed_precision"):
    _bool(config, path)
  for path in ("data.dir", "data.tfds_data_dir", "train.init_from"):
    _str(config, path)
  _validate_distributed(config)
  # Images are in [0, 1]: an l_inf ball of radius >= 1 covers the whole image space.
  for prefix in ("sampler", "eval"):
    if config[prefix].norm == "linf" and config[prefix].eps > 1:
      raise ConfigError(f"config.{prefix}.eps={config[prefix].eps!r} is out of range: an l_inf "
                        "radius on images in [0, 1] must be in (0, 1] (8/255 is 0.0314)")
  if config.model.num_classes != num_classes:
    raise ConfigError(f"config.model.num_classes={config.model.num_classes!r} does not match "
                      f"config.data.dataset={config.data.dataset!r} ({num_classes} classes)")
  if _has(config, "model.dropout_rate"):
    _num(config, "model.dropout_rate", lo=0, hi=1, hi_open=True)
  for path in ("model.hidden", "model.depth", "model.width", "model.widen_factor"):
    if _has(config, path):
      _num(config, path, lo=1, integer=True)
  for path in ("model.mean", "model.std"):
    value = _get(config, path) if _has(config, path) else None
    if value is None:
      continue
    ok = isinstance(value, (tuple, list)) and len(value) == shape[-1] and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or (path == "model.std" and min(value) <= 0):
      raise ConfigError(f"config.{path}={value!r} is not valid: use {shape[-1]} numbers (one per "
                        "channel" + (", all > 0)" if path == "model.std" else ")"))
  for path in ("data.num_train", "data.num_eval"):
    if _num(config, path, lo=-1, integer=True) == 0:
      raise ConfigError(f"config.{path}=0 leaves no images: use -1 (all) or a positive count")
  for args, kwargs in (
      ("data.synthetic_examples", dict(lo=1, integer=True)),
      ("trades_beta", dict(lo=0)),
      ("mart_beta", dict(lo=0)),
      ("mma.max_eps", dict(lo=0, lo_open=True)),
      ("mma.clean_weight", dict(lo=0, hi=1)),
      ("entropy_sgd.num_steps", dict(lo=1, integer=True)),
      ("entropy_sgd.gamma", dict(lo=0)),
      ("entropy_sgd.step_size", dict(lo=0, lo_open=True)),
      ("entropy_sgd.noise_scale", dict(lo=0)),
      ("entropy_sgd.alpha", dict(lo=0, hi=1, lo_open=True)),
      ("noise_aug_sigma", dict(lo=0)),
  ):
    if _has(config, args):  # method fields come and go with the methods registry
      _num(config, args, **kwargs)


def _validate_distributed(config) -> None:
  """config.distributed: how a multi-host run starts (atent_jax.distributed)."""
  _choice(config, "distributed.initialize", ("auto", "always", "never"))
  address = _str(config, "distributed.coordinator_address")
  if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
    raise ConfigError(f"config.distributed.coordinator_address={address!r} is not valid: use "
                      "host:port of process 0 (e.g. '10.0.0.1:1234'), or '' for the environment")
  n = _num(config, "distributed.num_processes", lo=0, integer=True)
  pid = _num(config, "distributed.process_id", lo=-1, integer=True)
  if n and pid >= n:
    raise ConfigError(f"config.distributed.process_id={pid} is out of range: use 0 to {n - 1} "
                      f"(config.distributed.num_processes={n})")
  ids = _str(config, "distributed.local_device_ids")
  if ids and not all(p.strip().isdigit() for p in ids.split(",")):
    raise ConfigError(f"config.distributed.local_device_ids={ids!r} is not valid: use device "
                      "numbers separated by commas (e.g. '0,1,2,3'), or '' for all")
