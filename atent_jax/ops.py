"""Fast CPU building blocks: a stride-1 2-D convolution with a cheaper weight gradient, a
reshape-based 2x2 max-pool, and a `flax.linen` Conv module that uses them.

Why: on XLA:CPU the weight gradient (dW) of a convolution is the bottleneck of training small
CNNs (for SmallCNN's 32->32 3x3 conv on 26x26 maps, XLA's own dW takes 148-158 ms of CPU at
batch 128). `conv2d` keeps the input gradient (dX) exactly as XLA does it and computes dW as
    dW[i, j] = sum_{n,h,w} xpad[n, h+i, w+j, :]^T dy[n, h, w, :]
by one of `DW_KERNEL`'s formulations: by default the C++ kernel of `atent_jax.native` (float32
on CPU: 15.5 ms for that layer), else per chunk of `chunk` examples in a `lax.scan`, one im2col
matmul each (33 ms). results/benchmark_cpu/README.md has the measurements.

`forward="im2col"` also replaces the forward convolution (not dX) by blocked im2col: patches of
`IM2COL_BLOCK` examples at a time, one matmul per block. XLA:CPU's own forward is slow for
some shapes (SmallCNN's conv2, 26x26 32->32: 96-104 ms of CPU at batch 128, against 30-37 ms;
results/benchmark_cpu/README.md) and at par or faster for others, so it is chosen per layer.
Under `jax.vmap` (the sampler and PGD run per example) a `custom_vmap` rule folds the mapped
axis into the batch, so the blocks stay blocks. Same maths, a different float32 summation
order than XLA's conv.

Limits (documented, by design):
  * stride 1, no dilation, no feature groups; NHWC input, HWIO kernel.
  * `conv2d` is a `jax.custom_vjp`: reverse mode (jax.grad, jax.vjp) works, also under jit and
    vmap; forward mode (jax.jvp, jax.jacfwd, hessian-vector products, grad of grad) does NOT.
    Use `impl="xla"` (or `set_conv_impl("xla")`) where higher-order derivatives are needed.
  * On non-CPU backends the plain XLA conv is used by default (`impl="auto"`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from atent_jax import native

__all__ = [
    "conv2d", "conv2d_xla", "max_pool_2x2", "Conv", "set_conv_impl", "get_conv_impl", "dx_kernel",
    "DEFAULT_CHUNK", "pytorch_conv_kernel_init", "pytorch_bias_init",
]

PaddingLike = str | int | Sequence[int] | Sequence[Sequence[int]]

# Examples per piece of the XLA dW formulations ("im2col", "shift"; the native kernel works one
# example at a time by itself). 2 since 2026-12-07: whole SmallCNN steps, batch 128, CPU time,
# against 8 (chosen in 2026-11 with a since-withdrawn YNNPACK fusion): SGD 0.90x, ATENT K 10
# 0.96x (results/benchmark_cpu/dw_chunk_ab.py).
DEFAULT_CHUNK = 2
# lax.scan unroll factor of the dW accumulation loop (2 did not help in the full model, 4 hurt).
SCAN_UNROLL = 1
# Examples per block of the im2col forward (results/benchmark_cpu/conv_forward.py: 2 was the
# fastest for SmallCNN's conv2 on a 2-core AMD EPYC, 4 close, 16 much slower).
IM2COL_BLOCK = 2
# How dW is computed (read when the gradient is traced; results/benchmark_cpu/README.md):
#   "native": the C++ kernel of atent_jax.native (float32 on CPU; about 2x "im2col");
#   "im2col": per chunk of examples, one patches^T dy matmul;
#   "shift": per chunk, kh*kw shifted-slice contractions;
#   "auto" (default): "native" where it applies and builds, else "im2col".
DW_KERNEL = "auto"
_DW_KERNELS = ("auto", "native", "im2col", "shift")
# How dX is computed (read when the gradient is traced): "xla" (default), XLA's transpose of its
# own conv; "im2col", for the layers whose forward is im2col, the same blocked im2col applied to
# dy and the flipped kernel. Measured both ways (results/benchmark_cpu/dx_ab.py): "im2col" makes
# an exact ATENT step about 0.75x, because XLA:CPU runs one of its conv2 transposes there through
# a slow path (726 ms of a 1.1 s PGD-AT K 1 step), but attacks on a fixed model 1.1-1.2x slower.
# So the default stays "xla". With "im2col" in the fused ATENT step alone (`dx_kernel`), the
# interleaved benchmark gave 0.77x the optimised PyTorch step at K 10 (xla: 0.97-0.99x) but
# 0.77-0.80x at K 40 (xla: 0.73-0.78x): a trade by K, not adopted.
# "conv" (not the default yet): the same conv XLA builds when it materialises the flipped
# kernel (b01f_01io); XLA's slow call sites were those where it left the kernel reversed with
# in/out swapped by labels (b01f_01oi) instead (results/benchmark_cpu/README.md).
DX_KERNEL = "xla"
_DX_KERNELS = ("xla", "im2col", "conv")


@contextlib.contextmanager
def dx_kernel(name: str):
  """`DX_KERNEL = name` while the gradients of the block are traced (jit compiles what was
  traced, so the setting sticks to the program), e.g. around one method's gradient function."""
  global DX_KERNEL
  if name not in _DX_KERNELS:
    raise ValueError(f"dx kernel must be one of {_DX_KERNELS}, got {name!r}")
  previous, DX_KERNEL = DX_KERNEL, name
  try:
    yield
  finally:
    DX_KERNEL = previous
