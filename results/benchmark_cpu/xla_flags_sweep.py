"""XLA:CPU flags of jaxlib 0.10 as a lever for the training step (the performance issue, point 2).

XLA reads its flags once per process, so each flag set runs in its own child process; the
children alternate (flag set A, B, ..., then A, B, ... again) so that a change of load hits every
set alike. A child builds the SGD and exact ATENT-l_inf K 10 steps of experiments/benchmark.py
(SmallCNN, batch 128, the library's ops), runs 1 warm-up and then ROUNDS steps of each, and
reports process CPU ms per step. It also checks that the flags change no result:
  * the SmallCNN gradient (w.r.t. the parameters and the input) of a fixed batch must equal the
    library-default child's to 1e-4 relative (float32 summation order may differ);
  * the check that caught YNNPACK's "eltwise" fusion (NaN / 1e35 for a jitted relu(h) @ W with a
    uniform W baked into the program; tests/test_xla_flags.py) must give NumPy's values.

  taskset -c 1 python results/benchmark_cpu/xla_flags_sweep.py [--repeats 2] [SET ...]

The sets are named below; "library" is what `import atent_jax` sets on this jaxlib. Every other
set replaces the library's flag (ATENT_JAX_NO_XLA_FLAGS=1) with its own.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))

_YNN = "--xla_cpu_experimental_ynn_fusion_type="
LIBRARY_YNN = _YNN + "individual_convolution,individual_dot,dot,reduce"
FLAG_SETS = {
    "library": None,  # whatever atent_jax adds
    "no flags": "",
    "no YNNPACK": _YNN,
    "oneDNN dot": _YNN + " --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "oneDNN dot+eltwise": _YNN + " --xla_cpu_use_onednn=true "
                          "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "XNNPACK dot": _YNN + " --xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=dot",
    "fast math": LIBRARY_YNN + " --xla_cpu_enable_fast_math=true",
    "concurrency scheduler off": LIBRARY_YNN
                                 + " --xla_cpu_enable_concurrency_optimized_scheduler=false",
    "fusion emitters off": LIBRARY_YNN + " --xla_cpu_use_fusion_emitters=false",
}
ROWS = (("sgd", 0), ("atent_linf", 10))
ROUNDS = 5


def child(out_path: str) -> None:
  sys.path.insert(0, _ROOT)
  sys.path.insert(0, os.path.join(_ROOT, "experiments"))
  import benchmark  # experiments/benchmark.py: the same steps as its rows
  import jax
  import jax.numpy as jnp
  import numpy as np

  from atent_jax import models

  steps = {f"{v} K {k}": benchmark.build_jax_step(v, k, 128) for v, k in ROWS}
  for step, _ in steps.values():
    step()
  times = {name: [] for name in steps}
  for _ in range(ROUNDS):
    for name, (step, _) in steps.items():
      t0 = time.process_time()
      step()
      times[name].append(1e3 * (time.process_time() - t0))

  # Result checks.
  import ml_collections
  model = models.get_model(ml_collections.ConfigDict({"name": "small_cnn"}))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (128, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 128), jnp.int32)
  params = model.init(jax.random.PRNGKey(1), x[:1], train=False)
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * jnp.sign(p + 1e-3), params)  # not zero

  def loss(p, xx):
    logits = model.apply(p, xx, train=False)
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  flat = np.concatenate([np.ravel(np.asarray(g, np.float64))
                         for g in jax.tree_util.tree_leaves(grads)])
  h = rng.normal(size=(128, 200)).astype(np.float32)
  splat_ok = True
  for fill in (0.0, 1e-3):
    w = np.full((200, 10), fill, np.float32)
    baked = jnp.asarray(w)  # closed over: a constant in the program
    got = jax.jit(lambda a: jax.nn.relu(a) @ baked)(jnp.asarray(h))  # noqa: B023
    want = np.maximum(h.astype(np.float64), 0) @ w.astype(np.float64)
    splat_ok &= bool(np.allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5))
  np.save(out_path + ".npy", flat)
  with open(out_path, "w") as f:
    json.dump({"xla_flags": os.environ.get("XLA_FLAGS", ""),  # after atent_jax's additions
               "ms": times, "compile_s": {n: info["compile_s"] for n, (_, info) in steps.items()},
               "splat_ok": splat_ok, "load": os.getloadavg()[0]}, f)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("sets", nargs="*", default=list(FLAG_SETS))
  parser.add_argument("--repeats", type=int, default=2, help="children per flag set")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args.child)
  unknown = [s for s in args.sets if s not in FLAG_SETS]
  if unknown:
    sys.exit(f"unknown flag sets {unknown}: use any of {list(FLAG_SETS)}")
  sets = ["library"] + [s for s in args.sets if s != "library"]
  tmp = tempfile.mkdtemp(prefix="xla_flags_sweep_")
  results = {s: [] for s in sets}
  print(f"load average {os.getloadavg()[0]:.2f}; CPUs {len(os.sched_getaffinity(0))}", flush=True)
  for r in range(args.repeats):
    for s in sets:
      env = dict(os.environ)
      env.pop("XLA_FLAGS", None)
      if FLAG_SETS[s] is not None:
        env.update(ATENT_JAX_NO_XLA_FLAGS="1", XLA_FLAGS=FLAG_SETS[s])
      out = os.path.join(tmp, f"{len(results[s])}_{sets.index(s)}.json")
      done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", out], env=env,
                            capture_output=True, text=True)
      if done.returncode != 0:
        print(f"{s}: child failed ({done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
        continue
      with open(out) as f:
        res = json.load(f)
      res["grad"] = out + ".npy"
      results[s].append(res)
      print(f"round {r + 1} {s}: " + ", ".join(
          f"{n} {statistics.median(t):,.0f} ms" for n, t in res["ms"].items()), flush=True)
  import numpy as np
  base = [np.load(res["grad"]) for res in results["library"]]
  print("\n| flag set | " + " | ".join(f"{v} K {k}: CPU ms, median (min-max)" for v, k in ROWS)
        + " | vs library | gradient rel. diff | splat check |")
  print("|---|" + "---:|" * len(ROWS) + "---|---|---|")
  lib = {n: statistics.median(t for res in results["library"] for t in res["ms"][n])
         for n in results["library"][0]["ms"]} if results["library"] else {}
  for s in sets:
    if not results[s]:
      print(f"| {s} | failed |" + " |" * (len(ROWS) + 2))
      continue
    cells, ratios = [], []
    for n in results[s][0]["ms"]:
      t = [x for res in results[s] for x in res["ms"][n]]
      cells.append(f"{statistics.median(t):,.0f} ({min(t):,.0f}-{max(t):,.0f})")
      if n in lib:
        ratios.append(f"{statistics.median(t) / lib[n]:.2f}")
    diff = max(float(np.abs(np.load(res["grad"]) - base[0]).max() / np.abs(base[0]).max())
               for res in results[s]) if base else float("nan")
    splat = "ok" if all(res["splat_ok"] for res in results[s]) else "WRONG"
    print(f"| {s} | " + " | ".join(cells) + f" | {' / '.join(ratios)} | {diff:.0e} | {splat} |")
  print("\nflags per set: " + json.dumps({s: results[s][0]["xla_flags"] for s in sets
                                           if results[s]}))
  print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
