"""bes/serving/compare.py: trace preparation, outcome files, sim-to-real metrics and report."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from bes import config_cli
from bes.experiment import report
from bes.profile import default_profile
from bes.serving import compare as cmp, traces
from bes.workloads import trace as trace_lib
from bes.workloads import default_workload_config, workload_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_TRACE = os.path.join(ROOT, "bes", "data", "traces", "azure_llm_2023_code.csv")
PROFILE = default_profile()   # opt-125m, opt-1.3b, opt-6.7b; 4 tasks
TASKS = list(PROFILE.tasks)


def _write(path, text):
  path.write_text(text)
  return str(path)


def _outcomes(**kw):
  base = dict(id=np.arange(4), arrival=np.array([0.0, 1.0, 2.0, 3.0]),
              task=np.array([0, 1, 2, 3]), model=np.array([0, 0, 1, 2]),
              instance=np.zeros(4, int), latency=np.array([1.0, 2.0, 3.0, np.inf]),
              on_time=np.array([True, True, False, False]),
              rejected=np.array([False, False, False, True]),
              utility=np.array([0.5, 0.5, 0.0, 0.0]))
  base.update(kw)
  return base


SIM = _outcomes()
REAL = _outcomes(model=np.array([0, 1, 1, 2]), latency=np.array([1.0, 4.0, 3.0, 2.0]),
                 on_time=np.array([True, False, True, True]),
                 rejected=np.zeros(4, bool), utility=np.array([0.5, 0.0, 0.4, 0.4]))


# ----------------------------------------------------------------- compare, hand-computed
def test_compare_hand_computed():
  c = cmp.compare(SIM, REAL, PROFILE)
  s, r, d = c["simulated"], c["measured"], c["delta"]
  assert (s["availability"], r["availability"]) == (0.5, 0.75)
  assert (s["rejected_frac"], r["rejected_frac"]) == (0.25, 0.0)
  assert s["mean_utility"] == pytest.approx(0.25) and r["mean_utility"] == pytest.approx(0.325)
  # Percentiles over completed requests only: sim [1, 2, 3], real [1, 2, 3, 4].
  assert s["p50_latency_s"] == 2.0 and r["p50_latency_s"] == 2.5
  assert s["p95_latency_s"] == pytest.approx(2.9) and r["p95_latency_s"] == pytest.approx(3.85)
  assert d["availability_pp"] == pytest.approx(-25.0)
  assert d["rejected_frac_pp"] == pytest.approx(25.0)
  assert d["p50_latency_rel_pct"] == pytest.approx(-20.0)
  assert d["p95_latency_rel_pct"] == pytest.approx((2.9 - 3.85) / 3.85 * 100)
  names = PROFILE.model_names
  assert [s["per_model"][m]["requests"] for m in names] == [2, 1, 1]
  assert [r["per_model"][m]["requests"] for m in names] == [1, 2, 1]
  assert [d["per_model"][m]["requests_rel_pct"] for m in names] == [100.0, -50.0, 0.0]
  assert d["per_model"][names[0]]["share_pp"] == pytest.approx(25.0)
  # Per-model metrics: sim opt-125m holds requests 0, 1 (latencies 1, 2, both on time).
  assert s["per_model"][names[0]]["p50_latency_s"] == 1.5
  assert s["per_model"][names[0]]["availability"] == 1.0
  assert s["per_model"][names[2]]["p50_latency_s"] is None   # its one request was rejected
  # Per request: requests 0..2 completed on both: errors 0 %, 50 %, 0 %.
  assert d["both_completed"] == 3
  assert d["latency_err_median_pct"] == 0.0
  assert d["latency_err_p90_pct"] == pytest.approx(40.0)
  assert d["same_model_frac"] == 0.75
  assert cmp.targets_met(d) == {"availability_within_1pp": False, "p50_within_5pct": False,
                                "p95_within_5pct": False, "model_counts_within_2pct": False,
                                "all": False}


def test_compare_with_itself_is_zero_and_meets_targets():
  c = cmp.compare(REAL, REAL, PROFILE)
  d = c["delta"]
  assert d["availability_pp"] == 0 and d["p50_latency_rel_pct"] == 0
  assert d["latency_err_p90_pct"] == 0 and d["same_model_frac"] == 1.0
  assert cmp.targets_met(d)["all"]


def test_targets_boundaries_and_missing_values():
  ok = {"availability_pp": -1.0, "p50_latency_rel_pct": 5.0, "p95_latency_rel_pct": -5.0,
        "per_model": {"a": {"requests_rel_pct": 2.0}, "b": {"requests_rel_pct": 0.0}}}
  assert cmp.targets_met(ok)["all"]
  for key, bad in (("availability_pp", 1.01), ("p50_latency_rel_pct", None),
                   ("p95_latency_rel_pct", float("nan"))):
    met = cmp.targets_met(dict(ok, **{key: bad}))
    assert not met["all"] and sum(not v for v in met.values()) == 2
  met = cmp.targets_met(dict(ok, per_model={"a": {"requests_rel_pct": None}}))
  assert not met["model_counts_within_2pct"]


def test_zero_count_model_and_unrouted():
  real = dict(REAL, model=np.array([0, 0, -1, 2]))
  c = cmp.compare(SIM, real, PROFILE)
  assert c["measured"]["unrouted"] == 1
  assert c["delta"]["per_model"]["opt-1.3b"]["requests_rel_pct"] == float("inf")
  assert not cmp.targets_met(c["delta"])["model_counts_within_2pct"]


@pytest.mark.parametrize("change, match", [
    (dict(id=np.array([0, 2, 1, 3])), "ids differ at row 1"),
    (dict(arrival=np.array([0.0, 1.0, 2.1, 3.0])), "arrivals differ at row 2"),
    (dict(task=np.array([0, 1, 2, 0])), "tasks differ at row 3"),
])
def test_mismatched_requests_are_refused(change, match):
  with pytest.raises(ValueError, match=match):
    cmp.compare(SIM, dict(REAL, **change), PROFILE)


def test_wrong_length_or_missing_key_is_refused():
  short = {k: v[:3] for k, v in REAL.items()}
  with pytest.raises(ValueError, match="simulated has 4 requests, measured 3"):
    cmp.compare(SIM, short, PROFILE)
  with pytest.raises(ValueError, match=r"measured outcomes missing key\(s\) \['utility'\]"):
    cmp.compare(SIM, {k: v for k, v in REAL.items() if k != "utility"}, PROFILE)
  # An arrival within the tolerance (CSV rounding) passes.
  cmp.compare(SIM, dict(REAL, arrival=REAL["arrival"] + 1e-6), PROFILE)


# ----------------------------------------------------------------- outcome files
def test_read_outcomes_csv_round_trip_and_names(tmp_path):
  path = _write(tmp_path / "o.csv", report.outcomes_csv(SIM))
  back = cmp.read_outcomes_csv(path)
  for k in cmp.OUTCOME_COLUMNS:
    np.testing.assert_array_equal(back[k], SIM[k])
  assert back["latency"][3] == np.inf
  named = _write(tmp_path / "n.csv",
                 "id,arrival,task,model,instance,latency,on_time,rejected,utility\n"
                 "0,0.5,piqa,opt-6.7b,1,0.25,true,false,0.7\n"
                 "1,0.75,0,1,0,,0,1,0\n")
  back = cmp.read_outcomes_csv(named, PROFILE)
  assert back["task"].tolist() == [1, 0] and back["model"].tolist() == [2, 1]
  assert back["latency"].tolist() == [0.25, np.inf] and back["rejected"].tolist() == [False, True]
  with pytest.raises(ValueError, match="n.csv:2: column 'task'"):
    cmp.read_outcomes_csv(named)   # names need the profile
  bad = _write(tmp_path / "b.csv", "id,arrival,task\n0,0,0\n")
  with pytest.raises(ValueError, match=r"b.csv:1: missing column\(s\)"):
    cmp.read_outcomes_csv(bad)


def test_write_comparison(tmp_path):
  c = cmp.compare(SIM, REAL, PROFILE)
  written = cmp.write_comparison(str(tmp_path / "out"), c, "python x.py --flag")
  assert sorted(written) == ["comparison.json", "comparison.md", "latency_scatter.png"]
  body = json.loads(open(written["comparison.json"]).read())   # strict JSON: no NaN
  assert body["command"] == "python x.py --flag" and "requests" not in body
  assert body["targets_met"]["all"] is False
  assert body["simulated"]["per_model"]["opt-6.7b"]["p50_latency_s"] is None
  assert body["delta"]["availability_pp"] == pytest.approx(-25.0)
  md = open(written["comparison.md"]).read()
  assert "| availability | 0.5000 | 0.7500 | -25.00 pp |" in md
  assert "| opt-125m | 2 | 1 | +100.00 % |" in md and "| all | no |" in md
  assert os.path.getsize(written["latency_scatter.png"]) > 1000


# ----------------------------------------------------------------- trace preparation
def _small_trace(tmp_path, task_column=False):
  rows = [(1.0, 0, 5), (2.0, 100, 10), (4.0, 3000, 100), (5.0, 50, 3000)]
  head = "arrived_at,num_prefill_tokens,num_decode_tokens" + (",task" if task_column else "")
  lines = [head] + [f"{a},{p},{o}" + (f",{TASKS[i % 2]}" if task_column else "")
                    for i, (a, p, o) in enumerate(rows)]
  return _write(tmp_path / "small.csv", "\n".join(lines) + "\n")


def test_prepare_trace_clips_and_shifts(tmp_path):
  out = str(tmp_path / "p.csv")
  s = traces.prepare_trace(_small_trace(tmp_path), TASKS, max_context=2048, out_csv=out)
  t = trace_lib.load_trace_csv(out, TASKS)
  np.testing.assert_array_equal(t.arrival_s, [0.0, 1.0, 3.0, 4.0])
  assert t.prompt_len.tolist() == [1, 100, 1948, 1]
  assert t.output_len.tolist() == [5, 10, 100, 2047]
  assert (s["rows"], s["prompt_raised"], s["prompt_clipped"], s["output_clipped"]) == (4, 1, 2, 1)
  assert s["span_s"] == 4.0 and s["mean_rate"] == 1.0 and s["tasks_from"] == "uniform"
  assert all(p + o <= 2048 for p, o in zip(t.prompt_len, t.output_len))
  assert open(out).readline().strip() == "arrived_at,num_prefill_tokens,num_decode_tokens,task"


def test_prepare_trace_time_scale_rate_and_truncation(tmp_path):
  src, out = _small_trace(tmp_path), str(tmp_path / "p.csv")
  traces.prepare_trace(src, TASKS, max_context=4096, time_scale=2.0, out_csv=out)
  np.testing.assert_array_equal(trace_lib.load_trace_csv(out, TASKS).arrival_s, [0, 2, 6, 8])
  s = traces.prepare_trace(src, TASKS, max_context=4096, rate=2.0, out_csv=out)
  np.testing.assert_allclose(trace_lib.load_trace_csv(out, TASKS).arrival_s, [0, 0.5, 1.5, 2])
  assert s["mean_rate"] == pytest.approx(2.0)
  s = traces.prepare_trace(src, TASKS, max_context=4096, num_requests=3, rate=1.0, out_csv=out)
  assert s["rows"] == 3 and s["mean_rate"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="at most one of time_scale and rate"):
    traces.prepare_trace(src, TASKS, max_context=4096, rate=1.0, time_scale=2.0, out_csv=out)
  with pytest.raises(ValueError, match="max_context"):
    traces.prepare_trace(src, TASKS, max_context=1, out_csv=out)


def test_prepare_trace_tasks(tmp_path):
  out_a, out_b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
  s = traces.prepare_trace(_small_trace(tmp_path, task_column=True), TASKS, max_context=2048,
                        out_csv=out_a)
  assert s["tasks_from"] == "trace"
  assert trace_lib.load_trace_csv(out_a, TASKS).task.tolist() == [0, 1, 0, 1]
  # No task column: uniform, seeded.
  kw = dict(max_context=2048, num_requests=400)
  traces.prepare_trace(CODE_TRACE, TASKS, seed=3, out_csv=out_a, **kw)
  traces.prepare_trace(CODE_TRACE, TASKS, seed=3, out_csv=out_b, **kw)
  assert open(out_a).read() == open(out_b).read()
  s = traces.prepare_trace(CODE_TRACE, TASKS, seed=4, out_csv=out_b, **kw)
  assert open(out_a).read() != open(out_b).read()
  assert all(60 <= n <= 140 for n in s["task_counts"].values()), s["task_counts"]


def test_prepared_trace_is_what_the_simulator_replays(tmp_path):
  """The config --trace builds keeps the file's exact timing, lengths and task column."""
  out = str(tmp_path / "p.csv")
  traces.prepare_trace(CODE_TRACE, TASKS, max_context=2048, num_requests=300, rate=7.3, seed=1,
                    out_csv=out)
  cfg = ml_collections.ConfigDict({"workload": default_workload_config().to_dict()},
                                  type_safe=False)
  cfg = config_cli.apply_overrides(cfg, config_cli.trace_overrides(out, 0.0))
  w = workload_from_config(cfg.workload, TASKS)
  t = trace_lib.load_trace_csv(out, TASKS)
  assert not w.draw_tasks and w.lengths is None
  np.testing.assert_array_equal(w.requests.arrival_s(), t.arrival_s)
  np.testing.assert_array_equal(np.asarray(w.requests.task), t.task)
  np.testing.assert_array_equal(np.asarray(w.requests.prompt_len), t.prompt_len)


