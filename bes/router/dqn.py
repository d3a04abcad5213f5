"""Double DQN against the vectorised serving environment, as one jitted program.

`make_train(dqn, train, env, env_params, eval_env, eval_params)` (typed configs,
`bes/router/config.py`) returns a `Trainer` of pure functions in the shape PureJaxRL
popularised, structured like Stoix's `ff_ddqn`:
  init(key) -> LearnerState                    one seed: network, optimiser, replay, envs
  chunk(state) -> (state, ChunkStats)          `lax.scan` over `train.chunk_iterations`
  evaluate(state, key) -> EvalStats            greedy policy on the evaluation environment
  keep_best(state, eval) -> state              remember the best-evaluated params
  train(key) -> (state, ChunkStats per chunk)  everything at once (a scan over chunks)
Each is written for one seed; `jax.vmap` runs several seeds in one call (`bes.experiment.train`
jits `vmap(chunk)` and drives the chunks from Python, evaluating and checkpointing between
them).

One iteration: every parallel environment is offered an epsilon-greedy action from the
online network (with `dqn.demo`, a share `demo_frac` of the exploratory actions are the
deadline-aware greedy's instead of random: demonstrations in the replay, DQfD-style without
its margin loss); `step_async` runs at most `max_passes` event passes per model group, so
environments move on their own clocks. An environment that was ready at the start of the
call used the action; when it reaches its next arrival (`decided`), the transition (observation
and action at routing, the reward, the next observation, done) enters its replay ring. The
reward (`dqn.credit`) is either the environment's step reward ('step': utilities of
the requests that finished during the step, mostly other requests' than the one routed) or
the routed request's own utility ('request', the default), added to its transition when the
request completes; both sum to the same total over an episode, but crediting each request
to its own decision removes most of the noise from the action's return.
Then `updates_per_iteration` gradient steps on n-step Double-DQN targets (online network
chooses, target network evaluates), Huber loss, Adam with global-norm clipping, and a
periodic or Polyak target update.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bes.env import rollout as rollout_lib
from bes.env.serving_env import EnvParams, ServingEnv
from bes.router import features as features_lib
from bes.router import losses, replay as replay_lib
from bes.router.config import DQNConfig, TrainConfig
from bes.router.policy import LearnedPolicy
from bes.router.qnetwork import QNetwork, make_qnetwork

class Envs(NamedTuple):
  """The parallel training environments (leading axis E) and the decision each one waits on."""
  state: Any                     # EnvState [E]
  obs: jnp.ndarray               # float32 [E, D], latest observation
  pending_obs: jnp.ndarray       # float32 [E, D], observation at the routing in flight
  pending_action: jnp.ndarray    # int32 [E], action of the routing in flight
  pending_index: jnp.ndarray     # int32 [E], its request's index in the episode
  pending_reward: jnp.ndarray    # float32 [E], its request's utility so far (credit mode)
  pending_resolved: jnp.ndarray  # bool [E], whether that utility is final (credit mode)
  episode_base: jnp.ndarray      # int32 [E], replay index of the episode's first transition


class LearnerState(NamedTuple):
  """Everything a seed's training needs to continue exactly (checkpointed whole)."""
  params: Any
  target_params: Any
  opt_state: Any
  replay: replay_lib.Replay
  envs: Envs
  key: jax.Array                 # uint32 [2]
  iteration: jnp.ndarray         # int32, iterations done
  updates: jnp.ndarray           # int32, gradient steps done
  reward_mean: jnp.ndarray       # float32, running mean reward per decision (centering)
  best_params: Any               # the online params with the best evaluation so far
  best_utility: jnp.ndarray      # float32, that evaluation's mean utility (-inf before any)


class ChunkStats(NamedTuple):
  """Sums over one chunk (all environments): decisions, reward, on-time completions,
  completions and rejections; means of the loss, Q-value and epsilon."""
  decisions: jnp.ndarray
  reward: jnp.ndarray
  on_time: jnp.ndarray
  completed: jnp.ndarray
  rejected: jnp.ndarray
  loss: jnp.ndarray
  q_mean: jnp.ndarray
  epsilon: jnp.ndarray


class EvalStats(NamedTuple):
  """Greedy evaluation over whole episodes (drained): per-request means."""
  mean_utility: jnp.ndarray
  availability: jnp.ndarray
  rejected_frac: jnp.ndarray


