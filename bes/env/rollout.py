"""Running a policy through the environment: one jitted `lax.scan` over arriving requests."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bes import clock
from bes.env.serving_env import EnvParams, ServingEnv
from bes.parallel import mesh as mesh_lib


def rollout(env: ServingEnv, params: EnvParams, policy, key: jax.Array, num_steps: int,
            max_passes: int | None = None):
  """Resets, then makes `num_steps` calls of the policy and the environment. Jittable (`env`,
  `num_steps`, `max_passes` static).

  With `max_passes=None` every call is a `step` (one decision each); with k, a
  `step_async` of at most k event passes per group, whose action only environments that are
  ready use. Returns (final_state, per-call dict with `reward` float32, `done`, `decided`
  bool, `action` int32, `rejected` bool, `completed` and `on_time` int32 counts).
  """
  k_reset, k_run = jax.random.split(key)
  obs, state = env.reset(k_reset, params)

  def body(carry, k):
    obs, state = carry
    k_act, k_step = jax.random.split(k)
    action = policy(k_act, obs, state)
    obs, state, reward, done, decided, info = env.step_async(k_step, state, action, params,
                                                             max_passes)
    return (obs, state), dict(reward=reward, done=done, decided=decided, action=action, **info)

  (_, state), trajectory = jax.lax.scan(body, (obs, state), jax.random.split(k_run, num_steps))
  return state, trajectory


def rollouts(env: ServingEnv, params: EnvParams, policy, keys: jax.Array, num_steps: int,
             params_batched: bool = False):
  """`rollout` from each of `keys` [K, 2] with one decision per step; returns the per-call
  dict of every rollout, each entry [K, num_steps]. Jittable (`env`, `num_steps` static).
  With `num_steps` a multiple of `env.episode_len` every request's outcome is counted
  (episodes end by draining). With `params_batched`, `params` is a stack of K EnvParams,
  one per key (e.g. a randomised training distribution). Scores policies in the learner's
  evaluation and in tuning."""
  return jax.vmap(lambda p, k: rollout(env, p, policy, k, num_steps)[1],
                  in_axes=(0 if params_batched else None, 0))(params, keys)


def outcomes_to_numpy(outcomes) -> dict:
  """Recorded `Outcomes` as numpy arrays: `arrival` (s, float64 exact), `task`, `model`,
  `instance`, `latency` (s, inf when rejected), `latency_us` (int64 whole microseconds, exact
  for any duration; -1 when rejected), `on_time`,
  `rejected`, `utility`. Works on batched outcomes ([..., episode_len])."""
  o = jax.device_get(outcomes)
  latency_us = np.asarray(o.latency_us, np.int64)
  latency_us = np.where(latency_us < 0, -1,
                        np.asarray(o.latency_epochs, np.int64) * clock.EPOCH_US + latency_us)
  return dict(
      arrival=np.cumsum(np.asarray(o.gap_us, np.int64), axis=-1) / clock.US_PER_S,
      task=np.asarray(o.task), model=np.asarray(o.model), instance=np.asarray(o.instance),
      latency=np.where(latency_us < 0, np.inf, latency_us / clock.US_PER_S), latency_us=latency_us,
      on_time=np.asarray(o.on_time), rejected=np.asarray(o.rejected),
      utility=np.asarray(o.utility))


_jit_reset = jax.jit(lambda env, params, key: env.reset(key, params), static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _chunk(env, params, policy, obs, state, keys, num_live):
  """Steps from (obs, state), one per row of `keys`; rows from `num_live` on are skipped, so
  that every chunk, the last one included, has one shape (one compilation)."""
  def body(carry, xs):
    k, live = xs
    k_act, k_step = jax.random.split(k)
    step = lambda c: env.step(k_step, c[1], policy(k_act, c[0], c[1]), params)[:3]
    skip = lambda c: (c[0], c[1], jnp.float32(0))
    obs, state, reward = jax.lax.cond(live, step, skip, carry)
    return (obs, state), reward

  live = jnp.arange(keys.shape[0]) < num_live
  return jax.lax.scan(body, (obs, state), (keys, live))


def run_episode(env: ServingEnv, params: EnvParams, policy, key: jax.Array,
                chunk: int | None = None, progress=None):
  """One whole episode with outcome recording; returns (outcomes, step rewards [episode_len]).

  Runs as jitted scans of `chunk` steps (default: the whole episode; one compilation, the
  last chunk padded with skipped steps), calling `progress(steps_done, episode_len)` after
  each. `policy` is a pytree (traced: one compilation serves every fixed policy). Outcomes:
  see `outcomes_to_numpy`.
  """
  if not env.record:
    raise ValueError("run_episode needs an environment built with record=True")
  state, rewards = run_chunks(
      env, params, key, chunk, progress, lambda start: start,
      lambda obs, state, keys, m, _: _chunk(env, params, policy, obs, state, keys, m))
  return outcomes_to_numpy(state.outcomes), rewards


def episode_keys(key: jax.Array, episode_len: int, chunk: int | None):
  """(reset key, step keys [num_chunks, chunk, 2]) of an episode of `episode_len` steps run
  in chunks of `chunk` (None: one chunk; the last chunk padded): the one key schedule of
  every recorded episode (`run_episode(s)`, `bes.clairvoyant`), so that every policy run
  from the same `key` sees the same requests."""
  chunk = episode_len if not chunk else int(chunk)
  k_reset, k_run = jax.random.split(key)
  num_chunks = -(-episode_len // chunk)
  return k_reset, jax.random.split(k_run, num_chunks * chunk).reshape(num_chunks, chunk, -1)


def run_chunks(env, params, key, chunk, progress, initial, step):
  """The chunk loop of recorded episodes: reset with `episode_keys`' reset key (`initial`
  maps the reset (obs, state), e.g. to a stack), then `step(obs, state, keys [chunk, 2],
  num_live, start)` -> ((obs, state), rewards [..., chunk]) for each chunk of its step keys
  (`start`: the steps done before it), with `progress` after each chunk; returns the final
  state and the live steps' rewards [..., episode_len]."""
  n = env.episode_len
  k_reset, keys = episode_keys(key, n, chunk)
  obs, state = initial(_jit_reset(env, params, k_reset))
  rewards, done = [], 0
  for c in range(keys.shape[0]):
    m = min(keys.shape[1], n - done)
    (obs, state), reward = step(obs, state, keys[c], m, done)
    rewards.append(np.asarray(reward)[..., :m])
    done += m
    if progress is not None:
      progress(done, n)
  return state, np.concatenate(rewards, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 7))
