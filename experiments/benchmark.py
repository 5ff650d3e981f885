"""Times full training steps of each method; with --reference, next to the PyTorch reference.

  python experiments/benchmark.py               # JAX alone: sgd, pgd_at, trades, atent_* (K 10, 40)
  python experiments/benchmark.py --reference      # JAX and PyTorch interleaved in one process
  python experiments/benchmark.py --attacks        # AutoAttack (standard) and PGD-100, 1,000 images
  python experiments/benchmark.py --device gpu [--reference]   # on a GPU (pip install -e .[cuda12])

Default mode: each (method, K) runs in a fresh subprocess: compile, `--warmup` untimed steps,
then `--repeats` timed steps (SmallCNN, batch 128, MNIST shapes, random data); memory is the
peak resident memory of one step above what the process held before it (Linux VmHWM after
resetting it), on GPU the device's peak bytes in use; `xla_temp_mb` is XLA's own plan for the
step's temporary buffers. Rows run minutes apart: compare them with care on a shared machine.

--reference: every row of one K (JAX methods, PyTorch `authors` and `optimised` steps of
experiments/torch_reference.py, the PyTorch baselines) is built in THIS process, warmed up, then
timed in `--repeats` rounds; each round runs every row once, in an order rotated by one row per
round, so all rows see the same load. Per row: median and min-max wall ms, median process CPU
ms (all threads of the process), load average before and after. A row is marked unreliable when
its spread (max - min) / median exceeds --max_spread, or when its method's time does not scale
roughly linearly in K (t(K_max) / t(K_min) outside [0.5, 1.3] x K_max / K_min). The ratios are
per round (JAX / PyTorch of the same round, then median and min-max over rounds). Memory is not
measured in this mode (it needs a fresh process per row: use the default mode and
`torch_reference.py --memory`).
On a machine shared with other work, wall times follow the scheduler, and PyTorch's OpenMP
threads (2 by default) wait for each other whenever one is descheduled (measured here at load
~20: a batch-128 SGD step took 4.2 s wall with 2 threads, 2.2 s with 1). One core each:
  taskset -c 0 python experiments/benchmark.py --reference --torch_threads 1
(XLA:CPU sizes its thread pool by the CPUs the process may use); the process CPU ms per step
then measure the work of each step, largely whatever the load.

--attacks: SmallCNN (a trained run with --attack_workdir, else freshly initialised) on the first
--num_examples MNIST test images (--data_dir, else the built-in sample): PGD-100 (step 0.01, one
restart; compiled on the first batch, then timed over all) and AutoAttack standard
(atent_jax.attacks.autoattack; wall seconds including its compilations, per member). AutoAttack
runs each member only on the points still robust, so its time depends on the model: on an
untrained model (the default) it is small; --attack_members_on_all_points times each member on
every point instead (the cost on a model that no member breaks: an upper bound).

One JSON object per line; --reference and --attacks end with a markdown table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path.insert(0, _ROOT)
sys.path.insert(0, _HERE)

import light_cli
import memory_probe
from absl import flags

# name -> (config.method, extra config overrides). The ATENT rows use Table 2's code settings
# (projection every sample, noise 1e-4; experiments/configs/mnist_linf.py) at the K asked for;
# the projection rule and the noise do not change the cost.
_LINF_CODE = {"sampler.project_every_step": True, "sampler.noise_scale": 1e-4}
VARIANTS = {
    "sgd": ("sgd", {}),
    "pgd_at": ("pgd_at", {}),
    "trades": ("trades", {}),
    "atent_linf": ("atent_linf", _LINF_CODE),
    # Skips the weight gradients of samples whose EMA weight is below the tolerance.
    # 5e-7: the skipped weight mass is below 1e-6 (alpha 0.9: sum_{j>=7} 0.9 * 0.1^j = 1e-7).
    "atent_linf_tol5e-7": ("atent_linf", {**_LINF_CODE, "sampler.ema_tolerance": 5e-7}),
    "atent_linf_tol1e-3": ("atent_linf", {**_LINF_CODE, "sampler.ema_tolerance": 1e-3}),
    "atent_linf_two_pass": ("atent_linf", {**_LINF_CODE, "sampler.fused": False}),
    "atent_linf_rolled": ("atent_linf", {**_LINF_CODE, "sampler.unroll": 1}),
    "atent_linf_unrolled": ("atent_linf", {**_LINF_CODE, "sampler.unroll": 0}),
    # partial unrolling: a rolled loop over blocks of 5 / 10 straight-line steps
    "atent_linf_unroll5": ("atent_linf", {**_LINF_CODE, "sampler.unroll": 5}),
    "atent_linf_unroll10": ("atent_linf", {**_LINF_CODE, "sampler.unroll": 10}),
    # Table 1's code settings (notebooks/mnist_exps_l2.ipynb), on SmallCNN like every row.
    "atent_l2": ("atent_l2", {"sampler.norm": "l2", "sampler.eps": 2.0, "sampler.step_size": 0.75,
                              "sampler.gamma": 0.05, "sampler.noise_scale": 1e-2,
                              "sampler.alpha": 0.95, "sampler.project_every_step": True}),
}
# The PyTorch rows each JAX method is compared with (torch_reference method, variants).
_TORCH_ROWS = {"sgd": ("sgd", ("-",)), "pgd_at": ("pgd_at", ("-",)),
               "trades": ("trades", ("-",)),
               "atent_linf": ("atent_linf", ("authors", "optimised")),
               "atent_l2": ("atent_l2", ("authors", "optimised"))}
SCALING_BAND = (0.5, 1.3)  # t(K_max)/t(K_min) over K_max/K_min: "roughly linear"


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


def build_jax_step(variant: str, K: int, batch: int):
  """(step, info): `step()` runs one compiled training step of `variant` and waits for it (the
  state is not advanced: every call times the same work); info has compile_s, xla_temp_mb."""
  import jax
  import numpy as np

  import atent_jax  # noqa: F401  (sets the CPU XLA flags before JAX starts)
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
  compiled = jax.jit(train.make_train_step(config, model, tx)).lower(state, x, y, key).compile()
  info = {"compile_s": round(time.perf_counter() - t0, 1), "xla_temp_mb": None}
  try:
    info["xla_temp_mb"] = round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)
  except (AttributeError, NotImplementedError, RuntimeError):  # not every backend reports it
    pass

  def step():
    jax.block_until_ready(compiled(state, x, y, key))

  return step, info


def run_child(variant: str, K: int, batch: int, repeats: int, warmup: int) -> dict:
  """One (variant, K) measurement in this process (default mode)."""
  import jax
  step, info = build_jax_step(variant, K, batch)
  # Memory of one step (before any timing: freed heap pages would hide the next peak).
  device = jax.devices()[0]
  peak_mb = None
  if device.platform == "cpu" and memory_probe.reset_peak():
    base = memory_probe.rss_kb("VmRSS")
    step()
    peak_mb = (memory_probe.rss_kb("VmHWM") - base) / 1024
  else:
    # GPU: the allocator's peak during the step above what it held before (params, data); the
    # peak counter is process-wide, so an earlier, larger peak would hide the step's.
    base = (device.memory_stats() or {}).get("bytes_in_use")
    step()
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats and base is not None:
      peak_mb = (stats["peak_bytes_in_use"] - base) / 2**20
  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    times.append(1e3 * (time.perf_counter() - t0))
  return {"impl": "jax", "method": variant, "K": K, "batch": batch,
          "ms_per_step": round(statistics.median(times), 1), "ms_min": round(min(times), 1),
          "ms_max": round(max(times), 1),
          "peak_mem_mb": None if peak_mb is None else round(peak_mb, 1),
          **info, "device": device.platform, "loadavg_1m": round(os.getloadavg()[0], 2)}


def _in_subprocess(args: list[str], env: dict) -> dict:
  out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(a, b):
  return None if a is None or b is None or not b else round(a / b, 3)


def _load() -> list[float]:
  return [round(v, 2) for v in os.getloadavg()]


def _cpus() -> int:
  """The CPUs this process may run on (taskset), which XLA:CPU sizes its thread pool by."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


