"""The router's Q-network: a Flax MLP over the normalised observation.

The observation (float32 [T + M + 1], `bes.env.serving_env.ServingEnv.observe`) is the
task one-hot, each model's load (running + waiting over capacity; above 1 when requests
wait) and the estimated arrival rate in requests per second. The rate is unbounded, so it
is normalised before the MLP:
  'none'    the raw observation;
  'scale'   rate / rate_scale (rate_scale in requests/s, e.g. the training workload's mean);
  'log'     log1p(rate / rate_scale) and log1p(load) (compresses bursts and deep queues).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

NORMALISATIONS = ("none", "scale", "log")
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu}


def normalise(obs: jnp.ndarray, num_tasks: int, mode: str, rate_scale: float) -> jnp.ndarray:
  """Normalises observations [..., T + M + 1] (module docstring)."""
  if mode == "none":
    return obs
  task, loads, rate = obs[..., :num_tasks], obs[..., num_tasks:-1], obs[..., -1:]
  rate = rate / rate_scale
  if mode == "log":
    loads, rate = jnp.log1p(loads), jnp.log1p(rate)
  return jnp.concatenate([task, loads, rate], axis=-1)


class QNetwork(nn.Module):
  """MLP: normalise -> [Dense(h) -> activation] per hidden layer -> Dense(num_actions), or
  with `dueling` a value and an advantage head: Q = V + A - mean(A) (Wang et al., 2016).

  Input float32 [..., T + M + 1]; output Q-values float32 [..., num_actions].
  """
  num_actions: int
  num_tasks: int
  hidden: Sequence[int] = (64, 64)
  activation: str = "relu"
  obs_norm: str = "log"
  rate_scale: float = 20.0
  dueling: bool = False

  @nn.compact
  def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
    x = normalise(obs.astype(jnp.float32), self.num_tasks, self.obs_norm, self.rate_scale)
    act = ACTIVATIONS[self.activation]
    for width in self.hidden:
      x = act(nn.Dense(width)(x))
    if not self.dueling:
      return nn.Dense(self.num_actions)(x)
    advantage = nn.Dense(self.num_actions)(x)
    return nn.Dense(1)(x) + advantage - advantage.mean(-1, keepdims=True)


def make_qnetwork(num_actions: int, num_tasks: int, cfg) -> QNetwork:
  """The Q-network a `config.dqn` section describes (errors name `config.dqn.<field>`)."""
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
  return QNetwork(num_actions=num_actions, num_tasks=num_tasks, hidden=hidden,
                  activation=str(cfg.activation), obs_norm=str(cfg.obs_norm),
                  rate_scale=float(cfg.rate_scale), dueling=bool(cfg.get("dueling", False)))
