#!/usr/bin/env bash
# The GPU measurements of results/gpu_h200/, as one script per stage (each fits a short lease).
#
#   bash experiments/gpu_session.sh check  OUTDIR   # versions, GPU tests, benchmark (JAX and
#                                                   # PyTorch on the GPU), concurrency probe,
#                                                   # reproduce smoke test
#   bash experiments/gpu_session.sh tables OUTDIR   # Tables 1 and 2 (rows run together), then 6
#   bash experiments/gpu_session.sh verdict OUTDIR  # the verdict's Table 2 rows (ATENT in the
#       authors' code variant, PGD-AT, TRADES, MART, SGD, then ATENT as the paper's Algorithm 2:
#       experiments/configs/verdict_table2.py)
#       at EPOCHS (default 100) and K (default 40, step 0.01) all at once, then each row's best
#       checkpoint attacked with the paper's PGD-20 (10 restarts), PGD-100 and AutoAttack on
#       NUM_TEST (default 1000) test images; checkpoints and reports packed into OUTDIR.
#       Budget it first: H200 figures (session 2) put an exact ATENT K 40 step at 20.8 ms, so
#       100 epochs of 170 steps = 6 min for ATENT alone (K 80, the notebook's L, doubles it);
#       AutoAttack on 1,000 images was not yet timed on a GPU. On the 2-core CPU (one core, 2026-12-01,
#       FAB now a host loop there) a point that survives every member costs APGD-T 1.7 s, FAB-T 2.9 s
#       and Square 4.9 s (5,000 queries): about 2 core-hours per 1,000-image MNIST evaluation of a
#       robust model (results/autoattack_cpu/), so evaluate on the GPU whenever one is lent.
#
# Needs jax with CUDA, flax, optax, orbax-checkpoint, chex, ml-collections (wheels in .whl/ are
# installed to /tmp/site first when present: a machine without a package registry) and the MNIST
# IDX files in $MNIST_DIR (default .data/mnist, a copy of ../shared/data/mnist). Settings of the
# tables stage: EPOCHS (default 20), K (40), JOBS (rows of a table at once, 5), BUDGET (seconds
# for the whole stage, 480; what finished by then is packed into OUTDIR).
set -uo pipefail
stage=${1:?usage: gpu_session.sh check|tables|verdict OUTDIR}
out=${2:?usage: gpu_session.sh check|tables|verdict OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
PY=${PY:-python3}
MNIST_DIR=${MNIST_DIR:-.data/mnist}
log() { echo "=== $(date -u +%H:%M:%S) $*"; }

versions() {
  nvidia-smi -L
  $PY -c "import jax, jaxlib, flax, optax, chex, orbax.checkpoint, ml_collections, sys
print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__,
      'flax', flax.__version__, 'optax', optax.__version__, 'chex', chex.__version__)
print(jax.devices())"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true
}

case "$stage" in
check)
  log versions; versions 2>&1 | tee "$out/versions.txt"
  log benchmark
  timeout 200 $PY experiments/benchmark.py --device gpu --reference --repeats 10 --warmup 3 \
    --methods sgd,pgd_at,trades,atent_linf,atent_linf_tol1e-3,atent_linf_unrolled,atent_l2 \
    2>&1 | tee "$out/benchmark_gpu.jsonl"
  log "concurrency probe: 4 ATENT-l_inf K 40 processes at once"
  for i in 1 2 3 4; do
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 90 $PY experiments/benchmark.py \
      --_child atent_linf 40 --repeats 20 --warmup 3 > "/tmp/probe$i.json" 2>/dev/null &
  done
  wait; cat /tmp/probe*.json | tee "$out/concurrency_probe.jsonl"
  log "tests on the GPU (highest matmul precision: the 1e-5 comparisons)"
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 60 $PY -m pytest -q -x -p no:cacheprovider \
    tests/test_fused.py tests/test_langevin.py 2>&1 | tail -15 | tee "$out/tests_gpu.txt"
  log "reproduce smoke test (table2, 2 rows at once, 1 epoch, K 2)"
  timeout 90 $PY experiments/reproduce.py --table=table2 --out=/tmp/smoke/out \
    --work=/tmp/smoke/work --data_dir="$MNIST_DIR" --rows=sgd,atent_linf --jobs=2 \
    --num_test=500 --eval_batch_size=500 --sanity_examples=100 --figures=False \
    --override=data.num_train=2048 --override=train.num_epochs=1 \
    --override=sampler.num_steps=2 2>&1 | tail -30 | tee "$out/smoke.txt"
  log done
  ;;
