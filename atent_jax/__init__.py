"""atent-jax: ATENT (Adversarial Training with ENTropic regularization) in JAX/Flax.

    import atent_jax
    x_adv = atent_jax.sample_langevin(loss_fn, x, y, key, norm="linf", eps=0.3,
                                      step_size=0.01, num_steps=40)

Importing the package first (before any JAX computation) lets it add the XLA:CPU flags that
make convolutions fast on CPU (see `atent_jax._xla`).
"""

from atent_jax import _xla

_xla.configure_xla_flags()

# The XLA flags must be set before JAX's backend starts, hence these imports come after.
from atent_jax.attacks import (
    ATTACKS,
    atent_attack,
    autoattack,
    cw_l2,
    cw_linf,
    deepfool,
    fgsm,
    pgd,
    pgd_l2,
    pgd_linf,
)
from atent_jax.errors import AtentError, CheckpointError, ConfigError, DataError, NonFiniteError
from atent_jax.evaluation import evaluate_attacks
from atent_jax.langevin import ema_weights, optimize_input, sample_langevin
from atent_jax.runs import load_classifier, load_run

__version__ = "0.1.0"

__all__ = [
    "sample_langevin", "optimize_input", "ema_weights", "pgd", "pgd_linf", "pgd_l2",
    "load_classifier", "load_run", "AtentError", "ConfigError", "DataError", "CheckpointError",
    "NonFiniteError", "fgsm", "cw_l2", "cw_linf", "deepfool", "atent_attack", "ATTACKS",
    "evaluate_attacks", "autoattack",
]
