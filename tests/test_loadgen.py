"""bes.serving.loadgen and launch/loadgen.py.

Unit tests of the pieces (schedule, clipping, bodies, outcomes, aggregation), then a CONTRACT
TEST OF THE CLIENT: `FakeServer` is a minimal HTTP server (http.server, in a thread, over
loopback) implementing the HTTP contract of the bes server with canned-but-computed answers
(200 / 429 / 500 / a dropped connection chosen by the prompt length). It checks the client
against the contract, not the real server (whose own integration test runs the load
generator against it).
"""
import http.server
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bes.serving import loadgen
from bes.workloads.trace import TraceData, load_trace_csv
from tests import tiny_router

MISS_PENALTY = 0.5
DEPLOYMENT = {
    "tasks": ["t0", "t1"],
    "models": [{"name": "small", "instances": 1, "max_context": 64, "vocab_size": 512},
               {"name": "big", "instances": 1, "max_context": 128, "vocab_size": 1024}],
    "miss_penalty": MISS_PENALTY, "profile": tiny_router.TINY_PROFILE}
QUALITY = [[0.3, 0.9], [0.9, 0.95]]
REJECT_LEN, FAIL_LEN, DROP_LEN = 11, 13, 17   # prompt lengths the fake answers specially
SERVICE_S = 0.15                              # the fake's time per completion


def deployment():
  return loadgen.parse_deployment(DEPLOYMENT)


# ---------------------------------------------------------------------------- unit tests


def test_parse_deployment():
  d = deployment()
  assert d.tasks == ("t0", "t1") and d.max_context == 64 and d.vocab_size == 512
  assert d.miss_penalty == 0.5 and d.profile.model_names == ("small", "big")
  bad = dict(DEPLOYMENT, models=[dict(DEPLOYMENT["models"][0], max_context="64")])
  with pytest.raises(ValueError, match=r"models\[0\].max_context: expected an integer"):
    loadgen.parse_deployment(bad)
  with pytest.raises(ValueError, match="tasks: expected the profile's tasks"):
    loadgen.parse_deployment(dict(DEPLOYMENT, tasks=["a", "b"]))
  with pytest.raises(ValueError, match="miss_penalty"):
    loadgen.parse_deployment({k: v for k, v in DEPLOYMENT.items() if k != "miss_penalty"})


def _trace(n=6, task=None):
  return TraceData(arrival_s=np.arange(n, dtype=np.float64) + 1.0,
                   prompt_len=np.full(n, 10), output_len=np.full(n, 5),
                   task=None if task is None else np.asarray(task))


def test_schedule_time_scale_and_rate():
  d = deployment()
  s = loadgen.build_schedule(_trace(), d)
  np.testing.assert_allclose(s.arrival_s, [1, 2, 3, 4, 5, 6])
  s = loadgen.build_schedule(_trace(), d, time_scale=0.5, num_requests=4)
  np.testing.assert_allclose(s.arrival_s, [0.5, 1, 1.5, 2])
  s = loadgen.build_schedule(_trace(), d, rate=3.0)       # 6 requests over span 5 -> x 0.4
  np.testing.assert_allclose(s.arrival_s, np.arange(1, 7) * 0.4)
  assert len(s) / (s.arrival_s[-1] - s.arrival_s[0]) == pytest.approx(3.0)
  with pytest.raises(ValueError, match="--time_scale and --rate"):
    loadgen.build_schedule(_trace(), d, rate=3.0, time_scale=2.0)
  with pytest.raises(ValueError, match="--num_requests: expected 1..6"):
    loadgen.build_schedule(_trace(), d, num_requests=7)


