"""Shared CLI plumbing: flag parsing and user errors as one line with exit code 2."""

from __future__ import annotations

import sys

from absl import flags

from atent_jax.errors import AtentError


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def run(main, argv) -> None:
  """Parses flags (config overrides included) and runs main; user errors exit with code 2."""
  try:
    flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml-collections raises these for unknown keys / wrong types in --config.* overrides.
    print(f"error: bad --config override: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  try:
    main(argv)
  except AtentError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
