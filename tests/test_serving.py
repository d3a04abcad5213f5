"""The serving runtime end to end: `launch/serve.py` as a real process over loopback, two tiny
random OPT models in their own worker processes, driven by the official `openai` client.

Covers: models and health, routed and pinned completions from text and token ids, streaming
(the same greedy text as without), the bes extensions (task, min_tokens, ignore_eos,
deadline_s), bad requests (400 naming the field), 429 from a full queue, Prometheus metrics,
an engine worker killed mid-run (503 for its requests, restart, served again), and a drain
on SIGTERM (every accepted request finishes); every request is in the server's outcomes.csv.
"""
import concurrent.futures
import csv
import os
import signal
import time

import httpx
import openai
import pytest

from tests import serving_testing as st


@pytest.fixture(scope="module")
def server(tmp_path_factory, jax_cache_dir):
  directory = str(tmp_path_factory.mktemp("serve"))
  path = st.write_tiny_config(directory, env_queue_capacity=2)
  with st.ServerProcess(path, os.path.join(directory, "server.log"),
                        jax_cache_dir=jax_cache_dir) as proc:
    proc.directory = directory
    yield proc


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                       timeout=60.0)


def _outcomes(server) -> list[dict]:
  with open(os.path.join(server.directory, "out", "outcomes.csv")) as f:
    return list(csv.DictReader(f))


def test_models_and_health(server, client):
  ids = [m.id for m in client.models.list().data]
  assert ids == ["auto", "tiny-a", "tiny-b"]
  health = httpx.get(server.url + "/health").json()
  assert health["status"] == "ready"
  assert [(e["model"], e["state"]) for e in health["engines"]] == [("tiny-a", "ready"),
                                                                     ("tiny-b", "ready")]
  deployment = httpx.get(server.url + "/bes/deployment").json()
  assert deployment["tasks"] == st.TASKS
  assert deployment["models"][0]["max_context"] == st.MAX_LEN


def test_routed_text_completion(client):
  r = client.completions.create(model="auto", prompt="Hello, serving world", max_tokens=6,
                                temperature=0,
                                extra_body={"task": "piqa", "min_tokens": 6, "ignore_eos": True})
  assert r.object == "text_completion"
  assert r.model in ("tiny-a", "tiny-b")
  assert r.usage.completion_tokens == 6
  assert r.usage.total_tokens == r.usage.prompt_tokens + 6
  assert r.choices[0].finish_reason == "length"
  bes = r.model_extra["bes"]
  assert bes["task"] == "piqa" and bes["instance"] in (0, 1)
  assert 0 < bes["ttft_s"] <= bes["latency_s"]
  assert bes["on_time"] is True and bes["utility"] > 0


def test_pinned_token_ids_and_streaming_agree(client):
  body = dict(model="tiny-b", prompt=[5, 17, 33, 101], max_tokens=8, temperature=0,
              extra_body={"ignore_eos": True})
  plain = client.completions.create(**body)
  assert plain.model == "tiny-b" and plain.usage.completion_tokens == 8
  chunks = list(client.completions.create(stream=True, **body))
  assert all(c.model == "tiny-b" for c in chunks)
  assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
  assert chunks[-1].choices[0].finish_reason == "length"


def test_deadline_extension_decides_on_time(client):
  r = client.completions.create(model="tiny-a", prompt=[3, 4, 5], max_tokens=4, temperature=0,
                                extra_body={"ignore_eos": True, "deadline_s": 1e-6})
  assert r.model_extra["bes"]["on_time"] is False
  assert r.model_extra["bes"]["utility"] == 0.0   # hard deadline, miss penalty 0


@pytest.mark.parametrize("body, field", [
    (dict(prompt="x", max_tokens=2, extra_body={"task": "nope"}), "task"),
    (dict(prompt="x", max_tokens=0), "max_tokens"),
    (dict(prompt=[1] * 70, max_tokens=2), "prompt"),
    (dict(prompt=[1, 99999], max_tokens=2), "prompt"),
    (dict(prompt=[1, 2.5], max_tokens=2), "prompt"),
    (dict(prompt="x", max_tokens=2, model="gpt-4"), "model"),
    (dict(prompt="x", max_tokens=2, extra_body={"min_tokens": 5}), "min_tokens"),
])
def test_bad_requests_name_the_field(client, body, field):
  body = dict(body)
  body.setdefault("model", "auto")
  with pytest.raises(openai.BadRequestError) as e:
    client.completions.create(**body)
  assert e.value.status_code == 400
  assert field in e.value.message