def test_schedule_tasks():
  d = deployment()
  s = loadgen.build_schedule(_trace(task=[1, 0, 1, 1, 0, 0]), d)
  assert s.task.tolist() == [1, 0, 1, 1, 0, 0] and not s.tasks_drawn
  a = loadgen.build_schedule(_trace(200), d, seed=3)
  b = loadgen.build_schedule(_trace(200), d, seed=3)
  c = loadgen.build_schedule(_trace(200), d, seed=4)
  assert a.tasks_drawn and a.task.tolist() == b.task.tolist() != c.task.tolist()
  assert set(a.task.tolist()) == {0, 1} and 60 < a.task.sum() < 140
  with pytest.raises(ValueError, match="index 2 >= the server's 2 tasks"):
    loadgen.build_schedule(_trace(task=[2] * 6), d)


def test_clip_lengths():
  p, n, clipped, raised = loadgen.clip_lengths([10, 60, 100, 5, 0, 1], [5, 10, 10, 70, 3, 63], 64)
  assert p.tolist() == [10, 54, 54, 1, 1, 1]     # prompt shortened first, to 1 at least
  assert n.tolist() == [5, 10, 10, 63, 3, 63]    # then the output
  assert (clipped, raised) == (3, 1)
  assert np.all(p + n <= 64)
  s = loadgen.build_schedule(TraceData(np.array([0.0, 1.0]), np.array([100, 3]),
                                       np.array([10, 4])), deployment())
  assert s.prompt_len.tolist() == [54, 3] and s.num_clipped == 1   # the smallest max_context


def test_requests_csv_replays_in_the_trace_loader(tmp_path):
  s = loadgen.build_schedule(_trace(task=[1, 0, 1, 1, 0, 0]), deployment(), time_scale=0.25)
  path = tmp_path / "requests.csv"
  path.write_text(loadgen.requests_csv(s, ("t0", "t1")))
  back = load_trace_csv(str(path), ("t0", "t1"))
  np.testing.assert_allclose(back.arrival_s, s.arrival_s)
  assert back.task.tolist() == s.task.tolist() and back.prompt_len.tolist() == s.prompt_len.tolist()


def test_prompt_and_body():
  a = loadgen.prompt_ids(0, 5, 50, 512)
  assert len(a) == 50 and min(a) >= 4 and max(a) < 512
  assert a == loadgen.prompt_ids(0, 5, 50, 512) != loadgen.prompt_ids(0, 6, 50, 512)
  body = loadgen.request_body(a, "t1", 7)
  assert body == {"model": "auto", "prompt": a, "max_tokens": 7, "min_tokens": 7,
                  "ignore_eos": True, "temperature": 0, "stream": False, "task": "t1"}
  json.dumps(body)   # plain JSON types


def _ok(**bes):
  b = dict(task="t1", model_index=1, instance=0, latency_s=0.4, on_time=True, utility=0.95,
           queue_s=0.01, ttft_s=0.05, tpot_s=0.02, deadline_s=1.0, predicted=0.3)
  b.update(bes)
  return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "big",
          "choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": None}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}, "bes": b}


def test_outcome_200():
  r = loadgen.outcome_from_response(200, _ok(), task=1, miss_penalty=0.5, client_latency_s=0.41)
  assert r["kind"] == "served" and (r["model"], r["instance"]) == (1, 0)
  assert (r["latency"], r["on_time"], r["rejected"], r["utility"]) == (0.4, True, False, 0.95)
  assert (r["ttft_s"], r["tpot_s"], r["queue_s"], r["predicted"]) == (0.05, 0.02, 0.01, 0.3)
  assert (r["prompt_tokens"], r["completion_tokens"], r["model_name"]) == (9, 4, "big")
  late = loadgen.outcome_from_response(200, _ok(on_time=False, utility=-0.5, predicted=None),
                                       task=1, miss_penalty=0.5)
  assert not late["on_time"] and late["utility"] == -0.5 and math.isnan(late["predicted"])
  bad = loadgen.outcome_from_response(200, _ok(latency_s=None), task=1, miss_penalty=0.5)
  assert bad["kind"] == "error" and "bes.latency_s" in bad["error"] and bad["status"] == 200


