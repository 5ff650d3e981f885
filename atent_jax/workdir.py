"""Workdir safety, checked before any training: writable, with room, used by one run at a time.

* `check_location(workdir)`: read-only checks (the path is not a file, no parent is a file).
* `prepare(workdir, need_bytes)`: creates the folder, writes and fsyncs a probe file, and checks
  the free space against an estimate of what the run will write.
* `RunLock(workdir)`: WORKDIR/.lock holds the pid and host of the run using the workdir. A
  second run refuses to start. A lock left by a run that died (e.g. `kill -9`) is taken over with
  a warning: on POSIX the lock is also an `fcntl.flock`, which the kernel releases when the
  process dies, so a live holder on this host is never mistaken for a dead one; without flock
  (or on another host) the pid is checked.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time

import ml_collections

from atent_jax.errors import CheckpointError, WorkdirError, warn

try:
  import fcntl
except ImportError:  # pragma: no cover - Windows
  fcntl = None

LOCK_NAME = ".lock"
# A finished run whose checkpoints were replaced by its best weights alone (runs.keep_weights).
KEPT_WEIGHTS = "kept_weights"
_PROBE_BYTES = 64 * 1024


def _why(e: OSError) -> str:
  return e.strerror or str(e)


def check_location(workdir: str) -> None:
  """Fails early, without writing anything, when `workdir` can never be a folder."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a folder: pick another workdir")
  parent = os.path.dirname(os.path.abspath(workdir))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise WorkdirError(f"--workdir={workdir} cannot be created: {parent} is a file")


def prepare(workdir: str, need_bytes: int = 0) -> None:
  """Creates `workdir`, checks that it takes writes and has `need_bytes` free."""
  check_location(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} cannot be created ({_why(e)}): pick a writable "
                       "folder") from None
  probe = os.path.join(workdir, f".write_probe.{os.getpid()}")
  try:
    with open(probe, "wb") as f:
      f.write(b"\0" * _PROBE_BYTES)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    raise WorkdirError(f"--workdir={workdir} is {'full' if full else 'not writable'} "
                       f"({_why(e)}): " + ("free some space" if full else "pick a writable folder")
                       ) from None
  finally:
    try:
      os.remove(probe)
    except OSError:
      pass
  free = shutil.disk_usage(workdir).free
  if need_bytes and free < need_bytes:
    raise WorkdirError(f"--workdir={workdir} has {free / 2**20:.1f} MiB free but the run needs "
                       f"about {need_bytes / 2**20:.1f} MiB (checkpoints): free some space or "
                       "lower config.train.keep_checkpoints")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class RunLock:
  """WORKDIR/.lock: one run per workdir (see the module docstring). `name` gives another file
  in the folder the same protection (one chunk of an evaluation per process)."""

  def __init__(self, workdir: str, name: str = LOCK_NAME):
    self.workdir = workdir
    self.path = os.path.join(workdir, name)
    self._fd: int | None = None

  def _read_holder(self, fd: int) -> dict:
    try:
      os.lseek(fd, 0, os.SEEK_SET)
      data = os.read(fd, 4096)
      return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
      return {}

  def _refuse(self, holder: dict) -> None:
    who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
           f"{holder.get('started', '?')}")
    raise WorkdirError(f"--workdir={self.workdir} is in use by another run ({who}): wait for it "
                       f"or pick another workdir; if no run uses it, delete {self.path}")

  def acquire(self) -> RunLock:
    host = socket.gethostname()
    for _ in range(10):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      flocked = False
      if fcntl is not None:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
          flocked = True
        except OSError:
          holder = self._read_holder(fd)
          os.close(fd)
          self._refuse(holder)
        # The file may have been removed by its previous holder between open and flock.
        try:
          same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
          same = False
        if not same:
          os.close(fd)
          continue
      holder = self._read_holder(fd)
      pid = holder.get("pid")
      if holder and pid != os.getpid():
        if holder.get("host") != host:
          os.close(fd)
          self._refuse(holder)
        if not flocked and isinstance(pid, int) and _pid_alive(pid):
          os.close(fd)
          self._refuse(holder)
        warn(f"took over the stale lock {self.path} of pid {pid} on host {host} (that run is "
             "no longer running; it was interrupted and this run resumes it)")
      record = {"pid": os.getpid(), "host": host,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(record).encode())
      os.fsync(fd)
      self._fd = fd
      return self
    raise WorkdirError(f"could not lock {self.path}: it keeps changing; is another run starting?")

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except OSError:
      pass
    os.close(self._fd)  # also releases the flock
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def write_json(path: str, obj, **dump_kwargs) -> None:
  """Writes `obj` as JSON to `path` atomically (a temporary file, fsync, rename): a reader or a
  killed run never sees half a file. dump_kwargs go to json.dump (default: indent=2)."""
  dump_kwargs.setdefault("indent", 2)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, **dump_kwargs)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, from its config.json (JSON only: loading never executes code)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir} holds no config.json: pass the workdir of a training run "
                          "(experiments/main.py --workdir=...)")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except ValueError as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    raise CheckpointError(f"{path} is corrupt ({first}): restore it from the run's log or "
                          "rerun") from None
