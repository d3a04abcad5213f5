"""Serving-runtime benchmarks (`launch/benchmark_serving.py`): routing overhead and served
token throughput against the engine alone.

Parts:
  decision    in process: a `Frontend` over stand-in workers (each a real multiprocessing pipe
              drained by a thread, and an event tick that admits and finishes every request
              10 ms later), `Frontend.submit` paced at `rate` requests/s per policy; each
              request's own `decision_us` (view + policy call + send to the worker).
  http        a real server subprocess (`launch/serve.py`) on a tiny two-model deployment with
              a large queue: an open-loop burst of tiny requests (max_tokens 1) at `rate`;
              server-side `bes.decision_us`, server-side latency (`bes.latency_s`) and client
              latency, achieved send and completion rates.
  throughput  one model shape pinned to core 0: `EngineLoop` in a pinned child process (the
              worker's own pinning), closed loop with `concurrency` requests in flight (a full
              batch plus a waiting queue), tokens/s over a window; then the same load through
              the server (`model: <name>`, `ignore_eos`, fixed `max_tokens`), tokens/s from
              completions over the same length of window. Reports served / standalone.

The pure pieces (percentiles, window token counts, the burst summary, the markdown) are
tested in tests/test_benchmark_serving.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from typing import Sequence

import numpy as np

from bes.serving import local

TASKS = ["arc_easy", "piqa"]
TINY_SHAPE = {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 128}
# configs/serve/cpu.py's cpu-small
SMALL_SHAPE = {"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 4,
               "num_attention_heads": 4, "ffn_dim": 1024, "max_position_embeddings": 512}
FIRST_TOKEN = 4


# ------------------------------------------------------------------------------ pure pieces
def percentiles(values: Sequence[float]) -> dict:
  """n, mean, p50, p90, p99, max of `values` (NaN-free; None for each stat when empty)."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return dict(n=0, mean=None, p50=None, p90=None, p99=None, max=None)
  return dict(n=int(v.size), mean=float(v.mean()), p50=float(np.percentile(v, 50)),
              p90=float(np.percentile(v, 90)), p99=float(np.percentile(v, 99)),
              max=float(v.max()))


def window_tokens(spans: Sequence[tuple[float, float, int]], t0: float, t1: float) -> float:
  """Tokens produced in [t0, t1] by `spans` of (start, end, tokens), each span's tokens spread
  uniformly over it (a zero-length span counts whole when its end is in the window)."""
  if t1 <= t0:
    raise ValueError(f"window_tokens: empty window [{t0}, {t1}]")
  total = 0.0
  for start, end, n in spans:
    if end <= start:
      total += n if t0 <= end <= t1 else 0
      continue
    overlap = max(0.0, min(end, t1) - max(start, t0))
    total += n * overlap / (end - start)
  return total


def summarize_burst(rows: Sequence[dict]) -> dict:
  """The HTTP burst's summary from per-request rows (status, sent_s, done_s, client_s,
  decision_us, server_latency_s, queue_s)."""
  ok = [r for r in rows if r.get("status") == 200]
  sent = [r["sent_s"] for r in rows]
  done = [r["done_s"] for r in ok]
  span = (max(sent) - min(sent)) if len(sent) > 1 else 0.0
  done_span = (max(done) - min(sent)) if done else 0.0
  statuses: dict = {}
  for r in rows:
    statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
  outside = [r["client_s"] - r["server_latency_s"] for r in ok
             if r.get("server_latency_s") is not None]
  return dict(
      requests=len(rows), ok=len(ok), statuses=statuses,
      achieved_send_rate=(len(sent) - 1) / span if span > 0 else None,
      completion_rate=len(ok) / done_span if done_span > 0 else None,
      send_lag_ms=percentiles([r["send_lag_s"] * 1e3 for r in rows if "send_lag_s" in r]),
      decision_us=percentiles([r.get("decision_us") for r in ok]),
      client_latency_ms=percentiles([r["client_s"] * 1e3 for r in ok]),
      server_latency_ms=percentiles([r["server_latency_s"] * 1e3 for r in ok
                                     if r.get("server_latency_s") is not None]),
      server_queue_ms=percentiles([r["queue_s"] * 1e3 for r in ok
                                   if r.get("queue_s") is not None]),
      outside_server_ms=percentiles([x * 1e3 for x in outside]))