def test_outcome_429_500_and_connection_error():
  body = {"error": {"message": "queue full", "type": "rejected", "code": 429},
          "bes": {"task": "t0", "model_index": 0, "instance": 0}}
  r = loadgen.outcome_from_response(429, body, task=0, miss_penalty=0.5)
  assert r["kind"] == "rejected" and r["rejected"] and not r["on_time"]
  assert (r["utility"], r["latency"], r["model"], r["error"]) == (-0.5, math.inf, 0, "queue full")
  r = loadgen.outcome_from_response(500, {"error": {"message": "boom"}}, task=0, miss_penalty=0.5)
  assert r["kind"] == "error" and not r["rejected"] and r["error"] == "HTTP 500: boom"
  assert (r["utility"], r["latency"], r["model"], r["status"]) == (-0.5, math.inf, -1, 500)
  r = loadgen.outcome_from_response(None, None, task=0, miss_penalty=0.5,
                                    error="ConnectError: refused")
  assert r["kind"] == "error" and r["status"] == 0 and r["error"] == "ConnectError: refused"


def test_aggregate():
  d = deployment()
  s = loadgen.build_schedule(_trace(4, task=[1, 0, 1, 0]), d)
  rows = [loadgen.outcome_from_response(200, _ok(), task=1, miss_penalty=0.5),
          loadgen.outcome_from_response(200, _ok(model_index=0, latency_s=2.0, on_time=False,
                                                 utility=-0.5, ttft_s=0.5), task=0, miss_penalty=0.5),
          loadgen.outcome_from_response(429, {"bes": {"model_index": 1, "instance": 0}},
                                        task=1, miss_penalty=0.5),
          loadgen.outcome_from_response(None, None, task=0, miss_penalty=0.5, error="E")]
  for i, r in enumerate(rows):
    r.update(id=i, arrival=float(s.arrival_s[i]), send_lag_s=0.001 * i, sent_s=s.arrival_s[i],
             done_s=s.arrival_s[i] + 0.5)
  m = loadgen.aggregate(rows, s, d)
  assert (m["num_requests"], m["num_served"], m["num_rejected"], m["num_errors"]) == (4, 2, 1, 1)
  assert m["availability"] == 0.25 and m["rejected_frac"] == 0.25 and m["error_frac"] == 0.25
  assert m["mean_utility"] == pytest.approx((0.95 - 0.5 - 0.5 - 0.5) / 4)
  assert m["p50_latency_s"] == pytest.approx(1.2)   # served only: 0.4 and 2.0
  assert m["peak"] == pytest.approx((0.95 + 0.9 + 0.95 + 0.9) / 4)
  assert m["requests_per_model"] == {"small": 1, "big": 2}
  assert m["models"]["big"]["rejected"] == 1 and m["models"]["small"]["availability"] == 0.0
  assert m["send_lag_max"] == pytest.approx(0.003) and m["offered_rate"] == pytest.approx(4 / 3)
  assert m["ttft_p50"] == pytest.approx(0.275) and m["error_examples"] == {"E": 1}
  json.dumps(m, allow_nan=False)
  csv = loadgen.detail_csv(rows).splitlines()
  assert csv[0] == ",".join(loadgen.DETAIL_COLUMNS) and csv[4].startswith("3,0,,,,")
  assert loadgen.format_summary(m, "http://x").startswith("4 requests to http://x: 2 served")


# ------------------------------------------------------- contract test of the client


