"""launch/paper_claims.py: the headline ratios from hand-made sweep tables."""
import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, rows):
  os.makedirs(path, exist_ok=True)
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with open(os.path.join(path, "table.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    w.writerows(rows)


def test_claims_from_tables(tmp_path):
  rates = []
  avail = {"learned": [1, 1, 1, 0.995, 0.9], "static:opt-6.7b@4gpu": [1, 0.9, 0.5, 0.1, 0.0],
           "static:opt-6.7b@8gpu": [1, 1, 0.8, 0.2, 0.0]}
  for policy, values in avail.items():
    for rate, a in zip([1, 2, 4, 8, 16], values):
      rates.append({"config.workload.rate": rate, "policy": policy, "availability": a})
  work = [
      {"config.workload.name": "bursty20", "policy": "learned", "peak_mean": 0.7,
       "mean_utility_mean": 0.63, "frac_windows_ge_96_mean": 0.4, "frac_windows_ge_98_mean": 0.2,
       "perf_per_gpu_mean": 3.0, "availability_mean": 0.95},
      {"config.workload.name": "bursty20", "policy": "static:opt-6.7b@4gpu", "peak_mean": 0.7,
       "mean_utility_mean": 0.35, "frac_windows_ge_96_mean": 0.1, "frac_windows_ge_98_mean": 0.1,
       "perf_per_gpu_mean": 1.5, "availability_mean": 0.5},
      {"config.workload.name": "bursty20", "policy": "static:opt-6.7b@8gpu", "peak_mean": 0.7,
       "mean_utility_mean": 0.5, "frac_windows_ge_96_mean": 0.5, "frac_windows_ge_98_mean": 0.5,
       "perf_per_gpu_mean": 1.2, "availability_mean": 0.7},
  ]
  _write(tmp_path / "rates", rates)
  _write(tmp_path / "work", work)
  out = tmp_path / "claims"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "paper_claims.py"),
                         f"--rates={tmp_path / 'rates'}", f"--workloads={tmp_path / 'work'}",
                         f"--out={out}"], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  got = json.load(open(f"{out}.json"))
  at99, at95 = got["rates"]
  assert at99["target"] == 0.99 and at95["target"] == 0.95
  assert at99["max_sustainable_rate"] == {"learned": 8.0, "static:opt-6.7b@4gpu": 1.0,
                                          "static:opt-6.7b@8gpu": 2.0}
  assert at99["ratio_vs_6.7b_4gpu"] == pytest.approx(8.0)
  assert at99["ratio_vs_6.7b_8gpu"] == pytest.approx(4.0)
  assert at95["max_sustainable_rate"]["learned"] == 8.0     # 16: 0.9 < 0.95
  b = got["workloads"]["bursty"]
  assert b["windows96_ratio_vs_6.7b_4gpu"] == pytest.approx(4.0)
  assert b["windows98_ratio_vs_6.7b_4gpu"] == pytest.approx(2.0)
  assert b["perf_per_gpu_ratio_vs_6.7b_8gpu"] == pytest.approx(2.5)
  frac = got["workloads"]["per_workload"]["bursty20"]["learned"]["frac_of_peak"]
  assert frac == pytest.approx(0.9)
  assert "8.00x" in open(f"{out}.md").read()


def test_missing_table_is_a_clear_error(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "paper_claims.py"),
                         f"--rates={tmp_path / 'nope'}", f"--out={tmp_path / 'x'}"],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode != 0
  assert "table.csv: no such file" in proc.stderr
