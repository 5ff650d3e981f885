"""PyTorch reference of the training steps, for benchmarking atent-jax only.

Re-implements what the public PyTorch code of each method does in one training step on MNIST
with the TRADES SmallCNN, so that it can be timed on the same machine as our JAX step:

  sgd         clean cross-entropy step (train mode).
  pgd_at      PGD adversarial training (Madry et al.): l_inf, uniform random start, K steps of
              x' += step * sign(grad) with input gradients only (eval mode), projection onto the
              eps-ball and [0, 1] every step, then one SGD step on CE(model(x'), y) (train mode).
  trades      TRADES (beta 6): x' = x + 0.001 randn, K steps on KL(model(x') || model(x)) with
              sign gradient and projection every step (eval mode, model(x) recomputed inside the
              loop as the TRADES code does), then CE(model(x), y) + beta * KL_batchmean.
  atent_linf  ATENT l_inf, K Langevin samples, Table 2's notebook settings (GauriJagatap/StochAT
              notebooks/mnist_exps_linf.ipynb with adversarial/functional.py, where the notebook
              runs L = K samples; the table's own run is K 80): step 0.01, eps 0.3, noise 1e-4,
              alpha 0.9, start x + eps * sign(randn), projection onto the eps-ball and [0, 1]
              after EVERY sample; after each sample a second forward pass whose loss stays in
              the graph, mu = (1 - alpha) mu + alpha loss_k; all K graphs are retained and ONE
              backward of mu precedes the SGD update.
  atent_l2    ATENT l_2, Table 1's notebook settings (notebooks/mnist_exps_l2.ipynb): step 0.75
              (3 x 0.25), eps 2, gamma 0.05, noise 1e-2, alpha 0.95, projection every sample;
              otherwise as atent_linf. (The notebook trains LeNet5 at batch 50; here SmallCNN
              at the benchmark's batch, like every other row.)

ATENT comes in two variants (`variant=`), so a claim can say which one it beats:
  authors    the step as the authors' code literally runs it: the model in TRAIN mode all along
             (dropout on while sampling), each sample's gradient by `loss.backward()` (which
             also computes every weight gradient, then discarded by `optimiser.zero_grad()`),
             a `.item()` of the sample's accuracy every sample, and for l_inf the extra clean
             forward pass that its `train_adversarial` loop makes per batch; SGD lr 0.01
             (l_2: 0.001), momentum 0.9, no weight decay (as the notebooks build the optimiser).
  optimised  the same algorithm (train mode, every-sample projection, K retained graphs, one
             backward) without the waste: `torch.autograd.grad` w.r.t. the input only, no
             per-sample `.item()`, no extra forward pass.
The baselines (sgd, pgd_at, trades) have one form (input gradients only in the attack, as their
public code does); `variant` does not change them. Their optimiser: SGD lr 0.01, momentum 0.9,
weight decay 1e-4. Data: fixed random MNIST-shaped tensors (values in [0, 1], random labels):
the cost does not depend on the values.

Torch is an optional benchmark dependency (`pip install torch`); 2 threads by default (the
authors' notebooks call torch.set_num_threads(2)).

Usage:
  python experiments/torch_reference.py                      # all methods, K 10 and 40
  python experiments/torch_reference.py --methods atent_linf --variants authors,optimised \
      --K 10 --repeats 5 --memory
Prints one JSON object per line:
  {"impl": "torch_reference", "variant": ..., "method": ..., "K": ..., "ms_per_step": ...}
plus "ms_min"/"ms_max", "cpu_ms_per_step" (process CPU time, all threads), "threads",
"loadavg_1m", and with --memory "peak_rss_delta_mb" (see `peak_memory_mb`). For JAX next to
PyTorch, interleaved in one process, use `experiments/benchmark.py --reference`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import light_cli
import memory_probe
import torch
import torch.nn.functional as F
from absl import flags
from torch import nn

METHODS = ("sgd", "pgd_at", "trades", "atent_linf", "atent_l2")
VARIANTS = ("authors", "optimised")

# Baselines (PGD-AT, TRADES: their papers' MNIST settings).
LINF_EPS = 0.3
LINF_STEP = 0.01
TRADES_BETA = 6.0
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


class AtentSettings(NamedTuple):
  """One table's ATENT hyper-parameters as the authors' notebook sets them."""
  step: float
  eps: float
  noise: float   # `ep` of adversarial/functional.py: noise = ep * sqrt(2 step) * randn
  gamma: float   # l_2 pull towards x
  alpha: float   # EMA weight of the newest sample's loss
  lr: float


ATENT = {
    "linf": AtentSettings(step=0.01, eps=0.3, noise=1e-4, gamma=0.0, alpha=0.9, lr=0.01),
    "l2": AtentSettings(step=0.75, eps=2.0, noise=1e-2, gamma=0.05, alpha=0.95, lr=0.001),
}


class SmallCNN(nn.Module):
  """TRADES' SmallCNN for MNIST 28x28x1."""

  def __init__(self, drop: float = 0.5):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )
    self.classifier = nn.Sequential(
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(drop),
        nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )

  def forward(self, x):
    return self.classifier(self.features(x).flatten(1))


