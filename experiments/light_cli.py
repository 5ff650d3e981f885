"""atent_jax.cli's one-line errors and --help, for scripts that must not import atent_jax (it
starts JAX): benchmark.py chooses JAX's platform from its flags first, torch_reference.py is
PyTorch only."""

import sys

from absl import flags

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def bad_flag(message: str) -> None:
  """One `error:` line on stderr, exit code 2 (atent_jax.cli.fail's format)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def exit_if_help(argv, doc: str) -> None:
  """With a help flag in argv: the script's docstring and its flags on stdout, exit code 0."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(doc.strip() + "\n")
    print(flags.FLAGS.main_module_help())
    sys.exit(0)
