#!/usr/bin/env bash
# The two models notebooks/atent_quickstart.ipynb looks at, trained with the settings of its
# `run` calls: a clean SmallCNN (plain SGD, 2 epochs, learning rate 0.1) and an ATENT-l_inf
# model (1 epoch, fine-tuned from the clean one), on the built-in MNIST sample.
#   bash results/quickstart/train.sh      # from the repository root
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(--config=experiments/configs/default.py --config.data.source=builtin
        --config.train.progress_bar=False --config.eval.num_examples=100
        --config.eval.num_steps=5)
python experiments/main.py "${common[@]}" --workdir=results/quickstart/sgd \
  --config.method=sgd --config.train.num_epochs=2 --config.train.learning_rate=0.1
python experiments/main.py "${common[@]}" --workdir=results/quickstart/atent_linf \
  --config.method=atent_linf --config.train.num_epochs=1 \
  --config.train.init_from=results/quickstart/sgd