def _project_linf(x_adv, x, eps):
  return torch.min(torch.max(x_adv, x - eps), x + eps)


def _project_l2(x_adv, x, eps):
  delta = x_adv - x
  norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
  return x + delta * torch.clamp(eps / norms, max=1.0)


def _input_grad(model, loss_fn, x_adv):
  x_adv = x_adv.detach().requires_grad_(True)
  with torch.enable_grad():
    loss = loss_fn(model(x_adv))
  return torch.autograd.grad(loss, [x_adv])[0]


def _sgd_step(optimizer, loss):
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()


def _clean(model, opt, x, y, K):
  model.train()
  _sgd_step(opt, F.cross_entropy(model(x), y))


def _pgd_at(model, opt, x, y, K):
  model.eval()
  x_adv = (x + torch.empty_like(x).uniform_(-LINF_EPS, LINF_EPS)).clamp(0.0, 1.0)
  ce = lambda logits: F.cross_entropy(logits, y)
  for _ in range(K):
    g = _input_grad(model, ce, x_adv)
    x_adv = x_adv.detach() + LINF_STEP * torch.sign(g)
    x_adv = _project_linf(x_adv, x, LINF_EPS).clamp(0.0, 1.0)
  model.train()
  _sgd_step(opt, F.cross_entropy(model(x_adv.detach()), y))


def _trades(model, opt, x, y, K):
  kl = nn.KLDivLoss(reduction="sum")
  model.eval()
  x_adv = x.detach() + 0.001 * torch.randn_like(x)
  for _ in range(K):
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
      loss_kl = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    g = torch.autograd.grad(loss_kl, [x_adv])[0]
    x_adv = x_adv.detach() + LINF_STEP * torch.sign(g.detach())
    x_adv = _project_linf(x_adv, x, LINF_EPS).clamp(0.0, 1.0)
  model.train()
  x_adv = x_adv.detach()
  logits = model(x)
  loss = F.cross_entropy(logits, y) + TRADES_BETA * (1.0 / x.shape[0]) * kl(
      F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1))
  _sgd_step(opt, loss)


def _atent_start(x, norm, eps):
  """functional.random_perturbation: l_inf x + eps * sign(randn); l_2 randn shrunk onto the
  eps-ball when longer than eps (the notebooks do not clamp the start to [0, 1])."""
  noise = torch.randn_like(x)
  if norm == "linf":
    return x + eps * torch.sign(noise)
  return x + _project_l2(noise, torch.zeros_like(x), eps)


