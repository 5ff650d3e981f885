"""The built-in default (ATENT-l_inf on the offline MNIST sample, 3 short epochs on 2 CPU cores).

The config itself lives in the package, atent_jax/defaults.py (every field, each departure from
the paper explained in its comment), so an installed library has it too. Run:
  python experiments/main.py --config=experiments/configs/default.py --workdir=runs/quickstart
"""

from atent_jax.defaults import get_config  # noqa: F401  (config_flags calls get_config())
