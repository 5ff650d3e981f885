"""atent_jax.interop pads a batch to the next power of two, so that a PyTorch attack shrinking
its batch (torchattacks' APGD-T, FAB and Square attack the points still robust) does not compile
the JAX model again for every batch size; the padding must not change the logits or gradients.
The expectations are JAX's own, on the unpadded batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from atent_jax import interop

_W = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)


_TRACED = []  # the batch shapes JAX traced the model at (once per shape it compiles)


def _reference(x):  # per example, non-linear: a padded row could only change others by a bug
  return jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.asarray(_W)) * 3.0


def _logits(x):  # the model the bridge sees: the reference, recording the shapes JAX traces
  if isinstance(x, jax.core.Tracer):
    _TRACED.append(x.shape)
  return _reference(x)


def test_padded_sizes():
  assert [interop.padded_size(n) for n in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 16, 128]


def test_shrinking_batches_compile_once_and_keep_logits_and_gradients():
  module = interop.torch_module(_logits)
  _TRACED.clear()
  x = np.random.default_rng(1).uniform(size=(8, 2, 2, 3)).astype(np.float32)  # NHWC
  for n in (8, 7, 6, 5):
    xt = torch.tensor(np.transpose(x[:n], (0, 3, 1, 2))).requires_grad_(True)
    out = module(xt)
    with torch.no_grad():
      np.testing.assert_array_equal(module(xt).numpy(), out.detach().numpy())  # forward only
    np.testing.assert_allclose(out.detach().numpy(), np.asarray(_reference(x[:n])), rtol=1e-6)
    (g,) = torch.autograd.grad(out[:, 1].sum(), xt)
    want = jax.grad(lambda v: _reference(v)[:, 1].sum())(jnp.asarray(x[:n]))
    np.testing.assert_allclose(np.transpose(g.numpy(), (0, 2, 3, 1)), np.asarray(want),
                               rtol=1e-5, atol=1e-7)
  assert set(_TRACED) == {(8, 2, 2, 3)}, _TRACED  # one padded size served all four
