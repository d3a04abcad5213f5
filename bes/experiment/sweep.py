"""Running a sweep (`bes.sweep_file` plans it; `launch/sweep.py` is its CLI), resumably, and
writing its aggregated outputs (`bes.sweep`).

Points run in grid order, their steps as subprocesses (`sys.executable` + the step's argv
from the repository root), sequentially, output appended to the step directory's log.txt. A
step that succeeds leaves a marker holding its command line; a point whose steps all
succeeded and whose metrics file parses gets a `done` marker holding its commands. On a
re-run, done points and steps whose markers hold the same commands are skipped (changed
commands re-run); a point whose metrics file is unusable reruns its own steps once.
A shared step that failed fails every point that expands it, without rerunning it. A shared
step that trained a router is trimmed to its latest parameters and config once it succeeds
(`bes.router.checkpoint.trim_to_policy`), unless `keep_learner_states`.

Over hosts and devices (`bes.experiment.sweep_hosts`): `run` takes this process's slice of
the points, runs up to `parallel` of them at once (each with its slot's device environment;
a shared step is run by one thread, the others wait on its lock and then skip it), and
waits for shared steps owned by other processes instead of running them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from concurrent import futures

from bes import io_util, sweep as hyper, sweep_file
from bes.experiment import sweep_hosts

TAIL_LINES = 30


def describe(plans, point_done_fn, step_done_fn, owners=None, index: int = 0) -> str:
  """The dry-run plan: each point's commands and whether they would run (`owners`: shared
  step argv -> the process that runs it, when not this one, `index`)."""
  lines, seen = [], set()
  owner = RunContext(owners=owners or {}, index=index).owner
  for plan in plans:
    done = point_done_fn(plan)
    lines.append(f"{plan.name}{'  (done, skipped)' if done else ''}")
    for s in plan.steps:
      who = owner(s)
      state = ("done" if done or step_done_fn(s) else
               f"waits for process {who}" if who != index else
               "shared, already planned" if tuple(s.argv) in seen else "run")
      seen.add(tuple(s.argv))
      lines.append(f"  [{s.name}: {state}] python {shlex.join(s.argv)}")
  return "\n".join(lines)


def provenance() -> str:
  """UTC time and git commit of the run (for COMMAND.txt)."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sweep_file.ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
  except OSError:
    commit = ""
  return f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, commit {commit or '?'}\n"


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path, obj):
  io_util.atomic_write_text(path, json.dumps(obj, indent=1))


def _tail(path, n=TAIL_LINES):
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return "(no log)\n"


def point_done(plan) -> bool:
  """Whether a point finished with the same commands and its metrics file still exists."""
  done = _read_json(os.path.join(plan.point_dir, "done"))
  return (done == {"steps": [s.argv for s in plan.steps]}
          and os.path.exists(plan.metrics_path))


def step_done(step) -> bool:
  return _read_json(step.marker) == step.argv


def run_step(step, env: dict | None = None) -> int:
  """Runs one step (sys.executable + argv from the repo root, `env` added to this process's
  environment), appending to its log."""
  os.makedirs(step.home, exist_ok=True)
  with open(step.log, "a") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} step {step.name}\n"
              f"$ python {shlex.join(step.argv)}\n")
    log.flush()
    rc = subprocess.run([sys.executable, *step.argv], cwd=sweep_file.ROOT, stdout=log,
                        stderr=subprocess.STDOUT, check=False,
                        env=dict(os.environ, **env) if env else None).returncode
    log.write(f"=== exit status {rc}\n")
  if rc == 0:
    _write_json(step.marker, step.argv)
  return rc


def trim_trained_router(home: str) -> None:
  """Keeps only the latest parameters and config of a router trained in `home`, if any."""
  if os.path.isdir(os.path.join(home, "checkpoints")):
    from bes.router import checkpoint   # jax and orbax: only for steps that trained
    freed = checkpoint.trim_to_policy(home)
    print(f"    kept the trained router's parameters, dropped {freed / 1e6:.1f} MB of learner "
          f"state", flush=True)


