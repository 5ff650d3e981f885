#!/usr/bin/env bash
# Trains (or resumes) the verdict's Table 2 rows on a 2-core CPU at the lowest priority, so
# interactive work goes first: one row at a time on each core (ATENT's epoch costs about 1.2
# PGD-AT epochs of CPU time: 432 s alone on a quiet core), in the order given below. Every row
# resumes exactly from its last checkpoint in results/verdict/table2/ROW when this is rerun (a
# finished row is a no-op), so a session can be stopped at any time and the next one continues.
# A row that has finished training is then evaluated on the first 1,000 test images with the
# paper's attack (PGD-20, 10 restarts), PGD-100 and AutoAttack, in chunks of 100 written to
# ROW/robustness_chunks/ as they finish (about 2 core-hours a row here; a rerun resumes them;
# the last chunk merges them into ROW/robustness.json). The core a row trained on then goes to
# the next row: core 0 ATENT, SGD, then TRADES; core 1 PGD-AT then MART. (TRADES ran beside
# PGD-AT on core 1 until epoch 16; one row a core finishes each row sooner.)
#   bash experiments/verdict_train.sh            # from the repository root
set -u
# nice 19 alone is not enough on Linux with autogroup scheduling (sched_autogroup_enabled=1):
# CPU time is first split between sessions, and a process that starts its own session (a
# Jupyter kernel, nbclient's, pytest's subprocesses with start_new_session) then gets only half
# a core against nice-19 training in another session. So the training runs in its own session
# whose autogroup is niced too; everything else on the machine goes first.
if [ -z "${VERDICT_OWN_SESSION:-}" ] && command -v setsid > /dev/null; then
  VERDICT_OWN_SESSION=1 exec setsid bash "$0" "$@"
fi
echo 19 2> /dev/null > /proc/self/autogroup || true
cd "$(dirname "$0")/.."
out=results/verdict/table2
mkdir -p "$out/logs"
train() {  # core, row
  taskset -c "$1" nice -n 19 python experiments/main.py \
    --config="experiments/configs/verdict_table2.py:$2" --workdir="$out/$2" \
    --config.train.progress_bar=False >> "$out/logs/$2.log" 2>&1
}
evaluate() {  # core, row: only a row whose training ended (exit 0) is evaluated
  # A merged result is final: rerunning evaluate.py on it would merge the chunks again and rerun
  # its sanity checks (measured twice on 2026-12-07: one XLA compile of 8-11 min, killed after
  # 14 min of CPU).
  [ -f "$out/$2/robustness.json" ] && return 0
  taskset -c "$1" nice -n 19 python experiments/evaluate.py --workdir="$out/$2" \
    --num_examples=1000 --attacks=pgd20_linf:restarts=10,pgd100_linf,autoattack \
    --batch_size=100 --chunk_size=100 --noprogress >> "$out/logs/$2.eval.log" 2>&1
}
row() {  # core, row
  train "$1" "$2" && evaluate "$1" "$2"
}
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  (row 0 atent_linf; row 0 sgd; row 0 trades) &
  (row 1 pgd_at; row 1 mart) &
else
  for r in "${rows[@]}"; do (row "${CORE:-1}" "$r") & done
fi
wait