tables)
  EPOCHS=${EPOCHS:-20}; K=${K:-40}; JOBS=${JOBS:-5}; BUDGET=${BUDGET:-480}
  decay="($((EPOCHS * 3 / 4)),$((EPOCHS * 9 / 10)))"  # lr x0.1 at 75% and 90% of training
  [ "$EPOCHS" -ge 10 ] || decay="()"
  # EXTRA: more overrides for every row (e.g. --override=data.num_train=256 for a smoke run).
  common=(--data_dir="$MNIST_DIR" --num_test="${NUM_TEST:--1}" --eval_batch_size=2000 --jobs="$JOBS"
          --override=train.num_epochs="$EPOCHS" --override=sampler.num_steps="$K"
          --override=train.lr_decay_epochs="$decay" ${EXTRA:-})
  start=$SECONDS
  pack() {  # whatever finished comes back, also when the budget ran out
    tar czf "$out/results_gpu_h200.tar.gz" results/gpu_h200 runs/gpu/*/logs 2>/dev/null
    tail -n 40 "$out"/table*.log
    log done
  }
  trap pack EXIT
  log "versions"; versions 2>&1 | tee "$out/versions.txt"
  log "table1 and table2 together: $EPOCHS epochs, K $K, lr decay at $decay, budget $BUDGET s"
  timeout $((BUDGET - 100)) $PY experiments/reproduce.py --table=table1 \
    --out=results/gpu_h200/table1 --work=runs/gpu/table1 "${common[@]}" > "$out/table1.log" 2>&1 &
  t1=$!
  timeout $((BUDGET - 100)) $PY experiments/reproduce.py --table=table2 \
    --out=results/gpu_h200/table2 --work=runs/gpu/table2 --restarts=10 "${common[@]}" \
    > "$out/table2.log" 2>&1
  log "table2 exit $?"
  if [ -f results/gpu_h200/table2/atent_linf/robustness.json ]; then  # reuses table2's run
    timeout $((BUDGET - 20 - (SECONDS - start))) $PY experiments/reproduce.py --table=table6 \
      --out=results/gpu_h200/table6 --work=runs/gpu/table6 --table2_work=runs/gpu/table2 \
      "${common[@]}" > "$out/table6.log" 2>&1
    log "table6 exit $?"
  fi
  wait $t1; log "table1 exit $?"
  ;;
verdict)
  EPOCHS=${EPOCHS:-100}; K=${K:-40}; STEP=${STEP:-0.01}; BUDGET=${BUDGET:-540}
  NUM_TEST=${NUM_TEST:-1000}; ROWS=${ROWS:-atent_linf pgd_at trades mart sgd atent_linf_paper}
  work=runs/gpu/verdict
  pack() {
    tar czf "$out/verdict_gpu.tar.gz" $work 2>/dev/null
    tail -n 5 "$out"/verdict_*.log
    log done
  }
  trap pack EXIT
  log "versions"; versions 2>&1 | tee "$out/versions.txt"
  log "verdict rows at once: $EPOCHS epochs, K $K, step $STEP, budget $BUDGET s"
  for row in $ROWS; do
    ( timeout $((BUDGET - 150)) $PY experiments/main.py \
        --config="experiments/configs/verdict_table2.py:$row" --workdir="$work/$row" \
        --config.data.dir="$MNIST_DIR" --config.train.num_epochs="$EPOCHS" \
        --config.sampler.num_steps="$K" --config.sampler.step_size="$STEP" \
        --config.train.progress_bar=False
      timeout 140 $PY experiments/evaluate.py --workdir="$work/$row" --num_examples="$NUM_TEST" \
        --attacks=pgd20_linf:restarts=10,pgd100_linf,autoattack
    ) > "$out/verdict_$row.log" 2>&1 &
  done
  wait
  ;;
*) echo "unknown stage $stage: use check, tables or verdict" >&2; exit 2 ;;
esac