def _chunks(env, params, policies, obs, state, keys, num_live, mesh):
  """`_chunk` for a stack of policies and their (obs, state), sharded over the mesh's 'data'
  axis ('points'); every policy gets the same step keys."""
  policies, obs, state = mesh_lib.constrainer(mesh)((policies, obs, state), "points")
  return jax.vmap(lambda p, o, s: _chunk(env, params, p, o, s, keys, num_live))(policies, obs,
                                                                                  state)


def run_episodes(env: ServingEnv, params: EnvParams, policies, key: jax.Array,
                 chunk: int | None = None, progress=None, mesh=None) -> list:
  """`run_episode` for each of a stack of P policies (leading axis P, e.g. a learned router's
  seeds) on the same requests, in one vmapped program whose policies are sharded over the
  `mesh`'s 'data' axis (padded to a multiple of it); returns [(outcomes, step rewards)] per
  policy, what `run_episode` returns for that policy alone (bitwise on CPU in the tests; a
  batched matmul could round a near-tied Q-value differently on other backends)."""
  if not env.record:
    raise ValueError("run_episodes needs an environment built with record=True")
  shards = 1 if mesh is None else mesh_lib.axis_size(mesh, "points")
  policies, count = mesh_lib.pad_leading(policies, shards)
  size = jax.tree_util.tree_leaves(policies)[0].shape[0]
  state, rewards = run_chunks(
      env, params, key, chunk, progress,
      lambda start: jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (size,) + x.shape),
                                           start),
      lambda obs, state, keys, m, _: _chunks(env, params, policies, obs, state, keys, m,
                                          mesh if shards > 1 else None))
  outcomes = outcomes_to_numpy(jax.tree_util.tree_map(lambda x: x[:count], state.outcomes))
  rewards = rewards[:count]
  return [({k: v[i] for k, v in outcomes.items()}, rewards[i]) for i in range(count)]