def test_bad_json_is_400(server):
  r = httpx.post(server.url + "/v1/completions", content=b"{not json",
                 headers={"content-type": "application/json"})
  assert r.status_code == 400
  assert "JSON" in r.json()["error"]["message"]


def test_full_queue_is_429_and_every_request_is_recorded(server, client):
  # tiny-b: 2 slots, waiting queue of 2: a burst of 10 long requests overflows it.
  def one(i):
    try:
      r = client.completions.create(model="tiny-b", prompt=[7, 8, 9 + i], max_tokens=40,
                                    temperature=0, extra_body={"ignore_eos": True})
      return 200, r.usage.completion_tokens
    except openai.RateLimitError as e:
      assert "queue" in e.message
      return 429, e.body
  before = len(_outcomes(server))
  with concurrent.futures.ThreadPoolExecutor(10) as pool:
    results = list(pool.map(one, range(10)))
  codes = [c for c, _ in results]
  assert codes.count(429) >= 1 and codes.count(200) >= 4
  assert all(n == 40 for c, n in results if c == 200)
  rows = _outcomes(server)[before:]
  assert len(rows) == 10
  assert sorted(int(r["status"]) for r in rows) == sorted(codes)
  assert all(r["rejected"] == "1" for r in rows if r["status"] == "429")


def test_metrics(server, client):
  client.completions.create(model="tiny-a", prompt=[3, 4], max_tokens=2, temperature=0)
  text = httpx.get(server.url + "/metrics").text
  for name in ("bes_requests_total", "bes_time_to_first_token_seconds_bucket",
               "bes_e2e_request_latency_seconds_count", "bes_num_requests_waiting",
               "bes_router_decisions_total", "bes_engine_up"):
    assert name in text, name
  assert 'bes_requests_total{model="tiny-a",outcome="ok"}' in text


def _engine(server, model):
  return next(e for e in httpx.get(server.url + "/health").json()["engines"]
              if e["model"] == model)


@pytest.mark.parametrize("fault", ["hang", "kill"])
def test_failed_engine_fails_its_requests_and_restarts(server, client, fault):
  # The worker is stopped (SIGSTOP) so the requests are accepted and stay outstanding on
  # it; then either nothing more (a hang: no iteration for hang_timeout_s = 1 s) or SIGKILL
  # (the process is gone: noticed at once). Either way: 503 for them, a restart, served again.
  before = _engine(server, "tiny-a")

  def request(_):
    try:
      client.completions.create(model="tiny-a", prompt=[11, 12], max_tokens=20, temperature=0,
                                extra_body={"ignore_eos": True})
      return 200
    except openai.APIStatusError as e:
      return e.status_code

  os.kill(before["pid"], signal.SIGSTOP)
  try:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      futures = [pool.submit(request, i) for i in range(2)]   # the queue holds 2
      time.sleep(0.3)
      t_fault = time.monotonic()
      if fault == "kill":
        os.kill(before["pid"], signal.SIGKILL)
      codes = [f.result() for f in futures]
      noticed_s = time.monotonic() - t_fault
  finally:
    try:
      os.kill(before["pid"], signal.SIGKILL)
    except ProcessLookupError:
      pass
  assert codes == [503, 503]
  assert noticed_s < (1.0 if fault == "kill" else 2.0), noticed_s
  server.wait_ready()                       # restarted and warm again
  after = _engine(server, "tiny-a")
  assert after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"]
  assert after["state"] == "ready"
  r = client.completions.create(model="tiny-a", prompt=[11, 12], max_tokens=3, temperature=0)
  assert r.usage.completion_tokens >= 1
  rows = [r for r in _outcomes(server) if r["status"] == "503"]
  assert len(rows) >= 2 and all("failed" in r["error"] for r in rows)


def test_sigterm_drains_every_accepted_request(tmp_path, jax_cache_dir):
  path = st.write_tiny_config(str(tmp_path), env_queue_capacity=32)
  with st.ServerProcess(path, str(tmp_path / "server.log"),
                        jax_cache_dir=jax_cache_dir) as proc:
    c = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      futures = [pool.submit(c.completions.create, model="auto", prompt=[4, 5, i + 6],
                             max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
                 for i in range(6)]
      time.sleep(0.5)
      code = proc.terminate()
      results = [f.result() for f in futures]
    assert code == 0, proc.log_tail()
  assert all(r.usage.completion_tokens == 30 for r in results)
  with open(tmp_path / "out" / "outcomes.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6 and all(r["status"] == "200" for r in rows)
