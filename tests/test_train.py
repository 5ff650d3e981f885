"""ATENT training: the weight update, and a run that resumes exactly from its checkpoint."""

import importlib.util
import json
import os

import chex
import jax
import numpy as np
import optax

from atent_jax import langevin, methods, models, train
from atent_jax.data import load_dataset

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs")


def _config(name="default"):
  spec = importlib.util.spec_from_file_location(name, os.path.join(_CONFIGS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _tiny_config(method="atent_linf"):
  config = _config()
  config.method = method
  config.data.source = "builtin"
  config.data.num_train = 128
  config.data.num_eval = 64
  config.train.batch_size = 32
  config.train.num_epochs = 2
  config.train.progress_bar = False
  config.sampler.num_steps = 3
  config.eval.num_examples = 64
  config.eval.batch_size = 64
  config.eval.num_steps = 2
  return config


def _batch(n=16):
  ds = load_dataset(_tiny_config().data)
  return ds.train_images[:n], ds.train_labels[:n]


def test_atent_gradient_is_grad_of_ema_loss_over_constant_samples():
  config = _tiny_config()
  config.sampler.fused = False  # the two-pass form, as the design states it
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 4)
  state = train.init_state(config, model, tx, (28, 28, 1))
  x, y = _batch()
  rng = jax.random.PRNGKey(5)
  loss, grads, _, _ = methods.make_grad_fn(config, model)(state.params, {}, x, y, rng)
  chex.assert_trees_all_equal_shapes(grads, state.params)

  # Reference: draw the samples exactly as the method does, then grad of sum_k c_k L(x'k).
  k_sample, k_drop = jax.random.split(rng)
  samples = methods.atent_samples(config, model, state.params, {}, x, y, k_sample)
  chex.assert_shape(samples, (config.sampler.num_steps,) + x.shape)
  c = langevin.ema_weights(config.sampler.num_steps, config.sampler.alpha)

  def ema_loss(params):
    total = 0.0
    for k in range(samples.shape[0]):
      logits = model.apply({"params": params}, samples[k], train=True,
                           rngs={"dropout": jax.random.fold_in(k_drop, k)})
      total = total + c[k] * optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return total

  ref_loss, ref_grads = jax.value_and_grad(ema_loss)(state.params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  chex.assert_trees_all_close(grads, ref_grads, rtol=1e-4, atol=1e-6)


def test_one_atent_step_lowers_the_ema_loss_on_a_fixed_batch():
  config = _tiny_config()
  config.model.dropout_rate = 0.0  # a deterministic loss to compare before/after
  config.train.learning_rate = 0.05
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 4)
  state = train.init_state(config, model, tx, (28, 28, 1))
  x, y = _batch(32)
  samples = methods.atent_samples(config, model, state.params, {}, x, y, jax.random.PRNGKey(0))
  c = langevin.ema_weights(config.sampler.num_steps, config.sampler.alpha)

  def ema_loss(params):
    return methods.atent_ema_loss(model, params, {}, samples, y, jax.random.PRNGKey(1), c)[0]

  before = float(ema_loss(state.params))
  step = jax.jit(train.make_train_step(config, model, tx))
  new_state, metrics = step(state, x, y, jax.random.PRNGKey(0))
  assert int(new_state.step) == 1
  assert np.isfinite(float(metrics["loss"]))
  after = float(ema_loss(new_state.params))
  assert after < before, (before, after)


def _params_of(workdir):
  from atent_jax import checkpoint
  _, _, variables = checkpoint.load_run(workdir, "latest")
  return variables["params"]


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
  config = _tiny_config()
  full = str(tmp_path / "full")
  train.train_and_evaluate(config, full)

  part = str(tmp_path / "part")
  first = _tiny_config()
  first.train.num_epochs = 1
  train.train_and_evaluate(first, part)          # stops after epoch 1 (a checkpoint)
  train.train_and_evaluate(_tiny_config(), part)  # resumes for epoch 2

  chex.assert_trees_all_equal(_params_of(full), _params_of(part))
  with open(os.path.join(full, "metrics.jsonl")) as f:
    full_metrics = [json.loads(l) for l in f]
  with open(os.path.join(part, "metrics.jsonl")) as f:
    part_metrics = [json.loads(l) for l in f]
  assert [m["epoch"] for m in part_metrics] == [1, 2]
  for a, b in zip(full_metrics, part_metrics):
    for key in ("train_loss", "clean_accuracy", "robust_accuracy"):
      assert a[key] == b[key], key
  for key in ("epoch", "train_loss", "clean_accuracy", "robust_accuracy", "wall_time"):
    assert key in full_metrics[-1]
  assert os.path.exists(os.path.join(full, "config.json"))


def _best_epoch(workdir):
  with open(os.path.join(workdir, "best", "metrics.json")) as f:
    return json.load(f)["epoch"]


def test_early_stopping_keeps_the_epoch_of_the_chosen_metric(tmp_path):
  """Clean baselines keep their most accurate epoch, adversarial ones their most robust."""
  config = _tiny_config("sgd")
  config.data.num_train = 512
  config.train.num_epochs = 4
  config.train.learning_rate = 0.1
  # A strong attack (2 steps of 0.2 in the 0.3-ball): robust accuracy stays near zero while
  # clean accuracy climbs, so the two metrics pick different epochs.
  config.eval.eps, config.eval.step_size = 0.3, 0.2
  picked = {}
  for metric in ("clean_accuracy", "robust_accuracy"):
    config.early_stopping_metric = metric
    workdir = str(tmp_path / metric)
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
    values = [r[metric] for r in records]
    assert _best_epoch(workdir) == records[int(np.argmax(values))]["epoch"]  # first best
    picked[metric] = _best_epoch(workdir)
  assert picked["clean_accuracy"] != picked["robust_accuracy"], picked  # the test discriminates
