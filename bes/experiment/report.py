"""The one report writer of evaluations (`bes.experiment.evaluate.evaluate`'s result).

Writes into an output directory:
  metrics.json   the result: {"profile", "workload", "env", "num_requests", "peak",
                 "policies": {name: bes.metrics.summarize dict}, ...} (launch/sweep.py reads it)
  table.txt      the command that produced it and the table of headline metrics
and, with per-request outcomes (launch/simulate.py), per policy `outcomes.csv`
(id,arrival,task,model,instance,latency,on_time,rejected,utility; arrival order, latency in
seconds, `inf` when rejected) and that policy's `metrics.json` (its summary with a `policy`
key): straight into the directory for a single policy, which then holds no comparison, else
into `<out>/<policy slug>/`. Files are written atomically; a report whose directory fails
after the run goes to a rescue directory instead (`bes.io_util`), never lost.
"""
from __future__ import annotations

import json
import os
import re
from typing import Mapping

from bes import io_util

TABLE_COLUMNS = (("availability", "avail"), ("mean_utility", "utility"),
                 ("frac_windows_ge_96", "win>=96%"), ("frac_windows_ge_98", "win>=98%"),
                 ("perf_per_gpu", "util/s/GPU"), ("p50_latency_s", "p50 s"),
                 ("p99_latency_s", "p99 s"), ("rejected_frac", "rejected"))
OUTCOME_COLUMNS = ("id", "arrival", "task", "model", "instance", "latency", "on_time",
                   "rejected", "utility")


def format_table(rows: Mapping[str, dict]) -> str:
  """A fixed-width table of the headline metrics, one row per policy (`± std` over seeds
  where a row has one)."""
  def fmt(m, key):
    v = m.get(key)
    if v is None:
      return "-"
    std = m.get(f"{key}_std")
    return f"{v:.4f}" if std is None else f"{v:.3f}±{std:.3f}"
  width = max(len(k) for k in list(rows) + ["policy"]) + 2
  lines = ["policy".ljust(width) + "".join(short.rjust(14) for _, short in TABLE_COLUMNS)]
  for name, m in rows.items():
    lines.append(name.ljust(width) + "".join(fmt(m, key).rjust(14) for key, _ in TABLE_COLUMNS))
  return "\n".join(lines)


def format_report(result: dict) -> str:
  """The readable report of a result: one line on the requests and the peak, the table."""
  workload = result["workload"]
  return (f"{result['num_requests']} requests ({workload['kind']}, rate {workload['rate']}), "
          f"peak (best model per task) = {result['peak']:.4f}\n"
          f"{format_table(result['policies'])}\n")


def slug(name: str) -> str:
  """A policy name as a directory name."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def outcomes_csv(outcomes: dict) -> str:
  """One row per request in arrival order; latency in seconds (`inf` when rejected)."""
  o = outcomes
  rows = [",".join(OUTCOME_COLUMNS) + "\n"]
  for i in range(len(o["arrival"])):
    rows.append(f"{i},{o['arrival'][i]:.6f},{o['task'][i]},{o['model'][i]},{o['instance'][i]},"
                f"{o['latency'][i]:.6f},{int(o['on_time'][i])},{int(o['rejected'][i])},"
                f"{o['utility'][i]:.6f}\n")
  return "".join(rows)


def write(out: str, result: dict, command: str,
          outcomes: Mapping[str, dict] | None = None) -> tuple[str, str]:
  """Writes the result (module docstring) under `command`, each file atomically and, if
  `out` fails, into a rescue directory announced on stderr (`bes.io_util.write_text`);
  returns (the report text, the directory table.txt went to)."""
  for name, o in (outcomes or {}).items():
    sub = "" if len(outcomes) == 1 else slug(name)
    io_util.write_text(out, os.path.join(sub, "outcomes.csv"), outcomes_csv(o))
    io_util.write_text(out, os.path.join(sub, "metrics.json"),
                       json.dumps(dict(result["policies"][name], policy=name), indent=2))
  if not outcomes or len(outcomes) > 1:
    io_util.write_text(out, "metrics.json", json.dumps(result, indent=2, default=list))
  report = format_report(result)
  table = io_util.write_text(out, "table.txt", f"$ {command}\n\n{report}")
  return report, os.path.dirname(table)
