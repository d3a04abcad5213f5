"""The serving cluster as a gymnax-style environment: one step per arriving request.

`reset(key, params) -> (obs, state)` and `step(key, state, action, params) -> (obs, state,
reward, done, info)` are pure and jittable; `jax.vmap` runs many environments at once. The
action is the model (index into the profile's models) that serves the request observed.

A step (request i arrives at a_i):
  1. request i joins the least-loaded instance of the chosen model, or is rejected;
  2. the next request i+1 is drawn from the workload (gap g = a_{i+1} - a_i microseconds);
  3. every instance advances through all iteration ends <= a_{i+1} (the last step of an
     episode drains every instance instead), completing requests.
The reward is the sum of the utilities of the requests whose outcome became final in this
step: completions in (a_i, a_{i+1}] and request i's own rejection. An episode's rewards sum
to its requests' utilities. When an episode ends the instances are already drained, so the
automatic reset only restarts the request counter: the next episode continues the same
request stream (a long workload cut into episodes; `reset` starts a fresh stream).

`step_async(..., max_passes=k)` is the same step for vmapped training: each call does at most
k event passes per model group, so environments advance on their own clocks instead of all
waiting for the busiest; it returns a `decided` mask and decides exactly as `step` does.

Static configuration (shapes) lives in `ServingEnv`; everything numeric lives in
`EnvParams`, a pytree that can be vmapped over (deadlines, rates, reward mode, ...).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from bes import clock
from bes.env import instances as inst
from bes.env import timing
from bes.env import observation
from bes.requests import Requests
from bes.serving_config import ServingConfig


@struct.dataclass
class EnvParams:
  """Numbers of the serving model (a pytree; vmappable).

  groups: per-model latency tables (`instances.GroupParams`), in profile order.
  quality: float32 [M, T] accuracy of model m on task t.
  deadline_us: int32 [T] latency budget per task; deadline_per_token_us: int32 scalar.
  soft: bool scalar (soft deadlines); soft_window_us: int32; miss_penalty: float32.
  rate_ema_alpha: float32, weight of the newest inter-arrival gap in the rate estimate.
  workload: the request stream (any object with `init(key)` and `next(key, state)`).
  """
  groups: tuple
  quality: jnp.ndarray
  deadline_us: jnp.ndarray
  deadline_per_token_us: jnp.ndarray
  soft: jnp.ndarray
  soft_window_us: jnp.ndarray
  miss_penalty: jnp.ndarray
  rate_ema_alpha: jnp.ndarray
  workload: Any


@struct.dataclass
class Outcomes:
  """Per-request outcomes of the current episode, arrays [episode_len] (recording mode only).

  model = -1 marks a request without an outcome yet; latency_us = -1 when rejected.
  The latency is `latency_epochs * clock.EPOCH_US + latency_us` whole microseconds (rounded
  down), exact for any duration (`outcomes_to_numpy` in rollout.py combines them).
  """
  model: jnp.ndarray       # int32
  instance: jnp.ndarray    # int32, index within the model
  latency_us: jnp.ndarray  # int32, below EPOCH_US
  latency_epochs: jnp.ndarray  # int32
  on_time: jnp.ndarray     # bool
  rejected: jnp.ndarray    # bool
  utility: jnp.ndarray     # float32
  gap_us: jnp.ndarray      # int32, the request's arrival gap (arrivals are its cumsum)
  task: jnp.ndarray        # int32


@struct.dataclass
class EnvState:
  """One environment. Arrivals (`now`, `until`) are int32 whole microseconds on a wrapping
  clock; iteration ends are fixed-point (`bes/clock.py`, `instances.py`).

  While `ready`, `request` (index `index` in the episode, arrived at `now`) waits for its
  routing decision. After routing, `next_request` (arriving at `until`) has been drawn and
  the instances advance towards `until`, accumulating the decision's `reward` and its
  `completed` / `on_time` counts, until every iteration end <= `until` is processed.
  """
  groups: tuple             # instances.GroupState per model
  request: Requests         # scalar fields
  next_request: Requests
  index: jnp.ndarray        # int32
  now: jnp.ndarray          # int32
  until: jnp.ndarray        # int32
  ready: jnp.ndarray        # bool
  reward: jnp.ndarray       # float32
  completed: jnp.ndarray    # int32
  on_time: jnp.ndarray      # int32
  ema_gap_s: jnp.ndarray    # float32, moving average of inter-arrival gaps (seconds)
  workload: Any             # the workload stream's state
  outcomes: Outcomes | None


@dataclasses.dataclass(frozen=True)
class ServingEnv:
  """Static shape of the environment: the deployment, the queues, the episode.

  Attributes:
    instances, max_batch: per model, from the profile.
    num_tasks: tasks in the profile.
    queue_capacity: waiting slots per instance.
    episode_len: requests per episode.
    record: keep per-request `Outcomes` in the state (evaluation, checks); off for training.
    credit: report, in `step_async`'s info["credit"], each completed request's episode index
      and utility, so a learner can credit a request's utility to the decision that routed
      it (needs a bounded `max_passes`).
    long_deadlines: latency budgets may reach 2^30 us (about 18 min) or more; entries then
      carry deadline epochs (`make_env` decides from the workload's length bounds).
  """
  instances: tuple[int, ...]
  max_batch: tuple[int, ...]
  num_tasks: int
  queue_capacity: int
  episode_len: int
  record: bool = False
  credit: bool = False
  long_deadlines: bool = False

  @property
  def num_models(self) -> int:
    return len(self.instances)

  @property
  def layout(self) -> observation.ObservationLayout:
    """The observation's layout (`bes/env/observation.py`): task, load, rate."""
    return observation.ObservationLayout(self.num_tasks, self.num_models)

  @property
  def obs_size(self) -> int:
    return self.layout.size

  # ----------------------------------------------------------------------------- reset / step
  def reset(self, key: jax.Array, params: EnvParams):
    """Empty instances; the first request of an episode arrives. Returns (obs, state)."""
    groups = tuple(inst.init_group(i, b, self.queue_capacity, self.record, self.credit,
                                   self.long_deadlines)
                   for i, b in zip(self.instances, self.max_batch))
    k_init, k_next = jax.random.split(key)
    wstate = params.workload.init(k_init)
    request, wstate = params.workload.next(k_next, wstate)
    outcomes = self._empty_outcomes() if self.record else None
    state = EnvState(groups=groups, request=request, next_request=request, index=jnp.int32(0),
                     now=jnp.int32(0), until=jnp.int32(0), ready=jnp.bool_(True),
                     reward=jnp.float32(0), completed=jnp.int32(0), on_time=jnp.int32(0),
                     ema_gap_s=jnp.float32(NO_GAP_YET), workload=wstate, outcomes=outcomes)
    return self.observe(state, params), state

  def step(self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
    """Routes the current request to model `action` and runs until the next arrival.

    Returns (obs, state, reward, done, info); `info` holds `rejected`, `instance` (of the
    routed request) and the step's `completed` and `on_time` counts.
    """
    obs, state, reward, done, _, info = self.step_async(key, state, action, params, None)
    return obs, state, reward, done, info

  def step_async(self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams,
                 max_passes: int | None):
    """Like `step`, but does at most `max_passes` event passes per model group per call.

    Under `vmap`, a step that runs to the next arrival makes every environment wait for the
    one with the most events; with a bound, each environment moves on its own clock. An
    environment whose `state.ready` is True routes the request with `action`; one still
    advancing ignores `action` and continues. Returns (obs, state, reward, done, decided,
    info): `decided` is True when the environment reached its next arrival in this call,
    and only then are `obs`, `reward` and `done` those of the decision's transition
    (otherwise reward and done are 0/False). `max_passes=None` runs to completion (`step`).
    With `credit`, info["credit"] = (req int32 [K], utility float32 [K], done bool [K]):
    every entry the call's passes looked at (K = max_passes * sum_m I_m * E_m), `done`
    where it completed in this call, with its episode index and utility.
    """
    if self.credit and max_passes is None:
      raise ValueError("ServingEnv(credit=True) needs step_async with an integer max_passes")
    state, rejected, instance = self._route(key, state, jnp.asarray(action, jnp.int32), params)
    state, credit = self._advance(state, params, max_passes)
    decided = ~self._pending(state)
    done = decided & (state.index == self.episode_len - 1)
    reward = jnp.where(decided, state.reward, 0.0)
    info = dict(rejected=rejected, instance=instance,
                completed=jnp.where(decided, state.completed, 0),
                on_time=jnp.where(decided, state.on_time, 0))
    if self.credit:
      info["credit"] = credit
    state = self._next_decision(state, decided, done, params)
    return self.observe(state, params), state, reward, done, decided, info

  # ----------------------------------------------------------------------------- the three phases
  def _route(self, key, state: EnvState, action, params: EnvParams):
    """If ready: request `index` joins the chosen model (or is rejected); draws the next one."""
    go = state.ready
    req, idx, now = state.request, state.index, state.now
    fields = dict(output=req.output_len, prompt=req.prompt_len, arrival=now, epochs=0, req=idx,
                  **self._deadline(now, req, params))
    next_req, wstate = params.workload.next(key, state.workload)
    until = jnp.where(go, now + next_req.gap_us, state.until)      # wraps: see instances.py
    drain = idx == self.episode_len - 1
    groups, instance, rejected = [], jnp.int32(0), jnp.bool_(False)
    for m, (gs, gp) in enumerate(zip(state.groups, params.groups)):
      chosen = go & (action == m)
      fields["quality"] = params.quality[m, req.task]
      gs, i_m, rej_m = inst.join(gs, gp, chosen, now, fields, until, drain)
      groups.append(gs)
      instance = jnp.where(chosen, i_m, instance)
      rejected = rejected | rej_m
    penalty = jnp.where(rejected, -params.miss_penalty, 0.0).astype(jnp.float32)
    outcomes = state.outcomes
    if self.record:
      row = jnp.where(go, idx, self.episode_len)                    # out of range: dropped
      put = lambda x, v: x.at[row].set(v, mode="drop")
      o = outcomes
      outcomes = o.replace(
          model=put(o.model, action), instance=put(o.instance, instance),
          rejected=put(o.rejected, rejected), utility=put(o.utility, penalty),
          latency_us=put(o.latency_us, -1), latency_epochs=put(o.latency_epochs, 0),
          on_time=put(o.on_time, False),
          gap_us=put(o.gap_us, req.gap_us), task=put(o.task, req.task))
    pick = lambda new, old: jax.tree_util.tree_map(lambda x, y: jnp.where(go, x, y), new, old)
    state = state.replace(
        groups=tuple(groups), outcomes=outcomes, ready=jnp.zeros_like(go),
        next_request=pick(next_req, state.next_request), workload=pick(wstate, state.workload),
        until=until,
        reward=jnp.where(go, penalty, state.reward),
        completed=jnp.where(go, 0, state.completed), on_time=jnp.where(go, 0, state.on_time))
    return state, rejected & go, instance

  def _pending(self, state: EnvState) -> jnp.ndarray:
    drain = state.index == self.episode_len - 1
    return jnp.any(jnp.stack([inst.pending(gs, state.until, drain) for gs in state.groups]))

  def _advance(self, state: EnvState, params: EnvParams, max_passes: int | None) -> EnvState:
    """Processes iteration ends <= state.until (all of them on an episode's last request),
    at most `max_passes` per group; accumulates the utilities of completed requests."""
    until, drain = state.until, state.index == self.episode_len - 1
    groups, credit = [], []
    for gs, gp in zip(state.groups, params.groups):
      def body(carry, gp=gp, credit=credit):
        gs, state = carry
        gs, c = inst.advance_pass(gs, gp, until, drain)
        utility = self._utility(c, params)
        on_time = c.done & c.on_time
        state = state.replace(reward=state.reward + jnp.where(c.done, utility, 0.0).sum(),
                              completed=state.completed + c.done.sum(dtype=jnp.int32),
                              on_time=state.on_time + on_time.sum(dtype=jnp.int32))
        if self.credit:                    # step_async refused credit without max_passes
          credit.append((c.req.reshape(-1), utility.reshape(-1), c.done.reshape(-1)))
        if self.record:
          rows = jnp.where(c.done, c.req, self.episode_len).reshape(-1)   # out of range: dropped
          put = lambda x, v: x.at[rows].set(v.reshape(-1), mode="drop")
          o = state.outcomes
          state = state.replace(outcomes=o.replace(
              latency_us=put(o.latency_us, c.latency_us),
              latency_epochs=put(o.latency_epochs, c.latency_epochs), on_time=put(o.on_time, c.on_time),
              utility=put(o.utility, utility)))
        return gs, state

      carry = (gs, state.replace(groups=()))
      if max_passes is None:
        cond = lambda carry: inst.pending(carry[0], until, drain)
        carry = jax.lax.while_loop(cond, body, carry)
      else:
        for _ in range(max_passes):
          carry = body(carry)
      gs, state = carry
      groups.append(gs)
    if credit:
      credit = tuple(jnp.concatenate(x) for x in zip(*credit))
    return state.replace(groups=tuple(groups)), credit

  def _next_decision(self, state: EnvState, decided, done, params: EnvParams) -> EnvState:
    """When the next arrival is reached it becomes the current request. After an episode's
    last request the next episode begins with it: the drained instances are already empty,
    and the request stream (and the arrival-rate estimate) simply continues."""
    ema = _update_gap_ema(state.ema_gap_s, state.next_request.gap_us, params.rate_ema_alpha)
    pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(decided, x, y), a, b)
    return state.replace(
        ready=decided, request=pick(state.next_request, state.request),
        index=jnp.where(done, 0, jnp.where(decided, state.index + 1, state.index)),
        now=jnp.where(decided, state.until, state.now),
        ema_gap_s=jnp.where(decided, ema, state.ema_gap_s))

  # ----------------------------------------------------------------------------- observation
  def observe(self, state: EnvState, params: EnvParams) -> jnp.ndarray:
    """float32 [T + M + 1] (`self.layout`): task one-hot, per-model load, estimated arrival
    rate (req/s), built from the state's `observation.serving_view`.

    Load of model m = running + waiting over its instances / (instances * max_batch); it
    exceeds 1 when requests wait. The rate is 1 / (exponential moving average of the
    inter-arrival gaps seen so far), 0 for the first request after `reset`.
    The request's output length is never observed.
    """
    del params
    return self.layout.build(observation.serving_view(state))

  def _deadline(self, now, req: Requests, params: EnvParams) -> dict:
    """Entry fields of a request's deadline, `now + deadline_us[task] + deadline_per_token_us
    * output_len` (whole us). With `long_deadlines` the budget is split exactly into epochs
    of `clock.EPOCH_US` (`dl_epochs`) and a part below 2^31 kept at least one epoch ahead
    while epochs remain (`instances._rebase` releases them as the clock approaches)."""
    base = params.deadline_us[req.task]
    if not self.long_deadlines:      # make_env checked that budgets stay below 2^30 us
      return dict(deadline=now + base + params.deadline_per_token_us * req.output_len)
    epochs, rest = clock.wide_mul(req.output_len, params.deadline_per_token_us)
    ahead = base + rest                                             # < 2^29 + 2^30
    move = (epochs > 0) & (ahead < clock.EPOCH_US)
    return dict(deadline=now + ahead + jnp.where(move, clock.EPOCH_US, 0),
                dl_epochs=epochs - move)

  @staticmethod
  def _utility(c: inst.Completions, params: EnvParams):
    """Utility of completed requests, float32 [I, B] (design page, 'Utility of a request')."""
    soft = c.quality * jnp.maximum(0.0, 1.0 - c.late_us / params.soft_window_us.astype(jnp.float32))
    late_utility = jnp.where(params.soft, soft, -params.miss_penalty)
    return jnp.where(c.on_time, c.quality, late_utility).astype(jnp.float32)

  def _empty_outcomes(self) -> Outcomes:
    n = self.episode_len
    return Outcomes(model=jnp.full((n,), -1, jnp.int32), instance=jnp.full((n,), -1, jnp.int32),
                    latency_us=jnp.full((n,), -1, jnp.int32),
                    latency_epochs=jnp.zeros((n,), jnp.int32), on_time=jnp.zeros((n,), bool),
                    rejected=jnp.zeros((n,), bool), utility=jnp.zeros((n,), jnp.float32),
                    gap_us=jnp.zeros((n,), jnp.int32), task=jnp.zeros((n,), jnp.int32))


NO_GAP_YET = -1.0   # a Python float: no JAX array at import (jax.distributed starts after)


def _update_gap_ema(ema_s, gap_us, alpha):
  """Moving average of inter-arrival gaps in seconds; the first gap initialises it."""
  gap_s = gap_us.astype(jnp.float32) / clock.US_PER_S
  return jnp.where(ema_s < 0, gap_s, (1 - alpha) * ema_s + alpha * gap_s)


# --------------------------------------------------------------------------------- builders
def make_env(profile, config: ServingConfig, workload, episode_len: int, record: bool = False,
             rate_ema_alpha: float = 0.1, credit: bool = False) -> tuple[ServingEnv, EnvParams]:
  """The environment and its parameters for a profile, a serving config and a workload.

  Refuses, naming the field, what the clock cannot hold (`bes/clock.py`): an iteration
  longer than `clock.MAX_ITERATION_US` (decode step plus the prefill of a full batch of the
  workload's longest prompts), deadlines or soft windows of `clock.LATE_CLAMP_US` or more.
  Budgets of 2^30 us or more (or a workload whose output lengths are unbounded) switch on
  `long_deadlines`.
  """
  num_tasks = len(profile.tasks)
  config.validate(num_tasks)
  if int(episode_len) < 1:
    raise ValueError(f"episode_len must be >= 1, got {episode_len}")
  if not 0.0 < rate_ema_alpha <= 1.0:
    raise ValueError(f"rate_ema_alpha must be in (0, 1], got {rate_ema_alpha}")
  bounds = timing.length_bounds(workload)
  groups = tuple(timing.group_params(m, None if bounds is None else bounds[0])
                 for m in profile.models)
  deadline_us = timing.config_us(config.deadline_us(num_tasks), "deadline_s")
  per_token_us = timing.config_us(config.deadline_per_token_us, "deadline_per_token_s")
  soft_window_us = timing.config_us(config.soft_window_us, "soft_window_s")
  long_deadlines = (bounds is None or
                    int(deadline_us.max()) + int(per_token_us) * bounds[1] >= clock.EPOCH_US)
  env = ServingEnv(instances=tuple(m.instances for m in profile.models),
                   max_batch=tuple(m.max_batch for m in profile.models), num_tasks=num_tasks,
                   queue_capacity=int(config.queue_capacity), episode_len=int(episode_len),
                   record=record, credit=credit, long_deadlines=bool(long_deadlines))
  params = EnvParams(
      groups=groups, quality=jnp.asarray(profile.quality_matrix(), jnp.float32),
      deadline_us=jnp.asarray(deadline_us, jnp.int32),
      deadline_per_token_us=jnp.int32(per_token_us),
      soft=jnp.bool_(config.reward == "soft"), soft_window_us=jnp.int32(soft_window_us),
      miss_penalty=jnp.float32(config.miss_penalty), rate_ema_alpha=jnp.float32(rate_ema_alpha),
      workload=workload)
  return env, params
