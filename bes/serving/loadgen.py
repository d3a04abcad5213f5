"""Open-loop load generator: replays a trace against a bes server over HTTP.

Request i of the schedule is sent at its arrival time (seconds after the run starts) whatever
happened to earlier requests (open loop: a slow server makes requests overlap, never sends
later), as `POST /v1/completions` with `prompt_len` random token ids, exactly `output_len`
generated tokens (`max_tokens = min_tokens`, `ignore_eos`), greedy, `model: "auto"` and the
row's task. Every request ends with one outcome row in the simulator's schema
(`bes.metrics.OUTCOME_KEYS`), so the same metrics and tables apply to real and simulated runs.

The steps, each a small function testable without a server:
  parse_deployment(GET /bes/deployment JSON)   -> Deployment (tasks, models, profile, ...)
  build_schedule(trace, deployment, ...)       -> Schedule: time scaling or rate, tasks for a
                                                  trace without them, clipping to the context
  prompt_ids(seed, i, length, vocab)           -> the prompt of request i (seeded per request)
  request_body(...)                            -> the JSON body
  outcome_from_response(status, payload, ...)  -> one result row (outcome + detail fields)
  aggregate(results, schedule, deployment)     -> metrics.json's dict
and `replay` (asyncio + httpx) sends the schedule; `run_loadgen` does everything and writes
the files (launch/loadgen.py is its command line).

Outcomes: 200 -> served (on_time, utility, latency from the response's `bes` object: latency
is the server's arrival-to-last-token time); 429 -> rejected (latency inf, on_time 0,
utility -miss_penalty); any other status, a malformed 200 or a connection error -> an error
(rejected 0, on_time 0, latency inf, utility -miss_penalty, model and instance -1), counted
separately. `bes.metrics.summarize` takes latencies of completed requests only, so it is
given errors as not completed (excluded from latency percentiles); its `rejected_frac` is
then recomputed over 429s alone and `error_frac` added.

Arrivals are the trace's own times (not shifted to start at 0), times `time_scale`, or
rescaled to a mean rate with `bes.workloads.trace.scale_to_rate`, as the simulator replays
them; `requests.csv` holds the effective requests (after clipping) in the trace format, so
`launch/simulate.py --trace=DIR/requests.csv` replays exactly the same requests.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import time
import urllib.parse
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bes import io_util, metrics
from bes.experiment import report
from bes.profile import Profile, profile_from_dict
from bes.serving import traces
from bes.workloads.trace import TraceData, load_trace_csv, scale_to_rate

# httpx logs every request at INFO, which absl's logging shows: one line per request.
logging.getLogger("httpx").setLevel(logging.WARNING)

FIRST_TOKEN_ID = 4   # prompt ids are drawn in [4, vocab): above OPT's special tokens 0..3
DETAIL_COLUMNS = ("id", "status", "ttft_s", "tpot_s", "queue_s", "client_latency_s",
                  "prompt_tokens", "completion_tokens", "predicted", "error")
REQUEST_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens", "task")
_PCTS = (50, 90, 99)


# ----------------------------------------------------------------------------- deployment


@dataclasses.dataclass(frozen=True)
class Deployment:
  """What `GET /bes/deployment` says about the server.

  Attributes:
    tasks: task names (the profile's order).
    models: per model {"name", "instances", "max_context", "vocab_size"}.
    miss_penalty: utility lost by a rejection or a miss.
    profile: the server's profile (quality, GPUs: for `bes.metrics.summarize`).
  """
  tasks: tuple[str, ...]
  models: tuple[dict, ...]
  miss_penalty: float
  profile: Profile

  @property
  def max_context(self) -> int:
    """Prompt + output tokens any model can take (the smallest model's)."""
    return min(m["max_context"] for m in self.models)

  @property
  def vocab_size(self) -> int:
    """Token ids every model accepts are < this (the smallest model's vocabulary)."""
    return min(m["vocab_size"] for m in self.models)


def parse_deployment(d: Any, source: str = "/bes/deployment") -> Deployment:
  """Validates the deployment JSON (module docstring of the HTTP contract); ValueError naming
  `source` and the field."""
  def fail(field, expected, got):
    return ValueError(f"{source}: {field}: expected {expected}, got {got!r}")
  if not isinstance(d, Mapping):
    raise fail("the response", "a JSON object", d)
  for key in ("tasks", "models", "miss_penalty", "profile"):
    if key not in d:
      raise fail(key, "a value (missing key)", sorted(d))
  tasks = d["tasks"]
  if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
    raise fail("tasks", "a non-empty list of names", tasks)
  models = d["models"]
  if not isinstance(models, list) or not models:
    raise fail("models", "a non-empty list", models)
  parsed = []
  for i, m in enumerate(models):
    if not isinstance(m, Mapping) or not isinstance(m.get("name"), str):
      raise fail(f"models[{i}]", "an object with a name", m)
    for key, low in (("instances", 1), ("max_context", 2), ("vocab_size", FIRST_TOKEN_ID + 1)):
      v = m.get(key)
      if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise fail(f"models[{i}].{key}", f"an integer >= {low}", v)
    parsed.append({k: m[k] for k in ("name", "instances", "max_context", "vocab_size")})
  penalty = d["miss_penalty"]
  if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or not math.isfinite(penalty):
    raise fail("miss_penalty", "a finite number", penalty)
  profile = profile_from_dict(d["profile"], source=f"{source} profile")
  if tuple(tasks) != profile.tasks:
    raise fail("tasks", f"the profile's tasks {list(profile.tasks)}", tasks)
  return Deployment(tasks=tuple(tasks), models=tuple(parsed), miss_penalty=float(penalty),
                    profile=profile)


# ------------------------------------------------------------------------------- schedule


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The requests to send, arrays [N] in send order.

  Attributes:
    arrival_s: float64 send times, seconds after the run starts.
    task: int64 task indices into the deployment's tasks.
    prompt_len: int64 prompt tokens (>= 1, after clipping).
    output_len: int64 tokens to generate (>= 1, after clipping).
    num_clipped: requests whose prompt + output exceeded the max context and were shortened.
    num_raised: requests with an empty prompt, given 1 token (a prompt cannot be empty).
    tasks_drawn: True when the trace had no task column (tasks drawn uniformly, seeded).
  """
  arrival_s: np.ndarray
  task: np.ndarray
  prompt_len: np.ndarray
  output_len: np.ndarray
  num_clipped: int = 0
  num_raised: int = 0
  tasks_drawn: bool = False

  def __len__(self) -> int:
    return int(self.arrival_s.shape[0])


def clip_lengths(prompt_len, output_len, max_context: int) -> tuple[np.ndarray, np.ndarray, int, int]:
  """`bes.serving.traces.clip_lengths` (prompt shortened first, to 1 token at least, then
  the output; empty prompts become 1 token), with the counts: (prompt, output, number
  clipped, number raised from 0)."""
  p0, n0 = np.asarray(prompt_len, np.int64), np.asarray(output_len, np.int64)
  p, n = traces.clip_lengths(p0, n0, max_context)
  over = np.maximum(p0, 1) + n0 > max_context
  return p, n, int(over.sum()), int((p0 < 1).sum())


def build_schedule(trace: TraceData, deployment: Deployment, *, time_scale: float | None = None,
                   rate: float | None = None, num_requests: int | None = None,
                   seed: int = 0) -> Schedule:
  """The trace's first `num_requests` rows (all by default) as a `Schedule`.

  Arrivals: the trace's times, times `time_scale`, or rescaled to mean rate `rate` (requests/s
  over the rows sent; `bes.workloads.trace.scale_to_rate`); at most one of the two. Tasks: the
  trace's (indices or names, resolved by `load_trace_csv`), else drawn uniformly from the
  deployment's tasks with `seed`. Lengths: clipped to the deployment's max context
  (`clip_lengths`).
  """
  if time_scale is not None and rate is not None:
    raise ValueError("--time_scale and --rate: give at most one (a scale of the trace's times "
                     "or a target mean rate)")
  if time_scale is not None and not (math.isfinite(time_scale) and time_scale > 0):
    raise ValueError(f"--time_scale: expected a number > 0, got {time_scale!r}")
  n = len(trace) if num_requests is None else int(num_requests)
  if not 1 <= n <= len(trace):
    raise ValueError(f"--num_requests: expected 1..{len(trace)} (the trace's rows), got {n}")
  arrival = np.asarray(trace.arrival_s[:n], np.float64)
  if rate is not None:
    if n < 2 or not arrival[-1] > arrival[0]:
      raise ValueError(f"--rate: needs at least two distinct arrival times among the "
                       f"{n} request(s) sent")
    arrival = scale_to_rate(arrival, rate)
  elif time_scale is not None:
    arrival = arrival * time_scale
  if not arrival[-1] > 0:
    raise ValueError(f"{trace.path or 'trace'}: the {n} request(s) sent all arrive at 0 s; "
                     "expected a last arrival after 0 s (metrics are per second of trace)")
  num_tasks = len(deployment.tasks)
  if trace.task is None:
    task = np.random.default_rng([seed, 1]).integers(0, num_tasks, size=n)
  else:
    task = np.asarray(trace.task[:n], np.int64)
    if task.size and task.max() >= num_tasks:
      raise ValueError(f"{trace.path or 'trace'}: column 'task': index {task.max()} >= the "
                       f"server's {num_tasks} tasks {list(deployment.tasks)}")
  p, o, clipped, raised = clip_lengths(trace.prompt_len[:n], trace.output_len[:n],
                                       deployment.max_context)
  return Schedule(arrival_s=arrival, task=task.astype(np.int64), prompt_len=p, output_len=o,
                  num_clipped=clipped, num_raised=raised, tasks_drawn=trace.task is None)


def requests_csv(schedule: Schedule, tasks: Sequence[str]) -> str:
  """The effective requests as a trace CSV (arrived_at,num_prefill_tokens,num_decode_tokens,
  task; task by name), replayable by the simulator."""
  rows = [",".join(REQUEST_COLUMNS) + "\n"]
  for i in range(len(schedule)):
    rows.append(f"{schedule.arrival_s[i]:.6f},{schedule.prompt_len[i]},"
                f"{schedule.output_len[i]},{tasks[schedule.task[i]]}\n")
  return "".join(rows)


# -------------------------------------------------------------------------------- requests


def prompt_ids(seed: int, index: int, length: int, vocab_size: int) -> list[int]:
  """Request `index`'s prompt: `length` ids uniform in [4, vocab_size), the same for a given
  (seed, index) whatever the send order."""
  rng = np.random.default_rng([seed, 0, index])
  return rng.integers(FIRST_TOKEN_ID, vocab_size, size=int(length)).tolist()


def request_body(prompt: list[int], task: str, output_len: int) -> dict:
  """The POST /v1/completions body of one request (exactly `output_len` tokens, greedy)."""
  return {"model": "auto", "prompt": prompt, "max_tokens": int(output_len),
          "min_tokens": int(output_len), "ignore_eos": True, "temperature": 0,
          "stream": False, "task": task}


def _num(x, default=float("nan")) -> float:
  return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else default


def _int(x, default=-1) -> int:
  return int(x) if isinstance(x, int) and not isinstance(x, bool) else default


def _error_text(payload) -> str:
  if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
    return str(payload["error"].get("message", payload["error"]))
  return "" if payload is None else str(payload)[:200]


def outcome_from_response(status: int | None, payload: Any, *, task: int, miss_penalty: float,
                          client_latency_s: float = float("nan"), error: str = "") -> dict:
  """One result row from a response: the outcome fields (task, model, instance, latency,
  on_time, rejected, utility), the detail fields (`DETAIL_COLUMNS` but id and
  client_latency_s, which the caller knows) and `kind` ('served' | 'rejected' | 'error').

  Args:
    status: the HTTP status, or None when no response came (connection error, timeout).
    payload: the decoded JSON body (None if it was not JSON).
    task: the request's task index.
    miss_penalty: from the deployment.
    client_latency_s: send to last byte, seconds.
    error: the client-side error text (no response, bad JSON).
  """
  row = dict(task=task, model=-1, instance=-1, latency=math.inf, on_time=False, rejected=False,
             utility=-miss_penalty, status=status if status is not None else 0,
             ttft_s=math.nan, tpot_s=math.nan, queue_s=math.nan,
             client_latency_s=client_latency_s, prompt_tokens=-1, completion_tokens=-1,
             predicted=math.nan, error=error, kind="error", model_name="")
  bes = payload.get("bes") if isinstance(payload, Mapping) else None
  bes = bes if isinstance(bes, Mapping) else {}
  if status == 200:
    problems = [k for k in ("model_index", "instance") if _int(bes.get(k)) < 0]
    problems += [k for k in ("latency_s", "utility") if not math.isfinite(_num(bes.get(k)))]
    problems += [] if isinstance(bes.get("on_time"), bool) else ["on_time"]
    if problems:
      row["error"] = error or f"malformed 200 response: bes.{', bes.'.join(problems)} missing or invalid"
      return row
    usage = payload.get("usage") if isinstance(payload.get("usage"), Mapping) else {}
    row.update(model=_int(bes["model_index"]), instance=_int(bes["instance"]),
               latency=_num(bes["latency_s"]), on_time=bes["on_time"],
               utility=_num(bes["utility"]), kind="served",
               ttft_s=_num(bes.get("ttft_s")), tpot_s=_num(bes.get("tpot_s")),
               queue_s=_num(bes.get("queue_s")), predicted=_num(bes.get("predicted")),
               prompt_tokens=_int(usage.get("prompt_tokens")),
               completion_tokens=_int(usage.get("completion_tokens")),
               model_name=str(payload.get("model", "")))
  elif status == 429:
    row.update(rejected=True, kind="rejected", model=_int(bes.get("model_index")),
               instance=_int(bes.get("instance")), error=error or _error_text(payload))
  else:
    row["error"] = error or f"HTTP {status}: {_error_text(payload)}"
  return row


# --------------------------------------------------------------------------------- sending


async def _send_one(client, url: str, i: int, body_fn: Callable[[], dict], task: int,
                    miss_penalty: float, scheduled: float, t0: float) -> dict:
  body = body_fn()
  sent = time.monotonic()
  status, payload, error = None, None, ""
  try:
    response = await client.post(url, json=body)
    status = response.status_code
    try:
      payload = response.json()
    except ValueError:
      error = f"HTTP {status}: response is not JSON: {response.text[:120]!r}"
  except Exception as e:  # pylint: disable=broad-except  (httpx's errors: each is an outcome)
    error = f"{type(e).__name__}: {e}".strip().rstrip(":")
  done = time.monotonic()
  row = outcome_from_response(status, payload, task=task, miss_penalty=miss_penalty,
                              client_latency_s=done - sent, error=error)
  row.update(id=i, arrival=scheduled, send_lag_s=(sent - t0) - scheduled, sent_s=sent - t0,
             done_s=done - t0)
  return row


async def replay(base_url: str, schedule: Schedule, deployment: Deployment, *, seed: int = 0,
                 concurrency_limit: int = 0, timeout_s: float = 600.0,
                 on_done: Callable[[dict], None] | None = None) -> list[dict]:
  """Sends the schedule open loop; returns one result row per request, in schedule order.

  Request i is sent at `schedule.arrival_s[i]` seconds after the start, whatever earlier
  requests are doing; `concurrency_limit` > 0 caps requests in flight (a safety valve that
  breaks the open loop: late sends show in `send_lag_s`). Each row also has `arrival`
  (scheduled time), `sent_s`, `done_s` (since the start) and `send_lag_s` (sent - scheduled).
  `on_done(row)` is called as each request finishes (progress).
  """
  import httpx  # pylint: disable=g-import-not-at-top
  url = base_url.rstrip("/") + "/v1/completions"
  limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
  timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
  semaphore = asyncio.Semaphore(concurrency_limit) if concurrency_limit > 0 else None
  vocab = deployment.vocab_size

  async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
    t0 = time.monotonic()

    async def one(i: int) -> dict:
      def body():
        return request_body(prompt_ids(seed, i, schedule.prompt_len[i], vocab),
                            deployment.tasks[schedule.task[i]], schedule.output_len[i])
      args = (client, url, i, body, int(schedule.task[i]), deployment.miss_penalty,
              float(schedule.arrival_s[i]), t0)
      if semaphore is None:
        row = await _send_one(*args)
      else:
        async with semaphore:
          row = await _send_one(*args)
      if on_done is not None:
        on_done(row)
      return row

    tasks = []
    for i in range(len(schedule)):
      delay = t0 + schedule.arrival_s[i] - time.monotonic()
      if delay > 0:
        await asyncio.sleep(delay)
      tasks.append(asyncio.create_task(one(i)))
    return list(await asyncio.gather(*tasks))


# ------------------------------------------------------------------------------ aggregation


def outcomes_of(rows: Sequence[dict]) -> dict[str, np.ndarray]:
  """The rows' outcome arrays (`bes.metrics.OUTCOME_KEYS`), in row order."""
  return {
      "arrival": np.asarray([r["arrival"] for r in rows], np.float64),
      "task": np.asarray([r["task"] for r in rows], np.int64),
      "model": np.asarray([r["model"] for r in rows], np.int64),
      "instance": np.asarray([r["instance"] for r in rows], np.int64),
      "latency": np.asarray([r["latency"] for r in rows], np.float64),
      "on_time": np.asarray([r["on_time"] for r in rows], bool),
      "rejected": np.asarray([r["rejected"] for r in rows], bool),
      "utility": np.asarray([r["utility"] for r in rows], np.float64),
  }


def _percentiles(values, prefix: str) -> dict:
  v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
  out = {f"{prefix}_p{q}": (float(np.percentile(v, q)) if v.size else None) for q in _PCTS}
  out[f"{prefix}_max"] = float(v.max()) if v.size else None
  return out


def aggregate(rows: Sequence[dict], schedule: Schedule, deployment: Deployment) -> dict:
  """metrics.json: `bes.metrics.summarize` of the outcomes (errors excluded from latency
  percentiles, `rejected_frac` over 429s only; module docstring) plus request counts,
  per-model metrics, TTFT / TPOT / client latency percentiles, send lag (how late requests
  left vs schedule: the open loop's check), offered and achieved rates."""
  o = outcomes_of(rows)
  kinds = np.asarray([r["kind"] for r in rows])
  errors = kinds == "error"
  summary = metrics.summarize(dict(o, rejected=o["rejected"] | errors), deployment.profile)
  n = len(rows)
  summary.update(rejected_frac=float(o["rejected"].mean()), error_frac=float(errors.mean()),
                 num_served=int((kinds == "served").sum()), num_rejected=int(o["rejected"].sum()),
                 num_errors=int(errors.sum()), num_clipped=schedule.num_clipped,
                 num_prompt_raised=schedule.num_raised, tasks_drawn=schedule.tasks_drawn)
  served = [r for r in rows if r["kind"] == "served"]
  for key in ("ttft_s", "tpot_s", "queue_s", "client_latency_s"):
    summary.update(_percentiles([r[key] for r in served], key[:-2]))
  summary.update(_percentiles([r["send_lag_s"] for r in rows], "send_lag"))
  span = float(schedule.arrival_s[-1] - schedule.arrival_s[0]) if n > 1 else 0.0
  sent = np.asarray([r["sent_s"] for r in rows])
  done = np.asarray([r["done_s"] for r in rows])
  summary["offered_rate"] = n / span if span > 0 else None
  summary["achieved_send_rate"] = (n / float(sent.max() - sent.min())
                                   if n > 1 and sent.max() > sent.min() else None)
  summary["served_throughput"] = (len(served) / float(done.max()) if served and done.max() > 0
                                  else None)
  summary["wall_s"] = float(done.max()) if n else 0.0
  errors_text: dict[str, int] = {}
  for r in rows:
    if r["kind"] == "error":
      key = r["error"][:120]
      errors_text[key] = errors_text.get(key, 0) + 1
  summary["error_examples"] = dict(sorted(errors_text.items(), key=lambda kv: -kv[1])[:5])
  per_model = {}
  for m, model in enumerate(deployment.models):
    mine = [r for r in rows if r["model"] == m]
    ok = [r for r in mine if r["kind"] == "served"]
    entry = {"requests": len(mine), "served": len(ok),
             "rejected": sum(r["kind"] == "rejected" for r in mine),
             "availability": (float(np.mean([r["on_time"] for r in mine])) if mine else None),
             "mean_utility": (float(np.mean([r["utility"] for r in mine])) if mine else None)}
    entry.update(_percentiles([r["latency"] for r in ok], "latency"))
    entry.update(_percentiles([r["ttft_s"] for r in ok], "ttft"))
    entry.update(_percentiles([r["tpot_s"] for r in ok], "tpot"))
    per_model[model["name"]] = entry
  summary["models"] = per_model
  summary["requests_per_model"] = {name: e["requests"] for name, e in per_model.items()}
  return summary


def detail_csv(rows: Sequence[dict]) -> str:
  """requests_detail.csv: `DETAIL_COLUMNS`, one row per request in schedule order."""
  def cell(v):
    if isinstance(v, float):
      return "" if math.isnan(v) else f"{v:.6f}"
    if isinstance(v, str):
      return '"' + v.replace('"', "'").replace("\n", " ") + '"' if v else ""
    return str(v)
  lines = [",".join(DETAIL_COLUMNS) + "\n"]
  for r in rows:
    lines.append(",".join(cell(r[c]) for c in DETAIL_COLUMNS) + "\n")
  return "".join(lines)


def format_summary(summary: dict, url: str) -> str:
  """The printed report: the headline table (`bes.experiment.report.format_table`) and the
  load generator's own lines."""
  def f(x, spec=".4f"):
    return "-" if x is None else format(x, spec)
  s = summary
  lines = [f"{s['num_requests']} requests to {url}: {s['num_served']} served, "
           f"{s['num_rejected']} rejected (429), {s['num_errors']} errors; "
           f"{s['num_clipped']} clipped to the max context"
           + (f", {s['num_prompt_raised']} empty prompts given 1 token" if s["num_prompt_raised"] else "")
           + ("; tasks drawn uniformly" if s["tasks_drawn"] else ""),
           f"peak (best model per task) = {s['peak']:.4f}", "",
           report.format_table({"server": s}), "",
           f"send lag s: p50 {f(s['send_lag_p50'])}  p99 {f(s['send_lag_p99'])}  "
           f"max {f(s['send_lag_max'])}   offered {f(s['offered_rate'], '.2f')} req/s, sent "
           f"{f(s['achieved_send_rate'], '.2f')} req/s, served {f(s['served_throughput'], '.2f')} "
           f"req/s over {s['wall_s']:.1f} s",
           f"ttft s: p50 {f(s['ttft_p50'])}  p99 {f(s['ttft_p99'])}   tpot s: p50 "
           f"{f(s['tpot_p50'])}  p99 {f(s['tpot_p99'])}   client latency s: p50 "
           f"{f(s['client_latency_p50'])}  p99 {f(s['client_latency_p99'])}"]
  for name, m in s["models"].items():
    lines.append(f"  {name}: {m['requests']} requests ({m['served']} served, {m['rejected']} "
                 f"rejected), avail {f(m['availability'])}, utility {f(m['mean_utility'])}, "
                 f"p50 latency {f(m['latency_p50'])} s")
  for text, count in s["error_examples"].items():
    lines.append(f"  error x{count}: {text}")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the whole run


def check_url(url: str) -> str:
  """`url` without a trailing slash; ValueError naming --url unless it is http(s)://HOST[:PORT]."""
  parsed = urllib.parse.urlparse(url or "")
  if parsed.scheme not in ("http", "https") or not parsed.hostname:
    raise ValueError(f"--url={url!r}: expected http://HOST:PORT (the bes server)")
  try:
    parsed.port
  except ValueError as e:
    raise ValueError(f"--url={url!r}: {e}") from None
  return url.rstrip("/")


def fetch_deployment(url: str, timeout_s: float = 10.0) -> Deployment:
  """Checks `GET /health` is 200 (every engine warm) and reads `GET /bes/deployment`;
  ValueError (one line) when the server is unreachable, not ready or answers nonsense."""
  import httpx  # pylint: disable=g-import-not-at-top
  try:
    with httpx.Client(timeout=timeout_s) as client:
      health = client.get(f"{url}/health")
      if health.status_code != 200:
        raise ValueError(f"{url}/health: server not ready (HTTP {health.status_code}: "
                         f"{health.text[:200]})")
      response = client.get(f"{url}/bes/deployment")
  except httpx.HTTPError as e:
    raise ValueError(f"--url={url}: cannot reach the server ({type(e).__name__}: {e})") from None
  if response.status_code != 200:
    raise ValueError(f"{url}/bes/deployment: HTTP {response.status_code}: {response.text[:200]}")
  try:
    payload = response.json()
  except ValueError:
    raise ValueError(f"{url}/bes/deployment: response is not JSON: {response.text[:200]!r}") from None
  return parse_deployment(payload, f"{url}/bes/deployment")


def run_loadgen(url: str, trace_path: str, out: str, *, time_scale: float | None = None,
                rate: float | None = None, num_requests: int | None = None, seed: int = 0,
                concurrency_limit: int = 0, timeout_s: float = 600.0, progress: bool = True,
                command: str = "", log: Callable[[str], None] = print) -> dict:
  """The whole run: checks (URL, output directory, flags, server ready), the schedule,
  replay, and the files in `out` (requests.csv first, then outcomes.csv,
  requests_detail.csv, metrics.json, table.txt). Returns metrics.json's dict."""
  url = check_url(url)
  if time_scale is not None and rate is not None:
    raise ValueError("--time_scale and --rate: give at most one (a scale of the trace's times "
                     "or a target mean rate)")
  if rate is not None and not (math.isfinite(rate) and rate > 0):
    raise ValueError(f"--rate: expected a number > 0 requests/s, got {rate!r}")
  if time_scale is not None and not (math.isfinite(time_scale) and time_scale > 0):
    raise ValueError(f"--time_scale: expected a number > 0, got {time_scale!r}")
  if not os.path.isfile(trace_path):
    raise ValueError(f"--trace={trace_path}: no such file")
  out = io_util.check_writable_dir(out, "--out")
  deployment = fetch_deployment(url)
  trace = load_trace_csv(trace_path, deployment.tasks)
  schedule = build_schedule(trace, deployment, time_scale=time_scale, rate=rate,
                            num_requests=num_requests, seed=seed)
  io_util.write_text(out, "requests.csv", requests_csv(schedule, deployment.tasks))
  log(f"{len(schedule)} requests over {schedule.arrival_s[-1]:.1f} s to {url} "
      f"({schedule.num_clipped} clipped to {deployment.max_context} tokens)")
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(schedule), unit="req", mininterval=2.0, smoothing=0.1)
  counts = {"rejected": 0, "error": 0, "served": 0}

  def on_done(row):
    counts[row["kind"]] += 1
    if bar is not None:
      bar.update(1)
      bar.set_postfix(rejected=counts["rejected"], errors=counts["error"], refresh=False)
  try:
    rows = asyncio.run(replay(url, schedule, deployment, seed=seed,
                              concurrency_limit=concurrency_limit, timeout_s=timeout_s,
                              on_done=on_done))
  finally:
    if bar is not None:
      bar.close()
  summary = aggregate(rows, schedule, deployment)
  summary.update(url=url, trace=trace_path, seed=seed, time_scale=time_scale, rate=rate,
                 concurrency_limit=concurrency_limit, max_context=deployment.max_context,
                 miss_penalty=deployment.miss_penalty, profile=deployment.profile.name)
  io_util.write_text(out, "outcomes.csv", report.outcomes_csv(outcomes_of(rows)))
  io_util.write_text(out, "requests_detail.csv", detail_csv(rows))
  io_util.write_text(out, "metrics.json", json.dumps(summary, indent=2, allow_nan=False))
  text = format_summary(summary, url)
  io_util.write_text(out, "table.txt", (f"$ {command}\n\n" if command else "") + text)
  log(text)
  log(f"wrote {out}")
  return summary
