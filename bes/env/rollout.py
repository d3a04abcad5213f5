"""Running a policy through the environment: one jitted `lax.scan` over arriving requests."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bes import clock
from bes.env.serving_env import EnvParams, ServingEnv


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
  o = jax.device_get(state.outcomes)
  latency_us = np.asarray(o.latency_us, np.int64)
  return dict(
      arrival=np.cumsum(np.asarray(o.gap_us, np.int64)) / clock.US_PER_S,
      task=np.asarray(o.task), model=np.asarray(o.model), instance=np.asarray(o.instance),
      latency=np.where(latency_us < 0, np.inf, latency_us / clock.US_PER_S), latency_us=latency_us,
      on_time=np.asarray(o.on_time), rejected=np.asarray(o.rejected),
      utility=np.asarray(o.utility)), np.asarray(trajectory["reward"])