# --- --reference: JAX and PyTorch interleaved in one process ------------------------------------

def _row_label(row: dict) -> str:
  if row["impl"] == "jax":
    return f"JAX {row['method']}"
  v = "" if row["variant"] == "-" else f" ({row['variant']})"
  return f"PyTorch {row['method']}{v}"


def interleaved_rounds(rows: list[dict], repeats: int, warmup: int) -> None:
  """Warms every row up, then runs `repeats` rounds of every row once (order rotated by one row
  per round); appends wall and CPU ms to row['wall'] and row['cpu']."""
  for row in rows:
    for _ in range(warmup):
      row["step"]()
    row["wall"], row["cpu"] = [], []
  n = len(rows)
  for r in range(repeats):
    for i in range(n):
      row = rows[(i + r) % n]
      t0, c0 = time.perf_counter(), time.process_time()
      row["step"]()
      row["wall"].append(1e3 * (time.perf_counter() - t0))
      row["cpu"].append(1e3 * (time.process_time() - c0))


def summarise(row: dict, max_spread: float) -> dict:
  """The row's JSON record: median, min-max, spread, CPU ms, reasons it is unreliable."""
  wall = row["wall"]
  med = statistics.median(wall)
  spread = (max(wall) - min(wall)) / med
  rec = {"impl": row["impl"], "variant": row["variant"], "method": row["method"], "K": row["K"],
         "batch": row["batch"], "ms_median": round(med, 1), "ms_min": round(min(wall), 1),
         "ms_max": round(max(wall), 1), "spread": round(spread, 2),
         "cpu_ms_median": round(statistics.median(row["cpu"]), 1), "n": len(wall),
         "load_before": row["load_before"], "load_after": row["load_after"],
         "wall_ms": [round(t, 1) for t in wall], "cpu_ms": [round(t, 1) for t in row["cpu"]],
         "unreliable": []}
  if spread > max_spread:
    rec["unreliable"].append(f"spread {spread:.2f} > {max_spread}")
  if "compile_s" in row:
    rec["compile_s"] = row["compile_s"]
  return rec


