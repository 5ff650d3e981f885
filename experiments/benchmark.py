"""Times full training steps of each method (and, with --reference, the PyTorch reference).

  python experiments/benchmark.py                       # JAX: sgd, pgd_at, trades, atent_* at K 10, 40
  python experiments/benchmark.py --reference           # + the authors' PyTorch step (CPU torch)
  python experiments/benchmark.py --device gpu          # on a GPU (pip install -e .[cuda12])
  python experiments/benchmark.py --device gpu --reference   # + the PyTorch step on the GPU

Each (method, K) runs in a fresh subprocess: compile, `--warmup` untimed steps, then the median
of `--repeats` timed steps (SmallCNN, batch 128, MNIST shapes, random data). Memory: the peak
resident memory of one step above the memory held before it (Linux VmHWM after resetting it;
the same measure as the PyTorch reference's), and on GPU the device's peak bytes in use. XLA's
own plan for the step's temporary buffers (`memory_analysis().temp_size_in_bytes`) is printed
as `xla_temp_mb`. One JSON object per line:
  {"impl": "jax", "method": ..., "K": ..., "batch": ..., "ms_per_step": ..., "peak_mem_mb": ...}
and, last, {"ratios": {...}} comparing against the targets of the performance issue.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import memory_probe  # noqa: E402

# name -> (config.method, extra config overrides)
VARIANTS = {
    "sgd": ("sgd", {}),
    "pgd_at": ("pgd_at", {}),
    "trades": ("trades", {}),
    "atent_linf": ("atent_linf", {}),
    "atent_linf_tol1e-3": ("atent_linf", {"sampler.ema_tolerance": 1e-3}),
    "atent_linf_two_pass": ("atent_linf", {"sampler.fused": False}),
    "atent_linf_rolled": ("atent_linf", {"sampler.unroll": 1}),
    "atent_linf_unrolled": ("atent_linf", {"sampler.unroll": 0}),
    # partial unrolling: a rolled loop over blocks of 5 / 10 straight-line steps
    "atent_linf_unroll5": ("atent_linf", {"sampler.unroll": 5}),
    "atent_linf_unroll10": ("atent_linf", {"sampler.unroll": 10}),
    "atent_l2": ("atent_l2", {"sampler.norm": "l2", "sampler.eps": 2.0, "sampler.step_size": 0.25,
                              "sampler.gamma": 0.05}),
}


def _config(variant: str, K: int, batch: int):
  spec = importlib.util.spec_from_file_location(
      "default", os.path.join(_HERE, "configs", "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  method, overrides = VARIANTS[variant]
  config.method = method
  config.model.name = "small_cnn"
  config.train.batch_size = batch
  config.sampler.num_steps = max(K, 1)
  config.sampler.norm, config.sampler.eps, config.sampler.step_size = "linf", 0.3, 0.01
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  return config


def run_child(variant: str, K: int, batch: int, repeats: int, warmup: int) -> dict:
  """One (variant, K) measurement in this process."""
  import atent_jax  # noqa: F401  (sets the CPU XLA flags before JAX starts)
  import jax
  import numpy as np
  from atent_jax import models, train

  config = _config(variant, K, batch)
  model = models.get_model(config.model)
  tx, _ = train.make_optimizer(config, 100)
  state = train.init_state(config, model, tx, (28, 28, 1))
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32))
  y = jax.device_put(rng.integers(0, 10, batch).astype(np.int32))
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  step = jax.jit(train.make_train_step(config, model, tx)).lower(state, x, y, key).compile()
  compile_s = time.perf_counter() - t0
  try:
    xla_temp_mb = step.memory_analysis().temp_size_in_bytes / 2**20
  except Exception:  # not every backend reports it
    xla_temp_mb = None

  # Memory of one step (before any timing: freed heap pages would hide the next peak).
  device = jax.devices()[0]
  peak_mb = None
  if device.platform == "cpu" and memory_probe.reset_peak():
    base = memory_probe.rss_kb("VmRSS")
    jax.block_until_ready(step(state, x, y, key))
    peak_mb = (memory_probe.rss_kb("VmHWM") - base) / 1024
  else:
    # GPU: the allocator's peak during the step above what it held before (params, data); the
    # peak counter is process-wide, so an earlier, larger peak would hide the step's.
    base = (device.memory_stats() or {}).get("bytes_in_use")
    jax.block_until_ready(step(state, x, y, key))
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats and base is not None:
      peak_mb = (stats["peak_bytes_in_use"] - base) / 2**20

  for _ in range(warmup):
    jax.block_until_ready(step(state, x, y, key))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(step(state, x, y, key))
    times.append(time.perf_counter() - t0)
  return {"impl": "jax", "method": variant, "K": K, "batch": batch,
          "ms_per_step": round(1e3 * statistics.median(times), 1),
          "peak_mem_mb": None if peak_mb is None else round(peak_mb, 1),
          "xla_temp_mb": None if xla_temp_mb is None else round(xla_temp_mb, 1),
          "compile_s": round(compile_s, 1), "device": device.platform,
          "loadavg_1m": round(os.getloadavg()[0], 2)}


def _in_subprocess(args: list[str], env: dict) -> dict:
  out = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, env=env, check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(a, b):
  return None if a is None or b is None or not b else round(a / b, 3)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--methods", default="sgd,pgd_at,trades,atent_linf,atent_linf_tol1e-3,atent_l2")
  p.add_argument("--K", default="10,40")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--memory_K", type=int, default=5,
                 help="also measure atent_linf at this K for the memory-growth ratio")
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--reference", action="store_true",
                 help="also time the PyTorch reference (on the GPU with --device gpu)")
  p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._child:
    print(json.dumps(run_child(a._child[0], int(a._child[1]), a.batch, a.repeats, a.warmup)))
    return

  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cuda" if a.device == "gpu" else "cpu"
  ks = [int(k) for k in a.K.split(",")]
  jobs = []
  for m in a.methods.split(","):
    if m not in VARIANTS:
      p.error(f"--methods: unknown method {m!r}; use some of {', '.join(VARIANTS)}")
    jobs += [(m, 0)] if m == "sgd" else [(m, k) for k in ks]
  if a.memory_K and "atent_linf" in a.methods.split(","):
    jobs.append(("atent_linf", a.memory_K))
  results = {}
  common = ["--batch", str(a.batch), "--repeats", str(a.repeats), "--warmup", str(a.warmup)]
  for m, k in jobs:
    rec = _in_subprocess(["--_child", m, str(k)] + common, env)
    results[("jax", m, k)] = rec
    print(json.dumps(rec), flush=True)

  if a.reference:
    import torch_reference
    torch_device = "cuda" if a.device == "gpu" else "cpu"
    for m, k in jobs:
      if m not in torch_reference.METHODS:
        continue
      kk = max(k, 1) if m != "sgd" else 0
      wall = torch_reference.time_step(m, kk, a.batch, a.repeats, a.warmup, device=torch_device)
      if torch_device == "cuda":
        mem = torch_reference.peak_gpu_memory_mb(m, kk, a.batch)
      else:
        mem = torch_reference.peak_memory_mb(m, kk, a.batch)["peak_rss_delta_mb"]
      rec = {"impl": "torch_reference", "method": m, "K": k, "batch": a.batch,
             "ms_per_step": round(wall, 1), "peak_mem_mb": round(mem, 1),
             "device": torch_device, "loadavg_1m": round(os.getloadavg()[0], 2)}
      results[("torch", m, k)] = rec
      print(json.dumps(rec), flush=True)

  def ms(impl, m, k):
    r = results.get((impl, m, k))
    return r and r["ms_per_step"]

  def mem(impl, m, k):
    r = results.get((impl, m, k))
    return r and r["peak_mem_mb"]

  ratios = {}
  for k in ks:
    ratios[f"atent_linf_vs_torch_atent_linf_K{k} (target <= 0.5)"] = _ratio(
        ms("jax", "atent_linf", k), ms("torch", "atent_linf", k))
    ratios[f"atent_linf_vs_pgd_at_K{k} (target <= 1.6)"] = _ratio(
        ms("jax", "atent_linf", k), ms("jax", "pgd_at", k))
    ratios[f"atent_linf_tol1e-3_vs_pgd_at_K{k} (target <= 1.15)"] = _ratio(
        ms("jax", "atent_linf_tol1e-3", k), ms("jax", "pgd_at", k))
  if a.memory_K:
    ratios[f"atent_linf_mem_K{max(ks)}_vs_K{a.memory_K} (target <= 1.25)"] = _ratio(
        mem("jax", "atent_linf", max(ks)), mem("jax", "atent_linf", a.memory_K))
  ratios["sgd_vs_torch_sgd (target <= 1.0)"] = _ratio(ms("jax", "sgd", 0), ms("torch", "sgd", 0))
  print(json.dumps({"ratios": ratios}), flush=True)


if __name__ == "__main__":
  main()
