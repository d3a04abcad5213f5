r"""Runs a sweep file's grid of launcher commands, resumably, and aggregates the results.

  python launch/sweep.py --sweep=configs/sweeps/static_rates.py --out=results/static_rates
  python launch/sweep.py --sweep=... --out=DIR --dry_run          # print the plan only
  python launch/sweep.py --sweep=... --out=DIR --only=rate-8      # points whose name has it

The sweep file format (fields base, grid, steps, metrics_from, plot, table; placeholders
{base}, {out}, {point_dir}, {step_dir}, {steps[NAME]}, {overrides}; shared steps) is
documented in `configs/sweeps/__init__.py`; `configs/sweeps/static_rates.py` is an example.

Running and resuming. Points run in grid order, their steps as subprocesses, sequentially,
output appended to the step directory's log.txt (`DIR/points/<name>/log.txt`); a shared
step runs once and is reused by every point that expands it to the same command. A step
that succeeds leaves a marker holding its command line; a point whose steps all succeeded
and whose metrics file parses gets a `done` marker. On a re-run, a point whose `done` marker holds the same commands is skipped, a step
whose marker holds the same command is skipped (changed commands re-run); deleting a
point's directory re-runs it. A failing point is appended to DIR/failed.txt (this run's
failures) with its log's tail and the sweep goes on; the exit status is 1 if any failed.

Outputs: DIR/rows.jsonl (one row per point x policy), DIR/table.csv and DIR/table.md
(means and sample stds over config.seed when the grid has it; `bes.sweep.aggregate`),
DIR/plot.png and DIR/COMMAND.txt. Bulk per-point outputs stay under DIR/points/ and
DIR/shared/. A shared step that trained a router (its directory has `checkpoints/`) is
trimmed once it succeeds: only the latest checkpoint's parameters and config stay (what
evaluation reads; `bes.router.checkpoint.trim_to_policy`), not the learner state and its
replay buffers, so a sweep's --out can be committed under results/
(--keep_learner_states keeps everything, e.g. to resume training later).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from bes import cli_errors, io_util, sweep as hyper
from bes.sweep_file import ROOT, load_sweep, plan_sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/<name>.py).")
_OUT = flags.DEFINE_string("out", None, "Output directory of the sweep.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan (commands, skips) and exit.")
_ONLY = flags.DEFINE_string("only", None, "Run only the points whose name contains this.")
_KEEP_LEARNER_STATES = flags.DEFINE_bool(
    "keep_learner_states", False, "Keep the learner states (replay buffers) and older "
    "checkpoints of routers trained by shared steps; by default only the latest parameters "
    "and config stay (enough to evaluate, not to resume training).")

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
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
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
    rc = subprocess.run([sys.executable, *step.argv], cwd=ROOT, stdout=log,
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


def run_point(plan, failed_steps: dict, retry: bool = True) -> str | None:
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
    if step.shared and not _KEEP_LEARNER_STATES.value:
      trim_trained_router(step.home)
  try:
    read_rows(plan)
  except ValueError as e:
    if ran or not retry:
      return f"metrics: {e}"
    for step in plan.steps:
      if not step.shared and os.path.exists(step.marker):
        os.remove(step.marker)
    return run_point(plan, failed_steps, retry=False)
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


def main(argv):
  if len(argv) > 1:
    sys.exit(f"sweep.py: error: unexpected arguments {argv[1:]}")
  if not _SWEEP.value or not _OUT.value:
    sys.exit("sweep.py: error: --sweep and --out are required")
  out = os.path.abspath(_OUT.value)
  try:
    spec = load_sweep(_SWEEP.value)
    plans = plan_sweep(spec, out)
  except ValueError as e:
    sys.exit(f"sweep.py: error: {e}")
  selected = [p for p in plans if _ONLY.value is None or _ONLY.value in p.name]
  if not selected:
    sys.exit(f"sweep.py: error: --only={_ONLY.value!r} matches none of the {len(plans)} points")
  if _DRY_RUN.value:
    print(describe(selected, point_done, step_done))
    return
  io_util.check_writable_dir(out, "--out")   # one line via cli_errors if not writable
  with open(os.path.join(out, "COMMAND.txt"), "w") as f:
    f.write(f"python {shlex.join(sys.argv)}\n{provenance()}")
  failed_path = os.path.join(out, "failed.txt")
  if os.path.exists(failed_path):
    os.remove(failed_path)
  failed, failed_steps = [], {}
  for i, plan in enumerate(selected):
    if point_done(plan):
      print(f"[{i + 1}/{len(selected)}] {plan.name}: done, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(selected)}] {plan.name}", flush=True)
    error = run_point(plan, failed_steps)
    if error is not None:
      failed.append(plan.name)
      print(f"    FAILED: {error.splitlines()[0]}", flush=True)
      with open(failed_path, "a") as f:
        f.write(f"=== {plan.name}\n{error.rstrip()}\n\n")
  num_rows, missing = write_outputs(spec, plans, out)
  print(f"\n{num_rows} rows from {len(plans) - missing} points; wrote {out}/table.md")
  if failed:
    print(f"{len(failed)} point(s) failed: {', '.join(failed)} (see {failed_path})")
    sys.exit(1)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
