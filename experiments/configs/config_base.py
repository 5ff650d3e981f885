"""What the experiment configs share: the library's default config (every key that exists), the
parsing of a config argument (`FILE.py:ROW,VARIANT`), loading another config of this package by
the same `FILE.py:ARG` syntax as the command line, the CIFAR-10 data settings, and the
clean-baseline rule."""

import importlib.util
import os

from atent_jax.configuration import default_config  # noqa: F401  (the configs call it from here)

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_arg(file: str, arg: str | None, **groups: tuple[str, ...]) -> tuple[str, ...]:
  """The choice of each group (in the order given) that a config argument names.

  `arg` is what follows the colon of `--config=FILE.py:ARG`: comma-separated tokens in any order,
  at most one of each group; a group the argument does not name takes its first choice, e.g.

    parse_arg("mnist_linf.py", "trades", row=ROWS, variant=("code", "paper"))
    -> ("trades", "code")

  A token of no group, or a second token of one group, is a one-line ValueError naming the file,
  the token and the valid choices (the command line prints it as one `error:` line, exit code 2).
  """
  picked = {}
  for token in (t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    group = next((g for g, choices in groups.items() if token in choices), None)
    if group is None:
      raise arg_error(file, arg, f"{token} is not valid", groups)
    if group in picked:
      raise arg_error(file, arg, f"{token} is a second {group} (after {picked[group]})", groups)
    picked[group] = token
  return tuple(picked.get(group, choices[0]) for group, choices in groups.items())


def arg_error(file: str, arg: str | None, reason: str, groups=None) -> ValueError:
  """The one-line ValueError of a bad config argument; with `groups`, the usage and choices."""
  usage, names = "", list(groups or ())
  if len(names) == 1:
    usage = f": use one of {', '.join(groups[names[0]])} (default {groups[names[0]][0]})"
  elif names:
    usage = (": use " + names[0].upper() + "".join(f"[,{n.upper()}]" for n in names[1:]) + ", "
             + "; ".join(f"{n.upper()} one of {', '.join(groups[n])}" for n in names)
             + " (each defaults to its first)")
  return ValueError(f"{file}:{arg or ''}: {reason}{usage}")


def load(spec: str):
  """The config of another file of this folder, named as on the command line without the folder:
  'mnist_l2.py' (its default) or 'mnist_l2.py:trades'. The file runs afresh on every call."""
  file, _, arg = spec.partition(":")
  path = os.path.join(HERE, file)
  if not file.endswith(".py") or not os.path.isfile(path):
    raise ValueError(f"{spec}: no config file {file} in {HERE}")
  module_spec = importlib.util.spec_from_file_location(f"atent_config_{file[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def verdict_budget(config, *, checkpoint_every_steps: int):
  """The verdict's reduced budget shared by every row of verdict_table*.py: the local MNIST
  images, 30 epochs at a constant lr, one kept checkpoint (plus best/) so a run fits in git."""
  config.data.dir = "../shared/data/mnist"
  config.train.num_epochs = 30
  config.train.lr_decay_epochs = ()
  config.train.keep_checkpoints = 1
  config.train.checkpoint_every_steps = checkpoint_every_steps
  return config


def cifar10_base(config):
  """CIFAR-10 data as the authors' code reads it: [0, 1], crop + flip, no normalisation."""
  config.data.dataset = "cifar10"
  config.data.augment = True
  config.model.num_classes = 10
  config.model.mean = (0.0, 0.0, 0.0)
  config.model.std = (1.0, 1.0, 1.0)
  return config


def baseline_row(config, row: str, *, mma_max_eps: float):
  """The settings every MNIST table gives its baseline rows (method `row`), on top of the
  table's ATENT config: PGD-AT's random start, TRADES' and MART's beta 6, MMA's clean weight
  1/3 and radius, Entropy-SGD's Appendix B run; clean rows stop early on clean accuracy."""
  config.method = row
  if row == "pgd_at":
    config.sampler.random_init = True
  elif row == "trades":
    config.trades_beta = 6.0
  elif row == "mart":
    config.mart_beta = 6.0
  elif row == "mma":
    config.mma.clean_weight = 1.0 / 3.0
    config.mma.max_eps = mma_max_eps
  elif row in ("sgd", "entropy_sgd"):
    clean_baseline(config)  # early stopping on clean accuracy
  if row == "entropy_sgd":
    config.entropy_sgd.num_steps = 5
    config.entropy_sgd.gamma = 1e-3
    config.train.learning_rate = 0.1
    config.train.num_epochs = 50
    config.train.lr_decay_epochs = ()
  return config


def clean_baseline(config):
  """A row trained without adversarial examples (SGD, Entropy-SGD): early stopping keeps its
  most accurate epoch, not its most robust one (that would pick a half-trained model and
  flatter the baseline)."""
  config.early_stopping_metric = "clean_accuracy"
  return config
