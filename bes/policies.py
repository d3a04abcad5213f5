"""Fixed routing policies, all behind one signature: `policy(key, obs, state) -> model index`.

`obs` is the environment's observation (float32 [T + M + 1]) and `state` its `EnvState`; a
policy returns an int32 scalar. They are pure and jittable, so the same rollout code runs a
fixed policy, a heuristic or a learned Q-network. Parse a command-line spec with
`parse_policy`: `static:M`, `round_robin`, `task_map:M0,M1,...` (model per task), `random`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Policy = Callable[[jax.Array, jnp.ndarray, object], jnp.ndarray]


def static(model: int) -> Policy:
  """Every request to one model."""
  return lambda key, obs, state: jnp.int32(model)


def round_robin(num_models: int) -> Policy:
  """Request i of the episode to model i mod M."""
  return lambda key, obs, state: (state.index % num_models).astype(jnp.int32)


def task_map(models: Sequence[int], num_tasks: int) -> Policy:
  """Model `models[t]` for requests of task t (the task is read from the one-hot in obs)."""
  table = jnp.asarray(models, jnp.int32)
  return lambda key, obs, state: table[jnp.argmax(obs[:num_tasks])]


def uniform_random(num_models: int) -> Policy:
  """A uniformly random model."""
  return lambda key, obs, state: jax.random.randint(key, (), 0, num_models, jnp.int32)


def parse_policy(spec: str, num_models: int, num_tasks: int, model_names: Sequence[str] = ()) -> Policy:
  """Builds a policy from a spec string; `M` may be an index or a model name."""
  def model_index(token: str) -> int:
    token = token.strip()
    if token in model_names:
      return list(model_names).index(token)
    try:
      m = int(token)
    except ValueError:
      raise ValueError(f"--policy={spec!r}: {token!r} is neither a model index nor one of "
                       f"{list(model_names)}") from None
    if not 0 <= m < num_models:
      raise ValueError(f"--policy={spec!r}: model index {m} out of range 0..{num_models - 1}")
    return m

  kind, _, arg = spec.partition(":")
  if kind == "static" and arg:
    return static(model_index(arg))
  if kind == "round_robin" and not arg:
    return round_robin(num_models)
  if kind == "random" and not arg:
    return uniform_random(num_models)
  if kind == "task_map" and arg:
    models = [model_index(t) for t in arg.split(",")]
    if len(models) != num_tasks:
      raise ValueError(f"--policy={spec!r}: task_map needs {num_tasks} models (one per task), "
                       f"got {len(models)}")
    return task_map(models, num_tasks)
  raise ValueError(f"--policy={spec!r}: expected static:M, round_robin, random or task_map:M0,M1,...")
