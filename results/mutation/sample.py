"""Draws the mutation-testing sample: generates mutmut's mutants of the [mutmut] only_mutate
files (no test run), then per module a seeded random sample proportional to its mutant count
(at least 4). Run from the repository root; writes the names, one a line, to OUT:

  python results/mutation/sample.py 120 18 results/mutation/sample.txt
  python results/mutation/sample.py 40 31 results/mutation/sample_autoattack.txt \
      atent_jax.attacks.apgd,atent_jax.attacks.fab,atent_jax.attacks.square,atent_jax.attacks.autoattack

The optional fourth argument keeps only the named modules (comma separated): a sample of them
alone, in proportion among themselves.

Mutant names (module.x_function__mutmut_N) depend on the source: a sample is tied to its commit.
"""

import collections
import glob
import json
import random
import sys

from mutmut.__main__ import (
    copy_also_copy_files,
    copy_src_dir,
    create_mutants,
    set_mutant_under_test,
    setup_source_paths,
)


def main(size: int, seed: int, out: str, modules: tuple[str, ...] = ()) -> None:
  set_mutant_under_test("mutant_generation")
  copy_src_dir()
  copy_also_copy_files()
  setup_source_paths()
  create_mutants(2)
  by_module = collections.defaultdict(list)
  for meta in sorted(glob.glob("mutants/**/*.meta", recursive=True)):
    with open(meta) as f:
      for name in json.load(f)["exit_code_by_key"]:
        module = name.split(".x")[0]
        if not modules or module in modules:
          by_module[module].append(name)
  missing = set(modules) - set(by_module)
  if missing:
    sys.exit(f"error: no mutants of {sorted(missing)}: name modules of setup.cfg's only_mutate "
             "as dotted paths (atent_jax.attacks.fab)")
  total = sum(len(v) for v in by_module.values())
  rng = random.Random(seed)
  sample = []
  for module in sorted(by_module):
    names = sorted(by_module[module])
    k = max(4, round(size * len(names) / total))
    sample += sorted(rng.sample(names, k))
    print(f"{module}: {k} of {len(names)}")
  with open(out, "w") as f:
    f.write("\n".join(sample) + "\n")
  print(f"{len(sample)} of {total} mutants")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
       tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else ())
