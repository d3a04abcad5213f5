"""The instances of one model: continuous batching as pure functions over fixed-shape arrays.

All instances of a model form one *group* with arrays of shape [I, B] (running slots) and
[I, Q] (waiting ring buffers), I = instances, B = the model's max batch, Q = queue capacity.
Models are kept in separate groups so that a small model's large batch does not pad the
others.

Times are int32 microseconds on a clock that is allowed to wrap around (two's complement,
as sequence numbers in TCP): two times are only ever compared through their difference,
`a - b <= 0`, which is exact as long as they lie within ~35 minutes of each other. So an
episode may last any number of hours and nothing is ever rebased.

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

# Per-request fields kept for running (slot) and waiting (queue) requests. `left`: tokens
# still to produce (0 = free slot); `deadline`: absolute time by which it is on time;
# `quality`: q[model, task], its utility when on time. With outcome recording, also its
# `arrival` time and `req` (index in the episode). Waiting requests also keep `prompt`.
TRAIN_FIELDS = ("left", "deadline", "quality")
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

  busy: bool [I]; iter_end: int32 [I], end of the iteration in progress (valid while busy).
  slots: dict field -> [I, B] running requests. queue: dict field -> [I, Q] waiting requests
  (a ring buffer per instance starting at q_head, q_count entries).
  """
  busy: jnp.ndarray
  iter_end: jnp.ndarray
  slots: dict
  queue: dict
  q_head: jnp.ndarray
  q_count: jnp.ndarray


def init_group(instances: int, max_batch: int, queue_capacity: int, record: bool) -> GroupState:
  """All instances idle and empty."""
  fields = TRAIN_FIELDS + (RECORD_FIELDS if record else ())
  dtype = lambda f: jnp.float32 if f == "quality" else jnp.int32
  zi = jnp.zeros((instances,), jnp.int32)
  return GroupState(
      busy=jnp.zeros((instances,), bool), iter_end=zi,
      slots={f: jnp.zeros((instances, max_batch), dtype(f)) for f in fields},
      queue={f: jnp.zeros((instances, queue_capacity), dtype(f)) for f in fields + ("prompt",)},
      q_head=zi, q_count=zi)


def running(gs: GroupState) -> jnp.ndarray:
  """Running requests per instance, int32 [I]."""
  return (gs.slots["left"] > 0).sum(-1, dtype=jnp.int32)


def load(gs: GroupState) -> jnp.ndarray:
  """Running + waiting requests per instance, int32 [I]."""
  return running(gs) + gs.q_count


@struct.dataclass
class Completions:
  """Requests finishing in one pass, arrays [I, B]: `done` mask, `late_us` = completion -
  deadline (<= 0 when on time), `quality`, and with recording `latency_us` and `req`."""
  done: jnp.ndarray
  late_us: jnp.ndarray
  quality: jnp.ndarray
  latency_us: jnp.ndarray | None
  req: jnp.ndarray | None


def _admit(gs: GroupState, rows: jnp.ndarray):
  """Admits waiting requests FIFO into free slots of the instances in `rows` (bool [I]).

  Returns the new state, whether each instance admitted anything, and admitted prompt tokens.
  """
  free = gs.slots["left"] == 0
  rank = jnp.cumsum(free, axis=-1, dtype=jnp.int32) - 1           # rank among free slots
  room = free.sum(-1, dtype=jnp.int32)
  n_admit = jnp.where(rows, jnp.minimum(gs.q_count, room), 0)
  take = free & (rank < n_admit[:, None])
  capacity = gs.q_head.dtype.type(gs.queue["left"].shape[-1])
  pos = (gs.q_head[:, None] + rank) % capacity                     # queue entry per slot
  pick = lambda q: jnp.take_along_axis(q, pos, axis=-1, mode="clip")
  prompt_tokens = jnp.where(take, pick(gs.queue["prompt"]), 0).sum(-1)
  slots = {f: jnp.where(take, pick(gs.queue[f]), v) for f, v in gs.slots.items()}
  gs = gs.replace(slots=slots, q_head=(gs.q_head + n_admit) % capacity,
                  q_count=gs.q_count - n_admit)
  return gs, n_admit > 0, prompt_tokens


