"""Running a policy through the environment: one jitted `lax.scan` over arriving requests."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bes import clock
from bes.env.serving_env import EnvParams, ServingEnv
from bes.requests import Requests
from bes.workloads import TraceWorkload
from bes.workloads.mix import mix_from_strings


def replay(requests: Requests, num_tasks: int) -> TraceWorkload:
  """A workload that replays `requests` exactly (tasks included) from the first one."""
  return TraceWorkload.create(requests, mix_from_strings("", "", num_tasks), draw_tasks=False)


def action_table(actions) -> "Policy":
  """A policy that routes request i of the episode to `actions[i]` (int32 [episode_len])."""
  return lambda key, obs, state: jnp.asarray(actions, jnp.int32)[state.index]


def rollout(env: ServingEnv, params: EnvParams, policy, key: jax.Array, num_steps: int):
  """Resets, then runs `num_steps` steps. Jittable (`env`, `policy`, `num_steps` static).

  Returns (final_state, per-step dict with `reward` float32 [num_steps], `done` bool, `action`
  int32, `rejected` bool, `completed` and `on_time` int32 counts).
  """
  k_reset, k_run = jax.random.split(key)
  obs, state = env.reset(k_reset, params)

  def body(carry, k):
    obs, state = carry
    k_act, k_step = jax.random.split(k)
    action = policy(k_act, obs, state)
    obs, state, reward, done, info = env.step(k_step, state, action, params)
    out = dict(reward=reward, done=done, action=action, rejected=info["rejected"],
               completed=info["completed"], on_time=info["on_time"])
    return (obs, state), out

  (_, state), trajectory = jax.lax.scan(body, (obs, state), jax.random.split(k_run, num_steps))
  return state, trajectory


def rollout_async(env: ServingEnv, params: EnvParams, policy, key: jax.Array, num_calls: int,
                  max_passes: int):
  """Like `rollout` through `ServingEnv.step_async`: `num_calls` calls of at most
  `max_passes` passes per group. The policy is evaluated every call; its action is used by
  environments that are ready. Returns (final_state, per-call dict with `reward`, `done`,
  `decided`)."""
  k_reset, k_run = jax.random.split(key)
  obs, state = env.reset(k_reset, params)

  def body(carry, k):
    obs, state = carry
    k_act, k_step = jax.random.split(k)
    action = policy(k_act, obs, state)
    obs, state, reward, done, decided, _ = env.step_async(k_step, state, action, params, max_passes)
    return (obs, state), dict(reward=reward, done=done, decided=decided)

  (_, state), trajectory = jax.lax.scan(body, (obs, state), jax.random.split(k_run, num_calls))
  return state, trajectory


def outcomes_to_numpy(outcomes) -> dict:
  """Recorded `Outcomes` as numpy arrays: `arrival` (s, float64 exact), `task`, `model`,
  `instance`, `latency` (s, inf when rejected), `latency_us` (-1 when rejected), `on_time`,
  `rejected`, `utility`. Works on batched outcomes ([..., episode_len])."""
  o = jax.device_get(outcomes)
  latency_us = np.asarray(o.latency_us, np.int64)
  return dict(
      arrival=np.cumsum(np.asarray(o.gap_us, np.int64), axis=-1) / clock.US_PER_S,
      task=np.asarray(o.task), model=np.asarray(o.model), instance=np.asarray(o.instance),
      latency=np.where(latency_us < 0, np.inf, latency_us / clock.US_PER_S), latency_us=latency_us,
      on_time=np.asarray(o.on_time), rejected=np.asarray(o.rejected),
      utility=np.asarray(o.utility))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _run_episode(env, params, policy, key):
  return rollout(env, params, policy, key, env.episode_len)


def run_episode(env: ServingEnv, params: EnvParams, policy, key: jax.Array):
  """One whole episode with outcome recording; returns (outcomes dict of numpy arrays, step rewards).

  Outcome keys: `arrival` (s, float64 exact), `task`, `model`, `instance`, `latency` (s, inf when
  rejected), `latency_us` (int, -1 when rejected), `on_time`, `rejected`, `utility`.
  """
  if not env.record:
    raise ValueError("run_episode needs an environment built with record=True")
  state, trajectory = _run_episode(env, params, policy, key)
  return outcomes_to_numpy(state.outcomes), np.asarray(trajectory["reward"])
