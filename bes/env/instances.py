"""The instances of one model: continuous batching as pure functions over fixed-shape arrays.

All instances of a model form one *group*. Each instance holds its requests, running and
waiting alike, in a fixed table of E = max_batch + queue_capacity *entries* (arrays
[I, E]); models are separate groups so that a small model's large batch does not pad the
others. Requests get consecutive sequence numbers as they join an instance; the instance
admits them FIFO by moving one counter, `admitted`: an entry with `seq >= admitted` is
waiting (`joined - admitted` is the queue length), one with `seq < admitted` is running
until the instance's iteration counter reaches the entry's `finish`. FIFO admission and
completion are then comparisons, with no gather, no queue ring and no per-token update.

Times are int32 microseconds on a clock that is allowed to wrap around (two's complement,
like TCP sequence numbers): two times, or two sequence numbers, are only compared through
their difference (`a - b <= 0`), which is exact as long as they lie within 2^31 of each
other (about 35 minutes). So an episode may last any number of hours, and nothing is ever
rebased. The per-instance counters (iterations, joins) are compared the same way, which
holds for 2^31 iterations or joins of one instance (months of simulated time).

The central function, `advance_pass`, processes one iteration end per instance; runs of
identical iterations are skipped in closed form (between two events of an instance, an
admission or a completion, its batch does not change, so `j` iterations take `j * tau(b)`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bes import clock

INT32_MAX = jnp.iinfo(jnp.int32).max

# Per-request fields of an entry. `seq`: order of joining the instance; `finish`: for a
# running request, the value of the instance's iteration counter at which it completes
# (for a waiting one, its output length until admission); `deadline`: absolute time by which
# it is on time; `quality`: q[model, task], its utility when on time; `prompt`: prompt
# tokens. With outcome recording also its `arrival` time and `req` (index in the episode).
TRAIN_FIELDS = ("seq", "finish", "deadline", "quality", "prompt")
RECORD_FIELDS = ("arrival", "req")


@struct.dataclass
class GroupParams:
  """Latency of one model. decode_us: int32 [B + 1], decode_us[b] = iteration time at batch b
  (index 0 unused); prefill_fixed_us, prefill_per_token_ns: int32 scalars."""
  decode_us: jnp.ndarray
  prefill_fixed_us: jnp.ndarray
  prefill_per_token_ns: jnp.ndarray


@struct.dataclass
class GroupState:
  """Instances of one model.

  busy: bool [I]; iter_end: int32 [I], end of the iteration in progress (valid while busy);
  iters: int32 [I], iterations completed; joined, admitted, finished: int32 [I] request
  counters (running + waiting = joined - finished, waiting = joined - admitted);
  entries: dict field -> [I, E]. An entry is running iff `seq < admitted` and
  `finish > iters`, waiting iff `seq >= admitted`, free otherwise (all compared through
  differences, so the counters may wrap).
  """
  busy: jnp.ndarray
  iter_end: jnp.ndarray
  iters: jnp.ndarray
  joined: jnp.ndarray
  admitted: jnp.ndarray
  finished: jnp.ndarray
  entries: dict
  queue_capacity: int = struct.field(pytree_node=False, default=1)

  @property
  def max_batch(self) -> int:
    return self.entries["seq"].shape[-1] - self.queue_capacity


def init_group(instances: int, max_batch: int, queue_capacity: int, record: bool,
               credit: bool = False) -> GroupState:
  """All instances idle and empty (every entry free: seq -1 < admitted 0, finish 0 <= iters 0).
  `record` keeps each request's arrival and episode index, `credit` only its index."""
  fields = TRAIN_FIELDS + (RECORD_FIELDS if record else ("req",) if credit else ())
  shape = (instances, max_batch + queue_capacity)
  zi = jnp.zeros((instances,), jnp.int32)
  entries = {f: jnp.zeros(shape, jnp.float32 if f == "quality" else jnp.int32) for f in fields}
  entries["seq"] = jnp.full(shape, -1, jnp.int32)
  return GroupState(busy=jnp.zeros((instances,), bool), iter_end=zi, iters=zi, joined=zi,
                    admitted=zi, finished=zi, entries=entries, queue_capacity=queue_capacity)


