"""The AutoAttack runner (atent_jax.attacks.autoattack) on affine classifiers, whose exact robust
set is known in closed form (see test_apgd's module docstring), and its bookkeeping: the
ensemble is at least as strong as each member per example, members run only on the points still
robust, points stay in the ball and in [0, 1], results are deterministic for a key and do not
depend on the batch size or the number of devices."""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_apgd import affine_problem, break_radius, in_ball_and_box, worst_margin

from atent_jax.attacks import autoattack
from atent_jax.attacks.autoattack import AutoAttackResult, bucket_size, members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(7)
# The members' own tests use their full budgets; here reduced ones keep the ensemble fast. On an
# affine classifier APGD-T's targeted DLR step points at the corner of the ball that is best
# against its target class, so 20 iterations reach the exact robust set (as 100 do).
FAST = {"apgd-ce": {"num_steps": 20}, "apgd-t": {"num_steps": 20}, "fab-t": {"num_steps": 20},
        "square": {"num_queries": 200}}


@pytest.mark.core
def test_versions_are_the_references():
  names = lambda v: [m[0] for m in members(v)]
  assert names("standard") == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert names("plus") == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
  assert names("rand") == ["apgd-ce", "apgd-dlr"]
  std = {m[0]: m[2] for m in members("standard")}
  assert std["apgd-ce"]["num_restarts"] == 1 and std["apgd-ce"]["num_steps"] == 100
  assert std["apgd-t"]["num_target_classes"] == 9 and std["fab-t"]["num_target_classes"] == 9
  assert std["square"]["num_queries"] == 5000 and std["square"]["p_init"] == 0.8
  plus = {m[0]: m[2] for m in members("plus")}
  assert plus["apgd-ce"]["num_restarts"] == plus["apgd-dlr"]["num_restarts"] == 5
  assert plus["fab"]["num_restarts"] == 5 and not plus["fab"]["targeted"]
  assert all(m[2]["eot_iter"] == 20 for m in members("rand"))


@pytest.mark.core
def test_bucket_sizes():
  assert [bucket_size(c, 64) for c in (1, 15, 16, 17, 33, 64)] == [16, 16, 16, 32, 64, 64]
  assert bucket_size(70, 100) == 100 and bucket_size(5, 8) == 8
  assert bucket_size(3, 64, num_devices=3) == 18   # a multiple of the device count
  assert bucket_size(30, 16 * 2, num_devices=2) == 32


def _check_result(res, x, y, logits_fn, eps, norm):
  """Invariants every result must satisfy, checked with NumPy."""
  assert isinstance(res, AutoAttackResult)
  chex.assert_shape(res.adv, x.shape)
  chex.assert_shape([res.robust, res.clean_correct] + list(res.per_attack.values()), (len(y),))
  assert tuple(res.per_attack) == res.order
  logits = lambda v: np.asarray(logits_fn(jnp.asarray(v)))
  np.testing.assert_array_equal(res.clean_correct, np.argmax(logits(x), -1) == y)
  broken = np.zeros(len(y), bool)
  for name in res.order:
    assert not np.any(broken & res.per_attack[name]), f"{name} ran on a point already broken"
    broken |= res.per_attack[name]
  assert not np.any(broken & ~res.clean_correct)
  np.testing.assert_array_equal(res.robust, res.clean_correct & ~broken)
  assert in_ball_and_box(x, res.adv, eps, norm)
  np.testing.assert_array_equal(res.adv[~broken], x[~broken])
  assert np.all(np.argmax(logits(res.adv[broken]), -1) != y[broken])


@pytest.mark.core
def test_standard_linf_is_exact_and_at_least_as_strong_as_each_member():
  w, b, x, y, logits_fn = affine_problem(10, "linf", seed=3)
  y[:2] = (y[:2] + 1) % 10                      # two examples misclassified on the clean input
  radius = break_radius(w, b, x, y, "linf")
  eps = float(np.median(radius[2:]) * 1.01)
  exact = (worst_margin(w, b, x, y, eps, "linf") > 0) & (np.arange(len(y)) >= 2)
  assert 0 < exact.sum() < len(y) - 2
  calls = []
  res = autoattack(logits_fn, x, y, KEY, norm="linf", eps=eps, batch_size=16,
                   progress=lambda name, n: calls.append((name, n)), attack_kwargs=FAST)
  _check_result(res, x, y, logits_fn, eps, "linf")
  assert res.order == ("apgd-ce", "apgd-t", "fab-t", "square")
  np.testing.assert_array_equal(res.robust, exact)
  assert calls[0] == ("clean", int(res.clean_correct.sum()))
  assert [c[0] for c in calls[1:]] == list(res.order) and calls[-1][1] == int(exact.sum())
  assert all(a[1] >= b[1] for a, b in itertools.pairwise(calls))

  again = autoattack(logits_fn, x, y, KEY, norm="linf", eps=eps, batch_size=16,
                     attack_kwargs=FAST)
  np.testing.assert_array_equal(again.adv, res.adv)          # deterministic for a key
  np.testing.assert_array_equal(again.robust, res.robust)

  # Each member alone (same per-example keys) on every clean-correct point: whatever it breaks,
  # the ensemble broke too (at that member or earlier).
  for name in res.order:
    alone = autoattack(logits_fn, x, y, KEY, norm="linf", eps=eps, batch_size=16,
                       attacks=(name,), attack_kwargs=FAST)
    _check_result(alone, x, y, logits_fn, eps, "linf")
    assert alone.order == (name,)
    assert not np.any(res.robust & ~alone.robust), name
    earlier = np.zeros(len(y), bool)
    for m in res.order[:res.order.index(name) + 1]:
      earlier |= res.per_attack[m]
    assert np.all(earlier[alone.per_attack[name]]), name

  # Another batch size (other padding, other batches): the same outcome, the same points.
  small = autoattack(logits_fn, x, y, KEY, norm="linf", eps=eps, batch_size=8,
                     attacks=("apgd-ce",), attack_kwargs=FAST)
  np.testing.assert_array_equal(small.per_attack["apgd-ce"], res.per_attack["apgd-ce"])
  hit = res.per_attack["apgd-ce"]
  np.testing.assert_array_equal(small.adv[hit], res.adv[hit])