# ----------------------------------------------------------------- bursty traces
def test_bursty_trace_deterministic_and_extends(tmp_path):
  a, b, c = (str(tmp_path / f"{n}.csv") for n in "abc")
  s = traces.bursty_trace(4.0, 60.0, TASKS, seed=7, out_csv=a)
  traces.bursty_trace(4.0, 60.0, TASKS, seed=7, out_csv=b)
  assert open(a).read() == open(b).read()
  long = traces.bursty_trace(4.0, 120.0, TASKS, seed=7, out_csv=c)
  assert open(c).read().startswith(open(a).read())
  assert long["rows"] > s["rows"]
  traces.bursty_trace(4.0, 60.0, TASKS, seed=8, out_csv=b)
  assert open(a).read() != open(b).read()
  t = trace_lib.load_trace_csv(a, TASKS)
  assert t.arrival_s[-1] < 60.0 and t.task is not None
  assert t.prompt_len.max() <= 1536 and t.output_len.max() <= 512 and t.prompt_len.min() >= 1


def test_bursty_trace_mean_rate(tmp_path):
  out = str(tmp_path / "b.csv")
  # Poisson limit: tight.
  s = traces.bursty_trace(5.0, 400.0, TASKS, rate_sigma=0.0, cv_median=1.0, cv_sigma=0.0,
                       prompt=(np.log(100), 0.0), output=(np.log(20), 0.0), seed=0, out_csv=out)
  assert s["rate"] == pytest.approx(5.0, rel=0.1)
  t = trace_lib.load_trace_csv(out, TASKS)
  assert set(t.prompt_len.tolist()) == {100} and set(t.output_len.tolist()) == {20}
  # Default (Azure-code) burstiness: per-window rates vary by ~160 %; 400 windows.
  s = traces.bursty_trace(2.0, 4000.0, TASKS, seed=0, out_csv=out)
  assert s["rate"] == pytest.approx(2.0, rel=0.25)
  assert s["bursty"]["rate_sigma"] == 1.14


