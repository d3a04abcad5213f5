r"""Runs a sweep file's grid of launcher commands, resumably, and aggregates the results.

  python launch/sweep.py --sweep=configs/sweeps/static_rates.py --out=results/static_rates
  python launch/sweep.py --sweep=... --out=DIR --dry_run          # print the plan only
  python launch/sweep.py --sweep=... --out=DIR --only=rate-8      # points whose name has it

The sweep file format (fields base, grid, steps, metrics_from, plot, table; placeholders
{base}, {out}, {point_dir}, {step_dir}, {steps[NAME]}, {overrides}; shared steps) is
documented in `configs/sweeps/__init__.py`; `configs/sweeps/static_rates.py` is an example.

Running and resuming (`bes.experiment.sweep`). Points run in grid order, their steps as subprocesses, sequentially,
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

Over hosts and devices (`bes.experiment.sweep_hosts`):

  python launch/sweep.py --sweep=... --out=DIR --parallel=8     # 8 points at a time, a device each
  python launch/sweep.py --sweep=... --out=DIR --process_index=I --process_count=N
  python launch/sweep.py --sweep=... --out=DIR --aggregate_only  # the table, once all are done

Process I of N (defaults from JAX_PROCESS_ID / JAX_NUM_PROCESSES, SLURM_PROCID / SLURM_NTASKS
or TPU_WORKER_ID / TPU_WORKER_HOSTNAMES; else 0 of 1) runs the points whose grid index is I
mod N; a shared step is run by the process owning the first point that expands it, and the
others wait for it (--wait_s). Every process writes DIR/processes/I.json when its slice is
through; process 0 then waits for the other slices (--aggregate_wait_s) and writes the one
table only when every point is done (else it names the missing points: rerun their slices,
on any host, then --aggregate_only). Each process's failures go to DIR/failed.process-I.txt.
--dry_run adds the per-host plan (each process's points, this host's device slots).
"""
from __future__ import annotations

import os
import shlex
import sys
import time

from absl import app, flags

from bes import cli_errors, config_cli
from bes.experiment import sweep as runner, sweep_hosts as hosts
from bes.sweep_file import ROOT, load_sweep, plan_sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/<name>.py).")
_OUT = flags.DEFINE_string("out", None, "Output directory of the sweep.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan (per-host points and devices, "
                             "commands, skips) and exit.")
_ONLY = flags.DEFINE_string("only", None, "Run only the points whose name contains this.")
_KEEP_LEARNER_STATES = flags.DEFINE_bool(
    "keep_learner_states", False, "Keep the learner states (replay buffers) and older "
    "checkpoints of routers trained by shared steps; by default only the latest parameters "
    "and config stay (enough to evaluate, not to resume training).")
_PROCESS_INDEX = flags.DEFINE_integer(
    "process_index", None, "This process's slice: the points with grid index = this mod "
    "--process_count (default: from JAX_PROCESS_ID, SLURM_PROCID or TPU_WORKER_ID; else 0).")
_PROCESS_COUNT = flags.DEFINE_integer(
    "process_count", None, "Processes (hosts) sharing the sweep (default: from "
    "JAX_NUM_PROCESSES, SLURM_NTASKS or TPU_WORKER_HOSTNAMES; else 1).")
_PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "Points run at once on this host, each with its share of the local "
    "accelerators (CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS); on CPU they share the cores.")
_WAIT_S = flags.DEFINE_float("wait_s", 6 * 3600.0, "Seconds to wait for a shared step that "
                             "another process runs before failing the points that need it.")
_AGGREGATE_WAIT_S = flags.DEFINE_float(
    "aggregate_wait_s", 6 * 3600.0, "Seconds process 0 waits for the other slices before "
    "giving up on the table (then: --aggregate_only once they are done).")
_AGGREGATE_ONLY = flags.DEFINE_bool(
    "aggregate_only", False, "Run nothing: write the table if every point is done, else name "
    "the missing points and exit 1.")


