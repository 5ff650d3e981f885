"""ATENT training: the weight update, and a run that resumes exactly from its checkpoint."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from determinism import assert_same_metrics, assert_same_params
from tiny import make_tiny_config

from atent_jax import langevin, methods, models, runs, train
from atent_jax.data import load_dataset


def _tiny_config(method="atent_linf"):
  return make_tiny_config(method, **{"train.num_epochs": 2})


def _batch(n=16):
  ds = load_dataset(_tiny_config().data)
  return ds.train_images[:n], ds.train_labels[:n]


def _reference_atent_samples(config, model, params, x, y, key):
  """Algorithm 2 written out (not the library's sampler): eval-mode cross-entropy, from a random
  corner x + eps sign(N(0, I)), K sign-gradient steps with Langevin noise, projected onto the
  eps-ball at the last step, clipped to [0, 1]. Shared with the library: only the documented key
  layout (one key per example; init and noise keys split from it; step i's noise from
  fold_in(noise key, i))."""
  s = config.sampler
  keys = jax.random.split(key, len(x))
  k_init, k_noise = jax.vmap(jax.random.split, out_axes=1)(keys)
  normal = lambda ks, i=None: jax.vmap(lambda k, v: jax.random.normal(
      k if i is None else jax.random.fold_in(k, i), v.shape, v.dtype))(ks, x)
  xp = jnp.clip(x + s.eps * jnp.sign(normal(k_init)), 0.0, 1.0)
  eval_ce = lambda v: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": params}, v, train=False), y).sum()
  samples = []
  for i in range(s.num_steps):
    new = (xp + s.step_size * jnp.sign(jax.grad(eval_ce)(xp))
           + s.noise_scale * np.sqrt(2 * s.step_size) * normal(k_noise, i))
    if i == s.num_steps - 1:
      new = x + jnp.clip(new - x, -s.eps, s.eps)
    xp = jnp.clip(new, 0.0, 1.0)
    samples.append(xp)
  return jnp.stack(samples)


def test_atent_gradient_is_grad_of_ema_loss_over_constant_samples():
  config = _tiny_config()
  config.sampler.fused = False  # the two-pass form, as the design states it
  config.sampler.noise_scale = 0.05  # noise large enough to matter in the comparison
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 4)
  state = train.init_state(config, model, tx, (28, 28, 1))
  x, y = _batch()
  rng = jax.random.PRNGKey(5)
  loss, grads, _, _ = methods.make_grad_fn(config, model)(state.params, {}, x, y, rng)
  chex.assert_trees_all_equal_shapes(grads, state.params)

  # Reference: the samples drawn by the algorithm written out above, held constant; the EMA
  # mu <- (1 - alpha) mu + alpha L_k of the train-mode losses (dropout key fold_in(k_drop, k)).
  k_sample, k_drop = jax.random.split(rng)
  samples = jax.jit(lambda *a: _reference_atent_samples(config, model, *a))(state.params, x, y,
                                                                            k_sample)
  chex.assert_shape(samples, (config.sampler.num_steps,) + x.shape)
  np.testing.assert_allclose(
      np.asarray(methods.atent_samples(config, model, state.params, {}, x, y, k_sample)),
      np.asarray(samples), atol=1e-5)
  alpha = config.sampler.alpha

  def ema_loss(params):
    mu = 0.0
    for k in range(samples.shape[0]):
      logits = model.apply({"params": params}, samples[k], train=True,
                           rngs={"dropout": jax.random.fold_in(k_drop, k)})
      mu = (1 - alpha) * mu + alpha * optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean()
    return mu

  ref_loss, ref_grads = jax.jit(jax.value_and_grad(ema_loss))(state.params)
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
  _, _, variables = runs.load_run(workdir, "latest")
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

  with open(os.path.join(full, "metrics.jsonl")) as f:
    full_metrics = [json.loads(line) for line in f]
  with open(os.path.join(part, "metrics.jsonl")) as f:
    part_metrics = [json.loads(line) for line in f]
  assert [m["epoch"] for m in part_metrics] == [1, 2]
  # Bit-identical resume is promised on CPU; elsewhere (GPU reductions) only closeness.
  assert_same_params(_params_of(full), _params_of(part))
  keys = ("train_loss", "clean_accuracy", "robust_accuracy")
  assert_same_metrics([{k: m[k] for k in keys} for m in full_metrics],
                      [{k: m[k] for k in keys} for m in part_metrics])
  for key in ("epoch", "train_loss", "clean_accuracy", "robust_accuracy", "wall_time"):
    assert key in full_metrics[-1]
  assert os.path.exists(os.path.join(full, "config.json"))


def _best_epoch(workdir):
  with open(os.path.join(workdir, "best", "metrics.json")) as f:
    return json.load(f)["epoch"]


# Per-epoch (clean, robust) accuracies the stubbed evaluation reports: the two metrics peak at
# different epochs, and robust accuracy ties its best at epoch 4 (the first best is kept).
_STUB_METRICS = [(0.50, 0.10), (0.90, 0.20), (0.80, 0.40), (0.70, 0.40)]


def _stub_evaluation(monkeypatch):
  """Replaces train.evaluate (the per-epoch clean + PGD evaluation) with _STUB_METRICS, so the
  selection rule is tested on numbers that do not depend on XLA's numerics on this CPU."""
  calls = iter(_STUB_METRICS)

  def evaluate(*args, **kwargs):
    clean, robust = next(calls)
    return {"clean_accuracy": clean, "robust_accuracy": robust, "num_eval": 64}

  monkeypatch.setattr(train, "evaluate", evaluate)


def _sgd_config(num_epochs):
  config = _tiny_config("sgd")
  config.train.num_epochs = num_epochs
  config.train.keep_checkpoints = 1
  return config


def test_early_stopping_keeps_the_epoch_of_the_chosen_metric(tmp_path, monkeypatch):
  """Clean baselines keep their most accurate epoch, adversarial ones their most robust; a tie
  keeps the earlier epoch. best/ holds that epoch's weights (equal to those of a run stopped
  there: bit for bit on CPU, where runs are deterministic) and its metrics."""
  expected = {"clean_accuracy": 2, "robust_accuracy": 3}  # from _STUB_METRICS, by hand
  for metric, epoch in expected.items():
    _stub_evaluation(monkeypatch)
    config = _sgd_config(len(_STUB_METRICS))
    config.early_stopping_metric = metric
    workdir = str(tmp_path / metric)
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "best", "metrics.json")) as f:
      best = json.load(f)
    assert best["epoch"] == epoch, (metric, best)
    assert (best["clean_accuracy"], best["robust_accuracy"]) == _STUB_METRICS[epoch - 1]

  # The weights in best/ (robust: epoch 3) are epoch 3's, not the last epoch's.
  _stub_evaluation(monkeypatch)
  stopped = str(tmp_path / "stopped_at_3")
  train.train_and_evaluate(_sgd_config(3), stopped)
  _, _, best_variables = runs.load_run(str(tmp_path / "robust_accuracy"), "best")
  assert_same_params(best_variables["params"], _params_of(stopped))
  last = _params_of(str(tmp_path / "robust_accuracy"))  # epoch 4: the test discriminates
  differs = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), last,
                                   best_variables["params"])
  assert any(jax.tree_util.tree_leaves(differs))


