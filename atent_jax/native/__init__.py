"""Native CPU kernels, compiled from this package's C++ source on first use (XLA FFI).

One kernel today: the weight gradient of a stride-1 VALID convolution in float32
(`conv_dw.cc`: AVX2/FMA register blocks, one example at a time so its tiles stay in cache;
about twice as fast as the best XLA formulation on SmallCNN's layers, results/benchmark_cpu).

Nothing is built at install time, so `pip install -e .` stays one command: the first call of
`conv_dw_available()` in a process compiles `conv_dw.cc` with the system C++ compiler
(`$CXX`, else g++ / c++) and `-march=native` into a cache folder
(`$ATENT_JAX_CACHE`, else `~/.cache/atent_jax`), keyed by the source, the compiler, jaxlib's
version and this CPU, so a second process (or a second machine of another kind sharing the
home folder) never loads a library built for other hardware. The file appears by an atomic
rename, so concurrent first uses are safe. Where no compiler works, or with
ATENT_JAX_NO_NATIVE=1, `conv_dw_available()` is False and the caller keeps its XLA path
(`atent_jax.ops` falls back by itself); `build_error()` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import numpy as np

__all__ = ["conv_dw", "conv_dw_available", "build_error", "library_path"]

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_dw.cc")
_TARGET = "atent_jax_conv_dw_f32"
_FLAGS = ("-std=c++17", "-O3", "-march=native", "-fPIC", "-shared")
_BUILD_TIMEOUT_S = 300

_lock = threading.Lock()
_state: dict = {}  # "ok": bool, "error": str | None, "path": str | None, "lib": CDLL


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_signature() -> str:
  """What -march=native depends on: the CPU model and its feature flags."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def _cache_dir() -> str:
  return os.environ.get("ATENT_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "atent_jax")


def _build(compiler: str) -> str:
  """Path of the compiled library, building it if the cache has none for this key."""
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           timeout=60).stdout.splitlines()[:1]
  with open(_SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join([
      source, " ".join(_FLAGS).encode(), "".join(version).encode(),
      jax.__version__.encode(), _cpu_signature().encode()])).hexdigest()[:16]
  folder = _cache_dir()
  path = os.path.join(folder, f"conv_dw-{key}.so")
  if os.path.exists(path):
    return path
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
  os.close(fd)
  try:
    done = subprocess.run([compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", _SOURCE, "-o", tmp],
                          capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
    if done.returncode != 0:
      raise RuntimeError(f"{os.path.basename(compiler)} failed: {done.stderr.strip()[-500:]}")
    os.replace(tmp, path)  # atomic: a concurrent process sees no half-written file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _load() -> None:
  if os.environ.get("ATENT_JAX_NO_NATIVE", "") == "1":
    _state.update(ok=False, error="disabled by ATENT_JAX_NO_NATIVE=1", path=None)
    return
  compiler = _compiler()
  if compiler is None:
    _state.update(ok=False, error="no C++ compiler found ($CXX, g++, c++)", path=None)
    return
  try:
    path = _build(compiler)
    lib = ctypes.cdll.LoadLibrary(path)
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.ConvDwF32), platform="cpu")
  except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
    _state.update(ok=False, error=f"{type(e).__name__}: {e}", path=None)
    logging.getLogger("atent_jax").warning(
        "atent_jax: the native conv weight-gradient kernel is not available (%s); using the "
        "XLA formulation instead", _state["error"])
    return
  _state.update(ok=True, error=None, path=path, lib=lib)


def conv_dw_available() -> bool:
  """True when the native kernel is built and registered in this process (builds it once)."""
  with _lock:
    if not _state:
      _load()
    return _state["ok"]


def build_error() -> str | None:
  """Why the native kernel is not available (None when it is, or before the first try)."""
  return _state.get("error")


def library_path() -> str | None:
  """The compiled library this process loaded (None when not available)."""
  return _state.get("path")


def conv_dw(x: jax.Array, dy: jax.Array, kh: int, kw: int) -> jax.Array:
  """dW[i, j, ci, co] = sum_{n,h,w} x[n, h+i, w+j, ci] dy[n, h, w, co] (float32, CPU).

  x (N, H, W, Cin) already padded, dy (N, H-kh+1, W-kw+1, Cout) -> (kh, kw, Cin, Cout).
  Works under jit and vmap (extra leading axes are independent problems, done in one call).
  Call `conv_dw_available()` first.
  """
  if not conv_dw_available():
    raise RuntimeError(f"the native conv_dw kernel is not available: {build_error()}")
  if x.dtype != np.float32 or dy.dtype != np.float32:
    raise TypeError(f"conv_dw takes float32, got {x.dtype} and {dy.dtype}")
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[-1], dy.shape[-1]), np.float32)
  return jax.ffi.ffi_call(_TARGET, out, vmap_method="broadcast_all")(x, dy)
