"""The instances of one model: continuous batching as pure functions over fixed-shape arrays.

All instances of a model form one *group*. Each instance holds its requests, running and
waiting alike, in a fixed table of E = max_batch + queue_capacity *entries* (arrays
[I, E]); models are separate groups so that a small model's large batch does not pad the
others. Requests get consecutive sequence numbers as they join an instance; the instance
admits them FIFO by moving one counter, `admitted`: an entry with `seq < admitted` is
running, one with `seq >= admitted` is waiting, and `joined - admitted` is the queue
length. FIFO admission is then a comparison, with no gather or queue ring to maintain.

Times are int32 microseconds on a clock that is allowed to wrap around (two's complement,
like TCP sequence numbers): two times, or two sequence numbers, are only compared through
their difference (`a - b <= 0`), which is exact as long as they lie within 2^31 of each
other (about 35 minutes). So an episode may last any number of hours, and nothing is ever
rebased.

The central function, `advance_pass`, processes one iteration end per instance; runs of
identical iterations are skipped in closed form (between two events of an instance, an
admission or a completion, its batch does not change, so `j` iterations take `j * tau(b)`).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from bes import clock

INT32_MAX = jnp.iinfo(jnp.int32).max

# Per-request fields of an entry. `seq`: order of joining the instance; `left`: tokens still
# to produce (0 = free entry); `deadline`: absolute time by which it is on time; `quality`:
# q[model, task], its utility when on time; `prompt`: prompt tokens. With outcome recording
# also its `arrival` time and `req` (index in the episode).
TRAIN_FIELDS = ("seq", "left", "deadline", "quality", "prompt")
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
  joined, admitted: int32 [I] sequence counters; entries: dict field -> [I, E].
  """
  busy: jnp.ndarray
  iter_end: jnp.ndarray
  joined: jnp.ndarray
  admitted: jnp.ndarray
  entries: dict

  @property
  def max_batch(self) -> int:
    return self.entries["left"].shape[-1] - self.queue_capacity

  queue_capacity: int = struct.field(pytree_node=False, default=1)


def init_group(instances: int, max_batch: int, queue_capacity: int, record: bool) -> GroupState:
  """All instances idle and empty."""
  fields = TRAIN_FIELDS + (RECORD_FIELDS if record else ())
  shape = (instances, max_batch + queue_capacity)
  zi = jnp.zeros((instances,), jnp.int32)
  return GroupState(
      busy=jnp.zeros((instances,), bool), iter_end=zi, joined=zi, admitted=zi,
      entries={f: jnp.zeros(shape, jnp.float32 if f == "quality" else jnp.int32) for f in fields},
      queue_capacity=queue_capacity)


def load(gs: GroupState) -> jnp.ndarray:
  """Running + waiting requests per instance, int32 [I]."""
  return (gs.entries["left"] > 0).sum(-1, dtype=jnp.int32)


def running_mask(gs: GroupState) -> jnp.ndarray:
  """bool [I, E]: entries holding a running request."""
  return (gs.entries["left"] > 0) & (gs.entries["seq"] - gs.admitted[:, None] < 0)


@struct.dataclass
class Completions:
  """Requests finishing in one pass, arrays [I, E]: `done` mask, `late_us` = completion -
  deadline (<= 0 when on time), `quality`, and with recording `latency_us` and `req`."""
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


def _iteration_us(gp: GroupParams, batch, admitted, prompt_tokens):
  """Duration in microseconds of an iteration with `batch` running requests."""
  prefill = clock.prefill_us(prompt_tokens, gp.prefill_fixed_us, gp.prefill_per_token_ns)
  return gp.decode_us[batch] + jnp.where(admitted, prefill, 0)


def advance_pass(gs: GroupState, gp: GroupParams, until: jnp.ndarray, drain: jnp.ndarray):
  """One pass: every instance whose iteration ends by `until` processes that end.

  The end completes the running requests with no tokens left; the next iteration starts at
  the same instant, admitting waiting requests FIFO while there is room. When it admits
  nothing, the run of identical iterations up to the next completion is skipped in closed
  form, stopping at the last end <= `until` (no stop when `drain`). Returns (state,
  Completions).
  """
  e = gs.entries
  live = due(gs, until, drain)                                      # [I]
  end = gs.iter_end
  ticking = live[:, None] & running_mask(gs)                        # produce a token now
  done = ticking & (e["left"] == 1)
  left = e["left"] - ticking
  record = "req" in e
  completions = Completions(
      done=done, late_us=end[:, None] - e["deadline"], quality=e["quality"],
      latency_us=end[:, None] - e["arrival"] if record else None, req=e["req"] if record else None)
  # The next iteration starts now: FIFO admission while there is room.
  still_running = ticking & ~done | (~live[:, None] & running_mask(gs))
  room = gs.max_batch - still_running.sum(-1, dtype=jnp.int32)
  waiting = gs.joined - gs.admitted
  n_admit = jnp.where(live, jnp.minimum(waiting, room), 0)
  admitted = gs.admitted + n_admit
  newly = (left > 0) & (e["seq"] - gs.admitted[:, None] >= 0) & (e["seq"] - admitted[:, None] < 0)
  prompt_tokens = jnp.where(newly, e["prompt"], 0).sum(-1)
  running = still_running | newly
  batch = running.sum(-1, dtype=jnp.int32)
  tau = _iteration_us(gp, batch, n_admit > 0, prompt_tokens)
  # Pure decode: skip j more identical iterations, j < tokens to the next completion.
  next_done = jnp.min(jnp.where(running, left, INT32_MAX), axis=-1)
  slack = jnp.where(drain, INT32_MAX, until - end)
  skip = jnp.clip(slack // jnp.maximum(tau, 1), 0, next_done - 1)
  skip = jnp.where((n_admit > 0) | ~live, 0, skip)
  gs = gs.replace(
      entries=dict(e, left=left - jnp.where(running, skip[:, None], 0)), admitted=admitted,
      iter_end=jnp.where(live, end + (skip + 1) * tau, gs.iter_end),
      busy=jnp.where(live, batch > 0, gs.busy))
  return gs, completions


def join(gs: GroupState, gp: GroupParams, chosen, now, request: dict):
  """Routes one request arriving at `now` to this model if `chosen` (bool scalar).

  `request` maps the entry fields except `seq` to scalars. The request joins the instance
  with the fewest running + waiting requests (ties: lowest index). An idle instance starts
  an iteration now that admits it; a busy one queues it; a full queue rejects it. Updates
  are O(1) scatters. Returns (state, instance index int32, rejected bool).
  """
  i = jnp.argmin(load(gs)).astype(jnp.int32)
  busy = gs.busy[i]
  start = chosen & ~busy
  queued = chosen & busy & (gs.joined[i] - gs.admitted[i] < gs.queue_capacity)
  placed = start | queued
  slot = jnp.argmin(gs.entries["left"][i] > 0)                      # a free entry
  values = dict(request, seq=gs.joined[i])
  set_if = lambda x, idx, cond, v: x.at[idx].set(jnp.where(cond, v, x[idx]))
  entries = {f: set_if(x, (i, slot), placed, values[f]) for f, x in gs.entries.items()}
  duration = _iteration_us(gp, 1, True, request["prompt"])
  gs = gs.replace(
      entries=entries, busy=gs.busy.at[i].set(busy | start),
      iter_end=set_if(gs.iter_end, i, start, now + duration),
      joined=gs.joined.at[i].add(placed.astype(jnp.int32)),
      admitted=gs.admitted.at[i].add(start.astype(jnp.int32)))
  return gs, i, chosen & busy & ~queued