def proc_cpu_s(pid: int | str = "self") -> float:
  """User + system CPU seconds of process `pid` (all its threads), from /proc."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_affinities(pid: int) -> dict[str, int]:
  """{Cpus_allowed_list: number of threads} over the threads of process `pid`."""
  out: dict[str, int] = {}
  for task in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{task}/status") as f:
        allowed = next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list"))
    except (OSError, StopIteration):
      continue
    out[allowed] = out.get(allowed, 0) + 1
  return out


def core_jiffies(core: int) -> tuple[int, int]:
  """(busy, total) jiffies of CPU `core` since boot, from /proc/stat."""
  with open("/proc/stat") as f:
    for line in f:
      if line.startswith(f"cpu{core} "):
        v = [int(x) for x in line.split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)
  raise ValueError(f"no cpu{core} in /proc/stat")


def busy_fraction(a: tuple[int, int], b: tuple[int, int]) -> float:
  """The busy fraction of a core between two `core_jiffies` samples."""
  return (b[0] - a[0]) / max(b[1] - a[1], 1)


def check_positive(value, flag: str, integer: bool = False):
  """`value` if it is a number > 0 (an int when `integer`), else ValueError naming --flag."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
  if integer:
    ok = ok and float(value).is_integer()
  if not ok:
    raise ValueError(f"--{flag}: expected {'an integer' if integer else 'a number'} > 0, "
                     f"got {value!r}")
  return value


# ------------------------------------------------------------------------------ deployments
def profile_dict(models: Sequence[tuple[str, int]]) -> dict:
  """A hand-written profile of `models` [(name, max_batch)] (latencies are not measured: the
  router's view uses them only for deadline_greedy's predictions)."""
  return {"name": "serving-benchmark", "provenance": "bes/serving/benchmark.py (hand-written)",
          "tasks": TASKS,
          "models": [{"name": name, "instances": 1, "gpus_per_instance": 1, "max_batch": b,
                      "decode_step_s": [0.002 * (i + 1)] * b, "prefill_s_fixed": 0.002 * (i + 1),
                      "prefill_s_per_token": 1e-5,
                      "quality": {"arc_easy": 0.4 + 0.1 * i, "piqa": 0.6 + 0.1 * i}}
                     for i, (name, b) in enumerate(models)]}


def prompt(rng: np.random.Generator, length: int, vocab: int) -> list[int]:
  return [int(t) for t in rng.integers(FIRST_TOKEN, vocab, length)]


# ------------------------------------------------------------------------------ part: decision
class _PipeHandle:
  """A stand-in worker handle: `submit` pickles the message into a real pipe (as
  `WorkerHandle.submit` does, under a lock) and a thread drains it; `tick()` admits every
  request sent before the previous tick and finishes it one tick later (one token)."""

  def __init__(self, spec, on_event):
    self.spec, self.on_event = spec, on_event
    self._lock = threading.Lock()
    self._recv, self._send = multiprocessing.Pipe(duplex=False)
    self._pending, self._running = [], []
    self.pid = None
    threading.Thread(target=self._drain, daemon=True).start()

  def _drain(self):
    try:
      while True:
        self._recv.recv()
    except (EOFError, OSError):
      pass

  def start(self):
    from bes.serving import protocol  # pylint: disable=import-outside-toplevel
    self.on_event(protocol.Ready(instance=self.spec.instance, warmup_s=0.0))

  def submit(self, msg):
    with self._lock:
      self._send.send(msg)
      self._pending.append(msg.rid)

  def tick(self, now: float, last: float):
    from bes.serving import protocol  # pylint: disable=import-outside-toplevel
    admitted, self._pending = tuple(self._pending), []
    finished, self._running = tuple(self._running), list(admitted)
    if admitted or finished:
      self.on_event(protocol.Iteration(
          instance=self.spec.instance, start=last, end=now, admitted_rids=admitted,
          tokens=tuple((r, 5, 0.0) for r in finished),
          completed=tuple((r, protocol.LENGTH) for r in finished),
          running=len(admitted), waiting=0))

  def shutdown(self, **_):
    self._send.close()


