"""The learned router behind the common policy interface (`bes/policies.py`)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from bes.router import features as features_lib
from bes.router.qnetwork import QNetwork


@struct.dataclass
class LearnedPolicy:
  """Greedy routing by a Q-network: `policy(key, obs, state)` -> argmax_a Q(obs, a), int32,
  over the actions the network's `action_mask` allows.

  `params` is the network's parameter pytree (a leaf stack of several seeds vmaps); the
  network (its shape) is static. The network's observation layout (`network.layout`) says
  which features it reads beyond the environment's observation `obs`; those are computed
  from `state`'s serving view (`bes.env.observation`), which is read only then, and with
  `features='predict'` from `predictor` (`bes.router.features.predictor`: the reference
  greedy of the training environment, a pytree carried with the policy).
  """
  params: Any
  network: QNetwork = struct.field(pytree_node=False)
  predictor: Any = None

  def __call__(self, key, obs, state) -> jnp.ndarray:
    del key
    obs = features_lib.extend(obs, state, self.network.layout, self.predictor)
    return self.network.greedy(self.network.apply(self.params, obs), obs)

  def q_values(self, obs) -> jnp.ndarray:
    """Q-values float32 [..., num_models] for network inputs [..., network.layout.size]
    (with `features='queues'`, the extended observation)."""
    return self.network.apply(self.params, obs)