def check_scaling(records: list[dict]) -> dict:
  """Marks the records of a method whose time is not roughly linear in K, by wall time and by
  process CPU time (CPU time stays linear when only the load changed between the K groups);
  returns {label: {"wall": ..., "cpu": ...}}, each t(K_max)/t(K_min) over K_max/K_min."""
  out = {}
  groups: dict = {}
  for rec in records:
    if rec["K"] > 0:
      groups.setdefault((rec["impl"], rec["variant"], rec["method"]), []).append(rec)
  for (impl, variant, method), recs in groups.items():
    lo, hi = min(recs, key=lambda r: r["K"]), max(recs, key=lambda r: r["K"])
    if lo["K"] == hi["K"]:
      continue
    k_ratio = hi["K"] / lo["K"]
    rel = {}
    for what, field in (("wall", "ms_median"), ("CPU", "cpu_ms_median")):
      if field not in lo or field not in hi:
        continue
      t_ratio = hi[field] / lo[field]
      rel[what.lower()] = round(t_ratio / k_ratio, 2)
      if not SCALING_BAND[0] <= t_ratio / k_ratio <= SCALING_BAND[1]:
        for rec in recs:
          rec["unreliable"].append(f"K-scaling ({what}): t(K {hi['K']}) / t(K {lo['K']}) = "
                                   f"{t_ratio:.1f} for K x{k_ratio:.0f}")
    out[_row_label({"impl": impl, "variant": variant, "method": method})] = rel
  return out


def paired_ratio(a: dict, b: dict) -> dict:
  """a / b round by round (both rows ran in the same rounds): median and min-max of the wall
  time ratios, and the median of the process-CPU-time ratios."""
  r = [x / y for x, y in zip(a["wall"], b["wall"])]
  c = [x / y for x, y in zip(a["cpu"], b["cpu"])]
  return {"median": round(statistics.median(r), 3), "min": round(min(r), 3),
          "max": round(max(r), 3), "cpu_median": round(statistics.median(c), 3)}