class Trainer(NamedTuple):
  network: QNetwork
  init: Callable
  chunk: Callable
  evaluate: Callable
  keep_best: Callable
  train: Callable
  num_chunks: int


def learning_rate_schedule(d: DQNConfig):
  """Adam's step size: constant, or (`lr_decay`) linear to lr * lr_final_frac over the
  run's gradient steps."""
  if not d.lr_decay:
    return d.learning_rate
  steps = max(1, (d.num_iterations - d.learning_starts) * d.updates_per_iteration)
  return optax.linear_schedule(d.learning_rate, d.learning_rate * d.lr_final_frac, steps)


def behaviour_action(greedy, random_action, demo_action, u, eps, demo_frac):
  """The action each environment takes, int32 [E], from a uniform draw u [E]: the
  demonstrator's where u < eps * demo_frac, a random one where u < eps otherwise, else the
  online network's greedy one (epsilon-greedy, a share demo_frac of the exploration
  demonstrated)."""
  return jnp.where(u < eps * demo_frac, demo_action,
                   jnp.where(u < eps, random_action, greedy)).astype(jnp.int32)


def _demonstrator(d: DQNConfig, env_params: EnvParams, params_batched: bool):
  """The `dqn.demo` policy (None without one): `features.reference_greedy` of the training
  environment."""
  if not d.demo or d.demo_frac == 0:
    return None
  return features_lib.reference_greedy(env_params, params_batched, d.reference)