def _atent_sample(x, x_adv, g, norm, cfg: AtentSettings):
  """One Langevin update, projected onto the eps-ball and [0, 1] (every sample, as both tables'
  notebooks run it)."""
  if norm == "linf":
    x_adv = x_adv + cfg.step * torch.sign(g)
  else:  # the pull towards x uses the point before the gradient step
    x_adv = (x_adv + cfg.step * g / g.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)
             + cfg.gamma * (x - x_adv))
  x_adv = x_adv + cfg.noise * math.sqrt(2.0 * cfg.step) * torch.randn_like(x)
  proj = _project_linf(x_adv, x, cfg.eps) if norm == "linf" else _project_l2(x_adv, x, cfg.eps)
  return proj.clamp(0.0, 1.0)


def _atent_authors(model, opt, x, y, K, norm):
  """The authors' step, call for call (see the module docstring)."""
  cfg = ATENT[norm]
  model.train()
  if norm == "linf":
    model(x)  # utils.train_adversarial's per-batch forward, result unused
  loss = 0.0
  x_adv = None
  for k in range(K):
    start = _atent_start(x, norm, cfg.eps) if k == 0 else x_adv
    leaf = start.clone().detach().requires_grad_(True)
    F.cross_entropy(model(leaf), y).backward()  # input AND weight gradients
    with torch.no_grad():
      if norm == "l2":
        _ = bool(torch.norm(leaf.grad) < 5e-4)  # the vanishing-gradient check (a sync)
      x_adv = _atent_sample(x, leaf.detach(), leaf.grad, norm, cfg)
    opt.zero_grad()
    y_pred = model(x_adv)
    _ = y_pred.max(1, keepdim=True)[1].eq(y.view(-1, 1)).sum().item()
    loss = (1.0 - cfg.alpha) * loss + cfg.alpha * F.cross_entropy(y_pred, y)
  loss.backward()
  opt.step()


def _atent_optimised(model, opt, x, y, K, norm):
  """The same algorithm, input gradients only in the sampler and no per-sample syncs."""
  cfg = ATENT[norm]
  model.train()
  ce = lambda logits: F.cross_entropy(logits, y)
  x_adv = _atent_start(x, norm, cfg.eps)
  loss = torch.zeros((), device=x.device)
  for _ in range(K):
    g = _input_grad(model, ce, x_adv)
    x_adv = _atent_sample(x, x_adv.detach(), g, norm, cfg)
    loss = (1.0 - cfg.alpha) * loss + cfg.alpha * ce(model(x_adv))  # graph kept until backward
  _sgd_step(opt, loss)


_BASELINES = {"sgd": _clean, "pgd_at": _pgd_at, "trades": _trades}
_ATENT = {"authors": _atent_authors, "optimised": _atent_optimised}


def atent_step(model, opt, x, y, K: int, norm: str, variant: str) -> None:
  """One ATENT training step of `model` (NCHW x in [0, 1]) with optimiser `opt`, K samples,
  norm 'linf' or 'l2' (that table's settings, `ATENT`), variant 'authors' or 'optimised'."""
  _check(f"atent_{norm}", variant)
  _ATENT[variant](model, opt, x, y, K, norm)


def _step_fn(method: str, variant: str):
  if method in _BASELINES:
    return _BASELINES[method]
  norm = method.split("_")[1]
  return lambda m, o, x, y, K: _ATENT[variant](m, o, x, y, K, norm)


def _optimizer(method: str, variant: str, params):
  if method.startswith("atent") and variant == "authors":
    return torch.optim.SGD(params, lr=ATENT[method.split("_")[1]].lr, momentum=MOMENTUM)
  return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _check(method: str, variant: str) -> None:
  if method not in METHODS:
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def make_step(method: str, K: int = 10, batch: int = 128, seed: int = 0,
              threads: int = 2, device: str = "cpu",
              variant: str = "authors") -> Callable[[], None]:
  """Returns a callable that runs ONE full training step of `method` on fixed random data.

  variant: 'authors' or 'optimised' (ATENT only; see the module docstring). device "cuda": the
  same step on a GPU; the callable then waits for the GPU to finish (the timers measure the
  step, not its queueing). `threads` sets torch's process-wide intra-op thread count.
  """
  _check(method, variant)
  if device not in ("cpu", "cuda"):
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
  if device == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("device='cuda' but this torch sees no GPU: install a CUDA build of torch")
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  model = SmallCNN().to(device)
  opt = _optimizer(method, variant, model.parameters())
  g = torch.Generator().manual_seed(seed + 1)
  x = torch.rand(batch, 1, 28, 28, generator=g).to(device)
  y = torch.randint(0, 10, (batch,), generator=g).to(device)
  fn = _step_fn(method, variant)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    fn(model, opt, x, y, K)
    sync()

  return step


