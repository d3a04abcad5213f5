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

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bes.env.observation import ObservationLayout

NORMALISATIONS = ("none", "scale", "log")
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

  @property
  def num_actions(self) -> int:
    return self.layout.num_models

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


def make_qnetwork(layout: ObservationLayout, cfg) -> QNetwork:
  """The Q-network over observations of `layout` (one action per model) that a `config.dqn`
  section describes (errors name `config.dqn.<field>`)."""
  hidden = cfg.hidden
  if isinstance(hidden, str):
    hidden = [h for h in hidden.split(",") if h.strip()]
  try:
    hidden = tuple(int(h) for h in hidden)
  except (TypeError, ValueError):
    raise ValueError(f"config.dqn.hidden: expected widths like '64,64', got {cfg.hidden!r}") from None
  if not hidden or min(hidden) < 1:
    raise ValueError(f"config.dqn.hidden: expected one or more widths >= 1, got {cfg.hidden!r}")
  if cfg.activation not in ACTIVATIONS:
    raise ValueError(f"config.dqn.activation: expected one of {sorted(ACTIVATIONS)}, "
                     f"got {cfg.activation!r}")
  if cfg.obs_norm not in NORMALISATIONS:
    raise ValueError(f"config.dqn.obs_norm: expected one of {NORMALISATIONS}, got {cfg.obs_norm!r}")
  if not float(cfg.rate_scale) > 0:
    raise ValueError(f"config.dqn.rate_scale: expected > 0 requests/s, got {cfg.rate_scale!r}")
  return QNetwork(layout=layout, hidden=hidden,
                  activation=str(cfg.activation), obs_norm=str(cfg.obs_norm),
                  rate_scale=float(cfg.rate_scale), dueling=bool(cfg.get("dueling", False)))