_FORWARDS = ("xla", "im2col")

_DN = ("NHWC", "HWIO", "NHWC")
_VALID_IMPLS = ("auto", "chunked", "xla")
_conv_impl = "auto"


def set_conv_impl(impl: str) -> None:
  """Sets the module-wide default implementation of `conv2d`.

  "auto" (default): the chunked custom-VJP conv on the 'cpu' backend, plain XLA elsewhere.
  "chunked": always the custom-VJP conv. "xla": always the plain `lax.conv_general_dilated`.
  """
  global _conv_impl
  if impl not in _VALID_IMPLS:
    raise ValueError(f"impl must be one of {_VALID_IMPLS}, got {impl!r}")
  _conv_impl = impl


def get_conv_impl() -> str:
  return _conv_impl


def _resolve_impl(impl: str | None) -> str:
  impl = _conv_impl if impl is None else impl
  if impl not in _VALID_IMPLS:
    raise ValueError(f"impl must be one of {_VALID_IMPLS}, got {impl!r}")
  if impl == "auto":
    return "chunked" if jax.default_backend() == "cpu" else "xla"
  return impl


def _explicit_padding(padding: PaddingLike,
                      kernel_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
  """Normalises padding to ((lo_h, hi_h), (lo_w, hi_w)) for a stride-1 conv."""
  if isinstance(padding, str):
    p = padding.upper()
    if p == "VALID":
      return ((0, 0), (0, 0))
    if p == "SAME":
      # XLA / flax convention for stride 1: total k-1, the extra one on the high side.
      return tuple(((k - 1) // 2, (k - 1) - (k - 1) // 2) for k in kernel_hw)
    raise ValueError(f"padding must be 'VALID', 'SAME', an int or pairs, got {padding!r}")
  if isinstance(padding, (int, np.integer)):
    p = int(padding)
    if p < 0:
      raise ValueError(f"padding must be >= 0, got {p}")
    return ((p, p), (p, p))
  padding = tuple(padding)
  if len(padding) != 2:
    raise ValueError(f"padding needs one entry per spatial dim (2), got {padding!r}")
  out = []
  for p in padding:
    if isinstance(p, (int, np.integer)):
      out.append((int(p), int(p)))
    else:
      lo, hi = p
      out.append((int(lo), int(hi)))
  if any(v < 0 for pair in out for v in pair):
    raise ValueError(f"negative padding is not supported, got {padding!r}")
  return tuple(out)


def conv2d_xla(x: jax.Array, kernel: jax.Array, *, padding: PaddingLike = "VALID") -> jax.Array:
  """The plain XLA convolution (stride 1, NHWC x HWIO), same padding rules as `conv2d`."""
  pads = _explicit_padding(padding, kernel.shape[:2])
  return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DN)


def _dw_piece(xp: jax.Array, dy: jax.Array, kh: int, kw: int, acc_dtype) -> jax.Array:
  """sum over the examples of xp/dy of the shifted-slice products: (kh, kw, cin, cout)."""
  ho, wo = dy.shape[1], dy.shape[2]
  rows = []
  for i in range(kh):
    cols = []
    for j in range(kw):
      xs = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + ho, j + wo, xp.shape[3]))
      cols.append(jnp.einsum("nhwc,nhwo->co", xs, dy, preferred_element_type=acc_dtype))
    rows.append(jnp.stack(cols))
  return jnp.stack(rows)


