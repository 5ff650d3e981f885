#!/usr/bin/env bash
# Table 2: MNIST, l_inf eps 0.3, SmallCNN: the exact commands of experiments/reproduce.py.
# Run from the repository root. This file was written by:
#   python experiments/reproduce.py --table=table2 --out=results/gpu_h200/table2 --work=runs/gpu/table2 --restarts=10 --data_dir=.data/mnist --num_test=-1 --eval_batch_size=2000 --jobs=5 --override=train.num_epochs=5 --override=sampler.num_steps=40 '--override=train.lr_decay_epochs=()'
# (with PYTHON=/opt/torch/.venv/bin/python3). Rerunning a training command resumes it.
set -euo pipefail
PYTHON="${PYTHON:-python}"

# --- SGD (mnist_linf.py:sgd) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_linf.py:sgd \
    --workdir=runs/gpu/table2/sgd --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table2/sgd --attacks=pgd20_linf,cw_linf \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- PGD-AT (mnist_linf.py:pgd_at) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_linf.py:pgd_at \
    --workdir=runs/gpu/table2/pgd_at --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table2/pgd_at --attacks=pgd20_linf,cw_linf \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- TRADES (mnist_linf.py:trades) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_linf.py:trades \
    --workdir=runs/gpu/table2/trades --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table2/trades --attacks=pgd20_linf,cw_linf \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- MART (mnist_linf.py:mart) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_linf.py:mart \
    --workdir=runs/gpu/table2/mart --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table2/mart --attacks=pgd20_linf,cw_linf \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- l_inf-ATENT (mnist_linf.py) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_linf.py \
    --workdir=runs/gpu/table2/atent_linf --config.data.dir=.data/mnist \
    --config.train.num_epochs=5 --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table2/atent_linf \
    --attacks=pgd20_linf,cw_linf --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 \
    --which=best --sanity_checks=True --sanity_examples=200 --data_dir=.data/mnist