def _iteration_us(gp: GroupParams, batch, admitted, prompt_tokens):
  """Duration in microseconds of an iteration with `batch` running requests."""
  prefill = clock.prefill_us(prompt_tokens, gp.prefill_fixed_us, gp.prefill_per_token_ns)
  return gp.decode_us[batch] + jnp.where(admitted, prefill, 0)


def due(gs: GroupState, until: jnp.ndarray, drain: jnp.ndarray) -> jnp.ndarray:
  """bool [I]: the instance's iteration ends at or before `until` (always, when draining)."""
  return gs.busy & (drain | (gs.iter_end - until <= 0))


def pending(gs: GroupState, until, drain) -> jnp.ndarray:
  """Whether any instance still has an iteration end to process (bool scalar)."""
  return jnp.any(due(gs, until, drain))


def advance_pass(gs: GroupState, gp: GroupParams, until: jnp.ndarray, drain: jnp.ndarray):
  """One pass: every instance whose iteration ends by `until` processes that end.

  The end completes the requests with no tokens left; the next iteration starts at the same
  instant, admitting waiting requests FIFO while there is room. When it admits nothing, the
  run of identical iterations up to the next completion is skipped in closed form, stopping
  at the last end <= `until` (no stop when `drain`). Returns (state, Completions).
  """
  live = due(gs, until, drain)                                      # [I]
  end = gs.iter_end
  left = gs.slots["left"]
  left = left - (live[:, None] & (left > 0))
  done = live[:, None] & (gs.slots["left"] == 1)
  record = "req" in gs.slots
  completions = Completions(
      done=done, late_us=end[:, None] - gs.slots["deadline"], quality=gs.slots["quality"],
      latency_us=end[:, None] - gs.slots["arrival"] if record else None,
      req=gs.slots["req"] if record else None)
  gs = gs.replace(slots=dict(gs.slots, left=left))
  gs, admitted, prompt_tokens = _admit(gs, live)
  left = gs.slots["left"]
  batch = (left > 0).sum(-1, dtype=jnp.int32)
  tau = _iteration_us(gp, batch, admitted, prompt_tokens)
  # Pure decode: skip j more identical iterations, j < tokens to the next completion.
  next_done = jnp.min(jnp.where(left > 0, left, INT32_MAX), axis=-1)
  slack = jnp.where(drain, INT32_MAX, until - end)
  skip = jnp.clip(slack // jnp.maximum(tau, 1), 0, next_done - 1)
  skip = jnp.where(admitted | ~live, 0, skip)
  gs = gs.replace(
      slots=dict(gs.slots, left=jnp.where(left > 0, left - skip[:, None], 0)),
      iter_end=jnp.where(live, end + (skip + 1) * tau, gs.iter_end),
      busy=jnp.where(live, batch > 0, gs.busy))
  return gs, completions


def join(gs: GroupState, gp: GroupParams, chosen, now, request: dict):
  """Routes one request arriving at `now` to this model if `chosen` (bool scalar).

  `request` maps the slot fields (and `prompt`) to scalars. The request joins the instance
  with the fewest running + waiting requests (ties: lowest index). An idle instance starts an
  iteration now that admits it; a busy one queues it; a full queue rejects it. Updates are
  O(1) scatters. Returns (state, instance index int32, rejected bool).
  """
  i = jnp.argmin(load(gs)).astype(jnp.int32)
  start = chosen & ~gs.busy[i]
  capacity = gs.queue["left"].shape[-1]
  queued = chosen & gs.busy[i] & (gs.q_count[i] < capacity)
  rejected = chosen & gs.busy[i] & ~queued
  # An idle instance has no running request: its slot 0 is free.
  set_if = lambda x, idx, cond, v: x.at[idx].set(jnp.where(cond, v, x[idx]))
  slots = {f: set_if(x, (i, 0), start, request[f]) for f, x in gs.slots.items()}
  duration = _iteration_us(gp, 1, True, request["prompt"])
  tail = (gs.q_head[i] + gs.q_count[i]) % capacity
  queue = {f: set_if(x, (i, tail), queued, request[f]) for f, x in gs.queue.items()}
  gs = gs.replace(
      busy=gs.busy.at[i].set(gs.busy[i] | start),
      iter_end=set_if(gs.iter_end, i, start, now + duration),
      slots=slots, queue=queue, q_count=gs.q_count.at[i].add(queued.astype(jnp.int32)))
  return gs, i, rejected
