"""Peak resident memory of a piece of work, for the benchmarks (Linux /proc; None elsewhere).

Usage: `reset_peak()` (VmHWM := current RSS), note `rss_kb("VmRSS")`, run the work, then
`rss_kb("VmHWM")` minus the noted RSS is the extra memory the work needed at its peak.
"""

from __future__ import annotations


def rss_kb(field: str) -> int | None:
  """VmRSS / VmHWM of this process in KiB from /proc/self/status, None elsewhere."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False
