"""The router's Q-network: a Flax MLP over the normalised observation.

The observation (`bes.env.observation.ObservationLayout`: the task one-hot, each model's
load, with `features='queues'` the fill of the instance a request would join, and the
estimated arrival rate in requests per second) is read by block name. The rate is
unbounded, so it is normalised before the MLP:
  'none'    the raw observation;
  'scale'   rate / rate_scale (rate_scale in requests/s, e.g. the training workload's mean);
  'log'     log1p(rate / rate_scale) and log1p of every block but the task one-hot (the
            loads and fills: compresses bursts and deep queues).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bes.env.observation import ObservationLayout
from bes.router.features import REFERENCE_SLACK

if TYPE_CHECKING:
  from bes.router.config import DQNConfig

NORMALISATIONS = ("none", "scale", "log")
ACTION_MASKS = ("none", "on_time", "on_time_else_any")
_MASKED = -1e9   # the Q-value a masked action is argmax-ed with (finite: no NaN downstream)
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu}


def normalise(obs: jnp.ndarray, layout: ObservationLayout, mode: str,
              rate_scale: float) -> jnp.ndarray:
  """Normalises observations [..., layout.size] (module docstring), block by block."""
  if mode == "none":
    return obs
  blocks = []
  for name in layout.names:
    x = layout.take(obs, name)
    if name == "rate":
      x = x / rate_scale
    if mode == "log" and name != "task":
      x = jnp.log1p(x)
    blocks.append(x)
  return jnp.concatenate(blocks, axis=-1)


class QNetwork(nn.Module):
  """MLP: normalise -> [Dense(h) -> activation] per hidden layer -> Dense(num_actions), or
  with `dueling` a value and an advantage head: Q = V + A - mean(A) (Wang et al., 2016).

  Input float32 [..., layout.size]; output Q-values float32 [..., num_actions], one per model.
  """
  layout: ObservationLayout
  hidden: Sequence[int] = (64, 64)
  activation: str = "relu"
  obs_norm: str = "log"
  rate_scale: float = 20.0
  dueling: bool = False
  action_mask: str = "none"
  mask_slack: float = REFERENCE_SLACK

  @property
  def num_actions(self) -> int:
    return self.layout.num_models

  def allowed(self, obs: jnp.ndarray) -> jnp.ndarray:
    """bool [..., num_actions]: the actions greedy selection may take for (unnormalised)
    observations [..., layout.size]. 'none': all. 'on_time' (features 'predict'): the
    models predicted on time (predicted latency x `mask_slack` <= the deadline, read from
    the 'slack' block; the default is the reference greedy's own slack, so a smaller
    `mask_slack` also allows models predicted slightly late) and the greedy's pick
    ('advice'), so the learned router chooses among what the heuristic deems feasible (a
    learned policy inside the classical controller's constraint). 'on_time_else_any': the
    same, but every model when none is predicted on time (overload: the router's own
    choice, not the greedy's fallback)."""
    if self.action_mask == "none":
      return jnp.ones(obs.shape[:-1] + (self.num_actions,), bool)
    on_time = self.layout.take(obs, "slack") * self.mask_slack <= 1.0
    allowed = on_time | (self.layout.take(obs, "advice") > 0.5)
    if self.action_mask == "on_time_else_any":
      allowed = allowed | ~jnp.any(on_time, axis=-1, keepdims=True)
    return allowed

  def greedy(self, q: jnp.ndarray, obs: jnp.ndarray) -> jnp.ndarray:
    """int32 [...]: argmax of Q-values [..., num_actions] over the allowed actions of `obs`."""
    return jnp.argmax(self.mask_values(q, obs), axis=-1).astype(jnp.int32)

  def mask_values(self, q: jnp.ndarray, obs: jnp.ndarray) -> jnp.ndarray:
    """Q-values with the actions `obs` does not allow set very low (for argmax-ing)."""
    return jnp.where(self.allowed(obs), q, _MASKED)

  @nn.compact
  def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
    x = normalise(obs.astype(jnp.float32), self.layout, self.obs_norm, self.rate_scale)
    act = ACTIVATIONS[self.activation]
    for width in self.hidden:
      x = act(nn.Dense(width)(x))
    if not self.dueling:
      return nn.Dense(self.num_actions)(x)
    advantage = nn.Dense(self.num_actions)(x)
    return nn.Dense(1)(x) + advantage - advantage.mean(-1, keepdims=True)


def make_qnetwork(layout: ObservationLayout, cfg: DQNConfig) -> QNetwork:
  """The Q-network over observations of `layout` (one action per model) that a validated
  `DQNConfig` (`bes/router/config.py`) describes."""
  return QNetwork(layout=layout, hidden=cfg.hidden, activation=cfg.activation,
                  obs_norm=cfg.obs_norm, rate_scale=cfg.rate_scale, dueling=cfg.dueling,
                  action_mask=cfg.action_mask, mask_slack=cfg.mask_slack)
