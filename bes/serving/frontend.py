"""The router front end: one process in front of the engine workers (one per instance).

For each request it builds the `ServingView` the simulator's policies read from its mirror of
every instance (requests sent and not yet admitted = waiting; admitted and not finished =
running; busy when either is non-zero; the last iteration's duration as the estimate of the
current one), asks the policy for a model (`bes.serving.routing.Router`), joins the instance
of that model with the fewest running + waiting requests (ties: lowest index; down
instances skipped) and sends it there, or rejects it when that instance's waiting queue
already holds `queue_capacity` requests (the serving model's rule). Worker events (tokens,
completions, failures) arrive on reader threads and are marshalled into the asyncio loop.

Every request ends with an outcome, appended to `out/outcomes.csv` as it ends (the simulator's
schema, then time to first token, time per output token, queue time, the policy's predicted
latency, the decision time, HTTP status and error); see `OUTCOME_FIELDS`.

Faults: a worker that exits, breaks its pipe or hangs (work outstanding and no iteration for
`hang_timeout_s(model)`) is reported by its `WorkerHandle`; its running and queued requests end with
an error outcome (HTTP 503), its instance is masked (a policy's choice of a model with no
live instance falls to the best live model for the task) and the worker is restarted.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, Callable

import numpy as np

from bes.experiment.setup import Setup
from bes.serving import config as serve_config_lib
from bes.serving import protocol, routing
from bes.serving.config import ServeConfig
from bes.serving.worker import WorkerHandle, WorkerSpec

log = logging.getLogger("bes.serving")

OUTCOME_FIELDS = ("id", "arrival", "task", "model", "instance", "latency", "on_time", "rejected",
                  "utility", "ttft", "tpot", "queue", "predicted", "decision_us", "status",
                  "prompt_tokens", "completion_tokens", "error")


class ServingError(Exception):
  """A request the runtime cannot serve: HTTP `status` and a one-line message."""

  def __init__(self, status: int, message: str, kind: str, request: "Request | None" = None):
    super().__init__(message)
    self.status, self.kind, self.request = status, kind, request


@dataclasses.dataclass
class Request:
  """One request in the runtime (times are monotonic seconds)."""
  rid: int
  task: int
  tokens: list
  max_tokens: int
  min_tokens: int = 0
  ignore_eos: bool = False
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int = 0
  deadline_s: float | None = None
  pinned: int | None = None           # a model index the client pinned, else routed
  arrival: float = 0.0
  model: int = -1
  instance: int = -1
  predicted: float | None = None
  decision_us: float = 0.0
  admitted_at: float | None = None
  first_token_at: float | None = None
  done_at: float | None = None
  finish_reason: str | None = None
  output: list = dataclasses.field(default_factory=list)
  events: asyncio.Queue | None = None
  outcome: dict | None = None


@dataclasses.dataclass
class InstanceMirror:
  """What the front end knows of one instance."""
  index: int
  model: int
  handle: Any
  state: str = "starting"            # starting | ready | down
  waiting: dict = dataclasses.field(default_factory=dict)   # rid -> Request, FIFO
  running: dict = dataclasses.field(default_factory=dict)
  iter_start: float = 0.0
  last_iter_s: float = 0.0
  restarts: int = 0
  last_error: str = ""

  @property
  def load(self) -> int:
    return len(self.waiting) + len(self.running)

  @property
  def up(self) -> bool:
    return self.state == "ready"


class Frontend:
  """Routes requests to engine workers and accounts for every one (module docstring)."""

  def __init__(self, setup: Setup, serve: ServeConfig, policy, *, model_vocab: int,
               metrics=None, make_handle: Callable | None = None):
    self.setup, self.serve, self.profile = setup, serve, setup.profile
    self.serving = setup.serving
    self.router = routing.Router(policy, len(self.profile.tasks), seed=setup.seed)
    self.model_vocab = model_vocab
    self.metrics = metrics
    self.quality = np.asarray([[m.quality[t] for t in self.profile.tasks]
                               for m in self.profile.models], np.float64)
    self.deadline_s = np.asarray(self.serving.deadline_us(len(self.profile.tasks))) / 1e6
    self.instances: list[InstanceMirror] = []
    self.by_model: list[list[InstanceMirror]] = [[] for _ in self.profile.models]
    self.requests: dict[int, Request] = {}
    self.loop: asyncio.AbstractEventLoop | None = None
    self.t0 = time.monotonic()
    self._next_rid, self._index, self._last_arrival, self._ema_gap = 0, 0, None, -1.0
    self.draining = False
    self._ready_event: asyncio.Event | None = None
    self._outcomes_file = None
    self.counts = {"ok": 0, "rejected": 0, "error": 0}
    make_handle = make_handle or (lambda spec, cb: WorkerHandle(
        spec, cb, hang_timeout_s=self.hang_timeout_s(spec.model)))
    k = 0
    for m, (mp, ms) in enumerate(zip(self.profile.models, serve.models)):
      for _ in range(mp.instances):
        spec = WorkerSpec(instance=k, model=mp.name, config=ms.config, checkpoint=ms.checkpoint,
                          seed=setup.seed + k, dtype=serve.dtype, max_batch=mp.max_batch,
                          max_len=serve.max_len, queue_capacity=self.serving.queue_capacity,
                          buckets=None, **serve_config_lib.worker_placement(serve.placements[k]))
        mirror = InstanceMirror(index=k, model=m, handle=None)
        mirror.handle = make_handle(spec, self._threadsafe(k))
        self.instances.append(mirror)
        self.by_model[m].append(mirror)
        k += 1

  def hang_timeout_s(self, model: str) -> float:
    """Seconds without an iteration, work outstanding, after which `model`'s worker is
    declared hung: config.serve.hang_timeout_s, or twice the longest iteration the profile
    predicts for it (a full batch admitted with prompts of max_len - 1 tokens) if longer, so
    a slow model's legitimate iteration is never taken for a hang."""
    m = self.profile.models[self.profile.model_index(model)]
    longest = (max(m.decode_step_s) + m.prefill_s_fixed
               + m.prefill_s_per_token * m.max_batch * (self.serve.max_len - 1))
    return max(self.serve.hang_timeout_s, 2.0 * longest)

  # ------------------------------------------------------------------------- lifecycle
  def start(self) -> None:
    """Opens the outcome log and starts every worker (on the running loop); they warm up in
    the background (`ready`, `wait_ready`)."""
    self.loop = asyncio.get_running_loop()
    self._ready_event = asyncio.Event()
    os.makedirs(self.serve.out, exist_ok=True)
    self._outcomes_file = open(os.path.join(self.serve.out, "outcomes.csv"), "w",
                               encoding="utf-8")
    self._outcomes_file.write(",".join(OUTCOME_FIELDS) + "\n")
    self._outcomes_file.flush()
    for inst in self.instances:
      inst.handle.start()

  async def wait_ready(self, timeout_s: float = 600.0) -> None:
    """Returns once every worker is warm (raises RuntimeError after `timeout_s`)."""
    try:
      await asyncio.wait_for(self._ready_event.wait(), timeout_s)
    except asyncio.TimeoutError:
      raise RuntimeError(f"engine workers not warm after {timeout_s:.0f} s: "
                         f"{self.engine_states()}") from None

  @property
  def ready(self) -> bool:
    return all(i.up for i in self.instances)

  def engine_states(self) -> list[dict]:
    return [dict(instance=i.index, model=self.profile.models[i.model].name, state=i.state,
                 running=len(i.running), waiting=len(i.waiting), restarts=i.restarts,
                 pid=i.handle.pid, last_error=i.last_error) for i in self.instances]

  async def drain(self, timeout_s: float = 600.0) -> None:
    """Stops accepting, waits for every accepted request to end, stops the workers."""
    self.draining = True
    deadline = time.monotonic() + timeout_s
    while self.requests and time.monotonic() < deadline:
      await asyncio.sleep(0.02)
    for inst in self.instances:
      try:
        await asyncio.to_thread(inst.handle.shutdown, drain=True,
                                timeout_s=max(deadline - time.monotonic(), 1.0))
      except Exception as e:  # pylint: disable=broad-except
        log.warning("instance %d: shutdown: %s", inst.index, e)
    for rid in list(self.requests):
      self._fail(self.requests[rid], 503, "server shut down before the request finished")
    if self._outcomes_file:
      self._outcomes_file.close()
      self._outcomes_file = None

  # ------------------------------------------------------------------------- routing
  def model_index(self, name: str) -> int:
    names = [m.name for m in self.profile.models]
    if name not in names:
      raise ServingError(400, f"model: expected 'auto' or one of {names}, got {name!r}",
                         "invalid_request_error")
    return names.index(name)

  def _view(self, req: Request, now: float):
    load, target, busy, running, waiting, remaining = [], [], [], [], [], []
    cap = self.serving.queue_capacity
    for m, insts in enumerate(self.by_model):
      big_b = self.profile.models[m].max_batch
      live = [i for i in insts if i.up]
      if not live:                                   # masked: looks full (rejects)
        load.append(np.float32(1e3)); target.append(0); busy.append(True)
        running.append(big_b); waiting.append(cap); remaining.append(0.0)
        continue
      tgt = min(live, key=lambda i: (i.load, i.index))
      load.append(sum(i.load for i in insts) / (len(insts) * big_b))
      target.append(tgt.index - insts[0].index)
      is_busy = tgt.load > 0
      busy.append(is_busy)
      running.append(len(tgt.running))
      waiting.append(len(tgt.waiting))
      remaining.append(max(0.0, tgt.last_iter_s - (now - tgt.iter_start)) * 1e6
                       if is_busy else 0.0)
    rate = 0.0 if self._ema_gap < 0 else 1.0 / max(self._ema_gap, 1e-6)
    return routing.runtime_view(
        task=req.task, prompt_len=len(req.tokens), index=self._index,
        now_us=int((now - self.t0) * 1e6), rate=rate, load=load, target=target, busy=busy,
        running=running, waiting=waiting, remaining_us=remaining,
        instances=[len(i) for i in self.by_model],
        max_batch=[m.max_batch for m in self.profile.models], queue_capacity=cap)

  def submit(self, req: Request) -> Request:
    """Routes and sends `req` (must run on the loop); raises ServingError on rejection."""
    if self.draining:
      raise ServingError(503, "server is draining (shutting down): not accepting requests",
                         "unavailable")
    if self._ready_event is None or not self._ready_event.is_set():
      raise ServingError(503, f"engines are warming up: {self.engine_states()}", "unavailable")
    t_start = time.perf_counter()
    now = time.monotonic()
    req.rid, self._next_rid = self._next_rid, self._next_rid + 1
    req.arrival = now
    req.events = asyncio.Queue()
    if self._last_arrival is not None:
      gap = now - self._last_arrival
      alpha = self.setup.rate_ema_alpha
      self._ema_gap = gap if self._ema_gap < 0 else (1 - alpha) * self._ema_gap + alpha * gap
    self._last_arrival = now
    if req.pinned is not None:
      req.model = req.pinned
    else:
      req.model, req.predicted = self.router.decide(self._view(req, now))
      if self.metrics:
        self.metrics.decision(self.profile.models[req.model].name)
    self._index += 1
    live = [i for i in self.by_model[req.model] if i.up]
    if not live and req.pinned is None:
      live_models = [m for m, insts in enumerate(self.by_model) if any(i.up for i in insts)]
      if live_models:
        req.model = max(live_models, key=lambda m: (self.quality[m, req.task], -m))
        live = [i for i in self.by_model[req.model] if i.up]
    if not live:
      req.instance = self.by_model[req.model][0].index
      self._end(req, 503, "error", f"no live engine for model "
                f"{self.profile.models[req.model].name} (restarting)")
      raise ServingError(503, req.outcome["error"], "unavailable", req)
    inst = min(live, key=lambda i: (i.load, i.index))
    req.instance = inst.index
    if inst.load > 0 and len(inst.waiting) >= self.serving.queue_capacity:
      self._end(req, 429, "rejected", f"instance {inst.index} of model "
                f"{self.profile.models[req.model].name}: waiting queue full "
                f"({self.serving.queue_capacity} requests)")
      raise ServingError(429, req.outcome["error"], "rejected", req)
    msg = protocol.Submit(rid=req.rid, tokens=tuple(int(t) for t in req.tokens),
                          max_tokens=req.max_tokens, min_tokens=req.min_tokens,
                          ignore_eos=req.ignore_eos, temperature=req.temperature,
                          top_p=req.top_p, seed=req.seed)
    try:
      inst.handle.submit(msg)
    except Exception as e:  # pylint: disable=broad-except
      self._end(req, 503, "error", f"instance {inst.index}: cannot send: {e}")
      raise ServingError(503, req.outcome["error"], "unavailable", req) from None
    if inst.load == 0:
      inst.iter_start = now
    inst.waiting[req.rid] = req
    self.requests[req.rid] = req
    req.decision_us = (time.perf_counter() - t_start) * 1e6
    if self.metrics:
      self.metrics.queues(self)
    return req

  # ------------------------------------------------------------------------- events
  def _threadsafe(self, instance: int):
    def on_event(msg):
      loop = self.loop
      if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(self._on_event, instance, msg)
    return on_event

  def _on_event(self, instance: int, msg) -> None:
    inst = self.instances[instance]
    if isinstance(msg, protocol.Ready):
      inst.state = "ready"
      log.info("instance %d (%s) warm in %.1f s", instance,
               self.profile.models[inst.model].name, msg.warmup_s)
      if self.ready and self._ready_event is not None:
        if not self._ready_event.is_set():
          self.t0 = time.monotonic()    # outcome arrival times count from the first ready
        self._ready_event.set()
    elif isinstance(msg, protocol.Iteration):
      self._on_iteration(inst, msg)
    elif isinstance(msg, protocol.Rejected):
      req = self.requests.get(msg.rid)
      if req is not None:
        inst.waiting.pop(msg.rid, None)
        self._fail(req, 500, f"engine refused the request: {msg.reason}")
    elif isinstance(msg, protocol.Fatal):
      inst.last_error = msg.error
      log.error("instance %d: fatal: %s", instance, msg.error)
    elif isinstance(msg, protocol.WorkerDown):
      self._on_down(inst, msg)
    if self.metrics:
      self.metrics.queues(self)

  def _on_iteration(self, inst: InstanceMirror, msg: protocol.Iteration) -> None:
    for rid in msg.admitted_rids:
      req = inst.waiting.pop(rid, None)
      if req is not None:
        req.admitted_at = msg.start
        inst.running[rid] = req
    for rid, token, _ in msg.tokens:
      req = inst.running.get(rid)
      if req is not None:
        if req.first_token_at is None:
          req.first_token_at = msg.end
        req.output.append(int(token))
        req.events.put_nowait(("token", int(token)))
    for rid, reason in msg.completed:
      req = inst.running.pop(rid, None)
      if req is not None:
        req.done_at, req.finish_reason = msg.end, reason
        self._end(req, 200, "ok", "")
        req.events.put_nowait(("done", reason))
    inst.last_iter_s = msg.end - msg.start
    inst.iter_start = msg.end

  def _on_down(self, inst: InstanceMirror, msg) -> None:
    inst.state, inst.last_error = "down", msg.reason
    if self.draining and not msg.rids:
      log.info("instance %d stopped: %s", inst.index, msg.reason)
      return
    log.error("instance %d (%s) down: %s; restarting", inst.index,
              self.profile.models[inst.model].name, msg.reason)
    for rid in list(inst.waiting) + list(inst.running):
      req = self.requests.get(rid)
      if req is not None:
        self._fail(req, 503, f"engine worker of instance {inst.index} failed: {msg.reason}")
    inst.waiting.clear()
    inst.running.clear()
    if not self.draining:
      inst.state, inst.restarts = "starting", inst.restarts + 1
      self.loop.run_in_executor(None, inst.handle.restart)

  def _fail(self, req: Request, status: int, message: str) -> None:
    self._end(req, status, "error", message)
    req.events.put_nowait(("error", status, message))

  # ------------------------------------------------------------------------- outcomes
  def _end(self, req: Request, status: int, kind: str, error: str) -> None:
    """Records the outcome of `req` once (the simulator's utility rule)."""
    if req.outcome is not None:
      return
    self.requests.pop(req.rid, None)
    m, t = req.model, req.task
    n = len(req.output)
    budget = (req.deadline_s if req.deadline_s is not None
              else self.deadline_s[t] + self.serving.deadline_per_token_s * max(n, 1))
    latency = (req.done_at - req.arrival) if kind == "ok" else float("inf")
    on_time = kind == "ok" and latency <= budget
    penalty = -self.serving.miss_penalty
    if on_time:
      utility = self.quality[m, t]
    elif kind == "ok" and self.serving.reward == "soft":
      utility = self.quality[m, t] * max(0.0, 1.0 - (latency - budget) / self.serving.soft_window_s)
    else:
      utility = penalty
    ttft = None if req.first_token_at is None else req.first_token_at - req.arrival
    tpot = ((req.done_at - req.first_token_at) / (n - 1)
            if kind == "ok" and n > 1 and req.first_token_at is not None else None)
    queue = None if req.admitted_at is None else req.admitted_at - req.arrival
    req.outcome = dict(
        id=req.rid, arrival=req.arrival - self.t0, task=t, model=m, instance=req.instance,
        latency=latency, on_time=int(on_time), rejected=int(kind == "rejected"),
        utility=float(utility), ttft=ttft, tpot=tpot, queue=queue, predicted=req.predicted,
        decision_us=req.decision_us, status=status, prompt_tokens=len(req.tokens),
        completion_tokens=n, error=error.replace(",", ";").replace("\n", " "),
        budget=budget, kind=kind)
    self.counts[kind] += 1
    if self._outcomes_file is not None:
      fmt = lambda v: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))
      self._outcomes_file.write(",".join(fmt(req.outcome[k]) for k in OUTCOME_FIELDS) + "\n")
      self._outcomes_file.flush()
    if self.metrics:
      self.metrics.outcome(self.profile.models[m].name, kind, req.outcome)
