"""CIFAR-10 models (flax.linen): the CIFAR ResNet of He et al. and the WideResNet used by TRADES.

Conventions shared by all models of the library:

* called as
  ``model.apply(variables, x, train=bool, rngs={'dropout': key}, mutable=['batch_stats'])``
  (``mutable`` only when ``train=True``), with ``x`` NHWC float32 images in [0, 1];
* per-channel normalisation ``(x - mean) / std`` happens inside the model (fields ``mean``,
  ``std``);
* ``train=False`` is fully deterministic (batch norm uses its running averages, dropout is off), and
  is per-example: the output for one example does not depend on the rest of the batch, so a batch
  of 1 (e.g. under ``jax.vmap``) works;
* batch norm uses momentum 0.9 and epsilon 1e-5 (PyTorch's defaults, momentum=0.1 in PyTorch's
  convention);
* conv kernels are Kaiming-normal with fan_out (``normal(0, sqrt(2 / (k*k*out_channels)))``,
  untruncated), as in the reference PyTorch nets; batch-norm scale 1 / bias 0; dense weights use
  PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` and a zero bias.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Kaiming normal, mode fan_out, gain sqrt(2), untruncated (PyTorch's
# kaiming_normal_(mode='fan_out')).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

__all__ = [
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "ResNet",
  "ResNet20",
  "ResNet32",
  "ResNet44",
  "ResNet56",
  "ResNet110",
  "WideResNet",
  "WRN34_10",
  "WRN28_10",
]


def _normalize(x: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
  x = jnp.asarray(x, jnp.float32)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def _conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=conv_init,
    name=name,
  )


def _bn(train: bool, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    name=name,
  )


def _dense(features: int, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, kernel_init=dense_init, bias_init=nn.initializers.zeros, name=name)


# ----------------------------------------------------------------------------------------------
# ResNet (He et al. 2016, CIFAR variant)
# ----------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
  """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU.

  The shortcut is the identity when the shape is unchanged, else a projection (1x1 conv with the
  block's stride + BN), i.e. He et al.'s option B.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    y = _conv(self.features, 3, self.stride, name="conv1")(x)
    y = _bn(train, name="bn1")(y)
    y = nn.relu(y)
    y = _conv(self.features, 3, 1, name="conv2")(y)
    y = _bn(train, name="bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, name="shortcut_conv")(x)
      shortcut = _bn(train, name="shortcut_bn")(shortcut)
    else:
      shortcut = x
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """CIFAR ResNet of He et al. (2016), "Deep Residual Learning for Image Recognition",
  section 4.2.

  conv3x3(width)-BN-ReLU stem, then 3 stages of ``(depth - 2) // 6`` post-activation basic blocks
  with widths ``width, 2*width, 4*width`` (stride 2 at the first block of stages 2 and 3), global
  average pooling and a dense classifier. ``depth=20`` (3 blocks per stage) is ResNet-20 (~0.27M
  parameters at ``width=16``).

  Where the shape changes (stage starts 2 and 3) the shortcut is a projection, a 1x1 conv with
  stride 2 + BN (He et al.'s option B), instead of the paper's parameter-free zero-padding option
  A for CIFAR; this adds 2,752 parameters to ResNet-20 (272,474 instead of 269,722).
  """

  depth: int = 20
  width: int = 16
  num_classes: int = 10
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if (self.depth - 2) % 6 != 0 or self.depth < 8:
      raise ValueError(
        f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {self.depth}"
      )
    blocks_per_stage = (self.depth - 2) // 6
    x = _normalize(x, self.mean, self.std)
    x = _conv(self.width, 3, 1, name="conv_stem")(x)
    x = _bn(train, name="bn_stem")(x)
    x = nn.relu(x)
    for stage in range(3):
      features = self.width * (2**stage)
      for block in range(blocks_per_stage):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = BasicBlock(features, stride, name=f"stage{stage + 1}_block{block + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return _dense(self.num_classes, name="fc")(x)


ResNet20 = functools.partial(ResNet, depth=20)
ResNet32 = functools.partial(ResNet, depth=32)
ResNet44 = functools.partial(ResNet, depth=44)
ResNet56 = functools.partial(ResNet, depth=56)
ResNet110 = functools.partial(ResNet, depth=110)


# ----------------------------------------------------------------------------------------------
# WideResNet (Zagoruyko & Komodakis 2016, as used by TRADES / MART / AWP)
# ----------------------------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
  """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, + shortcut.

  Identity shortcut (of the un-activated input) when in/out channels match and stride is 1;
  otherwise a 1x1 conv (with the block's stride) applied to the pre-activated input BN-ReLU(x), as
  in the TRADES reference net.
  """

  features: int
  stride: int = 1
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    equal_in_out = x.shape[-1] == self.features and self.stride == 1
    act = nn.relu(_bn(train, name="bn1")(x))
    y = _conv(self.features, 3, self.stride, name="conv1")(act)
    y = nn.relu(_bn(train, name="bn2")(y))
    if self.dropout_rate > 0.0:
      y = nn.Dropout(rate=self.dropout_rate, deterministic=not train, name="dropout")(y)
    y = _conv(self.features, 3, 1, name="conv2")(y)
    if equal_in_out:
      shortcut = x
    else:
      shortcut = _conv(self.features, 1, self.stride, name="shortcut_conv")(act)
    return y + shortcut


class WideResNet(nn.Module):
  """WideResNet WRN-depth-k of Zagoruyko & Komodakis (2016) in the form used by TRADES.

  conv3x3(16) stem, 3 stages of ``(depth - 4) // 6`` pre-activation wide blocks with widths
  ``16k, 32k, 64k`` (``k = widen_factor``; stride 1, 2, 2 at the first block of each stage), then
  BN-ReLU, global average pooling and a dense classifier. Dropout (``dropout_rate``, between the
  two convs of each block) is active only when ``train=True`` and needs ``rngs={'dropout': key}``.
  WRN-34-10 has 46,160,474 parameters (the unused ``sub_block1`` of the TRADES code is not
  included).
  """

  depth: int = 34
  widen_factor: int = 10
  dropout_rate: float = 0.0
  num_classes: int = 10
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  base_width: int = 16

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(
        f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 28, 34, ...), got {self.depth}"
      )
    blocks_per_stage = (self.depth - 4) // 6
    k = self.widen_factor
    widths = (self.base_width * k, 2 * self.base_width * k, 4 * self.base_width * k)
    x = _normalize(x, self.mean, self.std)
    x = _conv(self.base_width, 3, 1, name="conv_stem")(x)
    for stage, features in enumerate(widths):
      for block in range(blocks_per_stage):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = WideBasicBlock(
          features, stride, self.dropout_rate, name=f"stage{stage + 1}_block{block + 1}"
        )(x, train)
    x = nn.relu(_bn(train, name="bn_final")(x))
    x = jnp.mean(x, axis=(1, 2))
    return _dense(self.num_classes, name="fc")(x)


WRN34_10 = functools.partial(WideResNet, depth=34, widen_factor=10)
WRN28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)


def count_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
  ``jax.eval_shape``)."""
  import jax
  import numpy as np

  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))
