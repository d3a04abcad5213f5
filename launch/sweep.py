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
DIR/shared/.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import string
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bes import sweep as hyper  # noqa: E402

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/<name>.py).")
_OUT = flags.DEFINE_string("out", None, "Output directory of the sweep.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan (commands, skips) and exit.")
_ONLY = flags.DEFINE_string("only", None, "Run only the points whose name contains this.")

TAIL_LINES = 30
_FIELDS = ("base", "out", "point_dir", "step_dir", "steps")
_SWEEP_FIELDS = {"steps", "metrics_from", "base", "grid", "plot", "table"}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """A step template: `tokens` (shlex-split), which point keys it takes (`keys`; None =
  all), whether it has the {overrides} token, and the earlier steps it names."""
  name: str
  tokens: tuple[str, ...]
  keys: tuple[str, ...] | None
  takes_overrides: bool
  refs: tuple[str, ...]
  per_point: bool


@dataclasses.dataclass(frozen=True)
class Spec:
  """A validated sweep file (fields: configs/sweeps/__init__.py)."""
  name: str
  path: str
  base: str
  steps: tuple[StepSpec, ...]
  grid: tuple[dict, ...]
  metrics_from: str
  plot: dict
  table: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Step:
  """One expanded step of one point: argv after sys.executable, its directory, marker, log."""
  name: str
  argv: list
  home: str
  marker: str
  log: str
  shared: bool


@dataclasses.dataclass(frozen=True)
class PointPlan:
  """One point: its overrides, directory, metrics file and expanded steps."""
  name: str
  point: dict
  point_dir: str
  metrics_path: str
  steps: tuple[Step, ...]


def _fields(template: str, where: str) -> list[tuple[str, str]]:
  """(field, step name or '') of each placeholder; ValueError on unknown ones."""
  out = []
  try:
    parsed = list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f"{where}: bad template {template!r}: {e}") from None
  for _, field, _, _ in parsed:
    if field is None:
      continue
    m = re.fullmatch(r"(\w+)(?:\[([\w-]+)\])?", field)
    if not m or (m.group(1) == "steps") != (m.group(2) is not None) or (
        m.group(1) not in _FIELDS):
      raise ValueError(f"{where}: unknown placeholder {{{field}}} in {template!r}; expected "
                       "{base}, {out}, {point_dir}, {step_dir}, {steps[NAME]} or {overrides}")
    out.append((m.group(1), m.group(2) or ""))
  return out


def _step_spec(i: int, raw: Any, earlier: Mapping[str, StepSpec], grid_keys: set,
               where: str) -> StepSpec:
  where = f"{where}: steps[{i}]"
  if isinstance(raw, str):
    raw = {"cmd": raw}
  elif hasattr(raw, "to_dict"):   # a ConfigDict
    raw = raw.to_dict()
  if not isinstance(raw, Mapping):
    raise ValueError(f"{where}: expected a command string or dict(cmd=..., name=..., "
                     f"overrides=[...]), got {raw!r}")
  unknown = set(raw) - {"cmd", "name", "overrides"}
  if unknown:
    raise ValueError(f"{where}: unknown fields {sorted(unknown)}; expected cmd, name, overrides")
  name, cmd, keys = raw.get("name", f"step{i}"), raw.get("cmd"), raw.get("overrides")
  if not isinstance(name, str) or not re.fullmatch(r"[\w-]+", name) or name in earlier:
    raise ValueError(f"{where}.name: expected a new name of letters, digits, _ or -, got {name!r}")
  if not isinstance(cmd, str) or not cmd.strip():
    raise ValueError(f"{where}.cmd: expected a command template string, got {cmd!r}")
  try:
    tokens = tuple(shlex.split(cmd))
  except ValueError as e:
    raise ValueError(f"{where}.cmd: cannot split {cmd!r}: {e}") from None
  takes = "{overrides}" in tokens
  refs, per_point = [], False
  for tok in tokens:
    if tok == "{overrides}":
      continue
    if "{overrides}" in tok:
      raise ValueError(f"{where}.cmd: {{overrides}} must be a whole word, got {tok!r}")
    for field, ref in _fields(tok, f"{where}.cmd"):
      per_point |= field == "point_dir"
      if field == "steps":
        if ref not in earlier:
          raise ValueError(f"{where}.cmd: {{steps[{ref}]}} names no earlier step "
                           f"(earlier: {sorted(earlier)})")
        refs.append(ref)
        per_point |= earlier[ref].per_point
  if keys is not None:
    if not takes:
      raise ValueError(f"{where}.overrides: given but the command has no {{overrides}} token")
    if isinstance(keys, str) or not isinstance(keys, Sequence) or any(
        k not in grid_keys for k in keys):
      raise ValueError(f"{where}.overrides: expected a list of grid keys "
                       f"{sorted(grid_keys)}, got {keys!r}")
    keys = tuple(keys)
  return StepSpec(name, tokens, keys, takes, tuple(refs), per_point)


