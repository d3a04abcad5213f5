"""A replay buffer that lives in JAX: one ring of transitions per parallel environment.

Environments stepped with `step_async` decide at different calls, so each keeps its own
ring, written in its own order; a write is masked by the `decided` flags. Keeping each
environment's transitions in order makes n-step returns a slice of consecutive entries.

With credit to requests (`bes/router/dqn.py`), a transition's reward is its own request's
utility, which may become known after the transition was stored: `credit` adds it in place
and marks the transition `resolved`; sampled transitions carry a `weight` that is 0 unless
all n of them are resolved.

Shapes: E environments, C transitions per environment, D observation features.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bes.router import losses


@struct.dataclass
class Replay:
  """obs, next_obs: float32 [E, C, D]; action: int32 [E, C]; reward: float32 [E, C];
  done, resolved: bool [E, C]; count: int32 [E], transitions ever written per environment."""
  obs: jnp.ndarray
  action: jnp.ndarray
  reward: jnp.ndarray
  done: jnp.ndarray
  resolved: jnp.ndarray
  next_obs: jnp.ndarray
  count: jnp.ndarray

  @property
  def capacity(self) -> int:
    """Transitions kept per environment."""
    return self.action.shape[1]

  def size(self) -> jnp.ndarray:
    """Transitions held per environment, int32 [E]."""
    return jnp.minimum(self.count, self.capacity)


@struct.dataclass
class Batch:
  """A sampled batch of n-step transitions, arrays [B, ...]: the return over n steps, the
  discount of the bootstrap (gamma^n, 0 after an episode end) and the loss weight (1 when
  all n rewards are final, else 0)."""
  obs: jnp.ndarray
  action: jnp.ndarray
  ret: jnp.ndarray
  discount: jnp.ndarray
  next_obs: jnp.ndarray
  weight: jnp.ndarray


def init(num_envs: int, capacity: int, obs_size: int) -> Replay:
  """An empty buffer of `capacity` transitions per environment."""
  if capacity < 1:
    raise ValueError(f"replay capacity must be >= 1 transition per environment, got {capacity}")
  e, c = num_envs, capacity
  return Replay(obs=jnp.zeros((e, c, obs_size), jnp.float32), action=jnp.zeros((e, c), jnp.int32),
                reward=jnp.zeros((e, c), jnp.float32), done=jnp.zeros((e, c), bool),
                resolved=jnp.zeros((e, c), bool), next_obs=jnp.zeros((e, c, obs_size), jnp.float32),
                count=jnp.zeros((e,), jnp.int32))


def add(buf: Replay, obs, action, reward, done, next_obs, mask, resolved=None) -> Replay:
  """Appends one transition per environment where `mask` [E] is True (arrays [E, ...]);
  `resolved` [E] defaults to True (the reward is final)."""
  if resolved is None:
    resolved = jnp.ones_like(mask)
  pos = buf.count % buf.capacity

  def put(table, value):
    def row(t, p, v, m):
      return t.at[p].set(jnp.where(m, v.astype(t.dtype), t[p]))
    return jax.vmap(row)(table, pos, value, mask)

  return Replay(obs=put(buf.obs, obs), action=put(buf.action, action),
                reward=put(buf.reward, reward), done=put(buf.done, done),
                resolved=put(buf.resolved, resolved), next_obs=put(buf.next_obs, next_obs), count=buf.count + mask.astype(jnp.int32))


def credit(buf: Replay, absolute, utility, mask) -> Replay:
  """Adds `utility` to the rewards of earlier transitions and marks them resolved.

  absolute: int32 [E, K], the transitions' absolute indices (0 = an environment's first);
  utility: float32 [E, K]; mask: bool [E, K] (False entries change nothing). Transitions
  already overwritten by the ring are skipped.
  """
  live = mask & (buf.count[:, None] - absolute <= buf.capacity) & (absolute < buf.count[:, None])
  pos = absolute % buf.capacity

  def row(reward, resolved, p, u, m):
    return reward.at[p].add(jnp.where(m, u, 0.0)), resolved.at[p].max(m)
  reward, resolved = jax.vmap(row)(buf.reward, buf.resolved, pos, utility, live)
  return buf.replace(reward=reward, resolved=resolved)


def can_sample(buf: Replay, n_step: int) -> jnp.ndarray:
  """True when every environment holds at least `n_step` transitions."""
  return jnp.all(buf.size() >= n_step)


def sample(buf: Replay, key: jax.Array, batch_size: int, n_step: int, gamma: float) -> Batch:
  """Draws `batch_size` n-step transitions: an environment uniformly, then a start uniformly
  among its transitions that have n-1 successors in the buffer. Call only when
  `can_sample(buf, n_step)`."""
  k_env, k_start = jax.random.split(key)
  envs = jax.random.randint(k_env, (batch_size,), 0, buf.count.shape[0])
  size = buf.size()[envs]
  starts = jax.random.randint(k_start, (batch_size,), 0, jnp.maximum(size - n_step + 1, 1))
  first = buf.count[envs] - size + starts                          # absolute index
  idx = (first[:, None] + jnp.arange(n_step)[None, :]) % buf.capacity   # [B, n]
  rewards = buf.reward[envs[:, None], idx]
  dones = buf.done[envs[:, None], idx]
  ret, discount = jax.vmap(lambda r, d: losses.n_step_return(r, d, gamma))(rewards, dones)
  weight = jnp.all(buf.resolved[envs[:, None], idx], axis=-1).astype(jnp.float32)
  return Batch(obs=buf.obs[envs, idx[:, 0]], action=buf.action[envs, idx[:, 0]], ret=ret,
               discount=discount, next_obs=buf.next_obs[envs, idx[:, -1]], weight=weight)
