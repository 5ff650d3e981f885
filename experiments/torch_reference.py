"""PyTorch (CPU) reference of the training steps, for benchmarking atent-jax only.

Re-implements, step for step, what the public PyTorch code of the methods does per training
step on MNIST with the TRADES SmallCNN, so we can time it on the same machine:

  sgd         clean cross-entropy step.
  pgd_at      PGD adversarial training (Madry et al.): l_inf, uniform random start, K steps of
              x' += step * sign(grad), projection onto the eps-ball and [0, 1] at every step,
              then one SGD step on CE(model(x'), y).
  trades      TRADES (beta 6): x' = x + 0.001 randn, K steps on KL(model(x') || model(x)) with
              sign gradient and projection (model(x) recomputed inside the loop as the authors'
              code does), then CE(model(x), y) + beta * KL_batchmean.
  atent_linf  ATENT l_inf as the authors wrote it: K Langevin steps, each with (1) a forward
              pass under autograd and torch.autograd.grad w.r.t. x' (eval mode), (2) the update
              x' += step * sign(grad) + noise_scale * sqrt(2 step) * randn, clamp to [0, 1]
              (projection to the eps-ball only after the last step), (3) a second forward pass
              (train mode) whose loss stays in the graph: mu = (1 - alpha) mu + alpha loss_k.
              All K graphs are retained; then ONE backward of mu and the SGD update.
  atent_l2    the same with x' += step * g / ||g||_2 (per example) + gamma (x - x') + noise,
              projection to the l_2 eps-ball (eps 2) after the last step.

Optimiser for every method: SGD, lr 0.01, momentum 0.9, weight decay 1e-4. Data: fixed random
MNIST-shaped tensors (values in [0, 1], random labels) - timing does not depend on the values.
Assumptions where the brief leaves freedom (they do not change the cost): ATENT starts from
x + 0.001 randn with mu = 0; its sampler loss is CE; noise_scale defaults to 1e-3.

Torch is an optional benchmark dependency (`pip install torch`); 2 threads are used.

Usage:
  python experiments/torch_reference.py                      # all methods, K 10 and 40
  python experiments/torch_reference.py --methods atent_linf --K 10 --repeats 5 --memory
Prints one JSON object per line:
  {"impl": "torch_reference", "method": ..., "K": ..., "batch": 128, "ms_per_step": ...}
plus "cpu_ms_per_step" (process CPU time, all threads), "threads", "loadavg_1m" (to spot a
shared, busy machine), and with --memory "peak_rss_delta_mb" (see `peak_memory_mb`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memory_probe  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("sgd", "pgd_at", "trades", "atent_linf", "atent_l2")

# Hyper-parameters (MNIST settings of the respective papers / the brief).
LINF_EPS = 0.3
LINF_STEP = 0.01
TRADES_BETA = 6.0
ATENT_ALPHA = 0.9
ATENT_NOISE_SCALE = 1e-3
L2_EPS = 2.0
L2_STEP = 0.25
L2_GAMMA = 0.05
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


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


def _atent(model, opt, x, y, K, norm):
  ce = lambda logits: F.cross_entropy(logits, y)
  step = LINF_STEP if norm == "linf" else L2_STEP
  x_adv = x.detach() + 0.001 * torch.randn_like(x)
  mu = torch.zeros((), device=x.device)
  for k in range(K):
    model.eval()
    g = _input_grad(model, ce, x_adv)
    noise = ATENT_NOISE_SCALE * math.sqrt(2.0 * step) * torch.randn_like(x)
    if norm == "linf":
      x_adv = x_adv.detach() + step * torch.sign(g) + noise
    else:
      gn = g / g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
      x_adv = x_adv.detach() + step * gn + L2_GAMMA * (x - x_adv.detach()) + noise
    x_adv = x_adv.clamp(0.0, 1.0)
    if k == K - 1:
      x_adv = (_project_linf(x_adv, x, LINF_EPS) if norm == "linf"
               else _project_l2(x_adv, x, L2_EPS)).clamp(0.0, 1.0)
    model.train()
    loss_k = ce(model(x_adv.detach()))  # kept in the graph: all K graphs are retained
    mu = (1.0 - ATENT_ALPHA) * mu + ATENT_ALPHA * loss_k
  _sgd_step(opt, mu)


_STEPS = {
    "sgd": _clean,
    "pgd_at": _pgd_at,
    "trades": _trades,
    "atent_linf": lambda m, o, x, y, K: _atent(m, o, x, y, K, "linf"),
    "atent_l2": lambda m, o, x, y, K: _atent(m, o, x, y, K, "l2"),
}


def make_step(method: str, K: int = 10, batch: int = 128, seed: int = 0,
              threads: int = 2, device: str = "cpu") -> Callable[[], None]:
  """Returns a callable that runs ONE full training step of `method` on fixed random data.

  device "cuda": the same step on a GPU; the callable then waits for the GPU to finish (the
  timers measure the step, not its queueing).
  """
  if method not in _STEPS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if device not in ("cpu", "cuda"):
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
  if device == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("device='cuda' but this torch sees no GPU: install a CUDA build of torch")
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  model = SmallCNN().to(device)
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  g = torch.Generator().manual_seed(seed + 1)
  x = torch.rand(batch, 1, 28, 28, generator=g).to(device)
  y = torch.randint(0, 10, (batch,), generator=g).to(device)
  fn = _STEPS[method]
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    fn(model, opt, x, y, K)
    sync()

  return step


def time_step(method: str, K: int, batch: int = 128, repeats: int = 5, warmup: int = 2,
              seed: int = 0, with_cpu: bool = False, threads: int = 2, device: str = "cpu"):
  """Median wall time (ms) of one training step after `warmup` untimed steps.

  With with_cpu=True returns (wall_ms, cpu_ms): cpu_ms is the median process CPU time (all
  threads) per step, less sensitive than wall time to other processes sharing the cores.
  """
  step = make_step(method, K, batch, seed, threads, device)
  for _ in range(warmup):
    step()
  times, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  wall = 1e3 * statistics.median(times)
  return (wall, 1e3 * statistics.median(cpu)) if with_cpu else wall


def _memory_child(method: str, K: int, batch: int) -> None:
  step = make_step(method, K, batch)
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


def peak_gpu_memory_mb(method: str, K: int, batch: int = 128) -> float:
  """Peak GPU memory allocated by torch during one training step, above what was held before."""
  step = make_step(method, K, batch, device="cuda")
  torch.cuda.reset_peak_memory_stats()
  base = torch.cuda.memory_allocated()
  step()
  return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_memory_mb(method: str, K: int, batch: int = 128) -> dict:
  """Peak resident memory of one training step, measured in a fresh subprocess.

  What it measures (Linux): once torch is imported and model, optimiser and data exist, the
  kernel's peak-RSS counter is reset (/proc/self/clear_refs = 5); the first training step runs;
  the result is VmHWM (peak RSS during that step) minus VmRSS just before it. That is the host memory the step needs on top of the
  model and data: activations, the K retained graphs of ATENT, gradients, optimiser state and
  whatever torch's CPU allocator takes from the OS (an upper bound on live tensors, within
  page granularity; memory freed and reused inside the step is not counted twice).
  Returns {"peak_rss_delta_mb", "peak_rss_mb", "measured_with"}.
  """
  out = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--_memory-child", method, str(K), str(batch)],
      check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--K", default="10,40", help="comma-separated inner-step counts")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=2,
                 help="torch threads (2; on a machine shared with other jobs 2 threads can be "
                      "4-5x slower than 1 because of OpenMP waits on descheduled threads)")
  p.add_argument("--memory", action="store_true", help="also measure peak RSS (subprocess)")
  p.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._memory_child:
    m, k, b = a._memory_child
    _memory_child(m, int(k), int(b))
    return
  for method in a.methods.split(","):
    ks = [0] if method == "sgd" else [int(k) for k in a.K.split(",")]
    for K in ks:
      wall, cpu = time_step(method, K, a.batch, a.repeats, a.warmup, with_cpu=True,
                            threads=a.threads)
      rec = {"impl": "torch_reference", "method": method, "K": K, "batch": a.batch,
             "ms_per_step": round(wall, 1), "cpu_ms_per_step": round(cpu, 1),
             "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2)}
      if a.memory:
        rec["peak_rss_delta_mb"] = round(peak_memory_mb(method, K, a.batch)["peak_rss_delta_mb"], 1)
      print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  main()
