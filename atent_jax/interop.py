"""A JAX classifier as a PyTorch module, so PyTorch attack libraries run unchanged on our models.

    import atent_jax, torchattacks
    from atent_jax import interop
    module = interop.torch_module(atent_jax.load_classifier("runs/mnist_linf"))
    attack = torchattacks.AutoAttack(module, norm="Linf", eps=0.3, n_classes=10, seed=0)
    adv = attack(images_nchw, labels)          # torch tensors, images in [0, 1]

The module takes NCHW float32 tensors (PyTorch's layout; 2-D (batch, features) inputs pass
through unchanged), runs the forward pass in JAX on the NHWC transpose and returns the logits as
a float32 tensor on the input's device. Its backward pass is JAX's: `jax.vjp` of the same
function, through a `torch.autograd.Function`, so input gradients are `jax.grad`'s. Batches run
padded with zero images to the next power of two (`padded_size`), so that an attack shrinking
its batch does not compile the model again for every size; the model must treat examples
independently (any atent_jax model in eval mode does).

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
    (g,) = ctx.vjp_fn(cotangent)
    ctx.vjp_fn = None  # free the residuals
    grad = torch.from_numpy(np.array(_to_torch_layout(np.asarray(g)), np.float32))
    return grad.to(grad_logits.device), None


def padded_size(n: int) -> int:
  """The batch size the bridge runs a batch of n at: the next power of two. PyTorch attacks
  (torchattacks' APGD-T, FAB, Square) attack ever smaller subsets of a batch; at its own size
  each subset would compile the forward and backward passes again, at a power of two a batch
  of 100 needs at most 8 sizes."""
  return 1 << max(0, (n - 1).bit_length())


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


class _Bridge:
  """The jitted JAX side: plain forward, and forward that also returns the pullback. Batches
  run padded with zero images to padded_size (the rows added are dropped from the logits and
  get a zero cotangent), which is exact for a model that treats examples independently: any of
  our models in eval mode."""

  def __init__(self, logits_fn: LogitsFn):
    self.jitted = jax.jit(logits_fn)

  def forward(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(self.jitted(_pad(x, padded_size(len(x)))))[:len(x)]

  def value_and_vjp(self, x: np.ndarray):
    # jax.vjp of a jitted function runs the forward once (keeping residuals) and compiles the
    # backward; both are cached per (padded) input shape.
    n = len(x)
    logits, vjp_fn = jax.vjp(self.jitted, jnp.asarray(_pad(x, padded_size(n))))

    def pullback(cotangent):
      (g,) = vjp_fn(jnp.asarray(_pad(np.asarray(cotangent, np.float32), logits.shape[0])))
      return (np.asarray(g)[:n],)

    return np.asarray(logits)[:n], pullback


class JaxClassifier(torch.nn.Module):
  """A `torch.nn.Module` whose forward pass is a JAX `logits_fn` (see the module docstring)."""

  def __init__(self, logits_fn: LogitsFn):
    super().__init__()
    if not callable(logits_fn):  # a ValueError, as every bad argument in atent_jax
      raise ValueError(  # noqa: TRY004
          f"logits_fn={logits_fn!r} is not callable: pass logits_fn(x) -> logits, e.g. "
          "atent_jax.load_classifier(workdir)")
    self.logits_fn = logits_fn
    self.bridge = _Bridge(logits_fn)
    # Libraries (torchattacks, ART) read the model's device from its first parameter: an empty
    # one answers for the CPU, where the bridge hands tensors back.
    self.device_anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # pylint: disable=arguments-differ
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 4):
      shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
      raise ValueError(f"x of shape {shape} is not valid: use a tensor of shape (N, C, H, W) "
                       "or (N, features)")
    return _JaxFunction.apply(x.float() if x.dtype != torch.float32 else x, self.bridge)


def torch_module(logits_fn: LogitsFn) -> JaxClassifier:
  """Wraps `logits_fn(x_nhwc) -> logits` (any atent_jax model in eval mode, e.g.
  `atent_jax.load_classifier(workdir)`) as a `torch.nn.Module` taking NCHW float32 tensors."""
  return JaxClassifier(logits_fn)
