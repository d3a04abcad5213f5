"""Clairvoyant routers: upper references that see what no real router can (issue 11's headroom).

Two levels, each an honest bound only in the sense of "what knowing more buys"; neither is an
optimum (routing is a sequential problem with no tractable exact solution at these sizes):

  ClairvoyantGreedy  the deadline-aware greedy (`bes.heuristics.DeadlineGreedy`, same knobs)
                     told the current request's true output and prompt lengths, which it
                     uses for the request's own prefill, decode and deadline. It reads them
                     from the simulator's `EnvState`; a serving runtime's `ServingView` does
                     not carry them (`ValueError`).
  run_lookahead_episode
                     the rollout algorithm with a known future: before each decision, every
                     model is tried by simulating the jitted environment from the current
                     state for `horizon` more arrivals, the base policy routing them, over
                     the *true* future requests (the episode's own step keys, so the same
                     arrivals, tasks and lengths the episode will draw), and the model with
                     the highest summed reward is taken (the window ends by draining the
                     instances, so requests still running at the horizon count too). With a
                     horizon that reaches the
                     episode's end, a deterministic base policy and the same key schedule,
                     the result is never below the base policy's own episode (the rollout
                     improvement property; a test checks it); shorter horizons are a
                     heuristic improvement.

`run_lookahead_episode` draws its requests exactly as `bes.env.rollout.run_episode` does from
the same key, so its outcomes compare request by request with every other policy's.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes.env import rollout as rollout_lib
from bes.env.serving_env import EnvParams, ServingEnv
from bes.heuristics import DeadlineGreedy


@struct.dataclass
class ClairvoyantGreedy:
  """`DeadlineGreedy` (`base`, its tuned knobs) with the current request's true lengths."""
  base: DeadlineGreedy

  def __call__(self, key, obs, state) -> jnp.ndarray:
    del key, obs
    request = getattr(state, "request", None)
    if request is None:
      raise ValueError("ClairvoyantGreedy reads the request's true lengths from the "
                       f"simulator's EnvState; got a {type(state).__name__}")
    return self.base.choose(state, request.output_len, request.prompt_len)


def _lookahead_values(env: ServingEnv, params: EnvParams, base, state, future_keys, valid,
                      steps_left):
  """Summed reward of routing the current request to each model, then `base` for the next
  arrivals, then draining: float32 [M]. `future_keys` [H + 1, 2] are this step's and the
  next H steps' keys (split into act / step keys as `run_episode` does); `valid` [H + 1]
  masks steps past the episode; `steps_left` = requests after this one in the episode.

  The simulated episode is H + 1 requests long and starts at the index that puts its last
  step (which drains every instance, so every request routed in the window gets its outcome
  and its utility is counted) at min(H, steps_left): at the real episode's end when that is
  nearer, else at the horizon. Without the drain a truncated lookahead ignores the utility
  of requests still running at its horizon, and prefers whatever finishes inside it."""
  horizon = future_keys.shape[0] - 1
  look = dataclasses.replace(env, record=False, episode_len=horizon + 1)
  start = state.replace(outcomes=None,
                        index=jnp.int32(horizon) - jnp.minimum(horizon, steps_left))
  step_keys = jax.vmap(jax.random.split)(future_keys)             # [H + 1, 2, 2]

  def value(action):
    _, s, r0, _, _ = look.step(step_keys[0, 1], start, action, params)

    def body(carry, xs):
      s, = carry
      (k_act, k_step), ok = xs
      obs = look.observe(s, params)
      _, s, r, _, _ = look.step(k_step, s, base(k_act, obs, s), params)
      return (s,), jnp.where(ok, r, 0.0)

    _, rewards = jax.lax.scan(body, (s,), ((step_keys[1:, 0], step_keys[1:, 1]), valid[1:]))
    return jnp.where(valid[0], r0, 0.0) + rewards.sum()

  return jax.vmap(value)(jnp.arange(env.num_models, dtype=jnp.int32))


def run_lookahead_episode(env: ServingEnv, params: EnvParams, base, key: jax.Array,
                          horizon: int, chunk: int | None = None, progress=None):
  """One recorded episode routed by lookahead over the true future (module docstring);
  returns (outcomes, step rewards [episode_len]) as `bes.env.rollout.run_episode` does for
  the same `key` (same requests). `base`: a policy pytree (e.g. `ClairvoyantGreedy`) that
  routes the simulated future; `horizon` >= 0 arrivals after the current one. Cost per
  decision: num_models * (horizon + 1) environment steps."""
  if not env.record:
    raise ValueError("run_lookahead_episode needs an environment built with record=True")
  horizon = int(horizon)
  if horizon < 0:
    raise ValueError(f"run_lookahead_episode: horizon must be >= 0, got {horizon}")
  _, chunks = rollout_lib.episode_keys(key, env.episode_len, chunk)  # the same requests
  all_keys = chunks.reshape(-1, chunks.shape[-1])
  if horizon:                     # keys for the steps past the episode's end (masked)
    all_keys = jnp.concatenate([all_keys, jax.random.split(jax.random.fold_in(key, 1), horizon)])
  run = _lookahead_step_fn(env, horizon, int(chunks.shape[1]))
  state, rewards = rollout_lib.run_chunks(
      env, params, key, chunk, progress, lambda start: start,
      lambda obs, state, _, m, start: run(params, base, (obs, state), all_keys,
                                          jnp.int32(start), jnp.int32(m)))
  return rollout_lib.outcomes_to_numpy(state.outcomes), rewards


@functools.lru_cache(maxsize=32)
def _lookahead_step_fn(env: ServingEnv, horizon: int, chunk: int):
  """The jitted chunk of `chunk` lookahead decisions (one compilation per env / horizon /
  chunk; the policy and params are traced)."""
  n = env.episode_len

  @jax.jit
  def run(params, base, carry, all_keys, start, num_live):
    def body(carry, t):
      obs, state = carry
      i = start + t
      future = jax.lax.dynamic_slice(all_keys, (i, 0), (horizon + 1, all_keys.shape[1]))
      valid = (i + jnp.arange(horizon + 1)) < n
      values = _lookahead_values(env, params, base, state, future, valid, n - 1 - i)
      action = jnp.argmax(values).astype(jnp.int32)
      _, k_step = jax.random.split(all_keys[i])

      def step(c):
        obs, state, reward, _, _ = env.step(k_step, c[1], action, params)
        return (obs, state), reward

      (obs, state), reward = jax.lax.cond(t < num_live, step,
                                          lambda c: (c, jnp.float32(0)), (obs, state))
      return (obs, state), reward

    return jax.lax.scan(body, carry, jnp.arange(chunk))

  return run