_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + '/tests')
    import jax, numpy as np
    from test_apgd import affine_problem
    from atent_jax.attacks import autoattack
    assert len(jax.devices()) == 2, jax.devices()
    _, _, x, y, logits_fn = affine_problem(10, 'l2', seed=4)
    res = autoattack(logits_fn, x, y, jax.random.PRNGKey(7), norm='l2', eps={eps!r},
                     batch_size=16, attacks=('apgd-ce', 'apgd-t'))
    print(json.dumps({{'robust': res.robust.tolist(), 'adv': res.adv.ravel().tolist()}}))
""")


@pytest.mark.slow
def test_l2_apgd_members_are_exact_and_the_same_on_two_devices():
  w, b, x, y, logits_fn = affine_problem(10, "l2", seed=4)
  radius = break_radius(w, b, x, y, "l2")
  eps = float(np.median(radius) * 1.01)
  assert eps <= 0.25  # x in [0.25, 0.75]: the box cannot bind
  res = autoattack(logits_fn, x, y, KEY, norm="l2", eps=eps, batch_size=16,
                   attacks=("apgd-ce", "apgd-t"))
  _check_result(res, x, y, logits_fn, eps, "l2")
  np.testing.assert_array_equal(res.robust, worst_margin(w, b, x, y, eps, "l2") > 0)

  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                        + " --xla_force_host_platform_device_count=2").strip())
  proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES.format(root=ROOT, eps=eps)],
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  two = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_array_equal(np.asarray(two["robust"]), res.robust)
  np.testing.assert_allclose(np.asarray(two["adv"]).reshape(x.shape), res.adv, atol=1e-6)


@pytest.mark.slow
def test_rand_version_with_a_randomized_model():
  _, _, x, y, base = affine_problem(10, "linf", seed=5, batch=8)

  def noisy_logits(v, key):  # a randomized defence: small Gaussian noise on the logits
    return base(v) + 0.01 * jax.random.normal(key, (v.shape[0], 10))

  kw = {"num_steps": 10, "eot_iter": 3}
  # APGD-DLR in the traced loop (the default off CPU), APGD-CE in the host loop (CPU default).
  res = autoattack(noisy_logits, x, y, KEY, norm="linf", eps=0.05, version="rand",
                   stochastic=True,
                   attack_kwargs={"apgd-ce": kw, "apgd-dlr": {**kw, "loop": "device"}})
  assert res.order == ("apgd-ce", "apgd-dlr")
  chex.assert_shape(res.adv, x.shape)
  assert in_ball_and_box(x, res.adv, 0.05, "linf")
  np.testing.assert_array_equal(res.adv[~res.clean_correct], x[~res.clean_correct])


@pytest.mark.parametrize("kwargs,match", [
    ({"version": "fast"}, "version"), ({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"),
    ({"norm": "l1"}, "norm"), ({"batch_size": 0}, "batch_size"),
    ({"attacks": ("apgd-x",)}, "attacks"), ({"attacks": "apgd-ce"}, "attacks"),
    ({"attack_kwargs": {"pgd": {}}}, "attack_kwargs"),
    ({"attack_kwargs": {"square": {"eps": 1.0}}}, "attack_kwargs"),
    ({"stochastic": True}, "stochastic"), ({"progress": 3}, "progress"),
])
@pytest.mark.core
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
  _, _, x, y, logits_fn = affine_problem(10, "linf", batch=2, side=2)
  args = {"norm": "linf", "eps": 0.1, **kwargs}
  # The message starts with the argument's name (a message naming another argument fails).
  with pytest.raises(ValueError, match=rf"^{match}\b"):
    autoattack(logits_fn, x, y, KEY, **args)


@pytest.mark.core
def test_bad_models_and_inputs_raise_value_errors():
  _, _, x, y, logits_fn = affine_problem(10, "linf", batch=2, side=2)
  with pytest.raises(ValueError, match="logits_fn"):
    autoattack(lambda v: logits_fn(v).T, x, y, KEY, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="logits_fn"):
    autoattack(lambda v: logits_fn(v)[0], x, y, KEY, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    autoattack(logits_fn, x * 3 - 1, y, KEY, norm="linf", eps=0.1)
  with pytest.raises(ValueError, match="y has shape"):
    autoattack(logits_fn, x, y[:1], KEY, norm="linf", eps=0.1)
