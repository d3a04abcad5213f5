"""Sweeps over hosts and devices: which process runs which points, device slices for points
run side by side, waiting for other hosts' shared steps and slices (`launch/sweep.py`).

Processes. Process i of n (`--process_index` / `--process_count`, by default from the
environment: JAX_PROCESS_ID / JAX_NUM_PROCESSES, else SLURM_PROCID / SLURM_NTASKS, else
TPU_WORKER_ID / TPU_WORKER_HOSTNAMES (GKE), else 0 of 1) runs the grid points whose index
(grid order, before `--only`) is i modulo n. A shared step belongs to the process that owns
the first point expanding it; another process whose points need it runs its other points
first, then waits for the step's marker (`.done`) or failure marker (`.failed`), up to
`wait_s`. Markers make every slice resumable: a lost host's slice is finished by running
the same command with its `--process_index` on any host.

Devices. `--parallel=K` runs K points at once (threads running the steps' subprocesses); slot
k's subprocesses see their own devices through the environment: GPUs by
CUDA_VISIBLE_DEVICES, TPU chips by TPU_VISIBLE_CHIPS / TPU_VISIBLE_DEVICES (+ one-chip process
bounds and a port of their own: the usual single-chip TPU process recipe, not tried on a
TPU here), found from /dev without starting JAX in this process (which would hold the
accelerators); on CPU nothing is set. Seeds need no slot of their own: a point's
`config.num_seeds` seeds are vmapped in one program (and cut over the mesh's seed axis), so
a grid that varies only the seed is better written as one point with num_seeds.

Status. A process that finishes its slice writes OUT/processes/<i>.json (time, points run,
failed). Process 0 (or `--aggregate_only`) writes the table only when every point is done.
"""
from __future__ import annotations

import glob
import json
import os
import re
import time
from typing import Mapping, Sequence

from bes import io_util

POLL_S = 2.0   # s between looks at another process's markers


def _int_env(env: Mapping[str, str], key: str) -> int | None:
  value = env.get(key, "").strip()
  if not value:
    return None
  if not re.fullmatch(r"\d+", value):
    raise ValueError(f"environment variable {key}={value!r}: expected a non-negative integer")
  return int(value)


def process_from_env(env: Mapping[str, str] = os.environ) -> tuple[int, int]:
  """(process index, process count) from the launch environment (module docstring)."""
  for idx, cnt in (("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"), ("SLURM_PROCID", "SLURM_NTASKS")):
    i, n = _int_env(env, idx), _int_env(env, cnt)
    if i is not None and n is not None:
      return i, n
  i = _int_env(env, "TPU_WORKER_ID")
  hosts = env.get("TPU_WORKER_HOSTNAMES", "").strip()
  if i is not None and hosts:
    return i, len(hosts.split(","))
  return 0, 1


def check_process(index: int, count: int) -> None:
  if count < 1:
    raise ValueError(f"--process_count: expected >= 1, got {count}")
  if not 0 <= index < count:
    raise ValueError(f"--process_index: expected 0..{count - 1} (--process_count={count}), "
                     f"got {index}")


def owner(point_index: int, count: int) -> int:
  return point_index % count


def step_owners(plans: Sequence, count: int) -> dict[tuple, int]:
  """Shared step argv -> the process owning the first point that expands it."""
  owners = {}
  for i, plan in enumerate(plans):
    for s in plan.steps:
      if s.shared:
        owners.setdefault(tuple(s.argv), owner(i, count))
  return owners


def local_accelerators(env: Mapping[str, str] = os.environ, dev: str = "/dev") -> tuple[str, list]:
  """('gpu' | 'tpu' | 'cpu', device ids) of this host, without starting JAX."""
  visible = env.get("CUDA_VISIBLE_DEVICES")
  if visible is not None and visible.strip() not in ("", "-1"):
    return "gpu", [v.strip() for v in visible.split(",") if v.strip()]
  gpus = sorted(int(m.group(1)) for p in glob.glob(os.path.join(dev, "nvidia*"))
                if (m := re.fullmatch(r"nvidia(\d+)", os.path.basename(p))))
  if gpus:
    return "gpu", [str(g) for g in gpus]
  chips = sorted(int(m.group(1)) for p in glob.glob(os.path.join(dev, "accel*"))
                 if (m := re.fullmatch(r"accel(\d+)", os.path.basename(p))))
  if not chips:
    chips = list(range(len([p for p in glob.glob(os.path.join(dev, "vfio", "*"))
                            if os.path.basename(p).isdigit()])))
  if chips:
    return "tpu", [str(c) for c in chips]
  return "cpu", []