class FakeServer:
  """The bes HTTP contract, canned but computed (module docstring); `received` logs
  (monotonic time, body) of every completion request."""

  def __init__(self, ready=True):
    self.ready = ready
    self.received = []
    self.lock = threading.Lock()
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def do_GET(self):
        if self.path == "/health":
          if fake.ready:
            self._send(200, {"status": "ready", "engines": ["small/0", "big/0"]})
          else:
            self._send(503, {"error": {"message": "warming up", "code": 503}})
        elif self.path == "/bes/deployment":
          self._send(200, DEPLOYMENT)
        else:
          self._send(404, {"error": {"message": "not found"}})

      def do_POST(self):
        start = time.monotonic()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fake.lock:
          fake.received.append((start, body))
        task = DEPLOYMENT["tasks"].index(body["task"])
        model = task   # t0 -> small, t1 -> big
        prompt = body["prompt"]
        limits = DEPLOYMENT["models"][model]
        if (not all(4 <= t < limits["vocab_size"] for t in prompt)
            or len(prompt) + body["max_tokens"] > limits["max_context"]):
          return self._send(400, {"error": {"message": "prompt: out of range"}})
        if len(prompt) == DROP_LEN:
          self.close_connection = True
          self.connection.shutdown(2)
          return None
        if len(prompt) == FAIL_LEN:
          return self._send(500, {"error": {"message": "engine crashed", "code": 500}})
        if len(prompt) == REJECT_LEN:
          return self._send(429, {"error": {"message": "queue full", "type": "rejected",
                                            "code": 429},
                                  "bes": {"task": body["task"], "model_index": model,
                                          "instance": 0}})
        time.sleep(SERVICE_S)
        n = body["max_tokens"]
        latency = time.monotonic() - start
        on_time = latency <= 1.0
        self._send(200, {
            "id": f"cmpl-{len(fake.received)}", "object": "text_completion", "created": 0,
            "model": limits["name"],
            "choices": [{"index": 0, "text": "a" * n, "finish_reason": "length",
                         "logprobs": None}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": n,
                      "total_tokens": len(prompt) + n},
            "bes": {"task": body["task"], "model_index": model, "instance": 0,
                    "latency_s": latency, "on_time": on_time,
                    "utility": QUALITY[model][task] if on_time else -MISS_PENALTY,
                    "queue_s": 0.0, "ttft_s": latency / 2, "tpot_s": latency / (2 * n),
                    "deadline_s": 1.0, "predicted": None if task else latency}})

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.httpd.handle_error = lambda *args: None   # the dropped connection's broken pipe
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


# arrivals every 0.05 s; SERVICE_S = 0.15 s, so requests overlap (open loop).
TRACE_ROWS = [(0.05 * i, p, 4, t) for i, (p, t) in enumerate(
    [(8, "t0"), (9, "t1"), (REJECT_LEN, "t1"), (FAIL_LEN, "t0"), (DROP_LEN, "t0"), (10, "t1"),
     (100, "t1"), (8, "t0"), (7, "t1"), (6, "t0")])]


def _write_trace(path, with_task=True):
  with open(path, "w") as f:
    f.write("arrived_at,num_prefill_tokens,num_decode_tokens" + (",task\n" if with_task else "\n"))
    for a, p, n, t in TRACE_ROWS:
      f.write(f"{a:.2f},{p},{n}" + (f",{t}\n" if with_task else "\n"))
  return str(path)


def test_contract_end_to_end(tmp_path):
  trace = _write_trace(tmp_path / "trace.csv")
  out = tmp_path / "out"
  with FakeServer() as server:
    m = loadgen.run_loadgen(server.url, trace, str(out), seed=1, progress=False,
                            log=lambda s: None)
    received = list(server.received)
  assert (m["num_requests"], m["num_served"], m["num_rejected"], m["num_errors"]) == (10, 7, 1, 2)
  assert m["num_clipped"] == 1 and not m["tasks_drawn"]
  # Open loop: every request left on schedule although each took SERVICE_S (3 arrival gaps).
  # Closed loop would span >= 9 x SERVICE_S = 1.35 s; the margins absorb a loaded CI
  # machine's scheduling delays (a 0.1 s bound failed there once).
  assert len(received) == 10 and m["send_lag_max"] < 0.3, m["send_lag_max"]
  starts = sorted(t for t, _ in received)
  assert starts[-1] - starts[0] == pytest.approx(0.45, abs=0.3)
  bodies = sorted((b for _, b in received), key=lambda b: b["task"])
  assert all(b["max_tokens"] == b["min_tokens"] == 4 and b["ignore_eos"] for b in bodies)
  files = sorted(os.listdir(out))
  assert files == ["metrics.json", "outcomes.csv", "requests.csv", "requests_detail.csv",
                   "table.txt"]
  outcomes = (out / "outcomes.csv").read_text().splitlines()
  assert outcomes[0] == "id,arrival,task,model,instance,latency,on_time,rejected,utility"
  rows = [line.split(",") for line in outcomes[1:]]
  assert [r[7] for r in rows] == ["0", "0", "1", "0", "0", "0", "0", "0", "0", "0"]
  assert rows[2][5] == "inf" and rows[3][5] == "inf" and rows[3][3] == "-1"
  assert float(rows[0][8]) == 0.3 and float(rows[1][8]) == 0.95 and float(rows[2][8]) == -0.5
  detail = (out / "requests_detail.csv").read_text().splitlines()
  assert detail[1].startswith("0,200,") and detail[4].startswith("3,500,")
  assert detail[5].startswith("4,0,") and "engine crashed" in detail[4]
  back = load_trace_csv(str(out / "requests.csv"), ("t0", "t1"))
  assert back.prompt_len.tolist()[6] == 64 - 4 and back.task.tolist()[:3] == [0, 1, 1]
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["num_errors"] == 2 and saved["models"]["big"]["rejected"] == 1
  assert "send lag" in (out / "table.txt").read_text()


