"""Attacks on a fixed model in eval mode: `logits_fn(x_batch) -> logits`, images in [0, 1].

`classic` holds the attacks built on the shared input-space optimiser (FGSM, PGD, CW, DeepFool,
ATENT-as-an-attack); `apgd`, `fab`, `square` and `autoattack` the AutoAttack family; `registry`
one record per attack (function, norms, defaults, display name, command-line token), which the
evaluator and experiments/evaluate.py derive everything from. This package re-exports their
public names, so `atent_jax.attacks.pgd` is the one entry point callers use.
"""

from atent_jax.attacks.apgd import APGDResult, apgd, apgd_targeted, apgd_with_info
from atent_jax.attacks.autoattack import AutoAttackResult, autoattack
from atent_jax.attacks.classic import (
    CW_LINF_VARIANTS,
    LogitsFn,
    atent_attack,
    cross_entropy_loss,
    cw_l2,
    cw_l2_minimal,
    cw_linf,
    cw_margin,
    cw_margin_loss,
    deepfool,
    deepfool_minimal,
    fgsm,
    flat_norm,
    keep_stronger,
    pgd,
    pgd_l2,
    pgd_linf,
    pgd_restart,
    restart_score,
)
from atent_jax.attacks.fab import fab, fab_minimal
from atent_jax.attacks.registry import ATTACKS, RECORDS, AttackRecord, attack_norm
from atent_jax.attacks.square import SquareResult, square, square_with_stats

__all__ = [
    "ATTACKS", "CW_LINF_VARIANTS", "RECORDS", "APGDResult", "AttackRecord", "AutoAttackResult",
    "LogitsFn", "SquareResult", "apgd", "apgd_targeted", "apgd_with_info", "atent_attack",
    "attack_norm", "autoattack", "cross_entropy_loss", "cw_l2", "cw_l2_minimal", "cw_linf",
    "cw_margin", "cw_margin_loss", "deepfool", "deepfool_minimal", "fab", "fab_minimal", "fgsm",
    "flat_norm", "keep_stronger", "pgd", "pgd_l2", "pgd_linf", "pgd_restart", "restart_score",
    "square", "square_with_stats",
]
