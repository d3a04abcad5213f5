"""Double Q-learning and its pieces as small pure functions (the rlax `value_learning` style).

Every function works on one transition (scalars and [A] vectors); `jax.vmap` batches them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def huber(x: jnp.ndarray, delta: float = 1.0) -> jnp.ndarray:
  """Huber loss: x^2 / 2 for |x| <= delta, delta * (|x| - delta / 2) beyond."""
  abs_x = jnp.abs(x)
  quadratic = jnp.minimum(abs_x, delta)
  return 0.5 * quadratic ** 2 + delta * (abs_x - quadratic)


def double_q_target(r_t, discount_t, q_t_value, q_t_selector) -> jnp.ndarray:
  """r_t + discount_t * q_t_value[argmax q_t_selector] (van Hasselt et al., 2016).

  The selector is the online network's Q-values at the next state, the value the target
  network's; no gradient flows through the target. Shapes: scalars and [A] vectors.
  """
  best = jnp.argmax(q_t_selector)
  return jax.lax.stop_gradient(r_t + discount_t * q_t_value[best])


def double_q_learning(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector) -> jnp.ndarray:
  """TD error of Double Q-learning for one transition: target - q_tm1[a_tm1]."""
  return double_q_target(r_t, discount_t, q_t_value, q_t_selector) - q_tm1[a_tm1]


def n_step_return(rewards, dones, gamma: float):
  """Discounted return of n consecutive transitions and the discount of the bootstrap.

  rewards, dones: [n] (transition k's reward, whether it ended the episode). The return
  stops at the first `done`; the bootstrap discount is gamma^n, or 0 when a `done` occurred.
  Returns (return, bootstrap_discount), float32 scalars.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  alive = jnp.cumprod(1.0 - jnp.asarray(dones, jnp.float32))       # alive after step k
  alive_before = jnp.concatenate([jnp.ones((1,), jnp.float32), alive[:-1]])
  powers = gamma ** jnp.arange(rewards.shape[0], dtype=jnp.float32)
  ret = jnp.sum(powers * alive_before * rewards)
  return ret, (gamma ** rewards.shape[0]) * alive[-1]
