r"""The paper's headline claims, computed from the router sweeps' aggregated tables.

Reads `table.csv` of the rate sweep (`configs/sweeps/router_rates.py`) and of the workload
sweep (`configs/sweeps/router_workloads.py`) and writes `OUT.md` / `OUT.json`:
  - max sustainable rate (mean availability >= each of --targets over the swept rates, as
    `bes.metrics.max_sustainable_rate`) of every policy, and the learned router's ratio to
    static OPT-6.7B alone on 4 and on 8 GPUs (paper: > 10x);
  - on the bursty workload, the fraction of 10-s windows at >= 96% and >= 98% of peak,
    learned vs static OPT-6.7B on 4 GPUs (paper: 4.1x and 2.3x);
  - performance per GPU, learned vs static OPT-6.7B on 8 GPUs (paper: about 3.9x);
  - per workload, each policy's mean utility as a fraction of peak (robustness to shifts).

  python launch/paper_claims.py --rates=results/router_rates \
      --workloads=results/router_workloads --out=results/paper_claims
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys

from absl import app, flags

from bes import cli_errors, metrics

_RATES = flags.DEFINE_string("rates", "results/router_rates", "Rate sweep output directory.")
_WORKLOADS = flags.DEFINE_string("workloads", "results/router_workloads",
                                 "Workload sweep output directory.")
_BURSTY = flags.DEFINE_string("bursty", "bursty20", "Workload name of the bursty point.")
_TARGETS = flags.DEFINE_list("targets", ["0.99", "0.95"],
                              "Availability targets of the max sustainable rate.")
_OUT = flags.DEFINE_string("out", "results/paper_claims", "Output path without extension.")

LEARNED, BIG4, BIG8 = "learned", "static:opt-6.7b@4gpu", "static:opt-6.7b@8gpu"


def read_table(sweep_dir: str) -> list[dict]:
  path = os.path.join(sweep_dir, "table.csv")
  if not os.path.exists(path):
    raise ValueError(f"{path}: no such file (run the sweep first: launch/sweep.py --out={sweep_dir})")
  with open(path) as f:
    return list(csv.DictReader(f))


def _f(row: dict, key: str) -> float | None:
  """A number of the table: `key`, or without its `_mean` suffix (a sweep without a seed
  axis writes plain metric names)."""
  v = row.get(key, "")
  if v == "" and key.endswith("_mean"):
    v = row.get(key[:-len("_mean")], "")
  try:
    x = float(v)
  except ValueError:
    return None
  return x if math.isfinite(x) else None


def _ratio(a, b):
  if a is None or b is None:
    return None
  return math.inf if b == 0 and a > 0 else (a / b if b else None)


def rate_claims(rows: list[dict], target: float) -> dict:
  by_policy = {}
  for r in rows:
    by_policy.setdefault(r["policy"], []).append((_f(r, "config.workload.rate"),
                                                  _f(r, "availability_mean")))
  msr = {p: metrics.max_sustainable_rate([x for x, _ in v], [a for _, a in v], target)
         for p, v in by_policy.items()}
  return {"target": target, "max_sustainable_rate": msr,
          "ratio_vs_6.7b_4gpu": _ratio(msr.get(LEARNED), msr.get(BIG4)),
          "ratio_vs_6.7b_8gpu": _ratio(msr.get(LEARNED), msr.get(BIG8))}


def workload_claims(rows: list[dict], bursty: str) -> dict:
  table = {}
  for r in rows:
    name = r.get("config.workload.name") or r.get("point", "?")
    peak = _f(r, "peak_mean")
    table.setdefault(name, {})[r["policy"]] = {
        "mean_utility": _f(r, "mean_utility_mean"),
        "utility_std_over_seeds": _f(r, "mean_utility_std_mean"),
        "frac_of_peak": _ratio(_f(r, "mean_utility_mean"), peak),
        "availability": _f(r, "availability_mean"),
        "frac_windows_ge_96": _f(r, "frac_windows_ge_96_mean"),
        "frac_windows_ge_98": _f(r, "frac_windows_ge_98_mean"),
        "perf_per_gpu": _f(r, "perf_per_gpu_mean")}
  if bursty not in table:
    raise ValueError(f"--bursty={bursty}: no such workload in the table ({sorted(table)})")
  b = table[bursty]
  get = lambda p, k: b.get(p, {}).get(k)
  return {"per_workload": table, "bursty": {
      "windows96_ratio_vs_6.7b_4gpu": _ratio(get(LEARNED, "frac_windows_ge_96"), get(BIG4, "frac_windows_ge_96")),
      "windows98_ratio_vs_6.7b_4gpu": _ratio(get(LEARNED, "frac_windows_ge_98"), get(BIG4, "frac_windows_ge_98")),
      "perf_per_gpu_ratio_vs_6.7b_8gpu": _ratio(get(LEARNED, "perf_per_gpu"), get(BIG8, "perf_per_gpu"))}}


def fmt(x, digits=3):
  if x is None:
    return "-"
  if x == math.inf:
    return "inf"
  return f"{x:.{digits}f}"


def markdown(rcs: list[dict], wc: dict) -> str:
  lines = [f"$ python {' '.join(sys.argv)}", "",
           "| claim (paper) | ours |", "|---|---|"]
  b = wc["bursty"]
  for rc in rcs:
    lines += [
        f"| max sustainable rate (availability >= {rc['target']}), learned vs static OPT-6.7B "
        f"on 4 GPUs (> 10x) | {fmt(rc['ratio_vs_6.7b_4gpu'], 2)}x |",
        f"| same (availability >= {rc['target']}) vs static OPT-6.7B on 8 GPUs | "
        f"{fmt(rc['ratio_vs_6.7b_8gpu'], 2)}x |"]
  lines += [
      f"| windows >= 96% of peak, bursty, vs static OPT-6.7B on 4 GPUs (4.1x) | "
      f"{fmt(b['windows96_ratio_vs_6.7b_4gpu'], 2)}x |",
      f"| windows >= 98% of peak, bursty, vs static OPT-6.7B on 4 GPUs (2.3x) | "
      f"{fmt(b['windows98_ratio_vs_6.7b_4gpu'], 2)}x |",
      f"| performance per GPU, bursty, vs static OPT-6.7B on 8 GPUs (3.9x) | "
      f"{fmt(b['perf_per_gpu_ratio_vs_6.7b_8gpu'], 2)}x |", "",
      "Max sustainable rate per policy (req/s, highest swept rate with every rate up to it "
      "at the target; '-' = not even the lowest swept rate):", "",
      "| policy | " + " | ".join(f"availability >= {rc['target']}" for rc in rcs) + " |",
      "|---|" + "---:|" * len(rcs)]
  for p in rcs[0]["max_sustainable_rate"]:
    lines.append(f"| {p} | " + " | ".join(fmt(rc["max_sustainable_rate"].get(p), 0)
                                          for rc in rcs) + " |")
  table = wc["per_workload"]
  policies = list(next(iter(table.values())))
  lines += ["", "Mean utility as a fraction of peak, per workload (learned: mean over seeds):", "",
            "| workload | " + " | ".join(policies) + " |",
            "|---|" + "---:|" * len(policies)]
  for name, row in table.items():
    lines.append(f"| {name} | " + " | ".join(fmt(row.get(p, {}).get("frac_of_peak")) for p in policies) + " |")
  return "\n".join(lines) + "\n"


def _finite(x):
  """JSON has no infinity: an infinite ratio (the baseline never reaches it) becomes 'inf'."""
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, float) and math.isinf(x):
    return "inf"
  return x


def main(argv):
  del argv
  try:
    targets = [float(t) for t in _TARGETS.value]
    rows = read_table(_RATES.value)
    rcs = [rate_claims(rows, t) for t in targets]
    wc = workload_claims(read_table(_WORKLOADS.value), _BURSTY.value)
  except ValueError as e:
    sys.exit(f"paper_claims.py: error: {e}")
  text = markdown(rcs, wc)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + ".md", "w") as f:
    f.write(text)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(_finite({"rates": rcs, "workloads": wc}), f, indent=2)
  print(text)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