# ----------------------------------------------------------------- round trip
def test_round_trip_through_the_simulator(tmp_path):
  trace = str(tmp_path / "t.csv")
  traces.prepare_trace(CODE_TRACE, TASKS, max_context=2048, num_requests=200, rate=10.0,
                    out_csv=trace)
  sim, profile = traces.simulate_trace(trace, "round_robin", {"simulate.chunk": 200})
  assert sim["arrival"].size == 200
  path = _write(tmp_path / "outcomes.csv", report.outcomes_csv(sim))
  back = cmp.read_outcomes_csv(path, profile)
  for k in ("arrival", "latency"):
    np.testing.assert_array_equal(back[k], sim[k])   # whole microseconds: exact in the CSV
  c = cmp.compare(sim, back, profile)
  assert c["delta"]["availability_pp"] == 0 and c["delta"]["p95_latency_rel_pct"] == 0
  assert all(c["measured"]["per_model"][m]["requests"] > 60 for m in profile.model_names)
  assert cmp.targets_met(c["delta"])["all"]
  written = cmp.write_comparison(str(tmp_path / "cmp"), c, "test")
  assert json.loads(open(written["comparison.json"]).read())["targets_met"]["all"] is True


@pytest.mark.slow   # subprocess
def test_launcher_outcomes_match_simulate_trace(tmp_path):
  trace = str(tmp_path / "t.csv")
  traces.prepare_trace(CODE_TRACE, TASKS, max_context=2048, num_requests=150, rate=10.0,
                    out_csv=trace)
  out = tmp_path / "sim"
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "simulate.py"),
                      f"--trace={trace}", "--policy=static:0", f"--out={out}"],
                     capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr
  launched = cmp.read_outcomes_csv(str(out / "outcomes.csv"), PROFILE)
  sim, profile = traces.simulate_trace(trace, "static:0", {"simulate.chunk": 150})
  c = cmp.compare(sim, launched, profile)
  assert c["delta"]["latency_err_p90_pct"] == 0 and cmp.targets_met(c["delta"])["all"]