def load_sweep(path: str) -> Spec:
  """Imports a sweep file and validates its `get_sweep()` (ValueError naming file and field)."""
  if not os.path.isfile(path):
    raise ValueError(f"--sweep: no such file {path!r}")
  try:
    module_spec = importlib.util.spec_from_file_location("_sweep_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
      raise ValueError("defines no get_sweep()")
    cfg = module.get_sweep()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: {type(e).__name__}: {e}") from e
  if not hasattr(cfg, "keys"):
    raise ValueError(f"{path}: get_sweep() must return a ConfigDict, got {type(cfg).__name__}")
  missing = [k for k in ("base", "grid", "steps", "metrics_from", "plot") if k not in cfg]
  if missing:
    raise ValueError(f"{path}: get_sweep() lacks the fields {missing}")
  unknown = [k for k in cfg if k not in _SWEEP_FIELDS]
  if unknown:
    raise ValueError(f"{path}: unknown fields {unknown}; expected {sorted(_SWEEP_FIELDS)}")
  base = cfg.base
  if not isinstance(base, str) or not os.path.isfile(os.path.join(ROOT, base)):
    raise ValueError(f"{path}: base: expected a config file (relative to {ROOT}), got {base!r}")
  grid = hyper.check_grid(cfg.grid, f"{path}: grid")
  grid_keys = {k for p in grid for k in p}
  raw_steps = cfg.steps
  if isinstance(raw_steps, (str, Mapping)) or not isinstance(raw_steps, Sequence) or not raw_steps:
    raise ValueError(f"{path}: steps: expected a non-empty list of command templates")
  steps = {}
  for i, raw in enumerate(raw_steps):
    s = _step_spec(i, raw, steps, grid_keys, path)
    steps[s.name] = s
  if not isinstance(cfg.metrics_from, str):
    raise ValueError(f"{path}: metrics_from: expected a path template, got {cfg.metrics_from!r}")
  for field, ref in _fields(cfg.metrics_from, f"{path}: metrics_from"):
    if field == "step_dir" or (field == "steps" and ref not in steps):
      raise ValueError(f"{path}: metrics_from: {{{field}}} {ref} is not a known directory")
  plot = dict(cfg.plot) if hasattr(cfg.plot, "keys") else {}
  if set(plot) - {"x", "y", "log_x", "series"} or plot.get("x") not in grid_keys or not (
      isinstance(plot.get("y"), str)):
    raise ValueError(f"{path}: plot: expected dict(x=<grid key of {sorted(grid_keys)}>, "
                     f"y=<metric>, log_x=bool, series=[policies]), got {plot!r}")
  plot.setdefault("log_x", False)
  plot["series"] = list(plot.get("series") or [])
  table = tuple(cfg.get("table") or hyper.HEADLINE)
  name = os.path.splitext(os.path.basename(path))[0]
  return Spec(name, path, base, tuple(steps.values()), tuple(grid), cfg.metrics_from, plot,
              table)


def _step_keys(spec_steps: Mapping[str, StepSpec], s: StepSpec, point: Mapping) -> set:
  keys = set((point if s.keys is None else s.keys) if s.takes_overrides else ())
  for ref in s.refs:
    keys |= _step_keys(spec_steps, spec_steps[ref], point)
  return keys


def plan_sweep(spec: Spec, out: str) -> list[PointPlan]:
  """Expands every point's steps; checks that a shared directory gets a single command."""
  by_name = {s.name: s for s in spec.steps}
  homes: dict[str, list] = {}
  plans = []
  for point in spec.grid:
    name = hyper.point_name(point)
    point_dir = os.path.join(out, "points", name)
    fields = dict(base=spec.base, out=out, point_dir=point_dir, steps={})
    steps = []
    for s in spec.steps:
      if s.per_point:
        home, marker = point_dir, os.path.join(point_dir, f".done_{s.name}")
      else:
        sub = {k: v for k, v in point.items() if k in _step_keys(by_name, s, point)}
        home = os.path.join(out, "shared", s.name, hyper.point_name(sub))
        marker = os.path.join(home, ".done")
      argv = []
      for tok in s.tokens:
        argv += (hyper.override_flags(point, s.keys) if tok == "{overrides}"
                 else [tok.format(step_dir=home, **fields)])
      if homes.setdefault(home + s.name, argv) != argv:
        raise ValueError(f"{spec.path}: step {s.name}: points share {home} but expand to "
                         f"different commands:\n  {shlex.join(homes[home + s.name])}\n  "
                         f"{shlex.join(argv)}")
      fields["steps"][s.name] = home
      steps.append(Step(s.name, argv, home, marker, os.path.join(home, "log.txt"),
                        not s.per_point))
    metrics_path = os.path.join(ROOT, spec.metrics_from.format(**fields))
    plans.append(PointPlan(name, point, point_dir, metrics_path, tuple(steps)))
  return plans


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
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)


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
  os.makedirs(out, exist_ok=True)
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
  app.run(main)
