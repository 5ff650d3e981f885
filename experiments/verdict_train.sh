#!/usr/bin/env bash
# Trains (or resumes) the verdict's rows on a 2-core CPU at the lowest priority, so interactive
# work goes first: one row at a time on each core (ATENT's epoch costs about 1.2 PGD-AT epochs
# of CPU time: 432 s alone on a quiet core), in the order given below. Every row resumes exactly
# from its last checkpoint in results/verdict/TABLE/ROW when this is rerun (a finished row is a
# no-op), so a session can be stopped at any time and the next one continues. A row that has
# finished training is then evaluated on the first 1,000 test images with the paper's attack
# (Table 2: PGD-20, Table 1: PGD-40, 10 restarts each), PGD-100 and AutoAttack, in chunks of 100
# written to ROW/robustness_chunks/ as they finish (about 2 core-hours a row here; a rerun
# resumes them; the last chunk merges them into ROW/robustness.json). The core a row trained on
# then goes to the next row:
#   core 0: Table 2 ATENT, SGD, TRADES, then Table 1 ATENT, then Table 1 MMA;
#   core 1: Table 2 PGD-AT, then Table 1 PGD-AT, SGD, TRADES, then Table 2 MART.
# Table 1's ATENT, PGD-AT, TRADES and SGD go before MART and MMA: the verdict needs both tables'
# ATENT / PGD-AT / TRADES rows, and a Table 1 (LeNet5) epoch costs about as much CPU as a Table 2
# one (ATENT K 10: about 600 s on a quiet core; PGD-AT 330 s; SGD 45 s).
# (TRADES ran beside PGD-AT on core 1 until epoch 16; one row a core finishes each row sooner.)
#   bash experiments/verdict_train.sh                                 # from the repository root
#   CORE=1 bash experiments/verdict_train.sh table1/sgd table2/mart   # these rows, one after
#                                                                     # another, on core CORE
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
mkdir -p results/verdict/table1/logs results/verdict/table2/logs
# The paper's attack of each table (the rows' eval step size: Table 2 0.01, Table 1 0.25).
declare -A ATTACKS=(
  [table2]="pgd20_linf:restarts=10,pgd100_linf,autoattack"
  [table1]="pgd40_l2:restarts=10,pgd100_l2,autoattack_l2")
train() {  # core, table, row
  taskset -c "$1" nice -n 19 python experiments/main.py \
    --config="experiments/configs/verdict_$2.py:$3" --workdir="results/verdict/$2/$3" \
    --config.train.progress_bar=False >> "results/verdict/$2/logs/$3.log" 2>&1
}
evaluate() {  # core, table, row: only a row whose training ended (exit 0) is evaluated
  # A merged result is final: rerunning evaluate.py on it would merge the chunks again and rerun
  # its sanity checks (measured twice on 2026-12-07: one XLA compile of 8-11 min, killed after
  # 14 min of CPU).
  [ -f "results/verdict/$2/$3/robustness.json" ] && return 0
  taskset -c "$1" nice -n 19 python experiments/evaluate.py --workdir="results/verdict/$2/$3" \
    --num_examples=1000 --attacks="${ATTACKS[$2]}" \
    --batch_size=100 --chunk_size=100 --noprogress >> "results/verdict/$2/logs/$3.eval.log" 2>&1
}
row() {  # core, TABLE/ROW
  train "$1" "${2%%/*}" "${2#*/}" && evaluate "$1" "${2%%/*}" "${2#*/}"
}
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  (for r in table2/atent_linf table2/sgd table2/trades table1/atent_l2 table1/mma; do
     row 0 "$r"; done) &
  (for r in table2/pgd_at table1/pgd_at table1/sgd table1/trades table2/mart; do
     row 1 "$r"; done) &
else
  (for r in "${rows[@]}"; do row "${CORE:-1}" "$r"; done) &
fi
wait
