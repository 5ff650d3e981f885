"""The library works when installed as a wheel (not editable), used from a folder outside the
checkout: build the default config, override a field, validate, train two steps on synthetic
data, evaluate, load the classifier.

The wheel goes into a fresh virtual environment WITHOUT the system site-packages, because the
editable install of the checkout registers an import hook there that would win over any other
copy. The dependencies (jax, flax, ...) are found through PYTHONPATH, which adds the system
site-packages folder as a plain path (its .pth files, the editable hook among them, are not run).
"""

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import jax
    import atent_jax
    from atent_jax import train
    from atent_jax.configuration import default_config, validate_config

    root, workdir = sys.argv[1], sys.argv[2]
    here = os.path.abspath(atent_jax.__file__)
    assert not here.startswith(root), f"imported the checkout, not the wheel: {here}"

    config = default_config()                 # the package's own default (no experiments/)
    config.data.source = "synthetic"
    config.data.synthetic_examples = 64
    config.train.batch_size = 32              # 64 images, 10 held out: 2 steps in one epoch
    config.data.num_validation = 0
    config.train.num_epochs = 1
    config.train.progress_bar = False
    config.sampler.num_steps = 2
    config.eval.num_examples = 16
    config.eval.num_steps = 2
    validate_config(config)
    final = train.train_and_evaluate(config, workdir)

    logits_fn = atent_jax.load_classifier(workdir)
    images = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    labels = np.arange(8) % 10
    assert logits_fn(images).shape == (8, 10)
    report = atent_jax.evaluate_attacks(
        logits_fn, images, labels,
        [{"attack": "pgd_linf", "name": "PGD-2", "eps": 0.1, "num_steps": 2,
          "step_size": 0.05}],
        jax.random.PRNGKey(0), batch_size=8, sanity_checks=False, masking_checks=False)
    assert 0 <= report["attacks"][0]["robust_accuracy"] <= report["clean_accuracy"] <= 1
    # The wheel carries the C++ source of the native dW kernel (package data): it builds.
    import shutil
    from atent_jax import native
    assert native.conv_dw_available() or not shutil.which("g++"), native.build_error()
    print("INSTALLED_OK", here, final.get("step"))
""")


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_trains_evaluates_and_loads(tmp_path):
  wheels = tmp_path / "wheels"
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", str(wheels), ROOT], capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stderr[-2000:]
  (wheel,) = [str(p) for p in wheels.glob("atent_jax-*.whl")]

  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
  python = str(env_dir / "bin" / "python")
  install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", wheel],
                           capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stderr[-2000:]

  outside = tmp_path / "elsewhere"
  outside.mkdir()
  (outside / "check.py").write_text(_SCRIPT)
  env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"], JAX_PLATFORMS="cpu")
  run = subprocess.run([python, "check.py", ROOT, str(tmp_path / "run")], cwd=outside,
                       capture_output=True, text=True, timeout=600, env=env)
  assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
  assert "INSTALLED_OK" in run.stdout
  assert str(env_dir) in run.stdout.split("INSTALLED_OK", 1)[1]
