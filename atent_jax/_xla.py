"""XLA flags that the library sets for speed on CPU, before JAX creates its backends.

On jaxlib 0.10.x, XLA:CPU hands convolutions, dots and element-wise fusions to the YNNPACK
library only when asked. An unknown flag aborts XLA at start-up, so the flag is only added on the
jaxlib versions where it was checked.

The "eltwise" fusion type, which gave most of the speed (SmallCNN input gradient, batch 128,
2-core AMD EPYC: 112-124 ms with it, 196-236 ms without any flag), is left out: on jaxlib 0.10.2
it returns NaN or 1e35 for `jax.jit(lambda h: relu(h) @ W)` when W is a uniform (splat) constant
baked into the program, e.g. a freshly initialised SmallCNN (zero last layer) closed over by an
attack (tests/test_xla_flags.py). Without it the remaining types measured 203-242 ms, within
the noise of no flag at all; they are kept because they were checked correct. A user who
accepts the risk can set the full flag in XLA_FLAGS themselves (we never override it).

Rules: we append to the user's XLA_FLAGS, never override a flag they set, do nothing once a
backend is already initialised, and do nothing when ATENT_JAX_NO_XLA_FLAGS=1.
"""

import logging
import os

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_YNN_VALUE = "individual_convolution,individual_dot,dot,reduce"
# jaxlib versions on which the flag above exists and was checked.
_CHECKED_JAXLIB_PREFIXES = ("0.10.",)

applied_flags: list[str] = []


def _jaxlib_version() -> str:
  try:
    from importlib.metadata import version
    return version("jaxlib")
  except Exception:  # pragma: no cover - jaxlib is a hard dependency
    return ""


def _backend_initialised() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(getattr(xla_bridge, "_backends", {}))
  except Exception:  # pragma: no cover - private API moved: be conservative
    return False


def configure_xla_flags() -> list[str]:
  """Adds the CPU speed flags to XLA_FLAGS where safe; returns the flags it added."""
  if os.environ.get("ATENT_JAX_NO_XLA_FLAGS", "") == "1":
    return []
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    return []
  if not _jaxlib_version().startswith(_CHECKED_JAXLIB_PREFIXES):
    return []
  current = os.environ.get("XLA_FLAGS", "")
  if _YNN_FLAG in current or _backend_initialised():
    return []
  flag = f"{_YNN_FLAG}={_YNN_VALUE}"
  os.environ["XLA_FLAGS"] = (current + " " + flag).strip()
  applied_flags.append(flag)
  logging.getLogger("atent_jax").info(
      "atent_jax added %s to XLA_FLAGS (CPU speed; set ATENT_JAX_NO_XLA_FLAGS=1 to disable)", flag)
  return [flag]
