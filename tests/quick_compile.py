"""The LLVM optimisation level the tests compile at, and how a test takes it away again.

Tests spend most of their CPU time compiling (the 678 tests compiled 5,601 XLA programs in 1,355
CPU seconds of a 1,905-second run, measured 2026-12-07): LLVM's level 0 halves that
(tests/test_fused.py: 108 -> 50 CPU seconds) and leaves XLA's own HLO passes, and so what is
computed, as they are; programs then run slower, which tiny tests do not feel.
"""

FLAG = "--xla_backend_optimization_level=0"
_NAME = "--xla_backend_optimization_level"


def with_flag(environ) -> None:
  """Adds FLAG to environ's XLA_FLAGS, unless a level is already chosen there or
  ATENT_JAX_TEST_FULL_OPT=1 asks for users' level."""
  flags = environ.get("XLA_FLAGS", "")
  if environ.get("ATENT_JAX_TEST_FULL_OPT") == "1" or _NAME in flags:
    return
  environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()


def without_flag(xla_flags: str) -> str:
  """xla_flags without FLAG: what a program compiled for a user would get."""
  return " ".join(f for f in xla_flags.split() if f != FLAG)
