"""A JAX classifier as a PyTorch module, so PyTorch attack libraries run unchanged on our models.

    import atent_jax, torchattacks
    from atent_jax import interop
    module = interop.torch_module(atent_jax.load_classifier("runs/mnist_linf"))
    attack = torchattacks.AutoAttack(module, norm="Linf", eps=0.3, n_classes=10, seed=0)
    adv = attack(images_nchw, labels)          # torch tensors, images in [0, 1]

The module takes NCHW float32 tensors (PyTorch's layout; 2-D (batch, features) inputs pass
through unchanged), runs the forward pass in JAX on the NHWC transpose and returns the logits as
a float32 tensor on the input's device. Its backward pass is JAX's: `jax.vjp` of the same
function, through a `torch.autograd.Function`, so input gradients are exactly `jax.grad`'s.

PyTorch is an optional dependency: `pip install -e ".[interop]"`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

try:
  import torch
except ImportError as e:  # torch is an optional extra
  raise ImportError('atent_jax.interop needs PyTorch: install it with pip install -e ".[interop]" '
                    "(the CPU build pinned in setup.cfg)") from e

LogitsFn = Callable[[jax.Array], jax.Array]


def _to_jax_layout(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _to_torch_layout(g: np.ndarray) -> np.ndarray:
  return np.transpose(g, (0, 3, 1, 2)) if g.ndim == 4 else g


class _JaxFunction(torch.autograd.Function):
  """Forward in JAX; backward through the vjp the forward pass kept (no second forward)."""

  @staticmethod
  def forward(ctx, x, bridge):  # pylint: disable=arguments-differ
    x_np = _to_jax_layout(x.detach().cpu().numpy().astype(np.float32, copy=False))
    if ctx.needs_input_grad[0]:
      logits, vjp_fn = bridge.value_and_vjp(x_np)
      ctx.vjp_fn = vjp_fn
    else:
      logits = bridge.forward(x_np)
    return torch.from_numpy(np.array(logits, np.float32)).to(x.device)

  @staticmethod
  def backward(ctx, grad_logits):  # pylint: disable=arguments-differ
    cotangent = grad_logits.detach().cpu().numpy().astype(np.float32, copy=False)
    (g,) = ctx.vjp_fn(jnp.asarray(cotangent))
    ctx.vjp_fn = None  # free the residuals
    grad = torch.from_numpy(np.array(_to_torch_layout(np.asarray(g)), np.float32))
    return grad.to(grad_logits.device), None


class _Bridge:
  """The jitted JAX side: plain forward, and forward that also returns the pullback."""

  def __init__(self, logits_fn: LogitsFn):
    self.forward = jax.jit(logits_fn)
    # jax.vjp of a jitted function runs the forward once (keeping residuals) and compiles the
    # backward; both are cached per input shape.
    self.value_and_vjp = lambda x: jax.vjp(self.forward, jnp.asarray(x))


class JaxClassifier(torch.nn.Module):
  """A `torch.nn.Module` whose forward pass is a JAX `logits_fn` (see the module docstring)."""

  def __init__(self, logits_fn: LogitsFn):
    super().__init__()
    if not callable(logits_fn):  # a ValueError, as every bad argument in atent_jax
      raise ValueError(  # noqa: TRY004
          f"logits_fn={logits_fn!r} is not callable: pass logits_fn(x) -> logits, e.g. "
          "atent_jax.load_classifier(workdir)")
    self.logits_fn = logits_fn
    self._bridge = _Bridge(logits_fn)
    # Libraries (torchattacks, ART) read the model's device from its first parameter: an empty
    # one answers for the CPU, where the bridge hands tensors back.
    self.device_anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # pylint: disable=arguments-differ
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 4):
      shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
      raise ValueError(f"x of shape {shape} is not valid: use a tensor of shape (N, C, H, W) "
                       "or (N, features)")
    return _JaxFunction.apply(x.float() if x.dtype != torch.float32 else x, self._bridge)


def torch_module(logits_fn: LogitsFn) -> JaxClassifier:
  """Wraps `logits_fn(x_nhwc) -> logits` (any atent_jax model in eval mode, e.g.
  `atent_jax.load_classifier(workdir)`) as a `torch.nn.Module` taking NCHW float32 tensors."""
  return JaxClassifier(logits_fn)
