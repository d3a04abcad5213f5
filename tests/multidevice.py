"""Running test code on several (forced CPU) devices, in a child process: the pytest process
has one CPU device, and the device count is fixed when JAX starts.

  run_on_devices(8, script)              one child with 8 forced CPU devices

The child runs `script` with `python -c` from the repository root (on PYTHONPATH) and prints
its result as JSON on its LAST stdout line; the helper returns that line parsed and fails the
test with the child's stderr tail otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(num_devices: int, extra: dict | None = None) -> dict:
  """The environment of a child with `num_devices` forced CPU devices and the repo first on
  PYTHONPATH (other XLA flags of this process kept, the device count replaced)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  env.update(extra or {})
  return env


def _parse(out: str, err: str, rc: int, what: str) -> dict:
  lines = [line for line in out.strip().splitlines() if line.strip()]
  if rc != 0 or not lines:
    pytest.fail(f"{what} exited {rc}; stderr tail:\n{err[-3000:]}\nstdout tail:\n{out[-1000:]}")
  try:
    return json.loads(lines[-1])
  except ValueError:
    pytest.fail(f"{what}: last stdout line is not JSON: {lines[-1][:500]!r}; stderr tail:\n"
                f"{err[-3000:]}")


def run_on_devices(num_devices: int, script: str, timeout: float = 120) -> dict:
  """Runs `script` (python -c) with `num_devices` forced CPU devices; its last stdout line,
  parsed as JSON."""
  try:
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=child_env(num_devices),
                          capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"child on {num_devices} devices ran past {timeout} s; stderr tail:\n"
                f"{(e.stderr or b'')[-3000:]!r}")
  return _parse(proc.stdout, proc.stderr, proc.returncode, f"child on {num_devices} devices")

