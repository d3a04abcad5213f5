"""The learned router behind the common policy interface (`bes/policies.py`)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from bes.router import features as features_lib
from bes.router.qnetwork import QNetwork


@struct.dataclass
class LearnedPolicy:
  """Greedy routing by a Q-network: `policy(key, obs, state)` -> argmax_a Q(obs, a), int32.

  `params` is the network's parameter pytree (a leaf stack of several seeds vmaps); the
  network (its shape) is static, and so are the observation `features` (`features.py`)
  and, for 'queues', the deployment's max batch per model and queue capacity.
  """
  params: Any
  network: QNetwork = struct.field(pytree_node=False)
  features: str = struct.field(pytree_node=False, default="paper")
  max_batch: tuple = struct.field(pytree_node=False, default=())
  queue_capacity: int = struct.field(pytree_node=False, default=0)

  def __call__(self, key, obs, state) -> jnp.ndarray:
    del key
    obs = features_lib.extend(obs, state, self.features, self.max_batch, self.queue_capacity)
    return jnp.argmax(self.network.apply(self.params, obs), axis=-1).astype(jnp.int32)

  def q_values(self, obs) -> jnp.ndarray:
    """Q-values float32 [..., num_models] for network inputs [..., T + M + 1] (with
    `features='queues'`, the extended [..., T + 3M + 1])."""
    return self.network.apply(self.params, obs)
