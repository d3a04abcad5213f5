"""Sim-to-real comparison: the same requests simulated and served for real, side by side.

The trace both sides replay comes from `bes/serving/traces.py` (`prepare_trace`,
`bursty_trace`). Then `read_outcomes_csv` reads both `outcomes.csv` back (schema of
`bes.experiment.report`: id,arrival,task,model,instance,latency,on_time,rejected,utility;
latency `inf` when rejected), `compare` computes both sides' metrics (`bes.metrics`) and
their differences, `targets_met` checks the sim-to-real targets, `write_comparison` writes
comparison.json, comparison.md and latency_scatter.png.

Conventions (one place):
- delta = simulated - measured: availability, rejected fraction in percentage points;
  latency percentiles and per-model request counts as relative error in percent of the
  measured value, (sim - real) / real * 100 (the real run is the reference).
- Per-request latency error: |sim - real| / real over the requests completed (not rejected)
  on both sides, reported as percent (median and 90th percentile).
- Per-model counts: requests routed to the model (rejected ones included). A measured model
  index outside the profile (e.g. -1: the request failed before routing) counts as
  `unrouted`.
- Non-finite values (nan: no completed request; inf: a relative error over a zero count)
  are written to JSON as null and read by `targets_met` as not met.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from bes import io_util
from bes import metrics
from bes.profile import Profile

OUTCOME_COLUMNS = ("id",) + metrics.OUTCOME_KEYS
PERCENTILES = (50, 95, 99)
# Sim-to-real targets: |availability delta| <= 1 pp, |p50|, |p95| relative error <= 5 %,
# every model's request count within 2 %.
TARGETS = {"availability_pp": 1.0, "latency_rel_pct": 5.0, "model_count_rel_pct": 2.0}
_SLACK = 1e-9


# ----------------------------------------------------------------------- outcomes
def _index(text: str, names: Sequence[str] | None, where: str) -> int:
  text = text.strip()
  if names is not None and text in names:
    return list(names).index(text)
  try:
    return int(text)
  except ValueError:
    known = f"one of {list(names)} or an index" if names is not None else "an integer index"
    raise ValueError(f"{where}: expected {known}, got {text!r}") from None


def _bool(text: str, where: str) -> bool:
  t = text.strip().lower()
  if t in ("1", "true"):
    return True
  if t in ("0", "false"):
    return False
  raise ValueError(f"{where}: expected 0/1 (or true/false), got {text!r}")


def _float(text: str, where: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise ValueError(f"{where}: expected a number, got {text!r}") from None


def read_outcomes_csv(path: str, profile: Profile | None = None) -> dict[str, np.ndarray]:
  """An `outcomes.csv` (the simulator's or the load generator's) back into arrays [N].

  Returns {'id': int64, 'arrival': float64 s, 'task': int64, 'model': int64, 'instance':
  int64, 'latency': float64 s (inf when rejected, whatever the file says), 'on_time': bool,
  'rejected': bool, 'utility': float64}, rows in file order. Task and model may be written
  as indices or, with `profile`, as names. Errors name the file and line.
  """
  path = os.fspath(path)
  tasks = list(profile.tasks) if profile is not None else None
  models = list(profile.model_names) if profile is not None else None
  cols = {k: [] for k in OUTCOME_COLUMNS}
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      header = [h.strip() for h in next(reader, [])]
      missing = [c for c in OUTCOME_COLUMNS if c not in header]
      if missing:
        raise ValueError(f"{path}:1: missing column(s) {missing}; expected "
                         f"{','.join(OUTCOME_COLUMNS)}")
      at = {c: header.index(c) for c in OUTCOME_COLUMNS}
      for line, row in enumerate(reader, start=2):
        if not row or all(not v.strip() for v in row):
          continue
        if len(row) != len(header):
          raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        w = lambda c: f"{path}:{line}: column {c!r}"
        v = lambda c: row[at[c]]
        cols["id"].append(_index(v("id"), None, w("id")))
        cols["arrival"].append(_float(v("arrival"), w("arrival")))
        cols["task"].append(_index(v("task"), tasks, w("task")))
        cols["model"].append(_index(v("model"), models, w("model")))
        cols["instance"].append(_index(v("instance"), None, w("instance")))
        cols["latency"].append(_float(v("latency") or "inf", w("latency")))
        cols["on_time"].append(_bool(v("on_time"), w("on_time")))
        cols["rejected"].append(_bool(v("rejected"), w("rejected")))
        cols["utility"].append(_float(v("utility"), w("utility")))
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(path)) from None
  except OSError as e:
    raise ValueError(f"{path}: cannot read the outcomes file ({e.strerror or e})") from None
  if not cols["id"]:
    raise ValueError(f"{path}: no requests after the header")
  dtypes = {"id": np.int64, "arrival": np.float64, "task": np.int64, "model": np.int64,
            "instance": np.int64, "latency": np.float64, "on_time": bool, "rejected": bool,
            "utility": np.float64}
  out = {k: np.asarray(cols[k], dtypes[k]) for k in OUTCOME_COLUMNS}
  out["latency"] = np.where(out["rejected"], np.inf, out["latency"])
  return out


# ----------------------------------------------------------------------- comparison
def _check_outcomes(o: Mapping[str, Any], side: str) -> dict[str, np.ndarray]:
  missing = [k for k in metrics.OUTCOME_KEYS if k not in o]
  if missing:
    raise ValueError(f"compare: {side} outcomes missing key(s) {missing}; expected "
                     f"{list(metrics.OUTCOME_KEYS)}")
  keys = list(metrics.OUTCOME_KEYS) + (["id"] if "id" in o else [])
  out = {k: np.asarray(o[k]) for k in keys}
  n = out["arrival"].shape
  if len(n) != 1 or n[0] == 0 or any(out[k].shape != n for k in keys):
    raise ValueError(f"compare: {side} outcomes expected non-empty 1-D arrays of one shape, "
                     f"got { {k: out[k].shape for k in keys} }")
  return out


def _first_mismatch(equal) -> int:
  """Index of the first False in `equal` [N], -1 when all are True."""
  return int(np.flatnonzero(~equal)[0]) if not np.all(equal) else -1


def check_same_requests(sim: Mapping[str, Any], real: Mapping[str, Any],
                        arrival_tol_s: float = 2e-6) -> None:
  """Raises ValueError unless both sides hold the same requests in the same order: equal
  lengths, ids (when both have an `id`), tasks, and arrivals within `arrival_tol_s`."""
  s, r = _check_outcomes(sim, "simulated"), _check_outcomes(real, "measured")
  if s["arrival"].size != r["arrival"].size:
    raise ValueError(f"compare: simulated has {s['arrival'].size} requests, measured "
                     f"{r['arrival'].size}; expected the same requests on both sides")
  if "id" in s and "id" in r:
    i = _first_mismatch(s["id"] == r["id"])
    if i >= 0:
      raise ValueError(f"compare: request ids differ at row {i}: simulated {s['id'][i]}, "
                       f"measured {r['id'][i]}; expected the same requests in the same order")
  i = _first_mismatch(np.abs(s["arrival"].astype(np.float64)
                                   - r["arrival"].astype(np.float64)) <= arrival_tol_s)
  if i >= 0:
    raise ValueError(f"compare: arrivals differ at row {i}: simulated {s['arrival'][i]} s, "
                     f"measured {r['arrival'][i]} s (tolerance {arrival_tol_s} s)")
  i = _first_mismatch(s["task"] == r["task"])
  if i >= 0:
    raise ValueError(f"compare: tasks differ at row {i}: simulated {s['task'][i]}, "
                     f"measured {r['task'][i]}")


def _group_metrics(o: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
  """Metrics of the requests in `mask` (bes.metrics definitions); None for a metric with no
  request (latency percentiles: no completed request)."""
  n = int(np.sum(mask))
  out: dict[str, Any] = {"requests": n}
  if n == 0:
    out.update(availability=None, mean_utility=None, rejected_frac=None,
               **{f"p{q}_latency_s": None for q in PERCENTILES})
    return out
  lat = metrics.latency_percentiles(o["latency"][mask], o["rejected"][mask], qs=PERCENTILES)
  out.update(availability=metrics.availability(o["on_time"][mask]),
             mean_utility=metrics.mean_utility(o["utility"][mask]),
             rejected_frac=metrics.rejected_fraction(o["rejected"][mask]),
             **{f"p{q}_latency_s": None if math.isnan(lat[q]) else lat[q]
                for q in PERCENTILES})
  return out


def side_metrics(outcomes: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
  """One side's metrics: overall (`_group_metrics` plus the peak) and per model name
  ({'requests', 'share', availability, mean_utility, rejected_frac, p50/p95/p99}), and
  `unrouted` (requests whose model index is not one of the profile's)."""
  o = _check_outcomes(outcomes, "side")
  n = o["arrival"].size
  out = _group_metrics(o, np.ones(n, bool))
  out["peak"] = metrics.peak(profile, o["task"].astype(np.int64))
  per_model = {}
  for m, name in enumerate(profile.model_names):
    g = _group_metrics(o, o["model"] == m)
    g["share"] = g["requests"] / n
    per_model[name] = g
  out["per_model"] = per_model
  out["unrouted"] = int(np.sum((o["model"] < 0) | (o["model"] >= len(profile.model_names))))
  return out


def _rel_pct(sim, real) -> float:
  """(sim - real) / real * 100; 0 when both are 0; nan when either is missing/nan."""
  if sim is None or real is None or math.isnan(sim) or math.isnan(real):
    return float("nan")
  if real == 0:
    return 0.0 if sim == 0 else float("inf") * np.sign(sim)
  return (sim - real) / real * 100.0


def _pp(sim, real) -> float:
  if sim is None or real is None:
    return float("nan")
  return (sim - real) * 100.0


def compare(simulated: Mapping[str, Any], measured: Mapping[str, Any], profile: Profile,
            arrival_tol_s: float = 2e-6) -> dict[str, Any]:
  """Both sides' metrics on the same requests and their differences (module docstring).

  Args:
    simulated, measured: outcome dicts (arrays [N] per `bes.metrics.OUTCOME_KEYS`, optional
      `id`), the same requests in the same order (`check_same_requests`).
    profile: the deployment (model names, quality for the peak).

  Returns {'num_requests', 'models', 'simulated': side_metrics, 'measured': side_metrics,
  'delta': {'availability_pp', 'mean_utility', 'rejected_frac_pp', 'p50_latency_rel_pct',
  'p95_latency_rel_pct', 'p99_latency_rel_pct', 'per_model': {name: {'requests' (sim - real),
  'requests_rel_pct', 'share_pp', 'availability_pp', 'p50_latency_rel_pct',
  'p95_latency_rel_pct'}}, 'both_completed', 'latency_err_median_pct',
  'latency_err_p90_pct', 'same_model_frac'}, 'requests': per-request arrays for the scatter
  ('sim_latency', 'real_latency', 'sim_model', 'real_model'; not written to JSON)}.
  """
  check_same_requests(simulated, measured, arrival_tol_s)
  s = _check_outcomes(simulated, "simulated")
  r = _check_outcomes(measured, "measured")
  sim, real = side_metrics(s, profile), side_metrics(r, profile)
  delta: dict[str, Any] = {
      "availability_pp": _pp(sim["availability"], real["availability"]),
      "mean_utility": sim["mean_utility"] - real["mean_utility"],
      "rejected_frac_pp": _pp(sim["rejected_frac"], real["rejected_frac"]),
  }
  for q in PERCENTILES:
    key = f"p{q}_latency_s"
    delta[f"p{q}_latency_rel_pct"] = _rel_pct(sim[key], real[key])
  per_model = {}
  for name in profile.model_names:
    a, b = sim["per_model"][name], real["per_model"][name]
    per_model[name] = {
        "requests": a["requests"] - b["requests"],
        "requests_rel_pct": _rel_pct(a["requests"], b["requests"]),
        "share_pp": _pp(a["share"], b["share"]),
        "availability_pp": _pp(a["availability"], b["availability"]),
        "p50_latency_rel_pct": _rel_pct(a["p50_latency_s"], b["p50_latency_s"]),
        "p95_latency_rel_pct": _rel_pct(a["p95_latency_s"], b["p95_latency_s"]),
    }
  delta["per_model"] = per_model
  both = ~s["rejected"].astype(bool) & ~r["rejected"].astype(bool)
  sl, rl = s["latency"].astype(np.float64), r["latency"].astype(np.float64)
  ok = both & np.isfinite(sl) & np.isfinite(rl) & (rl > 0)
  err = np.abs(sl[ok] - rl[ok]) / rl[ok] * 100.0
  delta["both_completed"] = int(np.sum(ok))
  delta["latency_err_median_pct"] = float(np.median(err)) if err.size else float("nan")
  delta["latency_err_p90_pct"] = float(np.percentile(err, 90)) if err.size else float("nan")
  delta["same_model_frac"] = float(np.mean(s["model"] == r["model"]))
  return {"num_requests": int(s["arrival"].size), "models": list(profile.model_names),
          "simulated": sim, "measured": real, "delta": delta,
          "requests": {"sim_latency": sl, "real_latency": rl, "sim_model": s["model"],
                       "real_model": r["model"]}}


def _within(value, bound: float) -> bool:
  return value is not None and not math.isnan(value) and abs(value) <= bound + _SLACK


def targets_met(delta: Mapping[str, Any]) -> dict[str, bool]:
  """The sim-to-real targets on a `compare(...)['delta']` (or its JSON, nulls not met):
  availability within 1 pp, p50 and p95 latency within 5 %, every model's request count
  within 2 %; 'all' when every one is met."""
  out = {
      "availability_within_1pp": _within(delta.get("availability_pp"),
                                         TARGETS["availability_pp"]),
      "p50_within_5pct": _within(delta.get("p50_latency_rel_pct"), TARGETS["latency_rel_pct"]),
      "p95_within_5pct": _within(delta.get("p95_latency_rel_pct"), TARGETS["latency_rel_pct"]),
      "model_counts_within_2pct": all(
          _within(d.get("requests_rel_pct"), TARGETS["model_count_rel_pct"])
          for d in delta.get("per_model", {}).values()),
  }
  out["all"] = all(out.values())
  return out


# ----------------------------------------------------------------------- writing
def _jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  return x


def _fmt(v, kind: str = "f") -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  if isinstance(v, float) and math.isinf(v):
    return "inf" if v > 0 else "-inf"
  if kind == "d":
    return str(int(v))
  if kind == "pct":
    return f"{v:+.2f} %"
  if kind == "pp":
    return f"{v:+.2f} pp"
  if kind == "s":
    return f"{v:.2f}"
  return f"{v:.4f}"


def format_markdown(comparison: Mapping[str, Any], command: str = "") -> str:
  """The readable comparison: overall and per-model tables (simulated | measured | delta),
  per-request agreement, targets met."""
  sim, real, d = comparison["simulated"], comparison["measured"], comparison["delta"]
  met = targets_met(d)
  lines = ["# Sim-to-real comparison", ""]
  if command:
    lines += ["```", f"$ {command}", "```", ""]
  lines += [f"{comparison['num_requests']} requests, the same on both sides. "
            "delta = simulated - measured (pp: percentage points; %: relative to measured).",
            "", "## Overall", "", "| metric | simulated | measured | delta |",
            "|---|---:|---:|---:|"]
  rows = [("availability", "availability", "availability_pp", "pp"),
          ("mean utility", "mean_utility", "mean_utility", "f"),
          ("rejected fraction", "rejected_frac", "rejected_frac_pp", "pp")]
  rows += [(f"p{q} latency (s)", f"p{q}_latency_s", f"p{q}_latency_rel_pct", "pct")
           for q in PERCENTILES]
  for label, key, dkey, kind in rows:
    lines.append(f"| {label} | {_fmt(sim.get(key))} | {_fmt(real.get(key))} | "
                 f"{_fmt(d.get(dkey), kind)} |")
  lines += ["", "## Per model", "",
            "| model | requests sim | requests real | count delta | avail sim | avail real | "
            "p50 sim (s) | p50 real (s) | p50 delta | p95 sim (s) | p95 real (s) | p95 delta |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name in comparison["models"]:
    a, b, dm = sim["per_model"][name], real["per_model"][name], d["per_model"][name]
    lines.append(
        f"| {name} | {a['requests']} | {b['requests']} | {_fmt(dm['requests_rel_pct'], 'pct')} | "
        f"{_fmt(a['availability'])} | {_fmt(b['availability'])} | "
        f"{_fmt(a['p50_latency_s'])} | {_fmt(b['p50_latency_s'])} | "
        f"{_fmt(dm['p50_latency_rel_pct'], 'pct')} | {_fmt(a['p95_latency_s'])} | "
        f"{_fmt(b['p95_latency_s'])} | {_fmt(dm['p95_latency_rel_pct'], 'pct')} |")
  if sim.get("unrouted") or real.get("unrouted"):
    lines.append(f"\nunrouted requests: simulated {sim.get('unrouted', 0)}, measured "
                 f"{real.get('unrouted', 0)}")
  lines += ["", "## Per request", "",
            f"- completed on both sides: {d['both_completed']}",
            f"- |sim - real| / real latency: median {_fmt(d['latency_err_median_pct'], 's')} %, "
            f"p90 {_fmt(d['latency_err_p90_pct'], 's')} %",
            f"- routed to the same model: {_fmt(d['same_model_frac'])}",
            "", "## Targets", "", "| target | met |", "|---|---|"]
  for name, ok in met.items():
    lines.append(f"| {name} | {'yes' if ok else 'no'} |")
  return "\n".join(lines) + "\n"


def plot_latency_scatter(comparison: Mapping[str, Any], path: str) -> int:
  """latency_scatter.png: simulated vs measured latency per request completed on both sides,
  log-log with the y = x line, colored by the measured model; returns the points drawn."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  req = comparison["requests"]
  sl, rl = np.asarray(req["sim_latency"], float), np.asarray(req["real_latency"], float)
  model = np.asarray(req["real_model"])
  ok = np.isfinite(sl) & np.isfinite(rl) & (sl > 0) & (rl > 0)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  for m, name in enumerate(comparison["models"]):
    sel = ok & (model == m)
    if np.any(sel):
      ax.scatter(rl[sel], sl[sel], s=6, alpha=0.5, label=f"{name} ({int(np.sum(sel))})")
  if np.any(ok):
    lo = min(sl[ok].min(), rl[ok].min())
    hi = max(sl[ok].max(), rl[ok].max())
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=8, markerscale=2)
  ax.set(xlabel="measured latency (s)", ylabel="simulated latency (s)",
         title=f"per-request latency ({int(np.sum(ok))} completed on both sides)")
  ax.grid(True, alpha=0.3, which="both")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return int(np.sum(ok))


def write_comparison(out_dir: str, comparison: Mapping[str, Any], command: str) -> dict[str, str]:
  """Writes comparison.json (everything but the per-request arrays, with `targets_met` and
  the command; non-finite numbers as null), comparison.md (`format_markdown`) and
  latency_scatter.png (`plot_latency_scatter`, when the per-request arrays are there) into
  `out_dir`; returns {file name: path}."""
  body = {k: v for k, v in comparison.items() if k != "requests"}
  body = dict(body, targets_met=targets_met(comparison["delta"]), command=command)
  written = {
      "comparison.json": io_util.write_text(out_dir, "comparison.json",
                                            json.dumps(_jsonable(body), indent=2) + "\n"),
      "comparison.md": io_util.write_text(out_dir, "comparison.md",
                                          format_markdown(comparison, command)),
  }
  if "requests" in comparison:
    path = os.path.join(os.path.dirname(written["comparison.md"]), "latency_scatter.png")
    plot_latency_scatter(comparison, path)
    written["latency_scatter.png"] = path
  return written