def slot_envs(parallel: int, kind: str, ids: Sequence[str]) -> list[dict[str, str]]:
  """The environment additions of each of `parallel` slots: its share of the devices."""
  if parallel < 1:
    raise ValueError(f"--parallel: expected >= 1, got {parallel}")
  if kind == "cpu" or not ids or parallel == 1:
    return [{} for _ in range(parallel)]
  if parallel > len(ids):
    raise ValueError(f"--parallel={parallel}: this host has {len(ids)} {kind} device(s); "
                     f"run at most one point per device")
  per = len(ids) // parallel
  out = []
  for k in range(parallel):
    mine = list(ids[k * per:(k + 1) * per])
    if kind == "gpu":
      out.append({"CUDA_VISIBLE_DEVICES": ",".join(mine)})
    else:   # one TPU chip per process: libtpu's single-chip bounds and a port of its own
      if per != 1:
        raise ValueError(f"--parallel={parallel}: on TPU each point gets one chip; use "
                         f"--parallel={len(ids)}")
      out.append({"TPU_VISIBLE_CHIPS": mine[0], "TPU_VISIBLE_DEVICES": mine[0],
                  "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1", "TPU_PROCESS_BOUNDS": "1,1,1",
                  "TPU_PROCESS_PORT": str(8476 + k)})
  return out


def failed_marker(step) -> str:
  return os.path.join(step.home, ".failed")


def wait_for_step(step, step_done, who: int, wait_s: float, log=print) -> str | None:
  """Waits for another process's shared step: None when its marker holds our command, or an
  error report when it failed there or `wait_s` passed."""
  deadline, said = time.time() + wait_s, False
  while True:
    if step_done(step):
      return None
    try:
      with open(failed_marker(step)) as f:
        report = json.load(f)
      if report.get("argv") == list(step.argv):
        return f"shared step {step.name} failed on process {who}\n{report.get('report', '')}"
    except (OSError, ValueError):
      pass
    if time.time() >= deadline:
      return (f"shared step {step.name} (process {who}'s) not done after {wait_s:.0f} s; run "
              f"process {who}'s slice (--process_index={who}) and rerun this one")
    if not said:
      log(f"    {step.name}: waiting for process {who} (shared step)", flush=True)
      said = True
    time.sleep(min(POLL_S, max(0.0, deadline - time.time())))


def write_status(out: str, index: int, points: Sequence[str], failed: Sequence[str]) -> None:
  os.makedirs(os.path.join(out, "processes"), exist_ok=True)
  io_util.atomic_write_text(os.path.join(out, "processes", f"{index}.json"), json.dumps(
      dict(finished=time.time(), points=list(points), failed=list(failed))))


def read_status(out: str, index: int) -> dict | None:
  try:
    with open(os.path.join(out, "processes", f"{index}.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def missing_by_process(plans: Sequence, point_done, count: int) -> dict[int, list[str]]:
  """Process -> names of its points that are not done."""
  out: dict[int, list[str]] = {}
  for i, plan in enumerate(plans):
    if not point_done(plan):
      out.setdefault(owner(i, count), []).append(plan.name)
  return out


def wait_for_slices(plans, point_done, out: str, count: int, since: float, wait_s: float,
                    log=print) -> dict[int, list[str]]:
  """Process 0's wait for the other slices: until every point is done, every other process
  has finished (a status written after `since`) or `wait_s` passed; returns what is missing."""
  deadline, last = time.time() + wait_s, 0.0
  while True:
    missing = missing_by_process(plans, point_done, count)
    pending = [j for j in missing if j != 0 and (read_status(out, j) or {}).get(
        "finished", 0) < since]
    if not missing or not pending or time.time() >= deadline:
      return missing
    if time.time() - last > 600:
      log(f"waiting for process(es) {pending} to finish their slices "
          f"({sum(map(len, missing.values()))} points not done)", flush=True)
      last = time.time()
    time.sleep(min(POLL_S, max(0.0, deadline - time.time())))


def missing_line(missing: Mapping[int, list[str]], total: int) -> str:
  """One line naming what is not done, by process."""
  n = sum(len(v) for v in missing.values())
  parts = [f"process {j}: {len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
           for j, v in sorted(missing.items())]
  return f"{n} of {total} points are not done ({'; '.join(parts)})"


def describe_hosts(plans: Sequence, count: int, parallel: int, kind: str, ids: Sequence,
                   slots: Sequence[Mapping[str, str]], pod: Mapping | None = None) -> str:
  """The dry run's per-host plan: each process's points, and this host's device slots."""
  lines = [f"processes: {count}; points: {len(plans)}; up to {parallel} point(s) at a time "
           "per host"]
  if pod:
    lines.append(f"base config's pod: {pod['num_hosts']} host(s) x {pod['devices_per_host']} "
                 f"{pod['platform']} device(s) ({pod['device_kind']})")
  lines.append(f"this host's devices: {kind}" + (f" {','.join(ids)}" if ids else ""))
  for k, env in enumerate(slots):
    if env:
      lines.append(f"  slot {k}: " + " ".join(f"{a}={b}" for a, b in env.items()))
  for j in range(count):
    mine = [p.name for i, p in enumerate(plans) if owner(i, count) == j]
    shown = ", ".join(mine[:4]) + (f", ... ({len(mine)} points)" if len(mine) > 4 else "")
    lines.append(f"  process {j}: {shown or 'no points'}")
  return "\n".join(lines)
