"""Test helpers for driving the serving environment with given requests and given actions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bes.requests import Requests
from bes.workloads import TraceWorkload
from bes.workloads.mix import mix_from_strings


def replay(requests: Requests, num_tasks: int) -> TraceWorkload:
  """A workload that replays `requests` exactly (tasks included) from the first one."""
  return TraceWorkload.create(requests, mix_from_strings("", "", num_tasks), draw_tasks=False)


@struct.dataclass
class ActionTable:
  """A policy that routes request i of the episode to `actions[i]` (int32 [episode_len])."""
  actions: jnp.ndarray

  def __call__(self, key, obs, state):
    return self.actions[state.index]


def action_table(actions) -> ActionTable:
  """The `ActionTable` of `actions` (any int sequence, one model index per request)."""
  return ActionTable(jnp.asarray(actions, jnp.int32))


def state_after(env, params, actions, key: jax.Array = jax.random.PRNGKey(0)):
  """(obs, state) after `env.reset` and one `env.step` per action in `actions` (the first
  requests routed to those models), every call with `key`."""
  obs, state = env.reset(key, params)
  for a in actions:
    obs, state, *_ = env.step(key, state, jnp.int32(a), params)
  return obs, state
