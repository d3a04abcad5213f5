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
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from bes import io_util, sweep as hyper, sweep_file

TAIL_LINES = 30


def describe(plans, point_done_fn, step_done_fn) -> str:
  """The dry-run plan: each point's commands and whether they would run."""
  lines, seen = [], set()
  for plan in plans:
    done = point_done_fn(plan)
    lines.append(f"{plan.name}{'  (done, skipped)' if done else ''}")
    for s in plan.steps:
      state = ("done" if done or step_done_fn(s) else
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


def run_step(step) -> int:
  """Runs one step (sys.executable + argv from the repo root), appending to its log."""
  os.makedirs(step.home, exist_ok=True)
  with open(step.log, "a") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} step {step.name}\n"
              f"$ python {shlex.join(step.argv)}\n")
    log.flush()
    rc = subprocess.run([sys.executable, *step.argv], cwd=sweep_file.ROOT, stdout=log,
                        stderr=subprocess.STDOUT, check=False).returncode
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


def run_point(plan, failed_steps: dict, retry: bool = True,
              keep_learner_states: bool = False) -> str | None:
  """Runs a point's steps that are not done; returns None or an error report.

  If every step was already done but the metrics file is unusable (its outputs were
  deleted), the point's own (not shared) steps run once more.
  """
  os.makedirs(plan.point_dir, exist_ok=True)
  ran = False
  for step in plan.steps:
    key = tuple(step.argv)
    if key in failed_steps:
      return f"shared step {step.name} failed earlier in this run\n{failed_steps[key]}"
    if step_done(step):
      print(f"    {step.name}: done, skipped", flush=True)
      continue
    start, ran = time.time(), True
    rc = run_step(step)
    print(f"    {step.name}: exit {rc} ({time.time() - start:.1f} s)", flush=True)
    if rc != 0:
      report = (f"step {step.name} exited with status {rc}\n$ python {shlex.join(step.argv)}\n"
                f"--- last lines of {step.log}:\n{_tail(step.log)}")
      if step.shared:
        failed_steps[key] = report
      return report
    if step.shared and not keep_learner_states:
      trim_trained_router(step.home)
  try:
    read_rows(plan)
  except ValueError as e:
    if ran or not retry:
      return f"metrics: {e}"
    for step in plan.steps:
      if not step.shared and os.path.exists(step.marker):
        os.remove(step.marker)
    return run_point(plan, failed_steps, retry=False, keep_learner_states=keep_learner_states)
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


def run(plans, out: str, command: str, keep_learner_states: bool = False) -> list[str]:
  """Runs the points of `plans` not done (a sweep into `out`, started by `command`, written
  to out/COMMAND.txt); returns the names of the points that failed (their reports in
  out/failed.txt). `write_outputs` then aggregates every finished point."""
  io_util.check_writable_dir(out, "--out")   # one line via cli_errors if not writable
  with open(os.path.join(out, "COMMAND.txt"), "w") as f:
    f.write(f"{command}\n{provenance()}")
  failed_path = os.path.join(out, "failed.txt")
  if os.path.exists(failed_path):
    os.remove(failed_path)
  failed, failed_steps = [], {}
  for i, plan in enumerate(plans):
    if point_done(plan):
      print(f"[{i + 1}/{len(plans)}] {plan.name}: done, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(plans)}] {plan.name}", flush=True)
    error = run_point(plan, failed_steps, keep_learner_states=keep_learner_states)
    if error is not None:
      failed.append(plan.name)
      print(f"    FAILED: {error.splitlines()[0]}", flush=True)
      with open(failed_path, "a") as f:
        f.write(f"=== {plan.name}\n{error.rstrip()}\n\n")
  return failed
