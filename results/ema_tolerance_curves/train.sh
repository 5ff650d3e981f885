#!/usr/bin/env bash
# ATENT-l_inf trained exactly and with config.sampler.ema_tolerance 5e-7 (the weight gradients of
# samples whose EMA weight is below 5e-7 are skipped: at K 10, alpha 0.9, the 3 oldest of 10,
# 1e-7 of the weight), same seed, and exactly with another seed to show the seed-to-seed spread.
# The built-in demo config (eps 0.1, the offline MNIST sample, learning rate 0.05) at K 10, step
# 0.0125 (K * step 1.25 eps, as the demo's K 5 x 0.025), 3 epochs. One core, one run at a time:
#   bash results/ema_tolerance_curves/train.sh        # from the repository root; CORE=0 to pick
# Writes each run's config.json and metrics.jsonl here and draws curves.png; the workdirs (with
# checkpoints) go to runs/ema_tolerance_curves/.
set -eu
cd "$(dirname "$0")/../.."
out=results/ema_tolerance_curves
work=runs/ema_tolerance_curves
run() {  # name, overrides...
  local name=$1
  shift
  taskset -c "${CORE:-1}" python experiments/main.py --config=experiments/configs/default.py \
    --workdir="$work/$name" --config.train.num_epochs=3 --config.sampler.num_steps=10 \
    --config.sampler.step_size=0.0125 --config.train.progress_bar=False "$@"
  mkdir -p "$out/$name"
  cp "$work/$name/config.json" "$work/$name/metrics.jsonl" "$out/$name/"
}
run exact_seed0 --config.sampler.ema_tolerance=0 --config.seed=0
run tolerance5e-7_seed0 --config.sampler.ema_tolerance=5e-7 --config.seed=0
run exact_seed1 --config.sampler.ema_tolerance=0 --config.seed=1
python experiments/figures.py curves \
  --workdirs="$out/exact_seed0,$out/tolerance5e-7_seed0,$out/exact_seed1" \
  --labels="exact seed 0,tolerance 5e-7 seed 0,exact seed 1" --out="$out/curves.png"