def _dw_piece_im2col(xp: jax.Array, dy: jax.Array, kh: int, kw: int, acc_dtype) -> jax.Array:
  """The same sum as `_dw_piece` as one matmul: the piece's im2col patches^T dy."""
  ho, wo = dy.shape[1], dy.shape[2]
  patches = jnp.concatenate([xp[:, i:i + ho, j:j + wo, :] for i in range(kh)
                             for j in range(kw)], -1)
  dw = jnp.einsum("nhwp,nhwo->po", patches, dy, preferred_element_type=acc_dtype)
  return dw.reshape((kh, kw, xp.shape[3], dy.shape[3]))


def _dw_kernel(x: jax.Array, dy: jax.Array) -> str:
  """The dW formulation DW_KERNEL asks for, "auto" resolved for these operands."""
  if DW_KERNEL not in _DW_KERNELS:
    raise ValueError(f"ops.DW_KERNEL must be one of {_DW_KERNELS}, got {DW_KERNEL!r}")
  applies = (x.dtype == jnp.float32 and dy.dtype == jnp.float32
             and jax.default_backend() == "cpu")
  if DW_KERNEL == "native":
    if not applies:
      raise ValueError(f"ops.DW_KERNEL='native' needs float32 operands on the CPU backend, got "
                       f"{x.dtype}/{dy.dtype} on {jax.default_backend()}: use 'auto'")
    if not native.conv_dw_available():
      raise RuntimeError(f"ops.DW_KERNEL='native': {native.build_error()}; use 'auto'")
    return "native"
  if DW_KERNEL == "auto":
    return "native" if applies and native.conv_dw_available() else "im2col"
  return DW_KERNEL


