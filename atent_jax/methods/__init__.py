"""Training methods: each turns a batch into a loss and weight gradients.

`make_grad_fn(config, model)` returns
    grad_fn(params, batch_stats, images, labels, rng) -> (loss, grads, new_batch_stats, aux)
so a method may compute its gradient any way it likes (value_and_grad of a loss for most;
weight-space Langevin for Entropy-SGD; one forward/backward per Langevin step for fused ATENT).

One module per method family, each ending with the `common.register(Method(...))` line of its
record(s); `METHODS` maps `config.method` names to the records (`common.Method`: builder, display
name, config check). Importing this package imports every module, so all methods are registered:

    common.py       the registry (Method, register, get, METHODS, make_grad_fn) and shared pieces
    sgd.py          clean training
    atent.py        l_inf-ATENT, l_2-ATENT: the fused step (default) and the two-pass reference
    pgd_at.py       PGD adversarial training
    trades.py, mart.py, mma.py, entropy_sgd.py, noise_aug.py   the paper's baselines

Every inner maximisation in input space runs on the model in eval mode (dropout off, batch-norm
running averages): it works per example under vmap, where train-mode batch statistics would be
statistics of one image; the fused ATENT step is the exception (train mode, as the authors'
code). The weight losses always use train mode. Adding a method: README.md, "Extending".
"""

from atent_jax.methods import (
    atent,
    common,
    entropy_sgd,
    mart,
    mma,
    noise_aug,
    pgd_at,
    sgd,
    trades,
)
from atent_jax.methods.atent import (
    atent_ema_loss,
    atent_samples,
    first_weighted_sample,
    make_atent,
    make_atent_fused,
    make_atent_method,
    skipped_weight_mass,
)
from atent_jax.methods.common import (
    METHODS,
    GradFn,
    Method,
    accuracy,
    eval_logits_fn,
    from_loss,
    get,
    make_grad_fn,
    mean_ce,
    register,
    train_forward,
    unroll_from_config,
)
from atent_jax.methods.entropy_sgd import make_entropy_sgd
from atent_jax.methods.mart import make_mart, mart_examples, mart_loss
from atent_jax.methods.mma import MMA_BISECTION_STEPS, make_mma, mma_margin_points
from atent_jax.methods.noise_aug import make_noise_aug
from atent_jax.methods.pgd_at import make_pgd_at, pgd_examples
from atent_jax.methods.sgd import make_sgd
from atent_jax.methods.trades import kl_rows, make_trades, trades_examples

__all__ = [
    "METHODS", "GradFn", "Method", "accuracy", "eval_logits_fn", "from_loss", "get",
    "make_grad_fn", "mean_ce", "register", "train_forward", "unroll_from_config",
    "atent", "common", "entropy_sgd", "mart", "mma", "noise_aug", "pgd_at", "sgd", "trades",
    "atent_ema_loss", "atent_samples", "first_weighted_sample", "make_atent", "make_atent_fused",
    "make_atent_method", "skipped_weight_mass", "make_entropy_sgd", "make_mart", "mart_examples",
    "mart_loss", "MMA_BISECTION_STEPS", "make_mma", "mma_margin_points", "make_noise_aug",
    "make_pgd_at", "pgd_examples", "make_sgd", "kl_rows", "make_trades", "trades_examples",
]