def decision_part(config, policies: Sequence[str], *, rate: float, requests: int,
                  workdir: str = "", out_dir: str, log=print) -> list[dict]:
  """`Frontend.submit` timings per policy (module docstring)."""
  from bes.experiment.setup import Setup  # pylint: disable=import-outside-toplevel
  from bes.serving import config as serve_config_lib, prom, routing  # pylint: disable=import-outside-toplevel
  from bes.serving.frontend import Frontend, Request  # pylint: disable=import-outside-toplevel
  setup = Setup.from_config(config)
  serve = serve_config_lib.serve_config(config, setup.profile)
  rows = []
  for spec in policies:
    policy = routing.load_policy(spec, setup, workdir if spec == "learned" else "")
    serve_p = dataclasses.replace(serve, out=os.path.join(out_dir, spec.replace(":", "_")))
    handles = []

    def make(s, cb):
      handles.append(_PipeHandle(s, cb))
      return handles[-1]

    fe = Frontend(setup, serve_p, policy, model_vocab=512, metrics=prom.ServingMetrics(),
                  make_handle=make)
    rng = np.random.default_rng(0)
    parts = {"view": [], "policy": []}

    def timed_call(fn, key):
      def wrapper(*a, **k):
        t = time.perf_counter()
        try:
          return fn(*a, **k)
        finally:
          parts[key].append((time.perf_counter() - t) * 1e6)
      return wrapper

    fe._view = timed_call(fe._view, "view")                   # pylint: disable=protected-access
    fe.router.decide = timed_call(fe.router.decide, "policy")

    async def run():
      fe.start()
      await fe.wait_ready(10)
      stop = False

      async def ticker():
        last = time.monotonic()
        while not stop:
          await asyncio.sleep(0.01)
          now = time.monotonic()
          for h in handles:
            h.tick(now, last)
          last = now

      tick_task = asyncio.create_task(ticker())
      # The first decisions compile the router: 50 untimed warm-up submits, then the paced run.
      def one():
        req = Request(rid=-1, task=int(rng.integers(len(TASKS))),
                      tokens=prompt(rng, int(rng.integers(4, 17)), 512), max_tokens=1)
        fe.submit(req)
        return req.decision_us

      for _ in range(50):
        one()
        await asyncio.sleep(0.002)
      for v in parts.values():
        v.clear()
      timed, lags = [], []
      t0 = time.monotonic()
      for i in range(requests):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
          await asyncio.sleep(delay)
        else:
          lags.append(-delay)
        timed.append(one())
      elapsed = (time.monotonic() - t0) * requests / max(requests - 1, 1)
      await asyncio.sleep(0.05)
      stop = True
      await tick_task
      await fe.drain(5)
      return timed, elapsed, lags

    t_start = time.perf_counter()
    timed, elapsed, lags = asyncio.run(run())
    row = dict(policy=spec, requests=len(timed), target_rate=rate,
               achieved_rate=len(timed) / elapsed, decision_us=percentiles(timed),
               view_us=percentiles(parts["view"]), policy_us=percentiles(parts["policy"]),
               rest_us=percentiles([d - v - p for d, v, p in zip(timed, parts["view"],
                                                                 parts["policy"])]),
               late_sends=len(lags), counts=dict(fe.counts),
               wall_s=time.perf_counter() - t_start)
    log(f"  decision {spec}: p50 {row['decision_us']['p50']:.0f} us, p99 "
        f"{row['decision_us']['p99']:.0f} us, {row['achieved_rate']:.0f} req/s")
    rows.append(row)
  return rows


def train_tiny_router(config, workdir: str, log=print) -> float:
  """A few-iteration training run of the router on `config`'s deployment (the network's
  shape is the config's; its weights barely trained: decision cost does not depend on them).
  Returns seconds."""
  from bes import config_cli  # pylint: disable=import-outside-toplevel
  from bes.experiment import train as train_lib  # pylint: disable=import-outside-toplevel
  from bes.experiment.setup import Setup  # pylint: disable=import-outside-toplevel
  cfg = config_cli.apply_overrides(config, {
      "dqn.num_iterations": 20, "train.chunk_iterations": 10, "dqn.learning_starts": 5,
      "dqn.batch_size": 16, "dqn.replay_capacity": 64, "dqn.num_envs": 4,
      "env.episode_len": 16, "train.eval_episode_len": 16, "train.eval_episodes": 1,
      "train.tune_heuristics": False, "num_seeds": 1})
  t0 = time.perf_counter()
  train_lib.train(Setup.from_config(cfg), workdir, log=lambda m: log(f"  [train] {m}"))
  return time.perf_counter() - t0


