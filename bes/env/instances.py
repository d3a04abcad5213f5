"""The instances of one model: continuous batching as pure functions over fixed-shape arrays.

All instances of a model form one *group*. Each instance holds its requests, running and
waiting alike, in a fixed table of E = max_batch + queue_capacity *entries* (arrays
[I, E]); models are separate groups so that a small model's large batch does not pad the
others. Requests get consecutive sequence numbers as they join an instance; the instance
admits them FIFO by moving one counter, `admitted`: an entry with `seq >= admitted` is
waiting (`joined - admitted` is the queue length), one with `seq < admitted` is running
until the instance's iteration counter reaches the entry's `finish`. FIFO admission and
completion are then comparisons, with no gather, no queue ring and no per-token update.

Times are `clock.Fixed` pairs (whole microseconds + femtoseconds, see `bes/clock.py`)
for iteration ends and latency tables, and whole int32 microseconds for arrivals and
deadlines, on a clock that wraps around (two's complement, like TCP sequence numbers):
two times, or two sequence numbers, are only compared through their difference, exact
while they lie within 2^31 us (35.8 min) of each other. What keeps every difference in
range, however long an episode or a request lasts:
  * one pass moves an instance's clock by less than 2^29 us (closed-form skips stop after
    `clock.MAX_PASS_US`, and one iteration lasts at most `clock.MAX_ITERATION_US`);
  * in each pass, entries are rebased against the iteration end it processes: an
    arrival more than `clock.EPOCH_US` behind moves forward one epoch (counted in the
    entry's `epochs`, so latency = epochs * EPOCH_US + end - arrival, exactly); a deadline
    more than `clock.LATE_CLAMP_US` behind is clamped there (the request is late and its
    utility can no longer change: soft windows are shorter); a deadline whose budget was
    too far ahead to store carries epochs too (`dl_epochs`, only when the workload's
    budgets need it) and is released one epoch at a time as the clock approaches it.
The per-instance counters (iterations, joins) are compared the same way, which holds for
2^31 iterations or joins of one instance (months of simulated time).

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
# (for a waiting one, its output length until admission); `deadline`: time (whole us) by
# which it is on time, plus `dl_epochs` * EPOCH_US when the env has `long_deadlines`;
# `quality`: q[model, task], its utility when on time; `prompt`: prompt tokens. With outcome
# recording also its `arrival` time (+ `epochs` * EPOCH_US) and `req` (index in the episode).
TRAIN_FIELDS = ("seq", "finish", "deadline", "quality", "prompt")
RECORD_FIELDS = ("arrival", "epochs", "req")


@struct.dataclass
class GroupParams:
  """Latency of one model, fixed-point (`clock.Fixed`): decode [B + 1], decode[b] = iteration
  time at batch b (index 0 unused); prefill_fixed, prefill_per_token: scalars (an
  iteration that admits prompts of p tokens in all adds prefill_fixed + p * prefill_per_token)."""
  decode: clock.Fixed
  prefill_fixed: clock.Fixed
  prefill_per_token: clock.Fixed


@struct.dataclass
class GroupState:
  """Instances of one model.

  busy: bool [I]; iter_end: clock.Fixed [I], end of the iteration in progress (valid while
  busy); iters: int32 [I], iterations completed; joined, admitted, finished: int32 [I]
  request counters (running + waiting = joined - finished, waiting = joined - admitted);
  entries: dict field -> [I, E]. An entry is running iff `seq < admitted` and
  `finish > iters`, waiting iff `seq >= admitted`, free otherwise (all compared through
  differences, so the counters may wrap).
  """
  busy: jnp.ndarray
  iter_end: clock.Fixed
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
               credit: bool = False, long_deadlines: bool = False) -> GroupState:
  """All instances idle and empty (every entry free: seq -1 < admitted 0, finish 0 <= iters 0).
  `record` keeps each request's arrival and episode index, `credit` only its index;
  `long_deadlines` adds the deadline epochs (budgets of 2^29 us or more)."""
  fields = TRAIN_FIELDS + (("dl_epochs",) if long_deadlines else ())
  fields += RECORD_FIELDS if record else ("req",) if credit else ()
  shape = (instances, max_batch + queue_capacity)
  zi = jnp.zeros((instances,), jnp.int32)
  entries = {f: jnp.zeros(shape, jnp.float32 if f == "quality" else jnp.int32) for f in fields}
  entries["seq"] = jnp.full(shape, -1, jnp.int32)
  return GroupState(busy=jnp.zeros((instances,), bool), iter_end=clock.Fixed(zi, zi), iters=zi,
                    joined=zi, admitted=zi, finished=zi, entries=entries,
                    queue_capacity=queue_capacity)


# ------------------------------------------------------------------------------ accessors
# The read-only view of the serving state that everything above bes/env goes through.
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
  """What remains of each instance's iteration in progress at time `now` (whole us),
  float32 [I] microseconds (0 when idle)."""
  left = clock.to_f32(clock.add_us(gs.iter_end, -now))
  return jnp.where(gs.busy, jnp.maximum(left, 0.0), 0.0)


def timing_us(gp: GroupParams) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """A model's latency as float32 microseconds, for predictions (not for simulating):
  (decode [B + 1], index 0 unused; prefill fixed, scalar; prefill per prompt token, scalar)."""
  return (clock.to_f32(gp.decode).at[..., 0].set(0.0), clock.to_f32(gp.prefill_fixed),
          clock.to_f32(gp.prefill_per_token))


# ------------------------------------------------------------------------------ dynamics
@struct.dataclass
class Completions:
  """Requests finishing in one pass, arrays [I, E]: `done` mask, `on_time`, `late_us`
  (float32 completion - deadline, for soft utilities of late requests), `quality`; with
  recording `latency_us` and `latency_epochs` (latency = epochs * EPOCH_US + latency_us,
  whole microseconds rounded down), and with recording or credit `req` (the request's
  index in the episode)."""
  done: jnp.ndarray
  on_time: jnp.ndarray
  late_us: jnp.ndarray
  quality: jnp.ndarray
  latency_us: jnp.ndarray | None
  latency_epochs: jnp.ndarray | None
  req: jnp.ndarray | None


def _at_or_before(t: clock.Fixed, until: jnp.ndarray) -> jnp.ndarray:
  """t <= until (whole microseconds), through the wrapping difference."""
  d = t.us - until
  return (d < 0) | ((d == 0) & (t.frac == 0))


def due(gs: GroupState, until: jnp.ndarray, drain: jnp.ndarray) -> jnp.ndarray:
  """bool [I]: the instance's iteration ends at or before `until` (always, when draining)."""
  return gs.busy & (drain | _at_or_before(gs.iter_end, until))


