"""Data parallelism: a 2-device run gives the parameters of a 1-device run of the same batch.

The devices are CPU devices made with XLA_FLAGS=--xla_force_host_platform_device_count=2, which
must be set before JAX starts: the 2-device run is a subprocess; the 1-device run is made in the
test's own process when it has one device (as pytest's processes do).
"""

import json
import os
import subprocess
import sys
import textwrap

import chex
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The run's config (`c`), built the same way in this process and in the 2-device script.
_CONFIG = textwrap.dedent("""
    from atent_jax.configuration import default_config
    c = default_config()
    c.method = {method!r}
    c.model.name = {model!r}
    c.model.depth = 8; c.model.width = 4
    c.data.dataset = {dataset!r}; c.data.source = 'synthetic'; c.data.synthetic_examples = 64
    c.train.batch_size = 16; c.train.num_epochs = 1; c.train.progress_bar = False
    c.sampler.num_steps = 2; c.sampler.eps = 8 / 255 if {dataset!r} == 'cifar10' else 0.3
    c.eval.num_examples = 16; c.eval.batch_size = 16; c.eval.num_steps = 1
    c.eval.eps = c.sampler.eps
    c.data.augment = {augment}
""")

_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import atent_jax, jax
    from atent_jax import train
    assert len(jax.devices()) == {devices}, jax.devices()
    exec({config!r})
    train.train_and_evaluate(c, {workdir!r})
""")


def _train(tmp_path, devices, method, model, dataset):
  """Trains the run on `devices` CPU devices and returns its variables and first metrics.

  One device runs in this process when it has exactly one CPU device (no second interpreter
  and JAX start-up to pay); otherwise, and for 2 devices, in a subprocess started with that
  many."""
  import jax

  from atent_jax import runs, train
  workdir = str(tmp_path / f"{method}_{model}_{devices}dev")
  config = _CONFIG.format(method=method, model=model, dataset=dataset,
                          augment=dataset == "cifar10")
  if devices == 1 and len(jax.devices()) == 1 and jax.default_backend() == "cpu":
    namespace = {}
    exec(config, namespace)
    train.train_and_evaluate(namespace["c"], workdir)
  else:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    code = _RUN.format(root=ROOT, devices=devices, config=config, workdir=workdir)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
  _, _, variables = runs.load_run(workdir, "latest")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    metrics = json.loads(f.readline())
  return variables, metrics


# ATENT-l_inf on SmallCNN (dropout, per-device Langevin sampling) at these same settings is
# compared across 1 device, 2 devices and 2 processes by tests/test_multiprocess.py; here the
# model with batch norm (statistics averaged across devices) and CIFAR's crop + flip inside the
# sharded step.
@pytest.mark.parametrize("method,model,dataset", [("sgd", "resnet", "cifar10")])
def test_two_devices_equal_one_device(tmp_path, method, model, dataset):
  one, m1 = _train(tmp_path, 1, method, model, dataset)
  two, m2 = _train(tmp_path, 2, method, model, dataset)
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  # The evaluation batch is sharded across the 2 devices. The parameters agree to float
  # tolerance, not bit for bit (the reductions are split differently), so an example at a
  # decision tie may flip: the accuracies agree to within one example.
  assert m1["num_eval"] == m2["num_eval"]
  for key in ("clean_accuracy", "robust_accuracy"):
    assert abs(m1[key] - m2[key]) <= 1 / m1["num_eval"] + 1e-9, (key, m1[key], m2[key])
