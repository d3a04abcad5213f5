"""The plain-Python, event-by-event reference simulator of the serving model (the oracle).

A literal implementation of `/work/shared/design/serving-model.md`, written independently
of the jitted environment (`bes.env`) so the two can be tested against each other request
by request. Every instance keeps a FIFO `deque` waiting queue and a running list; time
advances iteration by iteration and every running request produces one token per
iteration (no closed-form skipping). A global heap orders iteration ends; arrivals are
taken in trace order and routed after every iteration end at or before them.

Decisions where the design page is silent (shared with the jitted environment):

* Clock: exact. A profile time is the decimal written in the profile (JSON numbers are
  decimals; the float64 they parse to prints back as that shortest decimal, so
  `Fraction(repr(x))` recovers it exactly). Every time is an integer number of *ticks* of
  1/L microseconds, L the least common multiple of the denominators of all the profile's
  times in microseconds (`_ticks_per_us`), so Python's integers compute every sum and
  product exactly and never overflow: nothing here shares the jitted environment's
  fixed-point representation (`bes.clock.Fixed`, femtoseconds). An iteration with running batch b (after admission) lasts
  `decode_step_s[b-1] + prefill_s_fixed + prefill_s_per_token * (sum of admitted
  prompt_len)`, the prefill terms only if something was admitted. A decode step under 1 us
  is refused. Arrivals are whole microseconds (the requests' gaps).
* Deadline budget: `deadline_us[task] + deadline_per_token_us * output_len` (the serving
  config's seconds rounded to whole microseconds, `ServingConfig.deadline_us`); on time iff
  the exact latency is <= the budget.
* Utility (float32): on time `q`; late hard `-miss_penalty`; late soft
  `q * max(0, 1 - lateness_us / soft_window_us)`; rejected `-miss_penalty`.
* Same instant: iteration ends first; an instance ending an iteration at t with anything
  running or waiting starts its next one at t, admitting from its queue, before any
  arrival at t is routed (such an arrival waits for the following iteration). An arrival
  reaching an idle instance starts an iteration at its arrival time that admits it.
  Arrivals at one instant are routed in trace order.
* Routing: the chosen model's instance with the fewest running + waiting requests (ties:
  lowest index); rejected at once if that instance's queue holds `queue_capacity`.
* Step rewards: step i earns the utilities of outcomes final in (a_i, a_{i+1}] plus its
  own rejection; the last step also drains every instance.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import fractions
import heapq
import math
import operator
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from bes import clock
from bes.serving_config import ServingConfig


class RequestView(NamedTuple):
  """What a policy may see of an arriving request (never its output length).

  Attributes:
    index: position of the request in the trace.
    arrival_us: absolute arrival time in integer microseconds.
    task: task index into the profile's task list.
    prompt_len: prompt tokens.
  """
  index: int
  arrival_us: int
  task: int
  prompt_len: int


# policy(i, request_view, instance_loads) -> model index; instance_loads[m][k] is the
# (running, waiting) pair of instance k of model m at the arrival, before routing.
Policy = Callable[[int, RequestView, list], int]


@dataclasses.dataclass
class ReferenceResult:
  """Per-request outcomes, numpy arrays of shape [N] in request (trace) order.

  Attributes:
    arrival_us: absolute arrival time, int64 microseconds.
    model: model index chosen by the action.
    instance: instance index within the model the request was sent to (also when rejected).
    latency_us: completion - arrival in float64 microseconds (the exact value, rounded to
      float64); -1 if rejected.
    completion_us: absolute completion time, float64 microseconds; -1 if rejected.
    admit_us: start of the iteration that admitted the request (float64 us); -1 if rejected.
    first_token_us: end of the iteration that admitted the request (float64 us); -1 if
      rejected.
    on_time: completed with latency_us <= its budget.
    rejected: refused at arrival because the instance's waiting queue was full.
    utility: float32 utility of the request.
    step_reward: float64 reward of the decision step for request i (see module doc).
    num_iterations: total iterations run over all instances (a scalar, for benchmarks).
    completion_ticks: exact completion times (Python ints, ticks of 1/ticks_per_us us; -1
      if rejected), for exact checks.
    ticks_per_us: L, ticks per microsecond.
  """
  arrival_us: np.ndarray
  model: np.ndarray
  instance: np.ndarray
  latency_us: np.ndarray
  completion_us: np.ndarray
  admit_us: np.ndarray
  first_token_us: np.ndarray
  on_time: np.ndarray
  rejected: np.ndarray
  utility: np.ndarray
  step_reward: np.ndarray
  num_iterations: int = 0
  completion_ticks: list = dataclasses.field(default_factory=list)
  ticks_per_us: int = 1

  def latency_s(self) -> np.ndarray:
    """Latency in float64 seconds, shape [N]; `inf` for rejected requests."""
    lat = np.asarray(self.latency_us, np.float64) / clock.US_PER_S
    return np.where(self.rejected, np.inf, lat)


@dataclasses.dataclass
class _ModelTiming:
  """Exact timing of one model in ticks: decode[b] for b = 1..max_batch (index 0 unused)."""
  decode: list
  fixed: int
  per_token: int
  max_batch: int


def _exact_us(seconds: float) -> fractions.Fraction:
  """A profile time (seconds) in microseconds, exactly as written (its shortest decimal)."""
  return fractions.Fraction(repr(float(seconds))) * 1_000_000


def _ticks_per_us(models: Sequence[Any]) -> int:
  """The least L such that every profile time is a whole number of 1/L us."""
  return math.lcm(1, *(_exact_us(x).denominator for m in models
                       for x in list(m.decode_step_s) + [m.prefill_s_fixed, m.prefill_s_per_token]))


def model_timing(model: Any, per_us: int, where: str = "profile") -> _ModelTiming:
  """One model's profile times (seconds) as exact integers of 1/per_us us."""
  ticks = lambda x: int(_exact_us(x) * per_us)
  decode = [ticks(x) for x in model.decode_step_s]
  if len(decode) != model.max_batch:
    raise ValueError(f"{where}: model {model.name!r}: decode_step_s must have max_batch="
                     f"{model.max_batch} entries, got {len(decode)}")
  if min(decode) < per_us:
    raise ValueError(f"{where}: model {model.name!r}: decode_step_s must be >= 1 microsecond "
                     f"at every batch size, got {list(model.decode_step_s)}")
  return _ModelTiming(decode=[0] + decode, fixed=ticks(model.prefill_s_fixed),
                      per_token=ticks(model.prefill_s_per_token), max_batch=int(model.max_batch))


