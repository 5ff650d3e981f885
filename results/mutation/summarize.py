"""Summarises a mutmut run: per module, the status of each listed mutant, and the diff of every
survivor. Run from the folder mutmut ran in (the one holding mutants/):

  python results/mutation/summarize.py NAMES.txt > summary.md

NAMES.txt: one mutant name per line (the sample that was run). mutmut's exit-code meaning:
1 killed, 0 survived, 33 no tests, -24/24/152 timeout, None not run.
"""

import collections
import configparser
import json
import subprocess
import sys


def mutated_files() -> list[str]:
  """The files setup.cfg's [mutmut] only_mutate lists."""
  parser = configparser.ConfigParser()
  parser.read("setup.cfg")
  return parser["mutmut"]["only_mutate"].split()


STATUS = {1: "killed", 0: "survived", 33: "no tests", -24: "timeout", 24: "timeout",
          152: "timeout", 3: "killed", None: "not run"}


def main(names_file: str) -> None:
  with open(names_file) as f:
    names = [line.strip() for line in f if line.strip()]
  codes = {}
  for meta in mutated_files():
    try:
      with open(f"mutants/{meta}.meta") as f:
        codes.update(json.load(f)["exit_code_by_key"])
    except FileNotFoundError:
      pass
  by_module = collections.defaultdict(collections.Counter)
  survivors = []
  for n in names:
    module = n.split(".x")[0]
    status = STATUS.get(codes.get(n, None), f"exit {codes.get(n)}")
    by_module[module][status] += 1
    if status in ("survived", "no tests"):
      survivors.append((n, status))
  print("| module | run | killed | timeout | survived | no tests |")
  print("|---|---:|---:|---:|---:|---:|")
  for module, c in sorted(by_module.items()):
    run = sum(v for k, v in c.items() if k != "not run")
    print(f"| {module} | {run} | {c['killed']} | {c['timeout']} | {c['survived']} | "
          f"{c['no tests']} |")
  for n, status in survivors:
    diff = subprocess.run(["mutmut", "show", n], capture_output=True, text=True,
                          check=False).stdout
    lines = [line for line in diff.splitlines()
             if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    print(f"\n{n} ({status})\n" + "\n".join("    " + line for line in lines))


if __name__ == "__main__":
  main(sys.argv[1])
