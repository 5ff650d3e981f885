"""Accuracy definitions shared by every layer that reports robustness (no imports: the bottom)."""


def robust_correct(labels, clean_predictions, attacked_predictions):
  """Per example: robust under an attack = classified correctly on the clean input AND on the
  attacked input (the attacker may always return x itself), so robust accuracy <= clean accuracy.

  The one definition used by the evaluator (atent_jax.evaluation) and the training loop's
  per-epoch evaluation (atent_jax.train). Works on NumPy and JAX arrays, inside jit too.
  """
  return (clean_predictions == labels) & (attacked_predictions == labels)