def run_reference(methods: list[str], ks: list[int], batch: int, repeats: int, warmup: int,
                  torch_threads: int, device: str, max_spread: float) -> list[dict]:
  import torch_reference
  torch_device = "cuda" if device == "gpu" else "cpu"
  groups = sorted({0 if m == "sgd" else k for m in methods for k in ks})
  all_records, ratios = [], {}
  for K in groups:
    rows = []
    for m in methods:
      if (m == "sgd") != (K == 0):
        continue
      step, info = build_jax_step(m, K, batch)
      rows.append({"impl": "jax", "variant": "-", "method": m, "K": K, "batch": batch,
                   "step": step, **info})
      if VARIANTS[m][0] in _TORCH_ROWS:
        tm, tvariants = _TORCH_ROWS[VARIANTS[m][0]]
        for v in tvariants:
          if any(r["impl"] == "torch" and r["method"] == tm and r["variant"] == v for r in rows):
            continue
          rows.append({"impl": "torch", "variant": v, "method": tm, "K": K, "batch": batch,
                       "step": torch_reference.make_step(
                           tm, K, batch, threads=torch_threads, device=torch_device,
                           variant="authors" if v == "-" else v)})
    print(f"K {K}: {len(rows)} rows built, timing {repeats} rounds", file=sys.stderr, flush=True)
    load_before = _load()
    interleaved_rounds(rows, repeats, warmup)
    load_after = _load()
    for row in rows:
      row["load_before"], row["load_after"] = load_before, load_after
      rec = summarise(row, max_spread)
      row["record"] = rec
      all_records.append(rec)

    def find(impl, method, variant="-", rows=rows):
      return next((r for r in rows if r["impl"] == impl and r["method"] == method
                   and r["variant"] == variant), None)

    pairs = []
    for m in methods:
      j = find("jax", m)
      if j is None:
        continue
      base = VARIANTS[m][0]
      if base in _TORCH_ROWS:
        tm, tvariants = _TORCH_ROWS[base]
        pairs += [(f"JAX {m} / PyTorch {tm}{'' if v == '-' else f' ({v})'}", j,
                   find("torch", tm, v)) for v in tvariants]
      if base.startswith("atent"):
        pairs.append((f"JAX {m} / JAX pgd_at", j, find("jax", "pgd_at")))
    for name, a, b in pairs:
      if b is not None:
        ratios[f"{name}, K {K}"] = paired_ratio(a, b)
  scaling = check_scaling(all_records)
  for rec in all_records:
    print(json.dumps(rec), flush=True)
  print(json.dumps({"k_scaling_over_linear": scaling}), flush=True)
  print(json.dumps({"ratios_per_round": ratios}), flush=True)
  print(markdown_table(all_records, ratios, torch_threads), flush=True)
  return all_records


def markdown_table(records: list[dict], ratios: dict, torch_threads: int) -> str:
  lines = ["| row | K | median ms | min-max ms | CPU ms | load before / after | reliable |",
           "|---|---:|---:|---:|---:|---|---|"]
  for rec in records:
    k = "-" if rec["K"] == 0 else rec["K"]
    ok = "yes" if not rec["unreliable"] else "NO: " + "; ".join(rec["unreliable"])
    lines.append(f"| {_row_label(rec)} | {k} | {rec['ms_median']:,.0f} | "
                 f"{rec['ms_min']:,.0f}-{rec['ms_max']:,.0f} | {rec['cpu_ms_median']:,.0f} | "
                 f"{rec['load_before'][0]} / {rec['load_after'][0]} | {ok} |")
  lines += ["", "| ratio (per round) | wall median | wall min-max | CPU median |",
            "|---|---:|---:|---:|"]
  for name, r in ratios.items():
    lines.append(f"| {name} | {r['median']:.2f} | {r['min']:.2f}-{r['max']:.2f} | "
                 f"{r['cpu_median']:.2f} |")
  lines.append(f"\n(PyTorch threads: {torch_threads}; CPUs this process may use: {_cpus()}; "
               "load = 1-minute load average; CPU ms = process CPU time, all threads.)")
  return "\n".join(lines)


