"""Launchers run both as scripts and as modules from the repository root, with no path editing.

`bes`, `configs` and `launch` are installed packages (setup.py); a launcher must not edit
`sys.path` to find them. `--help` is the cheapest full start of a launcher (imports, flag
definitions, the default config file loaded).
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv):
  return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("argv, first_line", [
    (["-m", "launch.train", "--help"], "Trains the learned router"),
    ([os.path.join("launch", "simulate.py"), "--help"], "Runs fixed routing policies"),
])
def test_launcher_help_as_module_and_as_script(argv, first_line):
  r = _run(*argv)   # absl's --help exits with status 1 after printing the help
  assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr
  assert r.stdout.startswith(first_line), r.stdout[:200]
  text = " ".join(r.stdout.split())
  assert "--config_help lists every key" in text   # the config flag's help points at it
  assert "--[no]config_help:" in text              # listed among the launcher's own flags


@pytest.mark.slow
def test_config_file_importing_configs_loads_from_a_script():
  """configs/experiments.py does `from configs import default`: it needs `configs` installed."""
  r = _run(os.path.join("launch", "train.py"), "--config=configs/experiments.py",
           "--workdir=unused", "--config_help")
  assert r.returncode == 0, r.stderr
  assert re.search(r"^  num_seeds = 3\b", r.stdout, re.M), r.stdout[:500]


def test_no_sys_path_edits():
  """No module of the repository edits sys.path (they import installed packages)."""
  offenders = []
  for top in ("bes", "configs", "launch", "tests"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          with open(path) as f:
            text = f.read()
          if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", text):
            offenders.append(os.path.relpath(path, ROOT))
  assert offenders == []
