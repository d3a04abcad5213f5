"""Hyperparameter grids and the aggregation of their results (`launch/sweep.py`).

Grids follow the Flax examples' `hparam_sweep.py` pattern (the `hyper` API), done locally:
a point is a dict from `config.a.b` paths to scalar values, and a grid is a list of points.

  grid = product([sweep("config.workload.rate", [1, 2, 4]),
                  sweep("config.seed", [0, 1, 2])])          # 9 points
  zipit([sweep("config.a", [1, 2]), sweep("config.b", [3, 4])])  # 2 points, zipped

`point_name(point)` is the point's stable directory name (keys sorted, `config.` dropped,
e.g. `seed-0_workload.rate-8`); `override_flags(point)` its launcher flags
(`--config.workload.rate=8`).

Aggregation: `rows_from_metrics` turns one point's `metrics.json` (the launchers' shared
format, `{"peak": x, "policies": {name: {metric: value}}}`, or one policy's flat summary
with a `policy` key) into rows, one per policy, flattening the metrics; `aggregate` groups
rows by the point minus its seed key (`config.seed`) and the policy, and gives each numeric
metric `m` the columns `m_mean` and `m_std` (sample standard deviation, ddof=1, over the
seeds; None with one seed) when the grid has a seed axis, else copies the rows.
`to_csv`, `to_markdown` and `max_x_table` format the result.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
import re
from typing import Any, Iterable, Mapping, Sequence

from bes import metrics as metrics_lib
from bes.config_cli import flatten

SEED_KEY = "config.seed"
# Headline metrics of the launchers' metrics.json, in table order (markdown table default).
HEADLINE = ("availability", "mean_utility", "frac_windows_ge_96", "frac_windows_ge_98",
            "perf_per_gpu", "p50_latency_s", "p99_latency_s", "rejected_frac")
_SCALARS = (bool, int, float, str)


def _check_key(key, where: str) -> str:
  if not isinstance(key, str) or not re.fullmatch(r"config(\.[A-Za-z_][A-Za-z0-9_]*)+", key):
    raise ValueError(f"{where}: expected a key 'config.a.b' (a config path), got {key!r}")
  return key


def sweep(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """One point per value: [{key: v} for v in values]; values are bool, int, float or str."""
  _check_key(key, "sweep")
  values = list(values)
  if not values:
    raise ValueError(f"sweep({key!r}): expected at least one value")
  for v in values:
    if not isinstance(v, _SCALARS):
      raise ValueError(f"sweep({key!r}): values must be bool, int, float or str, got {v!r}")
  return [{key: v} for v in values]


def _merge(points: Sequence[Mapping[str, Any]], where: str) -> dict[str, Any]:
  merged = {}
  for p in points:
    for k, v in p.items():
      if k in merged:
        raise ValueError(f"{where}: key {k!r} appears in more than one of the combined sweeps")
      merged[k] = v
  return merged


def product(sweeps: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
  """The Cartesian product of grids, the first one varying slowest; keys must be disjoint."""
  sweeps = [list(s) for s in sweeps]
  if not sweeps:
    raise ValueError("product: expected at least one sweep")
  return [_merge(c, "product") for c in itertools.product(*sweeps)]


def zipit(sweeps: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
  """Grids of equal length zipped point by point; keys must be disjoint."""
  sweeps = [list(s) for s in sweeps]
  if not sweeps:
    raise ValueError("zipit: expected at least one sweep")
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) != 1:
    raise ValueError(f"zipit: the sweeps must have equal lengths, got {lengths}")
  return [_merge(c, "zipit") for c in zip(*sweeps)]


def format_value(value: Any) -> str:
  """A value as a launcher flag takes it: integral floats keep '.0', bools are 'true'."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)
  return str(value)


def _name_value(value: Any) -> str:
  if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
    value = int(value)
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", format_value(value)) or "empty"


def point_name(point: Mapping[str, Any]) -> str:
  """Stable slug of a point: `key-value` pairs, keys sorted without 'config.', joined by '_'.

  {'config.workload.rate': 8.0, 'config.seed': 0} -> 'seed-0_workload.rate-8'; {} -> 'all'.
  """
  if not point:
    return "all"
  parts = [f"{k[len('config.'):] if k.startswith('config.') else k}-{_name_value(point[k])}"
           for k in sorted(point)]
  name = "_".join(parts)
  if len(name) > 120:   # stay well under file-name limits; the digest keeps names distinct
    name = name[:100] + "_" + hashlib.sha1(name.encode()).hexdigest()[:12]
  return name


