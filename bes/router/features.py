"""Observation features of the router beyond the environment's observation (opt-in).

The environment observes what the paper's router sees (`ServingEnv.observe`: task one-hot,
per-model load summed over instances, arrival rate). The hand-written deadline-aware
heuristic reads more: the instance a request would join. `features='queues'` adds, per
model m, for the instance the environment would pick (fewest running + waiting):
  its running + waiting requests / max_batch_m   (above 1: the request would queue), and
  its waiting requests / queue_capacity          (1: the request would be rejected).
The blocks, their order and sizes are defined once by `bes.env.observation`'s
`ObservationLayout` (the 'queues' block sits between the loads and the rate) and the values
come from its `ServingView`. Shapes: float32 [T + M + 1] -> [T + 3M + 1].
"""
from __future__ import annotations

import jax.numpy as jnp

from bes.env import observation

FEATURES = tuple(observation.FEATURES)


def check(name: str) -> str:
  """`name` if it is a feature set, else a ValueError naming `config.dqn.features`."""
  if name not in FEATURES:
    raise ValueError(f"config.dqn.features: expected one of {FEATURES}, got {name!r}")
  return name


def layout(num_tasks: int, num_models: int, name: str) -> observation.ObservationLayout:
  """The router's observation layout with feature set `name` (checked)."""
  return observation.ObservationLayout(int(num_tasks), int(num_models), check(name))


def extend(obs: jnp.ndarray, state, obs_layout: observation.ObservationLayout) -> jnp.ndarray:
  """The environment's observation of one environment (float32 [T + M + 1]) extended to
  `obs_layout`, the extra blocks computed from `state`'s serving view (an `EnvState` or a
  `ServingView`); unchanged, and `state` unread, without extra features."""
  if obs_layout.features == obs_layout.base.features:
    return obs
  return obs_layout.extend(obs, observation.as_view(state))
