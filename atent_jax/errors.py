"""User-facing errors: each carries one line that names the problem and the fix.

The CLIs print `error: <message>` for these and exit with code 2, without a traceback.
"""


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