def read_rows(plan):
  """The point's rows from its metrics file (ValueError naming the file when unusable)."""
  data = _read_json(plan.metrics_path)
  if data is None:
    raise ValueError(f"{plan.metrics_path}: missing or not valid JSON")
  return hyper.rows_from_metrics(plan.point, data, where=plan.metrics_path)


@dataclasses.dataclass
class RunContext:
  """State shared by the points of one run: shared steps that failed (argv -> report), the
  owner process of each shared step (argv -> index; absent: this process), this process's
  index, how long to wait for another process's shared step, and one lock per shared step
  (points run side by side never run a shared step twice)."""
  failed_steps: dict = dataclasses.field(default_factory=dict)
  keep_learner_states: bool = False
  owners: dict = dataclasses.field(default_factory=dict)
  index: int = 0
  wait_s: float = 0.0
  _locks: dict = dataclasses.field(default_factory=dict)
  _guard: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def lock(self, key) -> threading.Lock:
    with self._guard:
      return self._locks.setdefault(key, threading.Lock())

  def owner(self, step) -> int:
    return self.owners.get(tuple(step.argv), self.index) if step.shared else self.index


def _run_own_step(step, ctx: RunContext, env, prefix: str) -> tuple[str | None, bool]:
  """Runs one of this process's steps unless done: (error report or None, whether it ran)."""
  key = tuple(step.argv)
  if key in ctx.failed_steps:
    return f"shared step {step.name} failed earlier in this run\n{ctx.failed_steps[key]}", False
  if step_done(step):
    print(f"{prefix}{step.name}: done, skipped", flush=True)
    return None, False
  if step.shared and os.path.exists(sweep_hosts.failed_marker(step)):
    os.remove(sweep_hosts.failed_marker(step))
  start = time.time()
  rc = run_step(step, env)
  print(f"{prefix}{step.name}: exit {rc} ({time.time() - start:.1f} s)", flush=True)
  if rc != 0:
    report = (f"step {step.name} exited with status {rc}\n$ python {shlex.join(step.argv)}\n"
              f"--- last lines of {step.log}:\n{_tail(step.log)}")
    if step.shared:
      ctx.failed_steps[key] = report
      _write_json(sweep_hosts.failed_marker(step), {"argv": step.argv, "report": report})
    return report, True
  if step.shared and not ctx.keep_learner_states:
    trim_trained_router(step.home)
  return None, True


def run_point(plan, ctx: RunContext, env: dict | None = None, prefix: str = "    ",
              retry: bool = True) -> str | None:
  """Runs a point's steps that are not done; returns None or an error report.

  A shared step owned by another process is waited for, not run. If every step was already
  done but the metrics file is unusable (its outputs were deleted), the point's own (not
  shared) steps run once more.
  """
  os.makedirs(plan.point_dir, exist_ok=True)
  ran = False
  for step in plan.steps:
    who = ctx.owner(step)
    if who != ctx.index:
      if step_done(step):
        print(f"{prefix}{step.name}: done, skipped", flush=True)
        continue
      error = sweep_hosts.wait_for_step(step, step_done, who, ctx.wait_s)
      if error is not None:
        return error
      print(f"{prefix}{step.name}: done by process {who}", flush=True)
      continue
    with ctx.lock(tuple(step.argv)) if step.shared else contextlib.nullcontext():
      error, did = _run_own_step(step, ctx, env, prefix)
    ran |= did
    if error is not None:
      return error
  try:
    read_rows(plan)
  except ValueError as e:
    if ran or not retry:
      return f"metrics: {e}"
    for step in plan.steps:
      if not step.shared and os.path.exists(step.marker):
        os.remove(step.marker)
    return run_point(plan, ctx, env, prefix, retry=False)
  _write_json(os.path.join(plan.point_dir, "done"), {"steps": [s.argv for s in plan.steps]})
  return None


