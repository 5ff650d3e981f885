#!/usr/bin/env bash
# Trains (or resumes) the verdict's rows on a 2-core CPU at the lowest priority, so interactive
# work goes first: one row at a time on each core, in the order given below. A row that has
# finished training keeps its best weights alone (experiments/keep_weights.py: Table 1's LeNet5
# in float16, 6.3 MB instead of 52 MB of checkpoints; Table 2's SmallCNN in float32, the same
# weights) and is then evaluated from them on the first 1,000 test images with the paper's
# attack (Table 2: PGD-20, Table 1: PGD-40, 10 restarts each), PGD-100 and AutoAttack, in chunks
# of 100 written to ROW/robustness_chunks/ as they finish (1-2 core-hours a row here; a rerun
# resumes them; the last chunk merges them into ROW/robustness.json, and a row with that file is
# done and skipped). Table 2 rows (SmallCNN) resume exactly from their last checkpoint, which is
# committed at the end of a session. Table 1 rows cannot be carried over (a LeNet5 checkpoint is
# 26 MB: .gitignore keeps them out of git), so each must finish training inside one session:
# at 15 epochs, measured: 0.5 h (SGD), 1.6 h (PGD-AT, TRADES), 2.0 h (ATENT); MMA about 2.4 h
# (from its step time); start a session with the long ones. The queues:
#   core 0: Table 2 ATENT, SGD, TRADES, then Table 1 MMA (training: it must finish in-session);
#   core 1: Table 2 PGD-AT, then Table 1 ATENT, TRADES, SGD, PGD-AT (their evaluations), then
#           Table 2 MART, then Table 2's ATENT as the paper's Algorithm 2 (atent_linf_paper).
# Table 1's ATENT as the paper's text (table1/atent_l2_paper, about 2 h) is in no queue: give it
# a core at the start of a session that has one free for 2.5 hours.
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
# The kept weights' dtype of each table (its model's size: see the header).
declare -A KEEP_DTYPE=([table2]=float32 [table1]=float16)
train() {  # core, table, row: a row whose weights were kept has finished training
  [ -d "results/verdict/$2/$3/kept_weights" ] && return 0
  taskset -c "$1" nice -n 19 python experiments/main.py \
    --config="experiments/configs/verdict_$2.py:$3" --workdir="results/verdict/$2/$3" \
    --config.train.progress_bar=False >> "results/verdict/$2/logs/$3.log" 2>&1
}
keep() {  # core, table, row
  [ -d "results/verdict/$2/$3/kept_weights" ] && return 0
  taskset -c "$1" nice -n 19 python experiments/keep_weights.py \
    --workdir="results/verdict/$2/$3" --dtype="${KEEP_DTYPE[$2]}" \
    >> "results/verdict/$2/logs/$3.log" 2>&1
}
evaluate() {  # core, table, row
  taskset -c "$1" nice -n 19 python experiments/evaluate.py --workdir="results/verdict/$2/$3" \
    --num_examples=1000 --attacks="${ATTACKS[$2]}" \
    --batch_size=100 --chunk_size=100 --noprogress >> "results/verdict/$2/logs/$3.eval.log" 2>&1
}
row() {  # core, TABLE/ROW; a merged result is final: the row is done (its weights kept)
  local table="${2%%/*}" name="${2#*/}"
  if [ -f "results/verdict/$table/$name/robustness.json" ]; then
    keep "$1" "$table" "$name"
    return
  fi
  train "$1" "$table" "$name" && keep "$1" "$table" "$name" && evaluate "$1" "$table" "$name"
}
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  (for r in table2/atent_linf table2/sgd table2/trades table1/mma; do
     row 0 "$r"; done) &
  (for r in table2/pgd_at table1/atent_l2 table1/trades table1/sgd table1/pgd_at table2/mart \
             table2/atent_linf_paper; do
     row 1 "$r"; done) &
else
  (for r in "${rows[@]}"; do row "${CORE:-1}" "$r"; done) &
fi
wait
