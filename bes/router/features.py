"""Observation features of the router beyond the environment's observation (opt-in).

The environment observes what the paper's router sees (`ServingEnv.observe`: task one-hot,
per-model load summed over instances, arrival rate). The hand-written deadline-aware
heuristic reads more: the instance a request would join. `features='queues'` appends, per
model m, for the instance the environment would pick (fewest running + waiting):
  its running + waiting requests / max_batch_m   (above 1: the request would queue), and
  its waiting requests / queue_capacity          (1: the request would be rejected).
The arrival rate stays the last feature, so `qnetwork.normalise` applies unchanged (the
extra features are normalised like the loads). Shapes: float32 [T + M + 1] -> [T + 3M + 1].
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from bes.env import instances as inst

FEATURES = ("paper", "queues")


def check(name: str) -> str:
  if name not in FEATURES:
    raise ValueError(f"config.dqn.features: expected one of {FEATURES}, got {name!r}")
  return name


def extra_size(name: str, num_models: int) -> int:
  """Features `name` adds to the observation."""
  return 2 * num_models if check(name) == "queues" else 0


def extend(obs: jnp.ndarray, state, name: str, max_batch: Sequence[int],
           queue_capacity: int) -> jnp.ndarray:
  """The observation of one environment (float32 [T + M + 1]) with features `name`."""
  if check(name) == "paper":
    return obs
  extra = []
  for gs, b in zip(state.groups, max_batch):
    i = inst.join_target(gs)
    extra.append(inst.load(gs)[i] / b)
    extra.append(inst.waiting(gs)[i] / max(queue_capacity, 1))
  extra = jnp.stack(extra).astype(jnp.float32)
  return jnp.concatenate([obs[:-1], extra, obs[-1:]])
