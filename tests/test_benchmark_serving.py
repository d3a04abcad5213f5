"""The pure pieces of the serving benchmark (bes/serving/benchmark.py,
launch/benchmark_serving.py): percentiles, window token counts, the burst summary, the
markdown, the config writer, and flag errors. No server, no engine."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bes.serving import benchmark as bm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_percentiles():
  s = bm.percentiles([1.0, 2.0, 3.0, None, float("nan"), 4.0])
  assert s["n"] == 4 and s["mean"] == 2.5 and s["max"] == 4.0
  assert s["p50"] == pytest.approx(np.percentile([1, 2, 3, 4], 50))
  assert s["p99"] == pytest.approx(np.percentile([1, 2, 3, 4], 99))
  assert bm.percentiles([]) == dict(n=0, mean=None, p50=None, p90=None, p99=None, max=None)


def test_window_tokens_spreads_each_span():
  spans = [(0.0, 10.0, 100), (5.0, 6.0, 10), (12.0, 12.0, 1), (20.0, 30.0, 50)]
  # half of the first span, all of the second, the instantaneous one at 12 is out
  assert bm.window_tokens(spans, 5.0, 11.0) == pytest.approx(50 + 10)
  assert bm.window_tokens(spans, 11.0, 25.0) == pytest.approx(1 + 25)
  with pytest.raises(ValueError, match="empty window"):
    bm.window_tokens(spans, 3.0, 3.0)


def test_summarize_burst():
  rows = [dict(id=i, status=200, sent_s=i * 0.001, send_lag_s=0.0, done_s=i * 0.001 + 0.05,
               client_s=0.05, decision_us=100.0 + i, server_latency_s=0.01, queue_s=0.002)
          for i in range(11)]
  rows.append(dict(id=11, status=None, sent_s=0.011, send_lag_s=0.001, done_s=0.02,
                   client_s=0.009, error="ConnectError"))
  s = bm.summarize_burst(rows)
  assert s["requests"] == 12 and s["ok"] == 11 and s["statuses"] == {"200": 11, "None": 1}
  assert s["achieved_send_rate"] == pytest.approx(11 / 0.011)
  assert s["completion_rate"] == pytest.approx(11 / 0.06)
  assert s["decision_us"]["n"] == 11 and s["decision_us"]["max"] == 110.0
  assert s["outside_server_ms"]["p50"] == pytest.approx(40.0)
  assert s["server_queue_ms"]["p50"] == pytest.approx(2.0)


def test_mean_runs_and_busy_fraction():
  m = bm.median_runs([dict(a=1.0, b=2, c="x"), dict(a=3.0, b=4, c="y"), dict(a=9.0, b=5, c="z")])
  assert m == dict(a=3.0, b=4.0)
  assert bm.busy_fraction((10, 100), (40, 200)) == pytest.approx(0.3)
  busy, total = bm.core_jiffies(0)
  assert 0 <= busy <= total
  assert bm.proc_cpu_s() > 0
  aff = bm.thread_affinities(os.getpid())
  assert sum(aff.values()) >= 1 and all(isinstance(k, str) for k in aff)


def test_check_positive():
  assert bm.check_positive(3, "rate") == 3
  for bad in (0, -1, "3", True):
    with pytest.raises(ValueError, match="--rate: expected a number > 0"):
      bm.check_positive(bad, "rate")
  with pytest.raises(ValueError, match="--n: expected an integer > 0, got 2.5"):
    bm.check_positive(2.5, "n", integer=True)


def test_serving_config_of_the_benchmark_loads(tmp_path):
  from bes import config_cli
  from bes.experiment.setup import Setup
  from bes.serving import config as serve_config, local
  path, port = local.write_serving_config(
      str(tmp_path), bm.profile_dict([("m-a", 4), ("m-b", 2)]),
      {"m-a": bm.TINY_SHAPE, "m-b": bm.TINY_SHAPE}, max_len=64, policy="round_robin",
      env={"queue_capacity": 1000})
  config = config_cli.load_config_file(path)
  assert config.serve.port == port and config.env.queue_capacity == 1000
  setup = Setup.from_config(config)
  assert [m.max_batch for m in setup.profile.models] == [4, 2]
  serve = serve_config.serve_config(config, setup.profile)
  assert [m.name for m in serve.models] == ["m-a", "m-b"]


def _result():
  p = dict(n=10, mean=1.0, p50=1.0, p90=2.0, p99=3.0, max=4.0)
  run = dict(tokens_per_s=300.0, tokens_per_cpu_s=500.0, cpu_share=0.6, core_busy=1.0,
             iterations=100, mean_tokens_per_iteration=8.0)
  return dict(
      command="python launch/benchmark_serving.py --out=x", date="today",
      git=dict(commit="abcdef1234567", uncommitted=[]), wall_s=200.0,
      machine=dict(jax="0", cores=2, arch="x86_64", python="3", load_start=[1, 2, 3],
                   load_end=[1, 2, 3]),
      decision=dict(rate=1000.0, requests=10, notes=["learned: skipped"], rows=[dict(
          policy="round_robin", requests=10, achieved_rate=999.0, decision_us=p, view_us=p,
          policy_us=p, rest_us=p)]),
      http=dict(rate=1000.0, requests=10, policy="deadline_greedy", max_batch=4,
                queue_capacity=100000, server_ready_s=9.0, notes=["a note"], summary=dict(
                    statuses={"200": 10}, achieved_send_rate=990.0, completion_rate=100.0,
                    send_lag_ms=p, decision_us=p, client_latency_ms=p, server_latency_ms=p,
                    server_queue_ms=p, outside_server_ms=p)),
      throughput=dict(model="cpu-small", max_batch=8, max_len=256, concurrency=16,
                      prompt_len=16, max_tokens=128, warmup_s=3.0, window_s=15.0,
                      repeats=2, standalone_runs=[run, run], standalone=run,
                      served=dict(run, completions=5, statuses={"200": 5},
                                  server_cpu_share=0.05),
                      served_runs=[dict(run, completions=5, statuses={"200": 5},
                                        server_cpu_share=0.05)] * 2,
                      ratio=0.95, ratio_per_cpu_s=0.97))


def test_markdown_has_command_and_numbers():
  md = bm.markdown(_result())
  assert "Command: `python launch/benchmark_serving.py --out=x`" in md
  assert "| round_robin | 10 | 999 | 1 | 2 | 3 | 4 | 1 | 1 / 1 / 1 |" in md
  assert "**95.0%**" in md and "**97.0%**" in md
  assert md.index("standalone EngineLoop, run 1") < md.index("served over HTTP, run 1") \
      < md.index("standalone EngineLoop, run 2")
  assert "* learned: skipped" in md and "* a note" in md
  json.dumps(_result())   # the JSON side is plain data


def test_markdown_parts_are_optional():
  res = _result()
  del res["http"], res["throughput"]
  md = bm.markdown(res)
  assert "1a." in md and "1b." not in md and "## 2." not in md


@pytest.mark.parametrize("flag,message", [
    ("--parts=decision,nope", "--parts: expected some of decision,http,throughput"),
    ("--rate=0", "--rate: expected a number > 0"),
    ("--http_requests=0", "--http_requests: expected an integer > 0"),
    ("--max_tokens=300", "--prompt_len + --max_tokens: must be <= 256"),
    ("--concurrency=-1", "--concurrency: expected an integer >= 0"),
    ("--repeats=0", "--repeats: expected an integer > 0"),
])
def test_flag_errors(flag, message, tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "benchmark_serving.py"),
                      f"--out={tmp_path}/b", flag], capture_output=True, text=True, cwd=ROOT,
                     env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert r.returncode == 1, r.stderr[-2000:]
  assert message in r.stderr
  assert not os.path.exists(f"{tmp_path}/b.json")