def load(gs: GroupState) -> jnp.ndarray:
  """Running + waiting requests per instance, int32 [I]."""
  return gs.joined - gs.finished


def running(gs: GroupState) -> jnp.ndarray:
  """Running requests per instance, int32 [I]."""
  return gs.admitted - gs.finished


def waiting(gs: GroupState) -> jnp.ndarray:
  """Waiting (queued) requests per instance, int32 [I]."""
  return gs.joined - gs.admitted


def busy(gs: GroupState) -> jnp.ndarray:
  """Whether each instance has an iteration in progress, bool [I]."""
  return gs.busy


def join_target(gs: GroupState) -> jnp.ndarray:
  """The instance a request routed to this model joins: the fewest running + waiting
  requests, ties to the lowest index (int32 scalar). The one home of this rule."""
  return jnp.argmin(load(gs)).astype(jnp.int32)


def remaining_us(gs: GroupState, now: jnp.ndarray) -> jnp.ndarray:
  """What remains of each instance's iteration in progress at time `now`, float32 [I]
  microseconds (0 when idle)."""
  return jnp.where(gs.busy, jnp.maximum(gs.iter_end - now, 0), 0).astype(jnp.float32)


def timing_us(gp: GroupParams) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """A model's latency as float32 microseconds, for predictions (not for simulating):
  (decode [B + 1], index 0 unused; prefill fixed, scalar; prefill per prompt token, scalar)."""
  return (jnp.asarray(gp.decode_us, jnp.float32), jnp.asarray(gp.prefill_fixed_us, jnp.float32),
          jnp.asarray(gp.prefill_per_token_ns, jnp.float32) / 1000)


@struct.dataclass
class Completions:
  """Requests finishing in one pass, arrays [I, E]: `done` mask, `late_us` = completion -
  deadline (<= 0 when on time), `quality`, with recording `latency_us`, and with recording or
  credit `req` (the request's index in the episode)."""
  done: jnp.ndarray
  late_us: jnp.ndarray
  quality: jnp.ndarray
  latency_us: jnp.ndarray | None
  req: jnp.ndarray | None


def due(gs: GroupState, until: jnp.ndarray, drain: jnp.ndarray) -> jnp.ndarray:
  """bool [I]: the instance's iteration ends at or before `until` (always, when draining)."""
  return gs.busy & (drain | (gs.iter_end - until <= 0))


def pending(gs: GroupState, until, drain) -> jnp.ndarray:
  """Whether any instance still has an iteration end to process (bool scalar)."""
  return jnp.any(due(gs, until, drain))


def _prefill_us(gp: GroupParams, prompt_tokens):
  """Prefill cost in microseconds of an iteration admitting `prompt_tokens` prompt tokens."""
  return clock.prefill_us(prompt_tokens, gp.prefill_fixed_us, gp.prefill_per_token_ns)