def _process() -> tuple[int, int]:
  env_index, env_count = hosts.process_from_env()
  count = env_count if _PROCESS_COUNT.value is None else _PROCESS_COUNT.value
  index = env_index if _PROCESS_INDEX.value is None else _PROCESS_INDEX.value
  if _PROCESS_INDEX.value is not None and _PROCESS_COUNT.value is None and env_count == 1:
    raise ValueError("--process_index: give --process_count too")
  hosts.check_process(index, count)
  return index, count


def _pod(spec):
  pod = config_cli.load_config_file(os.path.join(ROOT, spec.base)).get("pod")
  return None if pod is None else dict(pod)


def _aggregate(spec, plans, out, missing):
  if missing:
    return f"not aggregated: {hosts.missing_line(missing, len(plans))}"
  num_rows, _ = runner.write_outputs(spec, plans, out)
  print(f"\n{num_rows} rows from {len(plans)} points; wrote {out}/table.md")
  return None


def main(argv):
  if len(argv) > 1:
    sys.exit(f"sweep.py: error: unexpected arguments {argv[1:]}")
  if not _SWEEP.value or not _OUT.value:
    sys.exit("sweep.py: error: --sweep and --out are required")
  out = os.path.abspath(_OUT.value)
  try:
    spec = load_sweep(_SWEEP.value)
    plans = plan_sweep(spec, out)
    index, count = _process()
    kind, ids = hosts.local_accelerators()
    slots = hosts.slot_envs(_PARALLEL.value, kind, ids)
  except ValueError as e:
    sys.exit(f"sweep.py: error: {e}")
  command = f"python {shlex.join(sys.argv)}"
  if _AGGREGATE_ONLY.value:
    if not os.path.exists(os.path.join(out, "COMMAND.txt")):
      sys.exit(f"sweep.py: error: --aggregate_only: {out} holds no sweep (no COMMAND.txt)")
    error = _aggregate(spec, plans, out,
                       hosts.missing_by_process(plans, runner.point_done, count))
    if error:
      sys.exit(f"sweep.py: error: {error}; run their slices (--process_index=...) first")
    return
  matching = [p for p in plans if _ONLY.value is None or _ONLY.value in p.name]
  if not matching:
    sys.exit(f"sweep.py: error: --only={_ONLY.value!r} matches none of the {len(plans)} points")
  names = {p.name for p in matching}
  selected = [p for i, p in enumerate(plans)
              if hosts.owner(i, count) == index and p.name in names]
  if _DRY_RUN.value:
    print(hosts.describe_hosts(plans, count, _PARALLEL.value, kind, ids, slots, _pod(spec)))
    print(f"process {index}'s points:")
    print(runner.describe(selected, runner.point_done, runner.step_done,
                          hosts.step_owners(plans, count), index))
    return
  since = time.time()
  failed_name = "failed.txt" if count == 1 else f"failed.process-{index}.txt"
  failed = runner.run(selected, out, command, keep_learner_states=_KEEP_LEARNER_STATES.value,
                      parallel=_PARALLEL.value, slots=slots,
                      owners=hosts.step_owners(plans, count) if count > 1 else {},
                      index=index, wait_s=_WAIT_S.value, failed_name=failed_name,
                      write_command=index == 0)
  if count == 1:
    num_rows, missing = runner.write_outputs(spec, plans, out)
    print(f"\n{num_rows} rows from {len(plans) - missing} points; wrote {out}/table.md")
  else:
    hosts.write_status(out, index, [p.name for p in selected], failed)
    if index == 0:
      missing = hosts.wait_for_slices(plans, runner.point_done, out, count, since,
                                      _AGGREGATE_WAIT_S.value)
      error = _aggregate(spec, plans, out, missing)
      if error:
        print(f"\n{error}; once they are done: {command} --aggregate_only")
    else:
      print(f"\nprocess {index}: slice done ({len(selected)} points); process 0 writes the table")
  if failed:
    failed_path = os.path.join(out, failed_name)
    print(f"{len(failed)} point(s) failed: {', '.join(failed)} (see {failed_path})")
    sys.exit(1)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
