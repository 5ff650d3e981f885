"""The CPU speed flags that atent_jax adds to XLA_FLAGS must never change a result.

Found on jaxlib 0.10.2: with YNNPACK's "eltwise" fusion, a jitted `relu(h) @ W` whose W is a
uniform constant baked into the program (a freshly initialised SmallCNN's zero last layer,
closed over by an attack) returned NaN or 1e35. The expectations here are plain NumPy.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quick_compile

import atent_jax  # noqa: F401  (sets the flags before the first backend is created)
from atent_jax.models.mnist import SmallCNN


@pytest.mark.parametrize("fill", [0.0, 1e-3])
@pytest.mark.parametrize("activation", ["relu", "tanh", "square"])
def test_jitted_dot_with_a_uniform_constant_matches_numpy(fill, activation):
  h = np.random.default_rng(0).normal(size=(128, 200)).astype(np.float32)
  w = np.full((200, 10), fill, np.float32)
  numpy_act = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh, "square": np.square}
  jax_act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "square": jnp.square}
  expected = numpy_act[activation](h.astype(np.float64)) @ w.astype(np.float64)
  weights = jnp.asarray(w)
  out = jax.jit(lambda a: jax_act[activation](a) @ weights)(jnp.asarray(h))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_a_fresh_small_cnn_closed_over_by_jit_gives_zero_logits():
  """SmallCNN's last layer starts at zero, so every logit is exactly 0 whatever the input."""
  model = SmallCNN()
  x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (128, 28, 28, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  logits = jax.jit(lambda batch: model.apply(variables, batch, train=False))(x)
  assert logits.shape == (128, 10)
  np.testing.assert_array_equal(np.asarray(logits), 0.0)



def test_these_checks_pass_at_the_optimisation_level_users_run():
  """tests/conftest.py compiles at LLVM level 1 for speed (tests/quick_compile.py); users'
  programs are compiled at the default level, where the YNNPACK fault above was found. So the
  checks of this file run again in a fresh process without the test setting."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  if quick_compile.FLAG not in flags:
    pytest.skip("this process already compiles at the default level")
  env = dict(os.environ, ATENT_JAX_TEST_FULL_OPT="1",
             XLA_FLAGS=quick_compile.without_flag(" ".join(flags)))
  done = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
       os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  assert "7 passed, 1 skipped" in done.stdout, done.stdout[-2000:]
