"""MNIST models of the paper: SmallCNN (Table 2, TRADES' net) and LeNet5 (Table 1, advertorch's).

Inputs are NHWC images in [0, 1]. Both nets are the reference PyTorch architectures; layer
initialisation follows PyTorch (and TRADES' explicit choices) so that learning rates carry over.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from atent_jax import ops

# PyTorch's default Linear/Conv initialisation: kaiming_uniform(a=sqrt(5)) on fan_in.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# TRADES' SmallCNN re-initialises its convolutions with kaiming_normal_ (fan_in, relu gain).
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _torch_bias_init(fan_in: int):
  bound = 1.0 / fan_in ** 0.5

  def init(key, shape, dtype=jnp.float32):
    import jax
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _dense(features: int, fan_in: int, name: str, zero: bool = False) -> nn.Dense:
  if zero:
    return nn.Dense(features, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                    name=name)
  return nn.Dense(features, kernel_init=torch_default_init, bias_init=_torch_bias_init(fan_in),
                  name=name)


def _normalise(x, mean: Sequence[float] | None, std: Sequence[float] | None):
  if mean is None and std is None:
    return x
  mean = jnp.asarray(mean if mean is not None else 0.0, x.dtype)
  std = jnp.asarray(std if std is not None else 1.0, x.dtype)
  return (x - mean) / std


class SmallCNN(nn.Module):
  """TRADES' MNIST SmallCNN: conv32-3, conv32-3, pool, conv64-3, conv64-3, pool, fc 1024-200-200-10.

  Dropout (0.5) after the first hidden fully connected layer, active only with train=True.
  """
  num_classes: int = 10
  dropout_rate: float = 0.5
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _normalise(x, self.mean, self.std)
    conv = lambda f, name, forward="xla": ops.Conv(
        f, (3, 3), padding="VALID", kernel_init=kaiming_normal, bias_init=nn.initializers.zeros,
        name=name, forward=forward)
    x = nn.relu(conv(32, "conv1")(x))
    # XLA:CPU's forward conv is about 3x slower than blocked im2col at this shape alone (26x26,
    # 32->32; results/benchmark_cpu/README.md); off the CPU the plain XLA conv runs.
    x = nn.relu(conv(32, "conv2", forward="im2col")(x))
    x = ops.max_pool_2x2(x)
    x = nn.relu(conv(64, "conv3")(x))
    x = nn.relu(conv(64, "conv4")(x))
    x = ops.max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(_dense(200, x.shape[-1], "fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(_dense(200, 200, "fc2")(x))
    # TRADES initialises the last layer to zero.
    return _dense(self.num_classes, 200, "fc3", zero=True)(x)


class LeNet5(nn.Module):
  """advertorch's LeNet5 as the paper describes it: conv32-5x5 (pad 2), pool, conv64-5x5 (pad 2),
  pool, fc 3136x1024, fc 1024x10."""
  num_classes: int = 10
  hidden: int = 1024
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or batch norm: train and eval mode are the same
    x = _normalise(x, self.mean, self.std)
    x = nn.relu(ops.Conv(32, (5, 5), padding=2, name="conv1")(x))
    x = ops.max_pool_2x2(x)
    x = nn.relu(ops.Conv(64, (5, 5), padding=2, name="conv2")(x))
    x = ops.max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(_dense(self.hidden, x.shape[-1], "fc1")(x))
    return _dense(self.num_classes, self.hidden, "fc2")(x)