# --- --attacks: AutoAttack next to PGD-100 -----------------------------------------------------

def _mnist_test(data_dir: str, n: int):
  from atent_jax.data import mnist
  if data_dir and os.path.isdir(data_dir):
    images, labels = mnist.load_idx_folder(data_dir, "test")
    source = data_dir
  else:
    images, labels = mnist.load_builtin("test")
    source = "built-in sample"
  import numpy as np
  images = np.asarray(images, np.float32)
  if images.max() > 1.0:
    images = images / 255.0
  return images[:n], np.asarray(labels[:n], np.int32), source


def run_attacks(a) -> list[dict]:
  import jax
  import numpy as np

  import atent_jax  # noqa: F401
  from atent_jax import attacks, models, runs

  try:
    from atent_jax.attacks.autoattack import autoattack, members
  except ImportError as e:
    print(f"error: AutoAttack is not available in this checkout ({e})", file=sys.stderr)
    sys.exit(2)
  x, y, source = _mnist_test(a.data_dir, a.num_examples)
  if a.attack_workdir:
    logits_fn = runs.load_classifier(a.attack_workdir, "best")
    model_desc = f"trained run {a.attack_workdir} (best)"
  else:
    config = _config("sgd", 0, 128)
    model = models.get_model(config.model)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32),
                           train=False)
    logits_fn = jax.jit(lambda v: model.apply(variables, v, train=False))
    model_desc = "freshly initialised SmallCNN (untrained)"
  key = jax.random.PRNGKey(0)
  n, eps, bs = len(y), a.attack_eps, a.attack_batch
  records = []

  def pgd100(xb, yb, kb):
    return attacks.pgd_linf(logits_fn, xb, yb, kb, eps=eps, step_size=0.01, num_steps=100)

  pgd_jit = jax.jit(pgd100)
  t0 = time.perf_counter()
  jax.block_until_ready(pgd_jit(x[:bs], y[:bs], key))  # compile (and one batch)
  warm_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  robust = []
  for s in range(0, n, bs):
    adv = pgd_jit(x[s:s + bs], y[s:s + bs], jax.random.fold_in(key, s))
    robust.append(np.asarray(jnp_argmax(logits_fn(adv))) == y[s:s + bs])
  pgd_s = time.perf_counter() - t0
  records.append({"attack": "PGD-100 (step 0.01, 1 restart)", "seconds": round(pgd_s, 1),
                  "compile_and_first_batch_s": round(warm_s, 1),
                  "robust_accuracy": float(np.mean(np.concatenate(robust)))})
  print(json.dumps(records[-1]), flush=True)

  load_before = _load()
  if a.attack_members_on_all_points:
    for name, fn, kwargs in members("standard"):
      run = jax.jit(lambda xb, yb, kb, fn=fn, kwargs=kwargs: fn(
          logits_fn, xb, yb, kb, norm="linf", eps=eps, **kwargs))
      keys = jax.vmap(jax.random.fold_in, (None, 0))(key, np.arange(n, dtype=np.uint32))
      t0 = time.perf_counter()
      jax.block_until_ready(run(x[:bs], y[:bs], keys[:bs]))
      warm_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      for s in range(0, n, bs):
        jax.block_until_ready(run(x[s:s + bs], y[s:s + bs], keys[s:s + bs]))
      records.append({"attack": f"AutoAttack member {name}, on all {n} points",
                      "seconds": round(time.perf_counter() - t0, 1),
                      "compile_and_first_batch_s": round(warm_s, 1)})
      print(json.dumps(records[-1]), flush=True)
    total = sum(r["seconds"] for r in records[1:])
    records.append({"attack": "AutoAttack standard, every point through every member (sum)",
                    "seconds": round(total, 1)})
  else:
    # Compile every member on a few points first, so the timed run is mostly run time.
    autoattack(logits_fn, x[:16], y[:16], key, norm="linf", eps=eps, version="standard",
                  batch_size=min(bs, 16))
    t0 = time.perf_counter()
    res = autoattack(logits_fn, x, y, key, norm="linf", eps=eps, version="standard",
                        batch_size=bs)
    still = res.clean_correct.copy()
    robust_after = {}
    for name in res.order:
      still &= ~res.per_attack[name]
      robust_after[name] = int(still.sum())
    records.append({"attack": "AutoAttack standard", "seconds": round(time.perf_counter() - t0, 1),
                    "per_member_seconds": {k: round(v, 1) for k, v in res.seconds.items()},
                    "clean_correct": int(res.clean_correct.sum()),
                    "robust_after_member": robust_after,
                    "clean_accuracy": res.clean_accuracy,
                    "robust_accuracy": res.robust_accuracy})
  records[-1].update({"load_before": load_before, "load_after": _load()})
  print(json.dumps(records[-1]), flush=True)
  lines = [(f"Model: {model_desc}; {n} MNIST test images ({source}); l_inf eps {eps}; "
            f"batch {bs}; {jax.devices()[0].platform}."), "",
           "| attack | seconds | x PGD-100 | compilation |", "|---|---:|---:|---|"]
  for r in records:
    compiled = (f"excluded ({r['compile_and_first_batch_s']:,.1f} s for it and a first batch)"
                if "compile_and_first_batch_s" in r else "included")
    lines.append(f"| {r['attack']} | {r['seconds']:,.1f} | {r['seconds'] / pgd_s:.1f} | "
                 f"{compiled} |")
  print("\n".join(lines), flush=True)
  return records