def time_step(method: str, K: int, batch: int = 128, repeats: int = 5, warmup: int = 2,
              seed: int = 0, threads: int = 2, device: str = "cpu",
              variant: str = "authors") -> dict:
  """Times `repeats` training steps after `warmup` untimed ones (this method alone; for JAX
  next to PyTorch use benchmark.py --reference, which interleaves them).

  Returns {"ms_per_step": median wall ms, "ms_min", "ms_max", "cpu_ms_per_step": median process
  CPU ms (all threads)}.
  """
  step = make_step(method, K, batch, seed, threads, device, variant)
  for _ in range(warmup):
    step()
  times, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    times.append(1e3 * (time.perf_counter() - t0))
    cpu.append(1e3 * (time.process_time() - c0))
  return {"ms_per_step": statistics.median(times), "ms_min": min(times), "ms_max": max(times),
          "cpu_ms_per_step": statistics.median(cpu)}


def _memory_child(method: str, K: int, batch: int, variant: str) -> None:
  step = make_step(method, K, batch, variant=variant)
  # No warm-up step: memory freed by an earlier step may stay in the process (glibc heap) and
  # hide the next step's peak. The first step's extra lazy allocations (SGD momentum buffers,
  # 1.3 MB; thread pools) are small.
  if memory_probe.reset_peak() and memory_probe.rss_kb("VmHWM") is not None:
    base = memory_probe.rss_kb("VmRSS")
    step()
    peak, how = memory_probe.rss_kb("VmHWM"), "VmHWM after clear_refs"
  else:  # fallback: ru_maxrss (KiB on Linux), only meaningful when the step exceeds import peaks
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
  print(json.dumps({"peak_rss_delta_mb": (peak - base) / 1024.0, "peak_rss_mb": peak / 1024.0,
                    "measured_with": how}))


def peak_gpu_memory_mb(method: str, K: int, batch: int = 128,
                       variant: str = "authors") -> float:
  """Peak GPU memory allocated by torch during one training step, above what was held before."""
  step = make_step(method, K, batch, device="cuda", variant=variant)
  torch.cuda.reset_peak_memory_stats()
  base = torch.cuda.memory_allocated()
  step()
  return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_memory_mb(method: str, K: int, batch: int = 128, variant: str = "authors") -> dict:
  """Peak resident memory of one training step, measured in a fresh subprocess.

  What it measures (Linux): once torch is imported and model, optimiser and data exist, the
  kernel's peak-RSS counter is reset (/proc/self/clear_refs = 5); the first training step runs;
  the result is VmHWM (peak RSS during that step) minus VmRSS just before it. That is the host
  memory the step needs on top of the model and data: activations, the K retained graphs of
  ATENT, gradients, optimiser state and whatever torch's CPU allocator takes from the OS (an
  upper bound on live tensors, within page granularity; memory freed and reused inside the step
  is not counted twice).
  Returns {"peak_rss_delta_mb", "peak_rss_mb", "measured_with"}.
  """
  out = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f"--memory_child={method},{K},{batch},{variant}"],
      check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