def test_a_run_ends_with_a_summary_line_and_its_training_curves(tmp_path, capsys, monkeypatch):
  """End to end with the real evaluation: nothing here depends on the numbers it produces.
  The workdir lies below the working directory, so the summary shows it relative."""
  monkeypatch.chdir(tmp_path)
  config = _sgd_config(2)
  workdir = "run"
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  values = [r["robust_accuracy"] for r in records]
  assert _best_epoch(workdir) == records[int(np.argmax(values))]["epoch"]  # the first best
  with open(os.path.join(workdir, "training_curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  summary = capsys.readouterr().out.strip().splitlines()[-1]
  last = records[-1]
  assert summary.startswith(f"done: epoch 2/2: clean {100 * last['clean_accuracy']:.1f}%, "
                            f"robust {100 * last['robust_accuracy']:.1f}% (PGD-2 linf eps 0.1")
  assert f"best: epoch {_best_epoch(workdir)} (robust_accuracy " in summary
  assert f"in {os.path.join(workdir, 'best')};" in summary
  assert f"curves: {os.path.join(workdir, 'training_curves.png')};" in summary
  assert summary.endswith(f"next: python experiments/evaluate.py --workdir={workdir} "
                          "--attacks=pgd100_linf --restarts=5")
  # Run again on the finished workdir: nothing to train, the same summary.
  os.remove(os.path.join(workdir, "training_curves.png"))
  train.train_and_evaluate(config, workdir)
  assert capsys.readouterr().out.strip().splitlines()[-1] == summary
  assert os.path.exists(os.path.join(workdir, "training_curves.png"))