def jnp_argmax(logits):
  import jax.numpy as jnp
  return jnp.argmax(logits, -1)


# --- command line -----------------------------------------------------------------------------

FLAGS = flags.FLAGS
def define_flags() -> None:
  """The command line (defined only when run as a script: tests import this module next to
  others that define flags of the same names)."""
  flags.DEFINE_list("methods", None, "Rows to time; default: sgd,pgd_at,trades,atent_linf,"
                    "atent_linf_tol1e-3,atent_l2 (--reference: sgd,pgd_at,atent_linf,"
                    "atent_linf_tol5e-7).")
  flags.DEFINE_list("K", ["10", "40"], "Numbers of inner steps (samples) to time.")
  flags.DEFINE_integer("batch", 128, "Batch size.")
  flags.DEFINE_integer("repeats", 5, "Timed steps (--reference: rounds).")
  flags.DEFINE_integer("warmup", None, "Untimed steps first; default 2 (--reference: 1).")
  flags.DEFINE_integer("memory_K", 5, "Also measure atent_linf at this K for the memory-growth "
                       "ratio.")
  flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Backend.")
  flags.DEFINE_bool("reference", False, "JAX and the PyTorch reference, interleaved in this "
                    "process.")
  flags.DEFINE_integer("torch_threads", 2, "PyTorch's intra-op threads.")
  flags.DEFINE_float("max_spread", 0.25, "--reference: a row whose (max - min) / median exceeds "
                     "it is unreliable.")
  flags.DEFINE_bool("attacks", False, "Time AutoAttack standard next to PGD-100 on MNIST test "
                    "images.")
  flags.DEFINE_string("attack_workdir", "", "--attacks: a trained SmallCNN run.")
  flags.DEFINE_string("data_dir", os.path.join(os.path.dirname(_ROOT), "shared", "data", "mnist"),
                      "--attacks: folder of MNIST IDX files (else the built-in sample).")
  flags.DEFINE_integer("num_examples", 1000, "--attacks: test images.")
  flags.DEFINE_float("attack_eps", 0.3, "--attacks: l_inf radius.")
  flags.DEFINE_integer("attack_batch", 500, "--attacks: examples per attack call.")
  flags.DEFINE_bool("attack_members_on_all_points", False, "--attacks: time each AutoAttack member "
                    "on every point (upper bound).")
  flags.DEFINE_list("child", None, "Internal: METHOD,K times one row in this process (the default "
                    "mode runs each row in a fresh subprocess).")


def _parse_ks(values) -> list[int]:
  try:
    ks = [int(k) for k in values]
  except ValueError:
    light_cli.bad_flag(
        f"--K={','.join(values)} is not a comma-separated list of integers, e.g. 10,40")
  if not ks or min(ks) < 1:
    light_cli.bad_flag(f"--K={','.join(values)}: every K must be >= 1")
  return ks