def pending(gs: GroupState, until, drain) -> jnp.ndarray:
  """Whether any instance still has an iteration end to process (bool scalar)."""
  return jnp.any(due(gs, until, drain))


def prefill_cost(gp: GroupParams, prompt_tokens) -> clock.Fixed:
  """Prefill time of an iteration admitting `prompt_tokens` prompt tokens (exact)."""
  return clock.add(gp.prefill_fixed, clock.mul(prompt_tokens, gp.prefill_per_token))


def _run_end(start: clock.Fixed, decode: clock.Fixed, until, drain, max_skip):
  """(skip, end): iterations of `decode` each run back to back from `start`; the ones that
  end by `until` (at most `max_skip`, and none past `clock.MAX_PASS_US`, also when
  draining) are skipped in closed form; `end` is the end of the first one not skipped."""
  slack = clock.sub(clock.fixed(until), start)
  cap = drain | (slack.us >= clock.MAX_PASS_US)
  slack = clock.where(cap, clock.fixed(jnp.full_like(slack.us, clock.MAX_PASS_US)), slack)
  skip = jnp.clip(clock.floor_div(slack, decode), 0, jnp.maximum(max_skip, 0))
  return skip, clock.add(start, clock.mul(skip + 1, decode))


def _rebase(entries: dict, end_us: jnp.ndarray) -> dict:
  """Keeps every entry time within range of its instance's clock (`end_us` [I, 1], the end
  this pass processed; the pass then moves the clock by less than 2^29 us): see the module
  docstring. Changes no outcome."""
  e = dict(entries)
  behind = end_us - e["deadline"]
  e["deadline"] = jnp.where(behind > clock.LATE_CLAMP_US, end_us - clock.LATE_CLAMP_US,
                            e["deadline"])
  if "dl_epochs" in e:
    release = (e["dl_epochs"] > 0) & (e["deadline"] - end_us < clock.LATE_CLAMP_US)
    e["deadline"] = e["deadline"] + jnp.where(release, clock.EPOCH_US, 0)
    e["dl_epochs"] = e["dl_epochs"] - release
  if "epochs" in e:
    old = end_us - e["arrival"] >= clock.EPOCH_US
    e["arrival"] = e["arrival"] + jnp.where(old, clock.EPOCH_US, 0)
    e["epochs"] = e["epochs"] + old
  return e


