"""launch/simulate.py end to end (subprocess): files, columns, metrics, errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow   # subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "simulate.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_trace_and_generated_workloads_write_outcomes_and_metrics(tmp_path):
  trace = tmp_path / "trace.csv"
  rng = np.random.default_rng(0)
  arrivals = np.cumsum(rng.exponential(0.05, 300))
  with open(trace, "w") as f:
    f.write("arrived_at,num_prefill_tokens,num_decode_tokens\n")
    for a in arrivals:
      f.write(f"{a:.6f},{rng.integers(1, 900)},{rng.integers(1, 300)}\n")
  out = tmp_path / "trace_run"
  r = _run(f"--trace={trace}", "--policy=static:opt-6.7b", f"--out={out}", "--deadline_s=3",
           "--reward=soft", "--queue_capacity=4")
  assert r.returncode == 0, r.stderr
  rows = _read(out / "outcomes.csv")
  assert list(rows[0]) == ["id", "arrival", "task", "model", "instance", "latency", "on_time",
                           "rejected", "utility"]
  assert len(rows) == 300 and [int(x["id"]) for x in rows] == list(range(300))
  np.testing.assert_allclose([float(x["arrival"]) for x in rows], arrivals, atol=1e-6)
  assert all(x["model"] == "2" for x in rows)
  for x in rows:   # rejected <=> infinite latency
    assert (x["rejected"] == "1") == (x["latency"] == "inf")
  m = json.loads((out / "metrics.json").read_text())
  on_time = np.mean([x["on_time"] == "1" for x in rows])
  assert m["availability"] == pytest.approx(on_time)
  assert m["num_requests"] == 300 and m["policy"] == "static:opt-6.7b"

  out2 = tmp_path / "two"
  r = _run("--num_requests=400", "--policy=static:0", "--policy=round_robin", f"--out={out2}",
           "--config.workload.kind=poisson", "--config.workload.rate=30")
  assert r.returncode == 0, r.stderr
  summary = json.loads((out2 / "metrics.json").read_text())
  assert set(summary["policies"]) == {"static:0", "round_robin"}
  rr = _read(out2 / "round_robin" / "outcomes.csv")
  assert [int(x["model"]) for x in rr[:6]] == [0, 1, 2, 0, 1, 2]
  assert "round_robin" in r.stdout and "avail" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--policy=static:9"], "model index 9 out of range"),
    (["--policy=task_map:0,1"], "task_map needs 4 models"),
    (["--policy=best"], "expected static:M"),
    (["--trace=/nonexistent.csv"], "config.workload.trace: no such file"),
    (["--deadline_s=-1"], "deadline_s"),
    (["--queue_capacity=0"], "queue_capacity"),
    (["--profile=/nonexistent.json"], "nonexistent.json"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
  r = _run(*args, "--num_requests=10", f"--out={tmp_path}")
  assert r.returncode != 0
  assert message in r.stderr, r.stderr[-2000:]