def make_train(d: DQNConfig, train: TrainConfig, env: ServingEnv, env_params: EnvParams,
               eval_env: ServingEnv, eval_params: EnvParams,
               params_batched: bool = False,
               constrain: Callable | None = None) -> Trainer:
  """The training functions for a validated `DQNConfig` / `TrainConfig` (module docstring;
  `bes.experiment.config` builds both from a config).

  `env_params` is one EnvParams shared by the E training environments, or (with
  `params_batched`) a stack of E of them (e.g. one arrival rate each). `eval_env` must have
  `record=False`; its episodes are evaluated whole (`eval_env.episode_len` decisions).
  `constrain(tree, logical)` (`bes.parallel.mesh.constrainer`), when given, shards the
  leading axis of every sampled replay batch ('batch') and of the evaluation episodes' keys
  ('batch'): `bes.experiment.train` maps both onto the mesh's 'data' axis, so that the
  forward / backward pass is data-parallel (XLA all-reduces the gradients over 'data') and
  the evaluation episodes run in parallel. Sampling is unchanged (same transitions, same key).
  """
  num_envs, num_actions = d.num_envs, env.num_models
  n_step, gamma, batch_size = d.n_step, d.gamma, d.batch_size
  chunk_len = train.chunk_iterations
  num_iterations = d.num_iterations
  layout = features_lib.layout(env.num_tasks, num_actions, d.features)
  network = make_qnetwork(layout, d)
  optimiser = optax.chain(optax.clip_by_global_norm(d.max_grad_norm),
                          optax.adam(learning_rate_schedule(d)))
  epsilon = optax.linear_schedule(d.eps_start, d.eps_end,
                                  max(1, int(d.eps_decay_frac * num_iterations)))
  learning_starts = d.learning_starts
  credit_requests = d.credit == "request"
  if credit_requests != env.credit:
    raise ValueError(f"config.dqn.credit={d.credit!r} needs an environment built with "
                     f"credit={credit_requests} (bes.experiment.Setup.env(..., credit=...))")
  params_axis = 0 if params_batched else None
  v_reset = jax.vmap(env.reset, in_axes=(0, params_axis))
  v_step = jax.vmap(env.step_async, in_axes=(0, 0, 0, params_axis, None))
  predictor = features_lib.predictor(layout, env_params, params_batched, d.reference)
  v_features = jax.vmap(lambda o, s: features_lib.extend(o, s, layout, predictor))
  demonstrator = _demonstrator(d, env_params, params_batched)

  def init(key: jax.Array) -> LearnerState:
    k_net, k_env, k_run = jax.random.split(key, 3)
    obs, state = v_reset(jax.random.split(k_env, num_envs), env_params)
    obs = v_features(obs, state)
    params = network.init(k_net, obs[:1])
    zeros = jnp.zeros(num_envs, jnp.int32)
    envs = Envs(state=state, obs=obs, pending_obs=obs, pending_action=zeros, pending_index=zeros,
                pending_reward=jnp.zeros(num_envs, jnp.float32),
                pending_resolved=jnp.zeros(num_envs, bool), episode_base=zeros)
    return LearnerState(params=params, target_params=params, opt_state=optimiser.init(params),
                        replay=replay_lib.init(num_envs, d.replay_capacity, layout.size),
                        envs=envs, key=k_run, iteration=jnp.int32(0), updates=jnp.int32(0),
                        reward_mean=jnp.float32(0), best_params=params,
                        best_utility=jnp.float32(-jnp.inf))

  # Reward centering: the n-step return minus the running mean reward over its n steps, so
  # Q-values measure value relative to the average (their scale is the advantage's, not
  # reward / (1 - gamma)); with episode ends not terminal this leaves the policy unchanged.
  center_steps = sum(gamma ** k for k in range(n_step)) if d.reward_center else 0.0

  def loss_fn(params, target_params, batch: replay_lib.Batch, reward_mean):
    q_tm1 = network.apply(params, batch.obs)
    q_t_selector = network.mask_values(network.apply(params, batch.next_obs), batch.next_obs)
    q_t_value = network.apply(target_params, batch.next_obs)
    ret = (batch.ret - center_steps * reward_mean) * d.reward_scale
    td = jax.vmap(losses.double_q_learning)(q_tm1, batch.action, ret, batch.discount, q_t_value,
                                            q_t_selector)
    loss = jnp.sum(batch.weight * losses.huber(td, d.huber_delta))
    return loss / jnp.maximum(batch.weight.sum(), 1.0), jnp.mean(q_tm1)

  def gradient_step(replay, reward_mean, carry, key):
    params, target_params, opt_state, updates = carry
    batch = replay_lib.sample(replay, key, batch_size, n_step, gamma)
    if constrain is not None:
      batch = constrain(batch, "batch")
    (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target_params, batch,
                                                                      reward_mean)
    step, opt_state = optimiser.update(grads, opt_state, params)
    params = optax.apply_updates(params, step)
    updates = updates + 1
    if d.target_update == "polyak":
      target_params = optax.incremental_update(params, target_params, d.polyak_tau)
    else:
      target_params = jax.tree_util.tree_map(
          lambda p, t: jnp.where(updates % d.target_period == 0, p, t), params, target_params)
    return (params, target_params, opt_state, updates), (loss, q_mean)

  def learn(ls: LearnerState, key):
    carry = (ls.params, ls.target_params, ls.opt_state, ls.updates)
    carry, (loss, q_mean) = jax.lax.scan(lambda c, k: gradient_step(ls.replay, ls.reward_mean, c, k), carry,
                                         jax.random.split(key, d.updates_per_iteration))
    params, target_params, opt_state, updates = carry
    return ls._replace(params=params, target_params=target_params, opt_state=opt_state,
                       updates=updates), loss.mean(), q_mean.mean()

  def iteration(ls: LearnerState, _):
    key, k_explore, k_random, k_step, k_learn = jax.random.split(ls.key, 5)
    envs = ls.envs
    eps = epsilon(ls.iteration)
    greedy = network.greedy(network.apply(ls.params, envs.obs), envs.obs)
    random_action = jax.random.randint(k_random, (num_envs,), 0, num_actions, jnp.int32)
    u = jax.random.uniform(k_explore, (num_envs,))
    demo_action = (random_action if demonstrator is None else
                   jax.vmap(lambda s: demonstrator(None, None, s))(envs.state))
    action = behaviour_action(greedy, random_action, demo_action, u, eps, d.demo_frac)
    ready = envs.state.ready
    pending = envs._replace(
        pending_obs=jnp.where(ready[:, None], envs.obs, envs.pending_obs),
        pending_action=jnp.where(ready, action, envs.pending_action),
        pending_index=jnp.where(ready, envs.state.index, envs.pending_index))
    obs, state, step_reward, done, decided, info = v_step(
        jax.random.split(k_step, num_envs), envs.state, action, env_params, d.max_passes)
    obs = v_features(obs, state)
    reward = step_reward
    if credit_requests:
      replay, pending = _credit(ls.replay, pending, ready, info)
      reward, resolved = pending.pending_reward, pending.pending_resolved
    else:
      replay, resolved = ls.replay, None
    terminal = done & d.terminal_episode_end
    replay = replay_lib.add(replay, pending.pending_obs, pending.pending_action, reward, terminal,
                            obs, decided, resolved)
    n_decided = decided.sum(dtype=jnp.int32)
    batch_mean = step_reward.sum() / jnp.maximum(n_decided, 1)
    rate = jnp.where(n_decided > 0, d.center_rate, 0.0)
    ls = ls._replace(reward_mean=ls.reward_mean + rate * (batch_mean - ls.reward_mean))
    base = jnp.where(decided & done, replay.count, pending.episode_base)
    ls = ls._replace(replay=replay, key=key,
                     envs=pending._replace(state=state, obs=obs, episode_base=base))
    go = (ls.iteration >= learning_starts) & replay_lib.can_sample(replay, n_step)
    skip = lambda ls, k: (ls, jnp.float32(0), jnp.float32(0))
    ls, loss, q_mean = jax.lax.cond(go, learn, skip, ls, k_learn)
    ls = ls._replace(iteration=ls.iteration + 1)
    stats = ChunkStats(decisions=n_decided, reward=step_reward.sum(),
                       on_time=info["on_time"].sum(), completed=info["completed"].sum(),
                       rejected=(info["rejected"]).sum(dtype=jnp.int32), loss=loss,
                       q_mean=q_mean, epsilon=eps)
    return ls, stats

  def _credit(replay, envs: Envs, ready, info):
    """Credit to requests: the utility of each request completed in this call goes to the
    transition that routed it: the one in flight (kept pending until the next arrival) or an
    earlier one of this episode, already in the replay ring. A rejection's penalty is
    known at once."""
    penalty = jnp.broadcast_to(-env_params.miss_penalty, (num_envs,))
    rejected = ready & info["rejected"]
    req, utility, completed = info["credit"]                        # [E, K]
    own = completed & (req == envs.pending_index[:, None])
    reward = jnp.where(ready, 0.0, envs.pending_reward) + jnp.where(rejected, penalty, 0.0)
    reward = reward + jnp.where(own, utility, 0.0).sum(-1)
    resolved = (jnp.where(ready, False, envs.pending_resolved) | rejected | own.any(-1))
    replay = replay_lib.credit(replay, envs.episode_base[:, None] + req, utility, completed & ~own)
    return replay, envs._replace(pending_reward=reward, pending_resolved=resolved)

  def chunk(ls: LearnerState):
    ls, stats = jax.lax.scan(iteration, ls, None, length=chunk_len)
    sums = ChunkStats(*(x.sum() for x in stats[:5]), *(x.mean() for x in stats[5:]))
    return ls, sums

  def evaluate(ls: LearnerState, key: jax.Array,
               num_episodes: int = train.eval_episodes) -> EvalStats:
    """Greedy routing over `num_episodes` whole evaluation episodes (one decision per step)."""
    policy = LearnedPolicy(params=ls.params, network=network, predictor=predictor)
    keys = jax.random.split(key, num_episodes)
    traj = rollout_lib.rollouts(eval_env, eval_params, policy,
                                keys if constrain is None else constrain(keys, "batch"),
                                eval_env.episode_len)
    n = num_episodes * eval_env.episode_len
    return EvalStats(mean_utility=traj["reward"].sum() / n, availability=traj["on_time"].sum() / n,
                     rejected_frac=traj["rejected"].sum() / n)

  def keep_best(ls: LearnerState, ev: EvalStats) -> LearnerState:
    """Keeps the online params if their evaluation beats the best so far (model selection
    on the evaluation stream, which is not the stream final results are measured on)."""
    better = ev.mean_utility > ls.best_utility
    best = jax.tree_util.tree_map(lambda p, b: jnp.where(better, p, b), ls.params, ls.best_params)
    return ls._replace(best_params=best,
                       best_utility=jnp.where(better, ev.mean_utility, ls.best_utility))

  num_chunks = num_iterations // chunk_len

  def train(key: jax.Array):
    ls = init(key)
    return jax.lax.scan(lambda ls, _: chunk(ls), ls, None, length=num_chunks)

  return Trainer(network=network, init=init, chunk=chunk, evaluate=evaluate, keep_best=keep_best,
                 train=train,
                 num_chunks=num_chunks)