def main(argv) -> None:
  light_cli.exit_if_help(argv, __doc__)
  try:
    FLAGS(argv)
  except flags.Error as e:
    light_cli.bad_flag(str(e).splitlines()[0])
  a = FLAGS
  if a.repeats < 1 or a.batch < 1 or (a.warmup is not None and a.warmup < 0):
    light_cli.bad_flag("--repeats and --batch must be >= 1, --warmup >= 0")
  if a.reference and a.attacks:
    light_cli.bad_flag("--reference and --attacks: use one at a time")
  if a.attacks and (a.num_examples < 1 or a.attack_batch < 1 or a.attack_eps <= 0):
    light_cli.bad_flag("--num_examples and --attack_batch must be >= 1, --attack_eps > 0")
  if a.attack_workdir and not os.path.isdir(a.attack_workdir):
    light_cli.bad_flag(f"--attack_workdir={a.attack_workdir} is not a directory")
  if a.child:
    if len(a.child) != 2:
      light_cli.bad_flag(f"--child={','.join(a.child)}: use METHOD,K")
    print(json.dumps(run_child(a.child[0], int(a.child[1]), a.batch, a.repeats,
                               2 if a.warmup is None else a.warmup)))
    return
  if a.attacks:
    run_attacks(a)
    return

  default_methods = (["sgd", "pgd_at", "atent_linf", "atent_linf_tol5e-7"] if a.reference
                     else ["sgd", "pgd_at", "trades", "atent_linf", "atent_linf_tol1e-3",
                           "atent_l2"])
  methods = a.methods or default_methods
  for m in methods:
    if m not in VARIANTS:
      light_cli.bad_flag(f"--methods: unknown method {m!r}; use some of {', '.join(VARIANTS)}")
  ks = _parse_ks(a.K)
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cuda" if a.device == "gpu" else "cpu"
  if a.reference:
    if a.repeats < 5:
      print(f"note: --repeats {a.repeats} < 5: too few rounds for a spread", file=sys.stderr)
    os.environ["JAX_PLATFORMS"] = env["JAX_PLATFORMS"]
    print(json.dumps({"load_start": _load(), "cpus": _cpus(),
                      "torch_threads": a.torch_threads}), flush=True)
    run_reference(methods, ks, a.batch, a.repeats, 1 if a.warmup is None else a.warmup,
                  a.torch_threads, a.device, a.max_spread)
    print(json.dumps({"load_end": _load()}), flush=True)
    return

  warmup = 2 if a.warmup is None else a.warmup
  jobs = []
  for m in methods:
    jobs += [(m, 0)] if m == "sgd" else [(m, k) for k in ks]
  if a.memory_K and "atent_linf" in methods:
    jobs.append(("atent_linf", a.memory_K))
  results = {}
  common = ["--batch", str(a.batch), "--repeats", str(a.repeats), "--warmup", str(warmup)]
  for m, k in jobs:
    rec = _in_subprocess([f"--child={m},{k}", *common], env)
    results[(m, k)] = rec
    print(json.dumps(rec), flush=True)

  def ms(m, k):
    r = results.get((m, k))
    return r and r["ms_per_step"]

  ratios = {}
  for k in ks:
    ratios[f"atent_linf_vs_pgd_at_K{k} (target <= 1.6)"] = _ratio(ms("atent_linf", k),
                                                                   ms("pgd_at", k))
  if a.memory_K and ("atent_linf", a.memory_K) in results and ("atent_linf", max(ks)) in results:
    ratios[f"atent_linf_mem_K{max(ks)}_vs_K{a.memory_K}"] = _ratio(
        results[("atent_linf", max(ks))]["peak_mem_mb"],
        results[("atent_linf", a.memory_K)]["peak_mem_mb"])
  print(json.dumps({"ratios (rows run minutes apart; for JAX vs PyTorch use --reference)":
                    ratios}), flush=True)


if __name__ == "__main__":
  define_flags()
  main(sys.argv)
