"""atent_jax.interop: a JAX classifier as a torch.nn.Module (forward in JAX, backward by jax.vjp).

The expectations come from JAX itself (jax.grad of the same function, computed here) and from a
closed form (the input gradient of a linear model is its weight row), never from the bridge.
"""

import importlib
import re
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from atent_jax import interop


class _Conv(nn.Module):
  """A small conv net whose output depends on the NHWC layout (3 channels, non-square)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(5)(x)


@pytest.fixture(scope="module")
def conv_model():
  model = _Conv()
  x = jax.random.uniform(jax.random.PRNGKey(1), (6, 7, 5, 3))   # N, H, W, C
  params = model.init(jax.random.PRNGKey(0), x)
  return (lambda v: model.apply(params, v)), np.asarray(x)


def _nchw(x):
  return torch.tensor(np.transpose(x, (0, 3, 1, 2)))


def test_forward_equals_jax_on_nchw_input(conv_model):
  logits_fn, x = conv_model
  module = interop.torch_module(logits_fn)
  assert isinstance(module, torch.nn.Module)
  with torch.no_grad():
    out = module(_nchw(x))
  assert out.dtype == torch.float32 and tuple(out.shape) == (6, 5)
  np.testing.assert_allclose(out.numpy(), np.asarray(logits_fn(jnp.asarray(x))), rtol=1e-5,
                             atol=1e-6)


def test_input_gradient_equals_jax_grad(conv_model):
  logits_fn, x = conv_model
  y = np.array([0, 1, 2, 3, 4, 0])
  module = interop.torch_module(logits_fn)
  xt = _nchw(x).requires_grad_(True)
  loss = torch.nn.functional.cross_entropy(module(xt), torch.tensor(y), reduction="sum")
  (g_torch,) = torch.autograd.grad(loss, xt)
  chex.assert_shape(g_torch.numpy(), (6, 3, 7, 5))
  g_jax = jax.grad(lambda v: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
      logits_fn(v), jnp.asarray(y))))(jnp.asarray(x))
  np.testing.assert_allclose(np.transpose(g_torch.numpy(), (0, 2, 3, 1)), np.asarray(g_jax),
                             rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g_jax)).max() > 1e-3  # a gradient worth comparing


def test_vector_jacobian_product_of_a_linear_model_is_its_weights():
  """logits = x W: d(sum_k c_k z_k)/dx = W c, whatever the cotangent c."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(2 * 3 * 4, 7)).astype(np.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w)
  module = interop.torch_module(logits_fn)
  x = rng.uniform(size=(2, 2, 3, 4)).astype(np.float32)   # NHWC
  c = rng.normal(size=(2, 7)).astype(np.float32)
  xt = _nchw(x).requires_grad_(True)
  module(xt).backward(torch.tensor(c))
  want = (c @ w.T).reshape(2, 2, 3, 4)                    # NHWC
  np.testing.assert_allclose(np.transpose(xt.grad.numpy(), (0, 2, 3, 1)), want, rtol=1e-5,
                             atol=1e-6)


def test_two_dimensional_inputs_pass_through_and_double_is_cast():
  w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
  module = interop.torch_module(lambda v: v @ jnp.asarray(w))
  x = torch.ones(5, 4, dtype=torch.float64, requires_grad=True)
  out = module(x)
  assert out.dtype == torch.float32
  np.testing.assert_allclose(out.detach().numpy(), np.ones((5, 4)) @ w, rtol=1e-6)
  out.sum().backward()
  assert x.grad.dtype == torch.float64   # autograd casts back to the input's dtype
  np.testing.assert_allclose(x.grad.numpy(), np.tile(w.sum(1), (5, 1)), rtol=1e-6)


def test_libraries_find_a_device_and_bad_inputs_raise():
  module = interop.torch_module(lambda v: v.reshape(v.shape[0], -1))
  assert next(module.parameters()).device.type == "cpu"   # torchattacks reads it
  with pytest.raises(ValueError, match="x of shape"):
    module(torch.zeros(3))
  with pytest.raises(ValueError, match="logits_fn"):
    interop.torch_module("not a function")


def test_missing_torch_names_the_extra_to_install(monkeypatch):
  """Imported afresh in this process with `import torch` failing (sys.modules['torch'] = None,
  as in an environment without PyTorch); sys.modules is restored afterwards."""
  monkeypatch.setitem(sys.modules, "torch", None)
  monkeypatch.delitem(sys.modules, "atent_jax.interop")
  with pytest.raises(ImportError, match=re.escape('pip install -e ".[interop]"')):
    importlib.import_module("atent_jax.interop")
  assert "atent_jax.interop" not in sys.modules
