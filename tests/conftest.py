"""Shared fixtures: the tiny config every end-to-end test starts from, and a tiny trained run.

    def test_something(tiny_config, tiny_run):
      config = tiny_config("atent_linf", **{"train.num_epochs": 2})
      logits_fn = atent_jax.load_classifier(tiny_run)   # a private copy of the trained run

The builder itself is tests/tiny.py (`from tiny import make_tiny_config` where a plain function
is needed). The trained run is made once per test session (once per xdist worker) and copied
for each test that asks for it, so a test may write into its copy.
"""

import os
import shutil
import tempfile

import quick_compile

# Set before JAX creates a backend; xdist workers and the scripts tests start inherit it
# (tests/quick_compile.py says why; tests/test_xla_flags.py also runs at users' level).
quick_compile.with_flag(os.environ)

import jax  # noqa: E402  (after the flag above)
import pytest  # noqa: E402
from tiny import make_tiny_config  # noqa: E402

# The test files that take longest (measured, per-test wall summed per file, -n 2, LLVM level 1,
# 2026-12-07), scheduled first: with `-n 2 --dist loadfile` a long file started last would leave
# one worker idle at the end.
LONGEST_FIRST = ("test_multiprocess.py", "test_train.py", "test_reproduce.py",
                 "test_cifar_train.py", "test_notebook.py", "test_evaluate_chunks.py",
                 "test_faults.py", "test_attacks.py", "test_autoattack_crosscheck.py",
                 "test_fused.py", "test_evaluate_cli.py")


_OWN_CACHE = []  # the cache folder this process made (removed when the run ends)


def pytest_configure(config):
  # xdist (>= 3.6) would sort the files by their number of tests (--no-loadscope-reorder): keep
  # LONGEST_FIRST's order instead.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False
  _share_a_compilation_cache()


def _share_a_compilation_cache():
  """One JAX compilation cache per test run, shared by the xdist workers and by the scripts
  that tests start: many tests compile the same tiny-config programs. The first pytest process
  (xdist's controller, or the only one) makes it; workers and scripts inherit it through the
  environment, and it is removed at the end of the run, so no state crosses runs. A cache the
  caller set (JAX_COMPILATION_CACHE_DIR) is used as it is.

  Every program is cached, however small or quick to compile: a script started by a test
  compiles some 80 programs, most of them a fraction of a second each, and caching them all cut
  the CPU time of test_attacks + test_config and of test_evaluate_chunks + test_faults by
  11-13% against a 0.5 s threshold (measured 2026-12-01, -n 2, both orders)."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  path = tempfile.mkdtemp(prefix="atent_jax_test_cache_")
  _OWN_CACHE.append(path)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
  for path in _OWN_CACHE:
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


@pytest.fixture(scope="session")
def tiny_config():
  """`tiny_config(method="sgd", **{"dotted.key": value})` -> a ConfigDict (see _TINY)."""
  return make_tiny_config


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory) -> str:
  """The trained run itself, shared by the session: read it or copy it, never write into it
  (module-scoped fixtures copy it; tests take `tiny_run`)."""
  from atent_jax import train
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  # Two SGD steps: the model is barely trained; what uses it tests plumbing, not accuracy.
  config = make_tiny_config("sgd", **{"data.num_train": 64, "data.num_eval": 32,
                                      "eval.num_examples": 16, "eval.batch_size": 16,
                                      "eval.num_steps": 1, "eval.eps": 0.3})
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> str:
  """A private copy of a SmallCNN workdir trained for two SGD steps (eval eps 0.3)."""
  workdir = str(tmp_path / "tiny_run")
  shutil.copytree(tiny_run_template, workdir)
  return workdir