# ------------------------------------------------------------------------------ part: http
async def http_burst(url: str, *, rate: float, requests: int, model: str = "auto",
                     seed: int = 0, vocab: int = 512, timeout_s: float = 300.0) -> list[dict]:
  """Open loop: request i (a 4..16-token prompt, max_tokens 1) is sent at i / rate s."""
  import httpx  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  bodies = [{"model": model, "prompt": prompt(rng, int(rng.integers(4, 17)), vocab),
             "max_tokens": 1, "temperature": 0.0, "ignore_eos": True,
             "task": TASKS[i % len(TASKS)]} for i in range(requests)]
  limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
  async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) as client:
    endpoint = url + "/v1/completions"
    t0 = time.monotonic()

    async def one(i: int) -> dict:
      sent = time.monotonic()
      row = dict(id=i, sent_s=sent - t0, send_lag_s=(sent - t0) - i / rate, status=None)
      try:
        r = await client.post(endpoint, json=bodies[i])
        row["status"] = r.status_code
        bes = r.json().get("bes") or {}
        row.update(decision_us=bes.get("decision_us"), server_latency_s=bes.get("latency_s"),
                   queue_s=bes.get("queue_s"))
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = f"{type(e).__name__}: {e}"[:200]
      done = time.monotonic()
      row.update(done_s=done - t0, client_s=done - sent)
      return row

    tasks = []
    for i in range(requests):
      delay = t0 + i / rate - time.monotonic()
      if delay > 0:
        await asyncio.sleep(delay)
      tasks.append(asyncio.create_task(one(i)))
    return list(await asyncio.gather(*tasks))


# ------------------------------------------------------------------------------ part: throughput
def _standalone_child(spec, prompt_len: int, max_tokens: int, concurrency: int,
                      warmup_s: float, window_s: float, conn) -> None:
  """Child process: the worker's pinning, EngineLoop warm, closed loop; sends the result."""
  try:
    from bes.serving import worker  # pylint: disable=import-outside-toplevel
    worker.pin_process(spec)
    from bes.serving import protocol  # pylint: disable=import-outside-toplevel
    loop = worker.build_loop(spec)
    compile_s = loop.warmup()
    rng = np.random.default_rng(0)
    next_rid = 0

    def submit():
      nonlocal next_rid
      loop.submit(protocol.Submit(rid=next_rid, tokens=tuple(prompt(rng, prompt_len,
                                                                    spec.config.vocab_size)),
                                  max_tokens=max_tokens, ignore_eos=True, temperature=0.0))
      next_rid += 1

    for _ in range(concurrency):
      submit()
    t0 = time.monotonic()
    t1, t2 = t0 + warmup_s, t0 + warmup_s + window_s
    spans, batch, marks = [], [], {}
    while True:
      it = loop.step()
      spans.append((it.start, it.end, len(it.tokens)))
      if it.end > t1:
        if not batch:
          marks["start"] = (it.end, proc_cpu_s(), core_jiffies(spec.cpus[0]))
        batch.append(len(it.tokens))
      for _ in it.completed:
        submit()
      if it.end > t2:
        marks["end"] = (it.end, proc_cpu_s(), core_jiffies(spec.cpus[0]))
        break
    (a_t, a_cpu, a_j), (b_t, b_cpu, b_j) = marks["start"], marks["end"]
    tokens = sum(n for _, e, n in spans if a_t < e <= b_t)
    conn.send(dict(tokens_per_s=window_tokens(spans, t1, t2) / window_s, compile_s=compile_s,
                   thread_affinity=thread_affinities(os.getpid()),
                   tokens_per_cpu_s=tokens / max(b_cpu - a_cpu, 1e-9),
                   cpu_share=(b_cpu - a_cpu) / (b_t - a_t),
                   core_busy=busy_fraction(a_j, b_j),
                   iterations=len(spans), mean_tokens_per_iteration=float(np.mean(batch)),
                   requests_started=next_rid))
  except BaseException as e:  # pylint: disable=broad-except
    conn.send(dict(error=f"{type(e).__name__}: {e}"))
  finally:
    conn.close()


