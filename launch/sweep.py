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
"""
from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from bes import cli_errors
from bes.experiment import sweep as runner
from bes.sweep_file import load_sweep, plan_sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/<name>.py).")
_OUT = flags.DEFINE_string("out", None, "Output directory of the sweep.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan (commands, skips) and exit.")
_ONLY = flags.DEFINE_string("only", None, "Run only the points whose name contains this.")
_KEEP_LEARNER_STATES = flags.DEFINE_bool(
    "keep_learner_states", False, "Keep the learner states (replay buffers) and older "
    "checkpoints of routers trained by shared steps; by default only the latest parameters "
    "and config stay (enough to evaluate, not to resume training).")

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
    print(runner.describe(selected, runner.point_done, runner.step_done))
    return
  failed = runner.run(selected, out, f"python {shlex.join(sys.argv)}",
                      keep_learner_states=_KEEP_LEARNER_STATES.value)
  num_rows, missing = runner.write_outputs(spec, plans, out)
  print(f"\n{num_rows} rows from {len(plans) - missing} points; wrote {out}/table.md")
  if failed:
    failed_path = os.path.join(out, "failed.txt")
    print(f"{len(failed)} point(s) failed: {', '.join(failed)} (see {failed_path})")
    sys.exit(1)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