class _Instance:
  """One replica: FIFO waiting queue, running list of [request, tokens produced]."""

  __slots__ = ("model", "index", "timing", "waiting", "running", "busy")

  def __init__(self, model: int, index: int, timing: _ModelTiming):
    self.model = model
    self.index = index
    self.timing = timing
    self.waiting = collections.deque()
    self.running = []
    self.busy = False  # an iteration is in progress

  def load(self) -> int:
    return len(self.running) + len(self.waiting)


def _check_requests(requests, num_tasks: int) -> tuple:
  """Host int64 copies of the request arrays, validated; ValueError naming the field."""
  fields = {}
  for name in ("gap_us", "task", "prompt_len", "output_len"):
    x = np.asarray(getattr(requests, name))
    if x.ndim != 1:
      raise ValueError(f"requests.{name}: expected a 1-D array [N], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"requests.{name}: expected integers, got dtype {x.dtype}")
    fields[name] = x.astype(np.int64)
  n = fields["gap_us"].shape[0]
  for name, x in fields.items():
    if x.shape[0] != n:
      raise ValueError(f"requests.{name}: expected {n} entries like gap_us, got {x.shape[0]}")
  checks = (("gap_us", fields["gap_us"] >= 0, ">= 0 microseconds"),
            ("task", (fields["task"] >= 0) & (fields["task"] < num_tasks),
             f"a task index in 0..{num_tasks - 1}"),
            ("prompt_len", fields["prompt_len"] >= 0, ">= 0 tokens"),
            ("output_len", fields["output_len"] >= 1, ">= 1 tokens"))
  for name, ok, expected in checks:
    if not np.all(ok):
      i = int(np.argmin(ok))
      raise ValueError(f"requests.{name}[{i}]: expected {expected}, got {fields[name][i]}")
  return fields["gap_us"], fields["task"], fields["prompt_len"], fields["output_len"]


def _action(i: int, a: Any, num_models: int) -> int:
  try:
    m = operator.index(a)
  except TypeError:
    raise ValueError(f"action for request {i}: expected a model index in 0..{num_models - 1}, "
                     f"got {a!r}") from None
  if isinstance(a, (bool, np.bool_)) or not 0 <= m < num_models:
    raise ValueError(f"action for request {i}: expected a model index in 0..{num_models - 1}, "
                     f"got {a!r}")
  return m


def utility(q: float, latency_us, budget_us: int, config: ServingConfig) -> np.float32:
  """Float32 utility of a completed request with quality q (decision 3 of the module doc);
  `latency_us` exact (an int or a Fraction)."""
  if latency_us <= budget_us:
    return np.float32(q)
  if config.reward == "hard":
    return np.float32(-config.miss_penalty)
  lateness = np.float32(float(latency_us - budget_us))
  frac = np.float32(1) - lateness / np.float32(config.soft_window_us)
  return np.float32(np.float32(q) * max(np.float32(0), frac))


def step_rewards(arrival: Sequence[int], final: Sequence[int], rejected: np.ndarray,
                 util: np.ndarray) -> np.ndarray:
  """Float64 reward per decision step, shape [N]; `arrival` and `final` exact times (Python
  ints of one unit, e.g. ticks), sorted arrivals.

  A completion at time t belongs to the last step j with a_j < t (so a completion exactly
  at a_i belongs to step i-1); a rejection belongs to its own step. Completions after the
  last arrival belong to the last step (the drain).
  """
  n = len(arrival)
  step = [i if rejected[i] else bisect.bisect_left(arrival, final[i]) - 1 for i in range(n)]
  if n and min(step) < 0:
    raise AssertionError("a completion at or before the first arrival")
  out = np.zeros(n, np.float64)
  np.add.at(out, np.asarray(step, np.int64), util.astype(np.float64))
  return out


def simulate(profile: Any, requests: Any, actions: Sequence[int] | Policy,
             config: ServingConfig) -> ReferenceResult:
  """Runs the serving model on `requests` routed by `actions`, iteration by iteration.

  Args:
    profile: a `bes.profile.Profile` (duck-typed: `tasks`, `models` with `instances`,
      `max_batch`, `decode_step_s`, `prefill_s_fixed`, `prefill_s_per_token`, `quality`).
    requests: `bes.requests.Requests` with arrays [N] (gaps in microseconds).
    actions: N model indices, or `policy(i, RequestView, instance_loads) -> model index`
      called at each arrival; `instance_loads[m][k] = (running, waiting)`.
    config: the serving configuration (validated against the profile's task count).

  Returns:
    A `ReferenceResult` of arrays [N] in request order.

  Raises:
    ValueError: for an action outside 0..M-1 (naming the request), a wrong number of
      actions, or malformed requests / config / profile times.
  """
  num_tasks = len(profile.tasks)
  config.validate(num_tasks)
  gap, task, prompt, out_len = _check_requests(requests, num_tasks)
  n = gap.shape[0]
  arrival = np.cumsum(gap)
  models = list(profile.models)
  num_models = len(models)
  if not callable(actions):
    actions = list(actions)
    if len(actions) != n:
      raise ValueError(f"actions: expected {n} model indices (one per request), got {len(actions)}")
  one_us = _ticks_per_us(models)
  timings = [model_timing(m, one_us, f"profile {getattr(profile, 'name', '')!r}") for m in models]
  quality = [[float(m.quality[t]) for t in profile.tasks] for m in models]
  instances = [[_Instance(mi, k, timings[mi]) for k in range(m.instances)]
               for mi, m in enumerate(models)]
  deadline = config.deadline_us(num_tasks).astype(np.int64)
  budget = deadline[task] + config.deadline_per_token_us * out_len
  capacity = int(config.queue_capacity)

  # Per-request outcomes as Python lists (much faster to write than numpy scalars).
  model_of, inst_of = [0] * n, [0] * n
  completion, admit, first_token = [-1] * n, [-1] * n, [-1] * n
  rejected_l = [False] * n
  arrival_l, task_l = [int(a) * one_us for a in arrival.tolist()], task.tolist()
  out_len_l, prompt_l = out_len.tolist(), prompt.tolist()
  ends = []  # heap of (end time in ticks, model, instance index)
  num_iterations = 0

  def start_iteration(inst: _Instance, t: int) -> None:
    """Admits FIFO while there is room and schedules the iteration's end."""
    nonlocal num_iterations
    tm = inst.timing
    admitted_tokens = 0
    admitted = False
    while inst.waiting and len(inst.running) < tm.max_batch:
      r = inst.waiting.popleft()
      inst.running.append([r, 0])
      admit[r] = t
      admitted_tokens += prompt_l[r]
      admitted = True
    duration = tm.decode[len(inst.running)]
    if admitted:
      duration += tm.fixed + tm.per_token * admitted_tokens
    inst.busy = True
    num_iterations += 1
    heapq.heappush(ends, (t + duration, inst.model, inst.index))

  def end_iteration(t: int, inst: _Instance) -> None:
    """Every running request produces one token; finished ones leave; maybe start again."""
    still = []
    for slot in inst.running:
      r = slot[0]
      slot[1] += 1
      if slot[1] == 1:
        first_token[r] = t
      if slot[1] == out_len_l[r]:
        completion[r] = t
      else:
        still.append(slot)
    inst.running = still
    inst.busy = False
    if inst.running or inst.waiting:
      start_iteration(inst, t)

  def process_ends_until(t: int) -> None:
    while ends and ends[0][0] <= t:
      end_t, m, k = heapq.heappop(ends)
      end_iteration(end_t, instances[m][k])

  for i in range(n):
    a_i = arrival_l[i]
    process_ends_until(a_i)
    if callable(actions):
      loads = [[(len(x.running), len(x.waiting)) for x in insts] for insts in instances]
      view = RequestView(i, int(arrival[i]), task_l[i], prompt_l[i])
      m = _action(i, actions(i, view, loads), num_models)
    else:
      m = _action(i, actions[i], num_models)
    inst = min(instances[m], key=lambda x: (x.load(), x.index))
    model_of[i], inst_of[i] = m, inst.index
    if len(inst.waiting) >= capacity:
      rejected_l[i] = True
      continue
    inst.waiting.append(i)
    if not inst.busy:
      start_iteration(inst, a_i)
  process_ends_until(float("inf"))  # drain: the last step gets the rest
  if any(not rej and c < 0 for rej, c in zip(rejected_l, completion)):
    raise AssertionError("reference: a routed request never completed")

  budget_l = budget.tolist()
  penalty = np.float32(-config.miss_penalty)
  lat = [None if rejected_l[i] else fractions.Fraction(completion[i] - arrival_l[i], one_us)
         for i in range(n)]
  util = np.array([penalty if rejected_l[i] else
                   utility(quality[model_of[i]][task_l[i]], lat[i], budget_l[i], config)
                   for i in range(n)], np.float32).reshape(n)
  rejected = np.array(rejected_l, bool).reshape(n)
  us = lambda ticks: np.array([-1.0 if t < 0 else float(fractions.Fraction(t, one_us))
                               for t in ticks], np.float64).reshape(n)
  on_time = np.array([lat[i] is not None and lat[i] <= budget_l[i] for i in range(n)],
                     bool).reshape(n)
  final = [arrival_l[i] if rejected_l[i] else completion[i] for i in range(n)]
  return ReferenceResult(
      arrival_us=arrival, model=np.array(model_of, np.int64).reshape(n),
      instance=np.array(inst_of, np.int64).reshape(n),
      latency_us=np.array([-1.0 if x is None else float(x) for x in lat], np.float64).reshape(n),
      completion_us=us(completion), admit_us=us(admit), first_token_us=us(first_token),
      on_time=on_time, rejected=rejected, utility=util,
      step_reward=step_rewards(arrival_l, final, rejected, util), num_iterations=num_iterations,
      completion_ticks=list(completion), ticks_per_us=one_us)