def advance_pass(gs: GroupState, gp: GroupParams, until: jnp.ndarray, drain: jnp.ndarray):
  """One pass: every instance whose iteration ends by `until` processes that end.

  The end completes the running requests with no tokens left; the next iteration starts at
  the same instant, admitting waiting requests FIFO while there is room. The iterations
  that follow it with the same batch, up to the next completion, are skipped in closed
  form, stopping at the last end <= `until` (or after `clock.MAX_PASS_US`). Returns (state,
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
  late = end.us[:, None] - e["deadline"]
  on_time = (late < 0) | ((late == 0) & (end.frac[:, None] == 0))
  if "dl_epochs" in e:
    on_time = on_time | (e["dl_epochs"] > 0)
  completions = Completions(
      done=done, on_time=on_time,
      late_us=late.astype(jnp.float32) + end.frac[:, None].astype(jnp.float32) / clock.FRAC_ONE,
      quality=e["quality"],
      latency_us=end.us[:, None] - e["arrival"] if "arrival" in e else None,
      latency_epochs=e.get("epochs"), req=e.get("req"))
  # The next iteration starts now: FIFO admission while there is room.
  room = gs.max_batch - still.sum(-1, dtype=jnp.int32)
  n_admit = jnp.where(live, jnp.minimum(gs.joined - gs.admitted, room), 0)
  admitted = gs.admitted + n_admit
  newly = ~admitted_before & (e["seq"] - admitted[:, None] < 0)
  finish = jnp.where(newly, iters[:, None] + e["finish"], e["finish"])
  prompt_tokens = jnp.where(newly, e["prompt"], 0).sum(-1)
  running_now = still | newly
  batch = running_now.sum(-1, dtype=jnp.int32)
  # The new iteration lasts decode + prefill (prefill only if it admitted anything); the
  # ones after it, up to the next completion, last decode each: skip them in closed form.
  decode = clock.Fixed(gp.decode.us[batch], gp.decode.frac[batch])
  prefill = prefill_cost(gp, prompt_tokens)
  start = clock.where(n_admit > 0, clock.add(end, prefill), end)
  next_done = jnp.min(jnp.where(running_now, finish - iters[:, None], INT32_MAX), axis=-1)
  skip, new_end = _run_end(start, decode, until, drain, next_done - 1)
  skip = jnp.where(~live | (batch == 0), 0, skip)
  iter_end = clock.where(live, new_end, end)
  entries = _rebase(dict(e, finish=finish), end.us[:, None])
  gs = gs.replace(
      entries=entries, admitted=admitted, iters=iters + skip,
      finished=gs.finished + done.sum(-1, dtype=jnp.int32), iter_end=iter_end,
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
  decode = clock.Fixed(gp.decode.us[1], gp.decode.frac[1])
  begin = clock.add(clock.fixed(now), prefill_cost(gp, request["prompt"]))
  skip, end = _run_end(begin, decode, until, drain, request["output"] - 1)
  skip = jnp.where(start, skip, 0)
  gs = gs.replace(
      entries=entries, busy=gs.busy.at[i].set(busy | start),
      iter_end=clock.Fixed(set_if(gs.iter_end.us, i, start, end.us),
                           set_if(gs.iter_end.frac, i, start, end.frac)),
      iters=gs.iters.at[i].add(skip),
      joined=gs.joined.at[i].add(placed.astype(jnp.int32)),
      admitted=gs.admitted.at[i].add(start.astype(jnp.int32)))
  return gs, i, chosen & busy & ~queued