def test_contract_drawn_tasks_and_rate(tmp_path):
  trace = _write_trace(tmp_path / "trace.csv", with_task=False)
  with FakeServer() as server:
    m = loadgen.run_loadgen(server.url, trace, str(tmp_path / "o"), seed=2, rate=40.0,
                            num_requests=4, concurrency_limit=2, progress=False,
                            log=lambda s: None)
  assert m["tasks_drawn"] and m["num_requests"] == 4
  assert m["offered_rate"] == pytest.approx(40.0)


def test_server_not_ready_or_unreachable(tmp_path):
  trace = _write_trace(tmp_path / "trace.csv")
  with FakeServer(ready=False) as server:
    with pytest.raises(ValueError, match="server not ready .HTTP 503"):
      loadgen.run_loadgen(server.url, trace, str(tmp_path / "o"), progress=False)
    url = server.url
  with pytest.raises(ValueError, match="cannot reach the server"):
    loadgen.run_loadgen(url, trace, str(tmp_path / "o"), progress=False)


def test_flag_errors_before_sending(tmp_path):
  trace = _write_trace(tmp_path / "trace.csv")
  bad_out = tmp_path / "file"
  bad_out.write_text("")
  for kwargs, message in (
      (dict(url="localhost:8000"), "--url='localhost:8000': expected http://HOST:PORT"),
      (dict(time_scale=2.0, rate=3.0), "--time_scale and --rate: give at most one"),
      (dict(rate=0.0), "--rate: expected a number > 0"),
      (dict(trace_path=f"{tmp_path}/none.csv"), "none.csv: no such file"),
      (dict(out=str(bad_out)), "--out=.*expected a directory, found a file")):
    args = dict(url="http://127.0.0.1:9", trace_path=trace, out=str(tmp_path / "o"))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):   # port 9 is never contacted
      loadgen.run_loadgen(args.pop("url"), args.pop("trace_path"), args.pop("out"), **args)


@pytest.mark.slow
def test_launcher(tmp_path):
  trace = _write_trace(tmp_path / "trace.csv")
  launcher = [sys.executable, "-m", "launch.loadgen"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(launcher + ["--time_scale=2", "--rate=3", f"--trace={trace}", "--out=o"],
                     capture_output=True, text=True, env=env)
  assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
  assert r.stderr.startswith("loadgen.py: error: --time_scale and --rate"), r.stderr
  with FakeServer() as server:
    r = subprocess.run(launcher + [f"--url={server.url}", f"--trace={trace}",
                                   f"--out={tmp_path / 'run'}", "--num_requests=3",
                                   "--time_scale=0.5", "--noprogress"],
                       capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr
  assert "3 requests to" in r.stdout and (tmp_path / "run" / "table.txt").is_file()
