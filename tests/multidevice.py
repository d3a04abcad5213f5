"""Running test code on several (forced CPU) devices or processes, in child processes: the
pytest process has one CPU device, and the device count is fixed when JAX starts.

  run_on_devices(8, script)              one child with 8 forced CPU devices
  run_processes(2, script, 2)            2 children over loopback (a local jax.distributed
                                         coordinator on a free port), 2 devices each

The child runs `script` with `python -c` from the repository root (on PYTHONPATH) and prints
its result as JSON on its LAST stdout line; the helpers return that line parsed (one dict
per process for `run_processes`) and fail the test with the child's stderr tail otherwise.
In `run_processes`, the children find their place in $JAX_COORDINATOR_ADDRESS,
$JAX_NUM_PROCESSES and $JAX_PROCESS_ID (`bes.parallel.distributed.initialize()` reads them).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

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


def free_port() -> int:
  """A TCP port free on localhost now (the coordinator binds it moments later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _kill_all(procs) -> list[tuple[int, str]]:
  """Kills the processes still running; (index, stderr) of each whose output was not read
  yet."""
  out = []
  for i, proc in enumerate(procs):
    if proc.poll() is None:
      proc.kill()
    if proc.stderr is not None and not proc.stderr.closed:
      out.append((i, proc.communicate()[1] or ""))
  return out


def _first_error(err: str, size: int = 2000) -> str:
  """The first Python traceback of a stderr (a peer that failed first may hang in
  jax.distributed's shutdown and be the one killed), else its tail."""
  start = err.find("Traceback (most recent call last)")
  return err[start:start + size] if start >= 0 else err[-size:]


def run_processes(num_processes: int, script: str, devices_per_process: int = 1,
                  timeout: float = 120) -> list[dict]:
  """Runs `script` as `num_processes` processes of one jax.distributed run over loopback
  (coordinator 127.0.0.1:<free port>), each with `devices_per_process` forced CPU devices;
  returns each process's last stdout line parsed as JSON, by process id. If one fails, the
  others are killed and the test fails with its stderr tail."""
  address = f"127.0.0.1:{free_port()}"
  procs = []
  for pid in range(num_processes):
    env = child_env(devices_per_process, {"JAX_COORDINATOR_ADDRESS": address,
                                          "JAX_NUM_PROCESSES": str(num_processes),
                                          "JAX_PROCESS_ID": str(pid)})
    procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  deadline = time.monotonic() + timeout
  results: list = [None] * num_processes
  try:
    pending = set(range(num_processes))
    while pending:
      for pid in sorted(pending):
        proc = procs[pid]
        if proc.poll() is None:
          continue
        out, err = proc.communicate()
        pending.discard(pid)
        if proc.returncode != 0:
          others = "".join(f"\n--- process {i}/{num_processes}:\n{_first_error(e)}"
                           for i, e in _kill_all(procs) if i != pid)
          pytest.fail(f"process {pid}/{num_processes} exited {proc.returncode}; stderr tail:\n"
                      f"{err[-3000:]}{others}")
        results[pid] = _parse(out, err, proc.returncode, f"process {pid}/{num_processes}")
      if pending and time.monotonic() > deadline:
        pytest.fail(f"processes {sorted(pending)} of {num_processes} ran past {timeout} s")
      time.sleep(0.1)
  finally:
    _kill_all(procs)
  return results