def override_flags(point: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
  """`--config.a.b=value` flags for the point's keys (all, or `keys`), in the point's order."""
  keys = list(point) if keys is None else [k for k in point if k in set(keys)]
  return [f"--{k}={format_value(point[k])}" for k in keys]


def check_grid(grid: Any, where: str) -> list[dict[str, Any]]:
  """Validates a grid (a non-empty list of points with distinct names); returns it as dicts."""
  if isinstance(grid, Mapping) or not isinstance(grid, Sequence) or not grid:
    raise ValueError(f"{where}: expected a non-empty list of points (dicts), got {grid!r}")
  out, names = [], {}
  for i, p in enumerate(grid):
    if not isinstance(p, Mapping):
      raise ValueError(f"{where}[{i}]: expected a dict {{'config.a.b': value}}, got {p!r}")
    for k, v in p.items():
      _check_key(k, f"{where}[{i}]")
      if not isinstance(v, _SCALARS):
        raise ValueError(f"{where}[{i}][{k!r}]: expected bool, int, float or str, got {v!r}")
    name = point_name(p)
    if name in names:
      raise ValueError(f"{where}: points {names[name]} and {i} have the same name {name!r}")
    names[name] = i
    out.append(dict(p))
  return out


def _number(v: Any) -> float | None:
  """A metric value as a float (None for missing, null and non-finite values)."""
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return None
  return float(v)


def rows_from_metrics(point: Mapping[str, Any], data: Mapping[str, Any],
                      where: str = "metrics.json") -> list[dict[str, Any]]:
  """Rows (one per policy) of a point: {'point', point keys..., 'policy', 'peak', metrics...}."""
  if not isinstance(data, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
  if "policies" in data:
    policies = data["policies"]
    if not isinstance(policies, Mapping) or not policies:
      raise ValueError(f"{where}: 'policies' must be a non-empty object {{name: metrics}}")
  elif "policy" in data:
    policies = {str(data["policy"]): {k: v for k, v in data.items() if k != "policy"}}
  else:
    raise ValueError(f"{where}: expected a 'policies' object or a single policy's "
                     f"metrics with a 'policy' key")
  rows = []
  for name, m in policies.items():
    if not isinstance(m, Mapping):
      raise ValueError(f"{where}: policies[{name!r}] must be an object of metrics")
    row = {"point": point_name(point), **point, "policy": name}
    if "peak" in data:
      row["peak"] = data["peak"]
    row.update({k: v for k, v in flatten(m).items()          # lists (e.g. "seeds") dropped
                if k not in row and (v is None or isinstance(v, _SCALARS))})
    rows.append(row)
  return rows


def _point_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  keys = []
  for r in rows:
    keys += [k for k in r if k.startswith("config.") and k not in keys]
  return keys


def _metric_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  keys = []
  for r in rows:
    keys += [k for k, v in r.items() if k != "point" and not k.startswith("config.")
             and k not in keys and _number(v) is not None]
  return keys


def aggregate(rows: Sequence[Mapping[str, Any]], seed_key: str = SEED_KEY) -> list[dict]:
  """Mean and sample std (ddof=1) of every numeric metric over `seed_key`, per point+policy.

  Groups keep the order of their first row; a group row has the point's keys minus the seed,
  'policy', 'n' (rows in the group), 'seeds' (comma string) and `m_mean`, `m_std` per metric
  (over the rows where m is a finite number; std None with fewer than two). Without a seed
  key in any row the rows are returned unchanged (less 'point').
  """
  if not any(seed_key in r for r in rows):
    return [{k: v for k, v in r.items() if k != "point"} for r in rows]
  keys = [k for k in _point_keys(rows) if k != seed_key]
  metrics = _metric_keys(rows)
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault(tuple(r.get(k) for k in keys) + (r["policy"],), []).append(r)
  out = []
  for group_key, members in groups.items():
    row = dict(zip(keys, group_key[:-1]))
    row.update(policy=group_key[-1], n=len(members),
               seeds=",".join(format_value(m.get(seed_key)) for m in members))
    for m in metrics:
      vals = [v for v in (_number(x.get(m)) for x in members) if v is not None]
      mean = sum(vals) / len(vals) if vals else None
      row[f"{m}_mean"] = mean
      row[f"{m}_std"] = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                         if len(vals) > 1 else None)
    out.append(row)
  return out


def mean_std(row: Mapping[str, Any], metric: str) -> tuple[float | None, float | None]:
  """(mean, std) of `metric` in an aggregated row: over the grid's seed axis, else the
  spread the launcher reported itself (`<metric>_std`, e.g. over a router's seeds), else
  None."""
  if f"{metric}_mean" in row:
    return _number(row[f"{metric}_mean"]), _number(row.get(f"{metric}_std"))
  return _number(row.get(metric)), _number(row.get(f"{metric}_std"))


def to_csv(agg: Sequence[Mapping[str, Any]]) -> str:
  """CSV of aggregated rows; columns are the union of keys in first-seen order."""
  cols = []
  for r in agg:
    cols += [k for k in r if k not in cols]
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
  writer.writeheader()
  for r in agg:
    writer.writerow({k: "" if v is None else v for k, v in r.items()})
  return buf.getvalue()


def _short(key: str) -> str:
  return key[len("config."):] if key.startswith("config.") else key


def _display(v: Any) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "-"
  return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def to_markdown(agg: Sequence[Mapping[str, Any]], metrics: Sequence[str] = HEADLINE) -> str:
  """Markdown table: the point keys, policy, n (with seeds), then 'mean ± std' per metric.

  Metrics absent from every row are left out.
  """
  if not agg:
    return "(no rows)\n"
  keys = _point_keys(agg)
  present = [m for m in metrics if any(mean_std(r, m)[0] is not None for r in agg)]
  with_n = "n" in agg[0]
  head = [_short(k) for k in keys] + ["policy"] + (["n"] if with_n else []) + present
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in agg:
    cells = [_display(r.get(k, "")) for k in keys] + [str(r["policy"])]
    cells += [str(r["n"])] if with_n else []
    cells += [_cell(*mean_std(r, m)) for m in present]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def max_x_table(agg: Sequence[Mapping[str, Any]], x_key: str, metric: str = "availability",
                target: float = 0.99) -> str:
  """Markdown: per series (policy and the other point keys), the highest `x_key` value up to
  which the mean `metric` stays >= target (`bes.metrics.max_sustainable_rate`)."""
  others = [k for k in _point_keys(agg) if k != x_key]
  series: dict[tuple, list] = {}
  for r in agg:
    x, (y, _) = _number(r.get(x_key)), mean_std(r, metric)
    if x is not None and y is not None:
      series.setdefault(tuple(r.get(k) for k in others) + (r["policy"],), []).append((x, y))
  head = [_short(k) for k in others] + ["policy", f"max {_short(x_key)} with {metric} >= {target}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key, pts in series.items():
    best = metrics_lib.max_sustainable_rate([p[0] for p in pts], [p[1] for p in pts], target)
    cells = [_display(v) for v in key[:-1]] + [str(key[-1])]
    cells.append("none" if best is None else f"{best:g}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def report_markdown(agg: Sequence[Mapping[str, Any]], title: str, command: str, finished: int,
                    total: int, metrics: Sequence[str] = HEADLINE,
                    x_key: str | None = None) -> str:
  """table.md: title, command, finished points, `to_markdown` and (with `x_key` and an
  availability metric) `max_x_table`."""
  parts = [f"# {title}", f"`{command}`",
           f"{finished} of {total} points finished"
           + (f" ({total - finished} missing or failed)." if finished < total else ".")]
  if any("n" in r for r in agg):
    parts.append("Mean ± sample std (ddof=1) over config.seed; n = seeds.")
  parts.append(to_markdown(agg, metrics))
  if x_key and any(mean_std(r, "availability")[0] is not None for r in agg):
    parts += [f"## Highest {_short(x_key)} with mean availability >= 0.99",
              max_x_table(agg, x_key)]
  return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def plot(agg: Sequence[Mapping[str, Any]], path: str, x: str, y: str, log_x: bool = False,
         series: Sequence[str] = (), title: str = "") -> None:
  """PNG of x (a point key) vs the mean of metric y, one line per policy (and other point
  keys), std error bars; `series` keeps only those policies (empty: all)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  # A categorical x (e.g. a workload name) is plotted at positions 0, 1, ... in grid order,
  # one marker per series; labels name the other point keys that vary within a category
  # (keys that only describe the category, e.g. a workload's kind, are left out).
  categories = list(dict.fromkeys(str(r.get(x)) for r in agg))
  numeric = all(_number(r.get(x)) is not None for r in agg)
  others = [k for k in _point_keys(agg) if k != x]
  if not numeric:
    others = [k for k in others
              if any(len({str(r.get(k)) for r in agg if str(r.get(x)) == c}) > 1
                     for c in categories)]
  lines: dict[str, list] = {}
  for r in agg:
    mean, std = mean_std(r, y)
    if (series and r["policy"] not in series) or mean is None or r.get(x) is None:
      continue
    label = ", ".join([str(r["policy"])] + [f"{_short(k)}={r.get(k)}" for k in others])
    pos = float(r[x]) if numeric else float(categories.index(str(r[x])))
    lines.setdefault(label, []).append((pos, mean, std or 0.0))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  if not numeric:
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
    log_x = False
  for i, (label, pts) in enumerate(lines.items()):
    pts.sort()
    shift = 0.0 if numeric else 0.6 * (i / max(len(lines) - 1, 1) - 0.5)
    ax.errorbar([p[0] + shift for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                marker="o", capsize=3, label=label, linestyle="-" if numeric else "none")
  if log_x:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.set(xlabel=_short(x), ylabel=y, title=title)
  ax.grid(True, alpha=0.3)
  if lines:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