def _conv_dw(x: jax.Array, dy: jax.Array, kernel_shape, pads, chunk: int) -> jax.Array:
  """Weight gradient of the stride-1 conv, batch-chunked (see module docstring)."""
  kernel = _dw_kernel(x, dy)
  kh, kw, cin, cout = kernel_shape
  acc_dtype = jnp.promote_types(jnp.promote_types(x.dtype, dy.dtype), jnp.float32)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))) if any(v for p in pads for v in p) else x
  if kernel == "native":
    return native.conv_dw(xp, dy, kh, kw)
  piece = _dw_piece_im2col if kernel == "im2col" else _dw_piece
  n = x.shape[0]
  c = max(1, min(int(chunk), n))
  n_main = (n // c) * c
  dw = None
  if n_main:
    steps = n_main // c
    xs = xp[:n_main].reshape((steps, c) + xp.shape[1:])
    ys = dy[:n_main].reshape((steps, c) + dy.shape[1:])
    if steps == 1:
      dw = piece(xs[0], ys[0], kh, kw, acc_dtype)
    else:
      def body(acc, xy):
        return acc + piece(xy[0], xy[1], kh, kw, acc_dtype), None
      dw, _ = lax.scan(body, jnp.zeros((kh, kw, cin, cout), acc_dtype), (xs, ys),
                       unroll=max(1, min(SCAN_UNROLL, steps)))
  if n_main < n:
    rest = piece(xp[n_main:], dy[n_main:], kh, kw, acc_dtype)
    dw = rest if dw is None else dw + rest
  return dw


def _im2col_blocks(x: jax.Array, kernel: jax.Array, pads) -> jax.Array:
  """The stride-1 conv as blocked im2col: IM2COL_BLOCK examples' patches, one matmul each."""
  if any(v for p in pads for v in p):
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  n = x.shape[0]
  kh, kw, cin, cout = kernel.shape
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  weights = kernel.reshape(kh * kw * cin, cout)

  def one(xb):
    patches = jnp.concatenate([xb[:, i:i + ho, j:j + wo, :] for i in range(kh)
                               for j in range(kw)], -1)
    return jnp.matmul(patches, weights, preferred_element_type=jnp.promote_types(
        x.dtype, jnp.float32)).astype(jnp.result_type(x, kernel))

  block = IM2COL_BLOCK if n % IM2COL_BLOCK == 0 else 1
  out = lax.map(one, x.reshape((n // block, block) + x.shape[1:]))
  return out.reshape((n, ho, wo, cout))


def _make_im2col_forward(pads):
  @jax.custom_batching.custom_vmap
  def forward(x, kernel):
    return _im2col_blocks(x, kernel, pads)

  @forward.def_vmap
  def forward_batched(axis_size, in_batched, x, kernel):
    del axis_size
    x_batched, kernel_batched = in_batched
    if kernel_batched:  # a kernel per mapped element: nothing to fold, map the blocks
      return jax.vmap(lambda xx, kk: _im2col_blocks(xx, kk, pads),
                      (0 if x_batched else None, 0))(x, kernel), True
    if not x_batched:
      return _im2col_blocks(x, kernel, pads), False
    # vmap over examples of a batch of N: one batch of V * N examples, blocked as usual.
    v, n = x.shape[:2]
    y = _im2col_blocks(x.reshape((v * n,) + x.shape[2:]), kernel, pads)
    return y.reshape((v, n) + y.shape[1:]), True

  return forward


def _conv_dx(x: jax.Array, dy: jax.Array, kernel: jax.Array, pads, forward: str) -> jax.Array:
  """Input gradient of the stride-1 conv (see DX_KERNEL)."""
  if DX_KERNEL not in _DX_KERNELS:
    raise ValueError(f"ops.DX_KERNEL must be one of {_DX_KERNELS}, got {DX_KERNEL!r}")
  kh, kw = kernel.shape[:2]
  full = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
  explicit = DX_KERNEL == "conv" or (DX_KERNEL == "im2col" and forward == "im2col")
  if explicit and all(lo >= 0 and hi >= 0 for lo, hi in full):
    # dy (padded to 'full') correlated with the flipped kernel, in/out swapped: by the same
    # blocked im2col as the forward value, or as a plain NHWC x HWIO conv.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    if DX_KERNEL == "im2col":
      return _make_im2col_forward(full)(dy, flipped)
    return lax.conv_general_dilated(dy, flipped, (1, 1), full, dimension_numbers=_DN)
  # XLA's own transpose of its conv (the dead forward is removed by DCE).
  _, vjp_x = jax.vjp(
      lambda xx: lax.conv_general_dilated(xx, kernel, (1, 1), pads, dimension_numbers=_DN), x)
  return vjp_x(dy)[0]


def _make_chunked_conv(pads, chunk, forward="xla"):
  primal = (_make_im2col_forward(pads) if forward == "im2col" else
            lambda x, kernel: lax.conv_general_dilated(x, kernel, (1, 1), pads,
                                                       dimension_numbers=_DN))

  @jax.custom_vjp
  def f(x, kernel):
    return primal(x, kernel)

  def fwd(x, kernel):
    return f(x, kernel), (x, kernel)

  def bwd(res, dy):
    x, kernel = res
    dx = _conv_dx(x, dy, kernel, pads, forward)
    dw = _conv_dw(x, dy, kernel.shape, pads, chunk).astype(kernel.dtype)
    return dx, dw

  f.defvjp(fwd, bwd)
  return f


_CONV_CACHE: dict = {}


def conv2d(x: jax.Array, kernel: jax.Array, *, padding: PaddingLike = "VALID",
           impl: str | None = None, chunk: int | None = None,
           forward: str = "xla") -> jax.Array:
  """Stride-1 2-D convolution, NHWC input x HWIO kernel -> NHWC output (no bias).

  Args:
    x: (N, H, W, Cin) input; N may be 1 (e.g. under `jax.vmap` over single examples).
    kernel: (kh, kw, Cin, Cout).
    padding: 'VALID', 'SAME' (XLA convention), an int p (symmetric zero padding p, e.g. 2 for
      LeNet's 5x5 convs), or per-dim ints / (lo, hi) pairs.
    impl: None (module default, see `set_conv_impl`), "auto", "chunked" or "xla".
    chunk: examples per dW accumulation piece (default `DEFAULT_CHUNK`); any batch size works
      (the remainder is a separate piece).
    forward: "xla" (default) or "im2col": how the chunked conv computes its forward value
      (module docstring); ignored where the plain XLA conv is used (impl "xla", or "auto" off
      the CPU).

  The forward value (with forward="xla") and dX are XLA's; dW is the chunked shifted-slice sum
  (same maths, float32 accumulation). Reverse-mode only: no jvp / grad-of-grad with
  impl="chunked".
  """
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"conv2d expects NHWC x and HWIO kernel, got {x.shape} and {kernel.shape}")
  if x.shape[3] != kernel.shape[2]:
    raise ValueError(f"input channels {x.shape[3]} != kernel in-channels {kernel.shape[2]}")
  pads = _explicit_padding(padding, kernel.shape[:2])
  if forward not in _FORWARDS:
    raise ValueError(f"forward must be one of {_FORWARDS}, got {forward!r}")
  if _resolve_impl(impl) == "xla":
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DN)
  key = (pads, int(DEFAULT_CHUNK if chunk is None else chunk), forward)
  if key[1] < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  f = _CONV_CACHE.get(key)
  if f is None:
    f = _CONV_CACHE[key] = _make_chunked_conv(*key)
  return f(x, kernel)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 on (..., H, W, C) (NHWC), H and W even.

  Same values as `flax.linen.max_pool(x, (2, 2), strides=(2, 2))`, faster on CPU, and the
  standard subgradient: where several entries of a window tie for the max, the whole gradient
  goes to the first of them in the window's row-major order (what PyTorch's CPU max-pool picks).
  `jnp.max` would split it equally between the tied entries; on MNIST about 20% of SmallCNN's
  first-layer windows tie (blank background), which changes the input gradient and, under a
  sign update, which pixels the sampler moves. The selection is a chain of `where`s, so the rule
  holds for reverse and forward mode alike.
  """
  if x.ndim < 3:
    raise ValueError(f"max_pool_2x2 expects (..., H, W, C), got shape {x.shape}")
  h, w, c = x.shape[-3:]
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs even H and W, got H={h}, W={w} (shape {x.shape})")
  lead = x.shape[:-3]
  y = x.reshape(lead + (h // 2, 2, w // 2, 2, c))
  # The window's entries in row-major order: (0, 0), (0, 1), (1, 0), (1, 1).
  a, b = y[..., 0, :, 0, :], y[..., 0, :, 1, :]
  cc, d = y[..., 1, :, 0, :], y[..., 1, :, 1, :]
  m = jax.lax.stop_gradient(jnp.maximum(jnp.maximum(a, b), jnp.maximum(cc, d)))
  take_a = a == m
  take_b = b == m
  take_c = cc == m
  # A NaN in the window: no entry equals m (NaN), the value stays NaN with no gradient.
  last = jnp.where(d == m, d, m)
  return jnp.where(take_a, a, jnp.where(take_b, b, jnp.where(take_c, cc, last)))


# PyTorch's Conv2d default: kaiming_uniform_(a=sqrt(5)) == U(-b, b), b = 1/sqrt(fan_in), i.e.
# variance 1/(3 fan_in); flax kernels are HWIO so fan_in = kh*kw*cin is what variance_scaling uses.
pytorch_conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def pytorch_bias_init(fan_in: int) -> Callable:
  """PyTorch's Conv/Linear bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """Stride-1 2-D conv with the parameter tree of `flax.linen.Conv` ('kernel' HWIO, 'bias').

  Uses `conv2d` (fast dW on CPU). Defaults follow PyTorch's nn.Conv2d initialisation.
  Accepts (N, H, W, C) or unbatched (H, W, C) inputs.
  """
  features: int
  kernel_size: int | Sequence[int] = (3, 3)
  padding: PaddingLike = "VALID"
  use_bias: bool = True
  dtype: Any | None = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = pytorch_conv_kernel_init
  bias_init: Callable | None = None  # None: PyTorch-like U(+-1/sqrt(fan_in))
  impl: str | None = None
  chunk: int | None = None
  forward: str = "xla"  # or "im2col": see conv2d

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ks = self.kernel_size
    ks = (int(ks), int(ks)) if isinstance(ks, (int, np.integer)) else tuple(int(k) for k in ks)
    if len(ks) != 2:
      raise ValueError(f"kernel_size must have 2 entries, got {self.kernel_size!r}")
    unbatched = x.ndim == 3
    if unbatched:
      x = x[None]
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, ks + (cin, self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      b_init = (self.bias_init if self.bias_init is not None
                else pytorch_bias_init(ks[0] * ks[1] * cin))
      bias = self.param("bias", b_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, padding=self.padding, impl=self.impl, chunk=self.chunk,
               forward=self.forward)
    if bias is not None:
      y = y + bias
    return y[0] if unbatched else y
