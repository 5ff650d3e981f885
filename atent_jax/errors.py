"""User-facing errors: each carries one line that names the problem and the fix.

The CLIs print `error: <message>` for these and exit with code 2, without a traceback.
Recoverable problems (a corrupt checkpoint skipped, a stale lock taken over) are reported with
`warn`, as an `AtentWarning` that the CLIs print as one `warning: ...` line.
"""

import warnings


class AtentError(Exception):
  """Base class of the errors a user can fix (bad config, missing data, ...)."""


class ConfigError(AtentError, ValueError):
  """A config key or value is wrong."""


class DataError(AtentError, ValueError):
  """Data is missing, corrupt or out of range."""


class CheckpointError(AtentError, ValueError):
  """A checkpoint is missing or belongs to another model."""


class NonFiniteError(AtentError, FloatingPointError):
  """A loss, gradient or parameter became NaN or Inf during training."""


class WorkdirError(AtentError, RuntimeError):
  """The workdir is unwritable, full, or in use by another run."""


class AtentWarning(UserWarning):
  """Something was wrong but was recovered from (e.g. a corrupt checkpoint was skipped)."""


def warn(message: str) -> None:
  warnings.warn(AtentWarning(message), stacklevel=2)
