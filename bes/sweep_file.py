"""Sweep files: loading and validating `configs/sweeps/<name>.py` (`get_sweep()`, format in
`configs/sweeps/__init__.py`) and planning a sweep: every point's expanded steps, shared
steps resolved, directories, markers and metrics paths. `launch/sweep.py` runs the plan.

Paths in a sweep file are relative to the repository root (`ROOT`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import string
from typing import Any, Mapping, Sequence

from bes import config_cli
from bes import sweep as hyper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def _check_override_keys(steps, grid_keys: set, base: str, path: str) -> None:
  """The grid keys the steps pass as `--config.KEY` flags must be keys of the base config
  (ValueError naming the key and the closest ones, before any point runs). Grid keys no
  step passes (labels such as `config.workload.name`) are not checked."""
  passed = set()
  for s in steps:
    if s.takes_overrides:
      passed |= grid_keys if s.keys is None else set(s.keys)
  try:
    config_cli.check_keys(config_cli.load_config_file(os.path.join(ROOT, base)),
                          sorted(k[len("config."):] for k in passed), base)
  except ValueError as e:
    raise ValueError(f"{path}: grid: {e}") from None


def load_sweep(path: str) -> Spec:
  """Imports a sweep file and validates its `get_sweep()` (ValueError naming file and field)."""
  cfg = config_cli.load_file_function(path, "get_sweep", "--sweep")
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
  _check_override_keys(steps.values(), grid_keys, base, path)
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
