#!/usr/bin/env bash
# Table 6 analogue: ATENT as an attack vs PGD-20, MNIST l_inf, SmallCNN (table2's l_inf-ATENT run): the exact commands of experiments/reproduce.py.
# Run from the repository root. This file was written by:
#   python experiments/reproduce.py --table=table6 --out=results/table6 --work=runs/table6 --data_dir=../shared/data/mnist --override=train.num_epochs=5 --override=sampler.num_steps=10 '--override=train.lr_decay_epochs=()'
# (with PYTHON=/work/venv/bin/python). Rerunning a training command resumes it.
set -euo pipefail
PYTHON="${PYTHON:-python}"

# --- l_inf-ATENT (mnist_linf.py) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_linf.py \
    --workdir=runs/table6/atent_linf --config.data.dir=../shared/data/mnist \
    --config.train.num_epochs=5 --config.sampler.num_steps=10 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/table6/atent_linf \
    --attacks=pgd20_linf@0.1,atent20_linf@0.1,pgd20_linf@0.2,atent20_linf@0.2,pgd20_linf@0.3,atent20_linf@0.3,pgd20_linf@0.4,atent20_linf@0.4 \
    --restarts=1 --num_examples=-1 --batch_size=500 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=../shared/data/mnist
