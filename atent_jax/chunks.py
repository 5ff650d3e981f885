"""Long work split into chunks that survive a kill and can be shared by several processes.

Each chunk (START, STOP) of a plan is computed by one process and written, as it finishes, to
DIR/START-STOP.json (a temporary file renamed, so a file is either absent or complete) together
with the settings it was computed with. A rerun reads the chunks on disk back instead of
computing them again; a chunk written with other settings is a ConfigError naming the first
field that differs. While a process computes a chunk it holds DIR/START-STOP.lock (a flock the
kernel frees if the process dies), so processes running the same command at once (e.g. one per
core) each take the next chunk nobody holds. experiments/evaluate.py --chunk_size and
experiments/crosscheck_autoattack.py are built on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from atent_jax.errors import ConfigError, WorkdirError
from atent_jax.workdir import RunLock

CHUNK_FILE = re.compile(r"^(\d+)-(\d+)\.json$")

Chunk = tuple[int, int]


def plan(n: int, size: int) -> list[Chunk]:
  """[(0, size), (size, 2 size), ...] covering n items."""
  return [(a, min(a + size, n)) for a in range(0, n, size)]


def chunk_path(chunk_dir: str, a: int, b: int) -> str:
  return os.path.join(chunk_dir, f"{a:06d}-{b:06d}.json")


def write_atomically(path: str, text: str) -> None:
  """A file that is either absent or complete, even when the process is killed mid-write."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def sha1_of(*arrays) -> str:
  h = hashlib.sha1()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def examples_of(images, labels, a: int, b: int) -> dict:
  """What identifies examples [a, b) of a chunk: their range and checksums of their images and
  labels (part of its settings, so a chunk of other data is refused)."""
  return {"start": a, "stop": b, "images_sha1": sha1_of(images[a:b]),
          "labels_sha1": sha1_of(np.asarray(labels[a:b], np.int32))}


def as_json(value):
  """value as it reads back from a JSON file (tuples become lists, objects strings)."""
  return json.loads(json.dumps(value, default=str))


def first_difference(want, have, path=""):
  """(field path, this command's value, the chunk's value) of the first field that differs, or
  None. Lists of dicts of another length show their names."""
  if isinstance(want, dict) and isinstance(have, dict):
    for k in [*want, *(k for k in have if k not in want)]:
      sub = f"{path}.{k}" if path else k
      if k not in want or k not in have:
        return sub, want.get(k, "(absent)"), have.get(k, "(absent)")
      found = first_difference(want[k], have[k], sub)
      if found:
        return found
    return None
  if isinstance(want, list) and isinstance(have, list):
    if len(want) != len(have):
      names = lambda xs: [x["name"] if isinstance(x, dict) and "name" in x else x for x in xs]
      return path, names(want), names(have)
    for i, (a, b) in enumerate(zip(want, have, strict=True)):
      found = first_difference(a, b, f"{path}[{i}]")
      if found:
        return found
    return None
  return None if want == have else (path, want, have)


def read_chunk(path: str, settings: dict) -> Any:
  """A chunk file's result; ConfigError naming the first field that differs from settings."""
  try:
    with open(path) as f:
      chunk = json.load(f)
    have = chunk["settings"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"{path} is not a readable chunk ({type(e).__name__}: {e}): delete it to "
                      "compute its examples again") from None
  found = first_difference(as_json(settings), have)
  if found:
    field, want, got = found
    raise ConfigError(
        f"{path} was written with {field}={got!r}, this command has {want!r}: rerun with that "
        f"chunk's settings, or delete {os.path.dirname(path)} to start over")
  return chunk["result"]


def foreign_files(chunk_dir: str, chunks: Sequence[Chunk]) -> list[str]:
  """Chunk files in chunk_dir that are not chunks of this plan (another chunk size or count)."""
  names = os.listdir(chunk_dir) if os.path.isdir(chunk_dir) else []
  return [f for f in names if CHUNK_FILE.match(f)
          and tuple(map(int, CHUNK_FILE.match(f).groups())) not in chunks]


def run(chunk_dir: str, chunks: Sequence[Chunk], settings_of: Callable[[int, int], dict],
        compute: Callable[[int, int], Any], *,
        on_written: Callable[[int, Chunk, float, dict], bool | None] | None = None) -> dict:
  """Computes every chunk of `chunks` that is neither on disk nor held by another process.

  settings_of(a, b): what chunk (a, b)'s result depends on (compared with a file on disk before
  anything runs, so a mismatch costs no compute). compute(a, b): its result, JSON-serialisable.
  on_written(index, chunk, seconds, done): called after each chunk this process wrote; True
  stops the loop (e.g. a time budget spent). Returns {chunk: result} for every chunk on disk at
  the end, which lacks those other processes still hold and those left after a stop.
  """
  done: dict[Chunk, Any] = {}

  def read_new():
    for c in chunks:
      if c not in done and os.path.exists(chunk_path(chunk_dir, *c)):
        done[c] = read_chunk(chunk_path(chunk_dir, *c), settings_of(*c))

  read_new()
  for i, c in enumerate(chunks):
    read_new()
    if c in done:
      continue
    os.makedirs(chunk_dir, exist_ok=True)
    lock = RunLock(chunk_dir, name=f"{c[0]:06d}-{c[1]:06d}.lock")
    try:
      lock.acquire()
    except WorkdirError:  # another live process computes it
      continue
    try:
      read_new()  # finished between our look and the lock
      if c in done:
        continue
      t0 = time.time()
      result = as_json(compute(*c))
      write_atomically(chunk_path(chunk_dir, *c),
                       json.dumps({"settings": as_json(settings_of(*c)), "result": result},
                                  indent=1))
    finally:
      lock.release()
    done[c] = result
    if on_written is not None and on_written(i, c, time.time() - t0, done):
      return done
  read_new()
  return done