def standalone_throughput(spec, *, prompt_len: int, max_tokens: int, concurrency: int,
                          warmup_s: float, window_s: float, env: dict | None = None) -> dict:
  """EngineLoop tokens/s in a child process pinned as the worker (module docstring). The child
  is started in its own session, as the server (and so its workers) is: with the kernel's
  autogroup scheduling a session is a scheduling group, so both get the same treatment."""
  import pickle  # pylint: disable=import-outside-toplevel
  child_env = local.child_env(env)
  args = (spec, prompt_len, max_tokens, concurrency, warmup_s, window_s)
  r = subprocess.run([sys.executable, "-m", "bes.serving.benchmark"], input=pickle.dumps(args),
                     capture_output=True, cwd=str(local.REPO), env=child_env, start_new_session=True,
                     timeout=600)
  try:
    result = json.loads(r.stdout.decode().strip().splitlines()[-1])
  except (ValueError, IndexError):
    result = dict(error=f"standalone child exited {r.returncode}: "
                        f"{r.stderr.decode()[-1500:]}")
  if "error" in result:
    raise RuntimeError(f"standalone EngineLoop: {result['error']}")
  return result


class _StdoutConn:
  """The child's result channel: one JSON line on stdout."""

  def send(self, obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

  def close(self):
    pass


async def served_throughput(url: str, *, model: str, prompt_len: int, max_tokens: int,
                            concurrency: int, warmup_s: float, window_s: float,
                            vocab: int, worker_pid: int, server_pid: int, core: int = 0) -> dict:
  """Closed loop over HTTP: `concurrency` clients each sending one request after another
  (pinned to `model`, ignore_eos, max_tokens fixed); tokens/s over the window from the
  completions (each completion's tokens spread over [done - (latency - ttft), done])."""
  import httpx  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  spans, statuses, marks = [], {}, {}
  t0 = time.monotonic()
  t_end = t0 + warmup_s + window_s

  async def sample():
    await asyncio.sleep(warmup_s)
    marks["start"] = (time.monotonic(), proc_cpu_s(worker_pid), core_jiffies(core),
                      proc_cpu_s(server_pid))
    await asyncio.sleep(window_s)
    marks["end"] = (time.monotonic(), proc_cpu_s(worker_pid), core_jiffies(core),
                    proc_cpu_s(server_pid))

  sampler = asyncio.create_task(sample())
  async with httpx.AsyncClient(timeout=httpx.Timeout(300.0),
                               limits=httpx.Limits(max_connections=None)) as client:
    async def worker():
      while time.monotonic() < t_end:
        body = {"model": model, "prompt": prompt(rng, prompt_len, vocab),
                "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
        r = await client.post(url + "/v1/completions", json=body)
        done = time.monotonic()
        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
        if r.status_code == 200:
          d = r.json()
          bes, n = d["bes"], d["usage"]["completion_tokens"]
          spans.append((done - (bes["latency_s"] - bes["ttft_s"]), done, n - 1))
          spans.append((done - bes["latency_s"] + bes["ttft_s"],) * 2 + (1,))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
  await sampler
  affinity = thread_affinities(worker_pid)
  t1 = t0 + warmup_s
  (a_t, a_cpu, a_j, a_srv), (b_t, b_cpu, b_j, b_srv) = marks["start"], marks["end"]
  tokens = window_tokens(spans, a_t, b_t)
  return dict(tokens_per_s=window_tokens(spans, t1, t1 + window_s) / window_s,
              tokens_per_cpu_s=tokens / max(b_cpu - a_cpu, 1e-9),
              cpu_share=(b_cpu - a_cpu) / (b_t - a_t), core_busy=busy_fraction(a_j, b_j),
              server_cpu_share=(b_srv - a_srv) / (b_t - a_t), worker_thread_affinity=affinity,
              completions=len(spans) // 2, statuses=statuses)


def median_runs(runs: Sequence[dict]) -> dict:
  """The median of each numeric key over `runs` (dicts with the same keys)."""
  return {k: float(np.median([r[k] for r in runs])) for k in runs[0]
          if all(isinstance(r.get(k), (int, float)) for r in runs)}


# ------------------------------------------------------------------------------ report
def _f(x, fmt="{:.1f}"):
  return "-" if x is None else fmt.format(x)


def markdown(res: dict) -> str:
  """The results page of `res` (the JSON's dict)."""
  m = res["machine"]
  lines = ["# Serving-runtime benchmarks", "",
           f"Command: `{res['command']}`", "",
           f"Date {res['date']}, jax {m['jax']}, {m['cores']} CPU cores ({m['arch']}), "
           f"Python {m['python']}. Machine note: a shared 2-core CPU with other sessions' "
           f"processes running; load average (1/5/15 min) at the start {m['load_start']}, at "
           f"the end {m['load_end']}. Code: commit {res['git']['commit'][:10]}"
           f"{' (with uncommitted changes)' if res['git']['uncommitted'] else ''}. "
           f"Total wall time {res['wall_s']:.0f} s.", ""]
  if res.get("rendered_note"):
    lines += [f"Note: {res['rendered_note']}.", ""]
  if "decision" in res:
    d = res["decision"]
    lines += ["## 1a. Decision + dispatch per request, in process (target p99 < 1 ms)", "",
              f"`Frontend.submit` paced at {d['rate']:.0f} requests/s for {d['requests']} "
              "requests per policy (after 50 untimed warm-up submits), on the same two-model "
              "tiny deployment as 1b; `decision_us` = view + policy call (one jitted call) + "
              "pickling the Submit into the worker's pipe, as `Frontend.submit` records it. "
              "The workers are stand-ins (a real pipe drained by a thread; a 10 ms tick admits "
              "and finishes requests), so queues stay short and realistic.", "",
              "| policy | requests | achieved req/s | p50 (us) | p90 (us) | p99 (us) | max (us) "
              "| mean (us) | of which view / policy / rest, p50 (us) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
      s = r["decision_us"]
      split = " / ".join(_f((r.get(k) or {}).get("p50"), "{:.0f}")
                         for k in ("view_us", "policy_us", "rest_us"))
      lines.append(f"| {r['policy']} | {r['requests']} | {r['achieved_rate']:.0f} | "
                   f"{s['p50']:.0f} | {s['p90']:.0f} | {s['p99']:.0f} | {s['max']:.0f} | "
                   f"{s['mean']:.0f} | {split} |")
    lines += ["", "'view' = `Frontend._view` (the ServingView from the mirrors), 'policy' = "
              "`Router.decide` (the jitted call and its result to the host), 'rest' = the "
              "remainder of `submit` (instance choice, Submit message, pipe send, bookkeeping)."]
    lines += [""] + [f"* {n}" for n in d.get("notes", [])] + [""]
  if "http" in res:
    h, s = res["http"], res["http"]["summary"]
    lat = lambda k: s[k]
    lines += ["## 1b. Over HTTP: an open-loop burst at "
              f"{h['rate']:.0f} requests/s", "",
              f"A real server (`launch/serve.py`, policy `{h['policy']}`, two tiny random OPT "
              f"models {json.dumps(TINY_SHAPE)} with max_batch {h['max_batch']}, one worker "
              f"process each on cores 0 and 1, queue capacity {h['queue_capacity']}) over "
              f"loopback; {h['requests']} requests of 4..16 prompt tokens and max_tokens 1, sent "
              "open loop by one asyncio httpx client in the benchmark process (which shares the "
              "same 2 cores with the server's main process and both workers). Server ready "
              f"after {h['server_ready_s']:.1f} s.", "",
              f"Statuses {s['statuses']}; achieved send rate {_f(s['achieved_send_rate'], '{:.0f}')}"
              f" req/s (send lag p50 {_f(s['send_lag_ms']['p50'])} ms, p99 "
              f"{_f(s['send_lag_ms']['p99'])} ms); completion rate "
              f"{_f(s['completion_rate'], '{:.0f}')} req/s (all ok requests over first send to "
              "last completion).", "",
              "| quantity | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|"]
    for key, name in (("decision_us", "server `bes.decision_us` (us)"),
                      ("server_queue_ms", "server queue time, arrival to admission (ms)"),
                      ("server_latency_ms", "server latency `bes.latency_s` (ms)"),
                      ("client_latency_ms", "client latency, send to response (ms)"),
                      ("outside_server_ms", "client minus server latency (ms)")):
      q = lat(key)
      lines.append(f"| {name} | {q['n']} | {_f(q['p50'])} | {_f(q['p90'])} | {_f(q['p99'])} "
                   f"| {_f(q['max'])} |")
    lines += [""] + [f"* {n}" for n in h.get("notes", [])] + [""]
  if "throughput" in res:
    t = res["throughput"]
    lines += ["## 2. Served tokens/s vs the engine standalone (target >= 90%)", "",
              f"Model `{t['model']}` (configs/serve/cpu.py's shape {json.dumps(SMALL_SHAPE)}, "
              f"random float32 weights), max_batch {t['max_batch']}, max_len {t['max_len']}, "
              f"pinned to core 0 with single-threaded XLA (the worker's `pin_process`). Load: "
              f"closed loop, {t['concurrency']} requests in flight (a full batch and a waiting "
              f"queue), prompts of {t['prompt_len']} random tokens, greedy, ignore_eos, "
              f"max_tokens {t['max_tokens']}. Tokens/s over a {t['window_s']:.0f} s window "
              f"after {t['warmup_s']:.0f} s of warm-up load, per run. Standalone: `EngineLoop` driven "
              "in a child process started in its own session, as the server is (the kernel "
              "schedules by session: autogroup), tokens of the iterations in the window. Served: the same "
              "load over HTTP to `launch/serve.py` (one worker, policy static, `model` pinned); "
              "each completion's tokens spread over its decode span and counted in the window.",
              "",
              f"{t['repeats']} alternating runs of each (the standalone ones while the server's "
              "worker idles). Other sessions' processes share this machine, so wall-clock "
              "tokens/s moves with their load; two more columns: the model process's own CPU time "
              "(tokens per CPU-second of the EngineLoop process or the server's worker, all "
              "threads) and how busy core 0 was in the window (all processes).", "",
              "| setting | tokens/s | tokens / CPU-s | its CPU share | core 0 busy | detail |",
              "|---|---|---|---|---|---|"]
    runs = [(f"standalone EngineLoop, run {k + 1}", r, "standalone")
            for k, r in enumerate(t["standalone_runs"])]
    runs += [(f"served over HTTP, run {k + 1}", r, "served")
             for k, r in enumerate(t["served_runs"])]
    order = [x for pair in zip(runs[:len(runs) // 2], runs[len(runs) // 2:]) for x in pair]
    for name, r, kind in order:
      if kind == "standalone":
        detail = (f"{r['mean_tokens_per_iteration']:.2f} tokens per iteration, "
                  f"{r['iterations']} iterations")
      else:
        detail = (f"{r['completions']} completions, statuses {r['statuses']}; server main "
                  f"process {r['server_cpu_share']:.0%} of a core")
      lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_cpu_s']:.0f} | "
                   f"{r['cpu_share']:.0%} | {r['core_busy']:.0%} | {detail} |")
    sa, sv = t["standalone"], t["served"]
    lines += [f"| median standalone | {sa['tokens_per_s']:.0f} | {sa['tokens_per_cpu_s']:.0f} "
              "| | | |",
              f"| median served | {sv['tokens_per_s']:.0f} | {sv['tokens_per_cpu_s']:.0f} | | | |",
              f"| **served / standalone (medians)** | **{t['ratio']:.1%}** | "
              f"**{t['ratio_per_cpu_s']:.1%}** | | | |", ""]
    lines += [f"* {n}" for n in t.get("notes", [])] + [""]
  return "\n".join(lines)


if __name__ == "__main__":   # the standalone child (standalone_throughput)
  import pickle  # pylint: disable=import-outside-toplevel
  _standalone_child(*pickle.loads(sys.stdin.buffer.read()), _StdoutConn())
