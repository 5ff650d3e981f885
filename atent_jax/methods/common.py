"""What every training method shares: the grad_fn contract, forward helpers and the registry.

A method is a builder `make_grad_fn(config, model)` returning
    grad_fn(params, batch_stats, images, labels, rng) -> (loss, grads, new_batch_stats, aux)
(aux holds at least "train_accuracy"), registered under its `config.method` name by one
`register(Method(...))` line at the end of its module. Everything else (the config check, the
trainer, report titles) looks methods up here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from atent_jax.errors import ConfigError

GradFn = Callable


# --- the registry -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Method:
  """Everything the library knows about one training method.

  name: `config.method`, e.g. 'trades'.
  make_grad_fn: `make_grad_fn(config, model) -> grad_fn` (see the module docstring).
  display_name: the name in reports and tables ('TRADES').
  validate: `validate(config)` raises ConfigError for a config this method cannot train with
    (after the generic checks of `atent_jax.configuration.validate_config`); None: no checks.
  """
  name: str
  make_grad_fn: Callable[[Any, Any], GradFn]
  display_name: str
  validate: Callable[[Any], None] | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds `method` under `method.name`; a name already taken raises ValueError."""
  if method.name in METHODS:
    raise ValueError(f"a training method named {method.name!r} is already registered "
                     f"({METHODS[method.name].display_name}): pick another name")
  METHODS[method.name] = method
  return method


def get(name: str) -> Method:
  """The record of `config.method` name; an unknown name raises ConfigError listing the known."""
  if name not in METHODS:
    raise ConfigError(f"config.method={name!r} is not known: use one of "
                      f"{', '.join(sorted(METHODS))}")
  return METHODS[name]


def make_grad_fn(config, model) -> GradFn:
  """The grad_fn of `config.method` for `model`."""
  return get(config.method).make_grad_fn(config, model)


# --- shared pieces ----------------------------------------------------------------------------

def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def eval_logits_fn(model, params, batch_stats):
  """logits_fn(x) of the model in eval mode (deterministic)."""
  variables = _variables(params, batch_stats)
  return lambda x: model.apply(variables, x, train=False)


def train_forward(model, params, batch_stats, x, rng):
  """Train-mode logits and the updated batch statistics."""
  variables = _variables(params, batch_stats)
  if batch_stats:
    logits, updates = model.apply(variables, x, train=True, rngs={"dropout": rng},
                                  mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, x, train=True, rngs={"dropout": rng}), batch_stats


def mean_ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def from_loss(loss_fn) -> GradFn:
  """A grad_fn from loss_fn(params, batch_stats, x, y, rng) -> (loss, (batch_stats, aux))."""
  def grad_fn(params, batch_stats, x, y, rng):
    (loss, (new_bs, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y, rng)
    return loss, grads, new_bs, aux
  return grad_fn


def unroll_from_config(config):
  """config.sampler.unroll -> lax.fori_loop's unroll: -1 backend default (None), 0 fully
  unrolled (True), 1 rolled, k > 1 unrolled by k."""
  u = config.sampler.unroll
  if u is None or u < 0:
    return None
  return True if u == 0 else int(u)


def ascent_direction(norm):
  """The shared optimiser's step direction for a ball: sign steps (l_inf), normalised
  gradient steps (l_2)."""
  return "sign" if norm == "linf" else "l2"
