"""Model registry: `get_model(config.model)` builds the Flax module a config names."""

from __future__ import annotations

from atent_jax.errors import ConfigError
from atent_jax.models.mnist import LeNet5, SmallCNN


def _cifar(name):
  def build(**kw):
    from atent_jax.models import cifar
    return getattr(cifar, name)(**kw)
  return build


# name -> (constructor, the config.model fields it takes besides `name`)
MODELS = {
    "small_cnn": (SmallCNN, ("num_classes", "dropout_rate", "mean", "std")),
    "lenet5": (LeNet5, ("num_classes", "hidden", "mean", "std")),
    "resnet": (_cifar("ResNet"), ("num_classes", "depth", "width", "mean", "std")),
    "wide_resnet": (_cifar("WideResNet"),
                    ("num_classes", "depth", "widen_factor", "dropout_rate", "mean", "std")),
}

# The input shape each model family expects (H, W, C); checked against the data.
INPUT_SHAPES = {"small_cnn": (28, 28, 1), "lenet5": (28, 28, 1),
                "resnet": (32, 32, 3), "wide_resnet": (32, 32, 3)}


def get_model(model_config):
  """Builds the model named by `model_config.name` with the fields that model takes."""
  name = model_config.get("name")
  if name not in MODELS:
    raise ConfigError(f"config.model.name={name!r} is not a known model: use one of "
                      f"{', '.join(sorted(MODELS))}")
  build, fields = MODELS[name]
  kwargs = {}
  for f in fields:
    if f in model_config and model_config[f] is not None:
      v = model_config[f]
      kwargs[f] = tuple(v) if isinstance(v, (list, tuple)) else v
  return build(**kwargs)
