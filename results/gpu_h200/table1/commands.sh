#!/usr/bin/env bash
# Table 1: MNIST, l_2 eps 2, LeNet5: the exact commands of experiments/reproduce.py.
# Run from the repository root. This file was written by:
#   python experiments/reproduce.py --table=table1 --out=results/gpu_h200/table1 --work=runs/gpu/table1 --data_dir=.data/mnist --num_test=-1 --eval_batch_size=2000 --jobs=5 --override=train.num_epochs=5 --override=sampler.num_steps=40 '--override=train.lr_decay_epochs=()'
# (with PYTHON=/opt/torch/.venv/bin/python3). Rerunning a training command resumes it.
set -euo pipefail
PYTHON="${PYTHON:-python}"

# --- SGD (mnist_l2.py:sgd) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_l2.py:sgd \
    --workdir=runs/gpu/table1/sgd --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table1/sgd --attacks=pgd40_l2,cw_l2 \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- PGD-AT (mnist_l2.py:pgd_at) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_l2.py:pgd_at \
    --workdir=runs/gpu/table1/pgd_at --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table1/pgd_at --attacks=pgd40_l2,cw_l2 \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- TRADES (mnist_l2.py:trades) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_l2.py:trades \
    --workdir=runs/gpu/table1/trades --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table1/trades --attacks=pgd40_l2,cw_l2 \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist

# --- l_2-ATENT (mnist_l2.py) ---
"$PYTHON" experiments/main.py --config=experiments/configs/mnist_l2.py \
    --workdir=runs/gpu/table1/atent_l2 --config.data.dir=.data/mnist --config.train.num_epochs=5 \
    --config.sampler.num_steps=40 '--config.train.lr_decay_epochs=()' \
    --config.train.progress_bar=False
"$PYTHON" experiments/evaluate.py --workdir=runs/gpu/table1/atent_l2 --attacks=pgd40_l2,cw_l2 \
    --restarts=10 --num_examples=-1 --batch_size=2000 --seed=0 --which=best --sanity_checks=True \
    --sanity_examples=200 --data_dir=.data/mnist