def write_outputs(spec, plans, out: str) -> tuple[int, int]:
  """rows.jsonl, table.csv, table.md and plot.png from every finished point."""
  rows, missing = [], 0
  for plan in plans:
    if point_done(plan):
      rows += read_rows(plan)
    else:
      missing += 1
  with open(os.path.join(out, "rows.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  agg = hyper.aggregate(rows)
  with open(os.path.join(out, "table.csv"), "w") as f:
    f.write(hyper.to_csv(agg))
  with open(os.path.join(out, "COMMAND.txt")) as f:
    command = f.read().splitlines()[0]
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(hyper.report_markdown(agg, f"Sweep {spec.name}", command, len(plans) - missing,
                                  len(plans), spec.table, spec.plot["x"]))
  if agg:
    hyper.plot(agg, os.path.join(out, "plot.png"), title=f"sweep {spec.name}", **spec.plot)
  return len(rows), missing


def _waits(plan, ctx: RunContext) -> bool:
  """Whether a point needs another process's shared step that is not done yet."""
  return any(ctx.owner(s) != ctx.index and not step_done(s) for s in plan.steps)


def run(plans, out: str, command: str, keep_learner_states: bool = False, parallel: int = 1,
        slots: list | None = None, owners: dict | None = None, index: int = 0,
        wait_s: float = 0.0, failed_name: str = "failed.txt",
        write_command: bool = True) -> list[str]:
  """Runs the points of `plans` not done (a sweep into `out`, started by `command`, written
  to out/COMMAND.txt unless `write_command` is False and it exists); returns the names of
  the points that failed (their reports in out/`failed_name`). `write_outputs` then
  aggregates every finished point.

  Multi-host and multi-device (module docstring): `parallel` points at once, slot k's steps
  with the environment `slots[k]`; `owners` maps shared steps to the process that runs them
  (this one is `index`); others' are waited for up to `wait_s` s. Points that wait on
  another process run last.
  """
  io_util.check_writable_dir(out, "--out")   # one line via cli_errors if not writable
  command_path = os.path.join(out, "COMMAND.txt")
  if write_command or not os.path.exists(command_path):
    with open(command_path, "w") as f:
      f.write(f"{command}\n{provenance()}")
  failed_path = os.path.join(out, failed_name)
  if os.path.exists(failed_path):
    os.remove(failed_path)
  ctx = RunContext(keep_learner_states=keep_learner_states, owners=owners or {}, index=index,
                   wait_s=wait_s)
  plans = sorted(plans, key=lambda p: _waits(p, ctx))      # stable: grid order otherwise
  slots = list(slots or [{}]) if parallel > 1 else [None]
  free = queue.Queue()
  for k in range(parallel):
    free.put(k % len(slots))
  print_lock = threading.Lock()

  def one(i, plan):
    if point_done(plan):
      print(f"[{i + 1}/{len(plans)}] {plan.name}: done, skipped", flush=True)
      return None
    slot = free.get()
    env = slots[slot]
    try:
      where = " ".join(f"{k}={v}" for k, v in (env or {}).items())
      print(f"[{i + 1}/{len(plans)}] {plan.name}" + (
          f" (slot {slot}{': ' + where if where else ''})" if parallel > 1 else ""), flush=True)
      error = run_point(plan, ctx, env, prefix=f"    {plan.name}: " if parallel > 1 else "    ")
    finally:
      free.put(slot)
    if error is not None:
      with print_lock:
        print(f"    FAILED{' ' + plan.name if parallel > 1 else ''}: {error.splitlines()[0]}",
              flush=True)
    return error

  if parallel > 1:
    with futures.ThreadPoolExecutor(parallel) as pool:
      errors = list(pool.map(one, range(len(plans)), plans))
  else:
    errors = [one(i, plan) for i, plan in enumerate(plans)]
  failed = []
  for plan, error in zip(plans, errors):
    if error is not None:
      failed.append(plan.name)
      with open(failed_path, "a") as f:
        f.write(f"=== {plan.name}\n{error.rstrip()}\n\n")
  return failed
