"""Shared CLI plumbing: flag parsing and user errors as one line with exit code 2.

* a user error (bad flag, unknown or misspelt config key, wrong type or range, bad data, a
  checkpoint of another model, an unusable or locked workdir, a loss that became NaN/Inf) prints
  `error: <one line>` on stderr and exits with code 2, without a traceback;
* a warning of atent_jax (a corrupt checkpoint skipped, a stale lock taken over) prints
  `warning: <one line>`;
* Ctrl-C exits with code 130 after the checkpoints in flight are written (resume by rerunning).
"""

from __future__ import annotations

import errno
import re
import sys
import warnings

from absl import flags
from ml_collections import config_flags

from atent_jax.configuration import default_config, flatten_config, nearest_key
from atent_jax.errors import AtentError, AtentWarning

_OVERRIDE = re.compile(r"^--?(\w+)\.([\w.]+)(?:=(.*))?$")


def _one_line(e: BaseException) -> str:
  text = str(e).strip().strip("'\"").replace("\\n", "\n").splitlines()
  return text[0].strip().strip("'\"") if text else type(e).__name__


def _last_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _type_name(value) -> str:
  if isinstance(value, bool):
    return "True or False"
  if isinstance(value, int):
    return "an integer"
  if isinstance(value, float):
    return "a number"
  if isinstance(value, str):
    return "a string"
  if isinstance(value, (tuple, list)):
    return "a tuple, e.g. '(1, 2)'"
  return type(value).__name__


def override_error(argv, config_flag: str = "config", error: BaseException | None = None) -> str:
  """One line naming the bad `--config.<key>=value` override in `argv`, with the nearest key."""
  known = flatten_config(default_config())
  for arg in argv[1:]:
    m = _OVERRIDE.match(arg)
    if not m or m.group(1) != config_flag:
      continue
    key, value = m.group(2), m.group(3)
    groups = {k.rsplit(".", 1)[0] for k in known if "." in k}
    if key in groups:
      example = min(k for k in known if k.startswith(key + "."))
      return (f"--{config_flag}.{key} is a group of fields, not a value: set one of them, "
              f"e.g. --{config_flag}.{example}")
    if key not in known:
      close = nearest_key(key)
      hint = f": did you mean --{config_flag}.{close}?" if close else ""
      return f"--{config_flag}.{key} is not a known config key{hint}"
    if error is not None and f"{config_flag}.{key}" in str(error):
      return (f"--{config_flag}.{key}={value} has the wrong type: use "
              f"{_type_name(known[key])}")
  return f"bad --{config_flag} override: {_one_line(error)}" if error else "bad config override"


def define_config_file(name: str, default: str, help_string: str) -> None:
  """config_flags.DEFINE_config_file(lock_config=True), with one-line errors.

  ml_collections parses `--config.<key>` overrides while defining the flag (at import time)
  and raises a multi-line AttributeError/KeyError for an unknown key: we print one line instead.
  """
  try:
    config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail(override_error(sys.argv, name, e))


def load_config_flag(flag_values, name: str = "config"):
  """The parsed config of flag `name`; a missing or broken config file is one line, exit 2."""
  try:
    config = getattr(flag_values, name)
    list(config.keys())  # ml_collections loads the file lazily, on first use
    return config
  except (OSError, SyntaxError, ImportError, NameError, AttributeError, KeyError, TypeError,
          ValueError) as e:
    path = getattr(flag_values[name], "config_filename", "?")
    fail(f"--{name}={path} could not be loaded ({type(e).__name__}: {_last_line(e)})")


def _show_warning(message, category, filename, lineno, file=None, line=None):
  if issubclass(category, AtentWarning):
    print(f"warning: {message}", file=sys.stderr, flush=True)
  else:
    _default_show(message, category, filename, lineno, file, line)


_default_show = warnings.showwarning


def _unknown_flag_hint(msg: str) -> str:
  """absl's unknown-flag message, with the command's own flags when absl has no close match."""
  if not msg.startswith("Unknown command line flag") or "Did you mean" in msg:
    return msg
  # Flags defined by the script run (absl files them under sys.argv[0]; define_config_file's
  # under this module), not by libraries.
  own = sorted(f.name for module in (sys.argv[0], __name__)
               for f in flags.FLAGS.get_key_flags_for_module(module))
  return f"{msg}: use one of --{', --'.join(own)}" if own else msg


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def exit_if_help(argv, doc: str | None = None) -> None:
  """With a help flag in argv: the script's docstring and its flags on stdout, exit code 0."""
  if not any(arg in HELP_FLAGS for arg in argv[1:]):
    return
  if doc is None:
    doc = getattr(sys.modules.get("__main__"), "__doc__", None)
  if doc:
    print(doc.strip() + "\n")
  print(flags.FLAGS.main_module_help() if "--helpfull" not in argv else flags.FLAGS)
  sys.exit(0)


def run(main, argv) -> None:
  """Parses flags (config overrides included) and runs main; user errors exit with code 2.

  main gets argv[0] and the positional arguments, as absl's app.run passes them."""
  warnings.showwarning = _show_warning
  exit_if_help(argv)
  try:
    argv = flags.FLAGS(argv)
  except flags.Error as e:
    # Not _one_line: absl's messages are not quoted, but may end with a quoted value ('abc').
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Error whilst parsing config file" in str(e):
      # ml-collections wraps get_config(arg)'s error in a traceback: its last line is the reason.
      path = re.match(r"flag --(\w+=\S+?):? Error", msg)
      fail(f"--{path.group(1) if path else 'config'}: {_last_line(e)}")
    m = re.match(r"flag --(\w+)\.([\w.]+)=", msg)
    fail(override_error(argv, m.group(1), e) if m else _unknown_flag_hint(msg))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml-collections raises these for unknown keys / wrong types in --config.* overrides.
    fail(override_error(argv, "config", e))
  except (OSError, SyntaxError, ImportError, NameError) as e:
    # A config file that is missing or does not run.
    fail(f"the config file could not be loaded ({type(e).__name__}: {_last_line(e)})")
  try:
    main(argv)
  except AtentError as e:
    fail(_one_line(e))
  except KeyboardInterrupt:
    fail("interrupted: rerun the same command to resume from the last checkpoint", 130)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
      fail(f"{e.strerror}: {e.filename or ''} (the last complete checkpoint is kept; free space "
           "or fix permissions, then rerun to resume)", 1)
    raise
