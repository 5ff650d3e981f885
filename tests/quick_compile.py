"""The LLVM optimisation level the tests compile at, and how a test takes it away again.

Tests spend much of their CPU time compiling (the 678 tests compiled 5,601 XLA programs in 1,355
CPU seconds of a 1,905-second run at the default level, measured 2026-12-07). LLVM's level 0
halves that (tests/test_fused.py: 108 -> 50 CPU seconds) but runs the programs 2-2.5x slower
(test_train's resume test: 73 s at level 0, 34 s at the default, 31 s at level 1); level 1
compiles almost as fast as 0 (test_fused.py: 69 against 55 CPU seconds) and runs as fast as the
default. Whole suite, -n 2, the niced verdict training beside it (2026-12-07): 895 s at level 0
(with the notebook test failing early), 822 s at level 1. XLA's own HLO passes, and so what is
computed, are the same at every level.
"""

FLAG = "--xla_backend_optimization_level=1"
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