def advance_pass(gs: GroupState, gp: GroupParams, until: jnp.ndarray, drain: jnp.ndarray):
  """One pass: every instance whose iteration ends by `until` processes that end.

  The end completes the running requests with no tokens left; the next iteration starts at
  the same instant, admitting waiting requests FIFO while there is room. The iterations
  that follow it with the same batch, up to the next completion, are skipped in closed
  form, stopping at the last end <= `until` (no stop when `drain`). Returns (state,
  Completions).
  """
  e = gs.entries
  live = due(gs, until, drain)                                      # [I]
  end = gs.iter_end
  iters = gs.iters + live                                           # the iteration ending now
  admitted_before = e["seq"] - gs.admitted[:, None] < 0
  left = e["finish"] - iters[:, None]                               # tokens still to produce
  was_running = admitted_before & (left + live[:, None] > 0)
  done = was_running & live[:, None] & (left == 0)
  still = was_running & (left > 0)
  completions = Completions(
      done=done, late_us=end[:, None] - e["deadline"], quality=e["quality"],
      latency_us=end[:, None] - e["arrival"] if "arrival" in e else None, req=e.get("req"))
  # The next iteration starts now: FIFO admission while there is room.
  room = gs.max_batch - still.sum(-1, dtype=jnp.int32)
  n_admit = jnp.where(live, jnp.minimum(gs.joined - gs.admitted, room), 0)
  admitted = gs.admitted + n_admit
  newly = ~admitted_before & (e["seq"] - admitted[:, None] < 0)
  finish = jnp.where(newly, iters[:, None] + e["finish"], e["finish"])
  prompt_tokens = jnp.where(newly, e["prompt"], 0).sum(-1)
  running = still | newly
  batch = running.sum(-1, dtype=jnp.int32)
  # The new iteration lasts decode + prefill (prefill only if it admitted anything); the
  # ones after it, up to the next completion, last decode each: skip j of them in closed
  # form, j < iterations to the next completion, stopping at the last end <= `until`.
  decode = gp.decode_us[batch]
  prefill = jnp.where(n_admit > 0, _prefill_us(gp, prompt_tokens), 0)
  next_done = jnp.min(jnp.where(running, finish - iters[:, None], INT32_MAX), axis=-1)
  slack = jnp.where(drain, INT32_MAX, until - end - prefill)
  skip = jnp.clip(slack // jnp.maximum(decode, 1), 0, next_done - 1)
  skip = jnp.where(~live | (batch == 0), 0, skip)
  gs = gs.replace(
      entries=dict(e, finish=finish), admitted=admitted, iters=iters + skip,
      finished=gs.finished + done.sum(-1, dtype=jnp.int32),
      iter_end=jnp.where(live, end + prefill + (skip + 1) * decode, gs.iter_end),
      busy=jnp.where(live, batch > 0, gs.busy))
  return gs, completions


def join(gs: GroupState, gp: GroupParams, chosen, now, request: dict, until, drain):
  """Routes one request arriving at `now` to this model if `chosen` (bool scalar).

  `request` maps the entry fields except `seq` and `finish` to scalars, plus `output`
  (tokens). The request joins the instance with the fewest running + waiting requests
  (ties: lowest index). An idle instance starts an iteration now that admits it (and, alone
  in its batch, skips in closed form the iterations that end by `until`, the next arrival,
  as `advance_pass` does); a busy one queues it; a full queue rejects it. Updates are O(1)
  scatters except finding a free entry in the chosen instance. Returns (state, instance
  index int32, rejected bool).
  """
  i = join_target(gs)
  busy = gs.busy[i]
  start = chosen & ~busy
  queued = chosen & busy & (gs.joined[i] - gs.admitted[i] < gs.queue_capacity)
  placed = start | queued
  row = jax.tree_util.tree_map(lambda x: x[i], gs.entries)
  occupied = (row["seq"] - gs.admitted[i] >= 0) | (row["finish"] - gs.iters[i] > 0)
  slot = jnp.argmin(occupied)                                       # a free entry
  finish = jnp.where(start, gs.iters[i] + request["output"], request["output"])
  values = dict(request, seq=gs.joined[i], finish=finish)
  set_if = lambda x, idx, cond, v: x.at[idx].set(jnp.where(cond, v, x[idx]))
  entries = {f: set_if(x, (i, slot), placed, values[f]) for f, x in gs.entries.items()}
  decode = gp.decode_us[1]
  prefill = _prefill_us(gp, request["prompt"])
  slack = jnp.where(drain, INT32_MAX, until - now - prefill)
  skip = jnp.where(start, jnp.clip(slack // decode, 0, request["output"] - 1), 0)
  gs = gs.replace(
      entries=entries, busy=gs.busy.at[i].set(busy | start),
      iter_end=set_if(gs.iter_end, i, start, now + prefill + (skip + 1) * decode),
      iters=gs.iters.at[i].add(skip),
      joined=gs.joined.at[i].add(placed.astype(jnp.int32)),
      admitted=gs.admitted.at[i].add(start.astype(jnp.int32)))
  return gs, i, chosen & busy & ~queued