# --- command line -----------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Called only when run as a script: benchmark.py and the tests import this module, and its
  flags (--methods, --K, --batch, ...) would clash with benchmark.py's."""
  flags.DEFINE_list("methods", list(METHODS), "Methods to time.")
  flags.DEFINE_list("variants", list(VARIANTS), "ATENT variants to time.")
  flags.DEFINE_list("K", ["10", "40"], "Numbers of inner steps (samples) to time.")
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 5, "Timed steps.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
  flags.DEFINE_integer("threads", 2, "Torch threads (on a machine shared with other jobs 2 "
                       "threads can be several times slower than 1: OpenMP waits on "
                       "descheduled threads).")
  flags.DEFINE_bool("memory", False, "Also measure peak RSS (one subprocess per row).")
  flags.DEFINE_list("memory_child", None, "Internal: METHOD,K,BATCH,VARIANT measures one "
                    "step's peak RSS in this process (what --memory runs in a subprocess).")


def _ints(name: str, values, minimum: int, example: str) -> list[int]:
  try:
    ints = [int(v) for v in values]
  except ValueError:
    light_cli.bad_flag(f"--{name}={','.join(values)} is not a comma-separated list of integers, "
              f"e.g. --{name}={example}")
  if not ints or min(ints) < minimum:
    light_cli.bad_flag(f"--{name}={','.join(values)}: every value must be >= {minimum}, "
              f"e.g. --{name}={example}")
  return ints


def _check_names(flag: str, kind: str, values, known) -> None:
  if not values:
    light_cli.bad_flag(f"--{flag} is empty: use some of {','.join(known)}")
  for v in values:
    if v not in known:
      light_cli.bad_flag(f"--{flag}: unknown {kind} {v!r}; use some of {','.join(known)}")


def main(argv) -> None:
  light_cli.exit_if_help(argv, __doc__)
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    msg = str(e).strip().splitlines()[0]
    if msg.startswith("Unknown command line flag") and "Did you mean" not in msg:
      own = sorted(f.name for f in FLAGS.get_key_flags_for_module(argv[0]))
      msg += f": use one of --{', --'.join(own)}"
    light_cli.bad_flag(msg)
  a = FLAGS
  if len(rest) > 1:
    light_cli.bad_flag(f"unexpected arguments: {' '.join(rest[1:])} (flags are --name=value)")
  if a.memory_child:
    if len(a.memory_child) != 4:
      light_cli.bad_flag(f"--memory_child={','.join(a.memory_child)}: use METHOD,K,BATCH,VARIANT")
    m, k, b, v = a.memory_child
    _check_names("memory_child", "method", [m], METHODS)
    _check_names("memory_child", "variant", [v], VARIANTS)
    if not (k.isdigit() and b.isdigit() and int(b) >= 1):
      light_cli.bad_flag(f"--memory_child={','.join(a.memory_child)}: K >= 0 and BATCH >= 1 are "
                "integers, e.g. --memory_child=atent_linf,10,128,authors")
    _memory_child(m, int(k), int(b), v)
    return
  _check_names("methods", "method", a.methods, METHODS)
  _check_names("variants", "variant", a.variants, VARIANTS)
  ks = _ints("K", a.K, 1, "10,40")
  for name, minimum, example in (("batch", 1, 128), ("repeats", 1, 5), ("warmup", 0, 2),
                                 ("threads", 1, 2)):
    if a[name].value < minimum:
      light_cli.bad_flag(f"--{name}={a[name].value} must be >= {minimum}, e.g. --{name}={example}")
  for method in a.methods:
    for variant in (a.variants if method.startswith("atent") else ["-"]):
      for K in ([0] if method == "sgd" else ks):
        t = time_step(method, K, a.batch, a.repeats, a.warmup, threads=a.threads,
                      variant=variant if variant != "-" else "authors")
        rec = {"impl": "torch_reference", "variant": variant, "method": method, "K": K,
               "batch": a.batch, **{k: round(v, 1) for k, v in t.items()},
               "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)}
        if a.memory:
          rec["peak_rss_delta_mb"] = round(peak_memory_mb(
              method, K, a.batch, variant if variant != "-" else "authors")["peak_rss_delta_mb"], 1)
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  define_flags()
  main(sys.argv)
