"""Routing policies behind one interface: a pytree called as `policy(key, obs, state)`.

`obs` is the environment's observation (float32 [T + M + 1], blocks named by
`bes.env.observation.ObservationLayout`) and `state` its `EnvState` (or a serving runtime's
`ServingView`, read through `observation.as_view`); a policy returns the model index (int32
scalar). Policies are pytrees (`flax.struct`), so a rollout takes them as traced arguments:
one compilation serves every fixed policy, and a stack of policies runs in one `vmap`.
Learned and heuristic policies follow the same shape.

Fixed policies, parsed from a spec by `parse_policy`:
  static:M            every request to model M (an index or a model name);
  round_robin         request i of the episode to model i mod M;
  task_map:M0,M1,...  requests of task t to model M_t;
  random              a uniformly random model.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes.env.observation import ObservationLayout

TABLE, ROUND_ROBIN, RANDOM = 0, 1, 2


@struct.dataclass
class FixedPolicy:
  """A state-independent policy. kind: int32 (TABLE, ROUND_ROBIN or RANDOM); table: int32
  [T], the model per task for TABLE; num_tasks, num_models: static."""
  kind: jnp.ndarray
  table: jnp.ndarray
  num_tasks: int = struct.field(pytree_node=False)
  num_models: int = struct.field(pytree_node=False)

  @property
  def layout(self) -> ObservationLayout:
    """The layout of the observations this policy reads (the environment's)."""
    return ObservationLayout(self.num_tasks, self.num_models)

  def __call__(self, key, obs, state) -> jnp.ndarray:
    by_task = self.table[jnp.argmax(self.layout.take(obs, "task"))]
    cyclic = (state.index % self.num_models).astype(jnp.int32)
    drawn = jax.random.randint(key, (), 0, self.num_models, jnp.int32)
    return jnp.select([self.kind == TABLE, self.kind == ROUND_ROBIN], [by_task, cyclic], drawn)


def _fixed(kind: int, table: Sequence[int], num_tasks: int, num_models: int) -> FixedPolicy:
  return FixedPolicy(kind=jnp.int32(kind), table=jnp.asarray(np.asarray(table, np.int32)),
                     num_tasks=num_tasks, num_models=num_models)


def static(model: int, num_tasks: int, num_models: int) -> FixedPolicy:
  return _fixed(TABLE, [model] * num_tasks, num_tasks, num_models)


def task_map(models: Sequence[int], num_tasks: int, num_models: int) -> FixedPolicy:
  return _fixed(TABLE, models, num_tasks, num_models)


def round_robin(num_tasks: int, num_models: int) -> FixedPolicy:
  return _fixed(ROUND_ROBIN, [0] * num_tasks, num_tasks, num_models)


def uniform_random(num_tasks: int, num_models: int) -> FixedPolicy:
  return _fixed(RANDOM, [0] * num_tasks, num_tasks, num_models)


def stack(trees: Sequence):
  """Pytrees of one structure (policies of one class, workloads of one kind) stacked along a
  new leading axis (for `vmap`)."""
  return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)


def parse_policy(spec: str, num_models: int, num_tasks: int,
                 model_names: Sequence[str] = ()) -> FixedPolicy:
  """Builds a policy from a spec string (module docstring); `M` may be an index or a name."""
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

  kind, _, arg = spec.strip().partition(":")
  if kind == "static" and arg:
    return static(model_index(arg), num_tasks, num_models)
  if kind == "round_robin" and not arg:
    return round_robin(num_tasks, num_models)
  if kind == "random" and not arg:
    return uniform_random(num_tasks, num_models)
  if kind == "task_map" and arg:
    models = [model_index(t) for t in arg.split(",")]
    if len(models) != num_tasks:
      raise ValueError(f"--policy={spec!r}: task_map needs {num_tasks} models (one per task), "
                       f"got {len(models)}")
    return task_map(models, num_tasks, num_models)
  raise ValueError(f"--policy={spec!r}: expected static:M, round_robin, random or task_map:M0,M1,...")
