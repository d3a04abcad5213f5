"""The Double DQN learner (`bes.router.dqn`, `checkpoint`, `policy`) and its training loop
(`bes.experiment.train` as `train_lib`, `bes.experiment.workdir`).

  * On a tiny tabular MDP with a known optimum, behind the serving environment's interface,
    the greedy policy trained by the same agent code that routes is optimal.
  * On the serving environment (tiny config, 2 seeds under jit(vmap)): both reward credit
    modes run; crediting requests re-attributes the episode's reward without losing or
    duplicating any of it.
  * `train_lib.train` resumed after an interruption ends exactly like one uninterrupted run;
    a resume with another config is refused; the saved router loads and routes greedily.
  * Bad config values raise ValueErrors naming the field.

Compiling the training program of the serving environment dominates the run time, so this
module turns on JAX's persistent compilation cache while it runs (conftest.py's
`persistent_compilation_cache`, shared with `tests/test_router_launchers.py`): identical
programs built by different calls compile once. The tiny serving run is tests/tiny_router.py.
"""
import csv
import dataclasses
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from bes.experiment import Setup, config as config_lib, train as train_lib, workdir as workdir_lib
from bes.router import checkpoint, dqn
from bes.router.policy import LearnedPolicy
from configs import paper as paper_config

pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")


# ------------------------------------------------------------- a tabular MDP behind the env API
@struct.dataclass
class TabularParams:
  """reward: float32 [S, A]; next_state: int32 [S, A]; miss_penalty: read by credit mode only."""
  reward: jnp.ndarray
  next_state: jnp.ndarray
  miss_penalty: jnp.ndarray = 0.0


@struct.dataclass
class TabularState:
  index: jnp.ndarray       # int32, decision index in the episode
  task: jnp.ndarray        # int32, the observed state
  ready: jnp.ndarray       # bool, waiting for a decision
  remaining: jnp.ndarray   # int32, event passes left before the next decision
  reward: jnp.ndarray      # float32, reward of the decision in flight
  next_task: jnp.ndarray   # int32, state after the decision in flight


@dataclasses.dataclass(frozen=True)
class TabularEnv:
  """A deterministic MDP with the interface `make_train` and `rollout` use (`ServingEnv`'s).

  States are observed as the 'task' one-hot (the load and rate features stay 0); actions are
  'models'. Decisions are asynchronous like the serving env's: after action a the
  environment needs 1 + a event passes before the next decision, and `step_async` with
  `max_passes=k` does at most k of them per call (`None`: all). Episodes start in state 0.
  """
  num_tasks: int
  num_models: int
  episode_len: int
  credit: bool = False

  @property
  def obs_size(self) -> int:
    return self.num_tasks + self.num_models + 1

  def observe(self, state: TabularState) -> jnp.ndarray:
    task = jax.nn.one_hot(state.task, self.num_tasks, dtype=jnp.float32)
    return jnp.concatenate([task, jnp.zeros(self.num_models + 1, jnp.float32)])

  def reset(self, key, params):
    del key, params
    z = jnp.int32(0)
    state = TabularState(index=z, task=z, ready=jnp.bool_(True), remaining=z,
                         reward=jnp.float32(0), next_task=z)
    return self.observe(state), state

  def step_async(self, key, state, action, params, max_passes):
    del key
    go, action = state.ready, jnp.asarray(action, jnp.int32)
    remaining = jnp.where(go, 1 + action, state.remaining)
    passes = remaining if max_passes is None else jnp.minimum(remaining, max_passes)
    remaining = remaining - passes
    reward = jnp.where(go, params.reward[state.task, action], state.reward)
    next_task = jnp.where(go, params.next_state[state.task, action], state.next_task)
    decided = remaining == 0
    done = decided & (state.index == self.episode_len - 1)
    state = TabularState(
        index=jnp.where(done, 0, state.index + decided.astype(jnp.int32)),
        task=jnp.where(done, 0, jnp.where(decided, next_task, state.task)),
        ready=decided, remaining=remaining, reward=reward, next_task=next_task)
    info = dict(rejected=jnp.bool_(False), completed=decided.astype(jnp.int32),
                on_time=(decided & (reward >= 1.0)).astype(jnp.int32))
    return self.observe(state), state, jnp.where(decided, reward, 0.0), done, decided, info


# A 3-state chain whose 'forward' action depends on the state (1, 0, 1): forward moves on,
# and pays 1 from the last state (back to state 0); any other action pays 0.1 at once and
# returns to state 0. The optimum goes forward always: 1 per 3 decisions (episodes of 6
# decisions: return 2), while the greedy short-term 0.1 yields 0.6 per episode.
CHAIN = TabularParams(reward=jnp.array([[0.1, 0.0], [0.0, 0.1], [0.1, 1.0]]),
                      next_state=jnp.array([[0, 1], [2, 0], [0, 0]], jnp.int32))
CHAIN_OPTIMUM = 1.0 / 3.0


def _typed(config):
  """(DQNConfig, TrainConfig) of a config, validated (`bes.experiment.config`)."""
  d = config_lib.dqn_config(config)
  return d, config_lib.train_config(config, d)


def _tabular_config():
  config = paper_config.get_config()
  d = config.dqn
  d.update(credit="step", obs_norm="none", hidden="32", num_envs=8, batch_size=64,
           replay_capacity=128, n_step=3, gamma=0.9, learning_rate=3e-3, num_iterations=400,
           learning_starts=20, eps_decay_frac=0.5, target_period=50, max_passes=1)
  config.train.chunk_iterations = 200
  return config


@pytest.mark.slow
def test_greedy_policy_is_optimal_on_a_chain():
  env = TabularEnv(num_tasks=3, num_models=2, episode_len=6)
  trainer = dqn.make_train(*_typed(_tabular_config()), env, CHAIN, env, CHAIN)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  state, stats = jax.jit(jax.vmap(trainer.train))(keys)
  ev = jax.device_get(jax.jit(jax.vmap(trainer.evaluate))(state, keys))
  np.testing.assert_allclose(ev.mean_utility, CHAIN_OPTIMUM, rtol=1e-6)
  np.testing.assert_allclose(ev.availability, CHAIN_OPTIMUM, rtol=1e-6)
  greedy = jax.vmap(lambda p: LearnedPolicy(p, trainer.network)(None, jnp.eye(3, 6), None))
  np.testing.assert_array_equal(greedy(state.params), [[1, 0, 1]] * 2)
  # Asynchronous decisions: fewer decisions than calls, and every environment decided.
  decisions = np.asarray(stats.decisions).sum(-1)
  assert np.all(decisions < 400 * 8) and np.all(decisions > 400 * 8 / 2 - 8)


# ------------------------------------------------------------------ the serving environment
def _direct_run(config):
  """Trains like `train_lib.train` (same jitted programs), without a workdir."""
  setup = Setup.from_config(config)
  trainer, _ = train_lib.make_trainer(setup)
  state = jax.jit(jax.vmap(trainer.init))(setup.seed_keys())
  chunk = jax.jit(jax.vmap(trainer.chunk), donate_argnums=0)
  stats = []
  for _ in range(trainer.num_chunks):
    state, s = chunk(state)
    stats.append(jax.device_get(s))
  return trainer, state, stats


@pytest.fixture(scope="module")
def direct_runs(tiny_router_config):
  return {credit: _direct_run(tiny_router_config(credit))
          for credit in ("request", "step")}


@pytest.mark.slow
def test_both_credit_modes_train_two_distinct_seeds(direct_runs):
  for credit, (_, state, stats) in direct_runs.items():
    for s in stats:
      for name, value in s._asdict().items():
        chex.assert_shape(value, (2,), custom_message=f"{credit} {name}")
        chex.assert_tree_all_finite(value)
    assert np.all(stats[-1].decisions > 0) and np.all(stats[-1].loss > 0)
    np.testing.assert_array_equal(np.asarray(state.iteration), [80, 80])
    assert np.all(np.asarray(state.updates) > 0)
    for leaf in jax.tree_util.tree_leaves(state.params):
      assert not np.allclose(leaf[0], leaf[1]), credit            # seeds differ


def _episodes(done):
  """(start, end) index ranges of the complete episodes in one environment's transitions."""
  ends = np.flatnonzero(done)
  return list(zip(np.concatenate([[0], ends[:-1] + 1]), ends + 1))


@pytest.mark.slow
def test_request_credit_reattributes_episode_rewards(direct_runs):
  request, step = direct_runs["request"][1].replay, direct_runs["step"][1].replay
  np.testing.assert_array_equal(request.count, step.count)
  assert np.all(np.asarray(request.count) <= request.action.shape[-1])   # none overwritten
  for field in ("obs", "action", "done", "next_obs"):              # the same transitions
    np.testing.assert_array_equal(getattr(request, field), getattr(step, field))
  for a, b in zip(direct_runs["request"][2], direct_runs["step"][2]):
    np.testing.assert_allclose(a.reward, b.reward, rtol=1e-6)      # the env's step rewards
  r_req, r_step = np.asarray(request.reward), np.asarray(step.reward)
  resolved, done = np.asarray(request.resolved), np.asarray(request.done)
  episodes, moved = 0, False
  for s in range(2):
    for e in range(4):
      for start, end in _episodes(done[s, e, :int(request.count[s, e])]):
        episodes += 1
        assert resolved[s, e, start:end].all()                     # drained: all final
        np.testing.assert_allclose(r_req[s, e, start:end].sum(), r_step[s, e, start:end].sum(),
                                   rtol=1e-5, atol=1e-5)
        moved |= not np.allclose(r_req[s, e, start:end], r_step[s, e, start:end])
  assert episodes >= 8 and moved
  # A transition's reward is now one request's utility: its quality (<= 1) or -penalty.
  assert r_req.max() <= 1.0 and r_req.min() >= -0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_router_config):
  """An uninterrupted `train_lib.train` run of the request-credit config: (workdir, result)."""
  workdir = str(tmp_path_factory.mktemp("full"))
  return workdir, train_lib.train(Setup.from_config(tiny_router_config()), workdir,
                                  log=lambda s: None)


def _csv(workdir, drop=("seconds",)):
  with open(f"{workdir}/metrics.csv") as f:
    return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def _restore(workdir, trainer, config):
  """The learner state (stacked over seeds) of `workdir`'s latest checkpoint."""
  keys = Setup.from_config(config).seed_keys()
  mngr = checkpoint.manager(workdir)
  like = jax.eval_shape(jax.vmap(trainer.init), keys)
  return checkpoint.restore_state(mngr, mngr.latest_step(), like)[0]


@pytest.mark.slow
def test_resume_ends_like_an_uninterrupted_run(trained, tmp_path, tiny_router_config, direct_runs):
  full, full_result = trained
  config = tiny_router_config()
  workdir, logs = str(tmp_path / "resumed"), []
  train_lib.train(Setup.from_config(config), workdir, log=logs.append, stop_after_chunks=1)
  assert checkpoint.manager(workdir).latest_step() == 1 and len(_csv(workdir)) == 2
  result = train_lib.train(Setup.from_config(config), workdir, log=logs.append)
  assert any("resumed" in line and "chunk 1/2" in line for line in logs)
  assert checkpoint.manager(workdir).latest_step() == 2
  for key in ("eval_mean_utility", "eval_availability", "eval_rejected_frac"):
    assert result[key] == full_result[key]
  assert _csv(workdir) == _csv(full)
  assert [row["chunk"] for row in _csv(full)] == ["1", "1", "2", "2"]
  trainer = direct_runs["request"][0]
  chex.assert_trees_all_equal(_restore(workdir, trainer, config),
                              _restore(full, trainer, config))
  chex.assert_trees_all_equal([p.params for p in workdir_lib.load_policies(workdir)],
                              [p.params for p in workdir_lib.load_policies(full)])


@pytest.mark.slow
def test_resume_with_another_config_is_refused(trained, tiny_router_config):
  workdir, _ = trained
  config = tiny_router_config()
  config.dqn.gamma, config.dqn.learning_rate = 0.5, 0.1
  with pytest.raises(ValueError, match=r"dqn\.gamma.*dqn\.learning_rate"):
    train_lib.train(Setup.from_config(config), workdir, log=lambda s: None)


@pytest.mark.slow
def test_refused_resume_leaves_the_workdir_config(trained, tiny_router_config):
  workdir, _ = trained
  config = tiny_router_config()
  config.dqn.gamma = 0.5
  with pytest.raises(ValueError):
    train_lib.train(Setup.from_config(config), workdir, log=lambda s: None)
  with open(f"{workdir}/config.json") as f:
    assert json.load(f)["dqn"]["gamma"] == tiny_router_config().dqn.gamma


@pytest.mark.slow
def test_load_policies_and_greedy_routing(trained, direct_runs, tiny_router_config):
  workdir, _ = trained
  config, seeds = workdir_lib.saved_config(workdir), workdir_lib.load_policies(workdir)
  assert config.dqn.to_dict() == tiny_router_config().dqn.to_dict() and len(seeds) == 2
  trainer, state, _ = direct_runs["request"]       # same config and keys: the same learner
  saved = _restore(workdir, trainer, config)
  chex.assert_trees_all_equal(saved.params, state.params)
  # The router saved is each seed's best-evaluated params (config.train.select_best): the
  # final ones only where the last chunk's evaluation beat every earlier one.
  utility = np.array([float(r["eval_mean_utility"]) for r in _csv(workdir)]).reshape(2, 2)
  for s, policy in enumerate(seeds):
    chex.assert_trees_all_equal(
        policy.params, jax.tree_util.tree_map(lambda x, s=s: x[s], saved.best_params))
    is_final = all(np.array_equal(a, b[s]) for a, b in zip(
        jax.tree_util.tree_leaves(policy.params), jax.tree_util.tree_leaves(state.params)))
    assert is_final == (utility[1, s] > utility[0, s])
  net = trainer.network
  obs = jax.random.uniform(jax.random.PRNGKey(1), (32, net.layout.size), maxval=2)
  policy = seeds[1]
  q = np.asarray(net.apply(policy.params, obs))
  np.testing.assert_allclose(policy.q_values(obs), q, rtol=1e-6)
  routed = jax.jit(jax.vmap(policy, in_axes=(None, 0, None)))(jax.random.PRNGKey(0), obs, None)
  chex.assert_type(routed, jnp.int32)
  np.testing.assert_array_equal(routed, q.argmax(-1))
  # A stack of seeds vmaps too.
  stacked = LearnedPolicy(params=state.params, network=net)
  by_seed = jax.jit(jax.vmap(lambda p, o: p(None, o, None), in_axes=(0, None)))(stacked, obs[0])
  np.testing.assert_array_equal(by_seed, [int(np.argmax(net.apply(
      jax.tree_util.tree_map(lambda x, s=s: x[s], state.params), obs[0]))) for s in range(2)])


@pytest.mark.slow
def test_trimmed_workdir_loads_the_same_router_and_refuses_to_resume(trained, tmp_path,
                                                                     tiny_router_config):
  """`trim_to_policy` (what results/ commits) keeps exactly what evaluation reads."""
  full, _ = trained
  lean = str(tmp_path / "lean")
  shutil.copytree(full, lean)
  assert checkpoint.trim_to_policy(lean) > 0
  assert os.listdir(f"{lean}/checkpoints") == ["2"]
  assert "state" not in os.listdir(f"{lean}/checkpoints/2")
  assert checkpoint.trim_to_policy(lean) == 0                    # idempotent
  assert workdir_lib.saved_config(lean).to_dict() == workdir_lib.saved_config(full).to_dict()
  chex.assert_trees_all_equal([p.params for p in workdir_lib.load_policies(lean)],
                              [p.params for p in workdir_lib.load_policies(full)])
  with pytest.raises(ValueError, match=r"checkpoints/2: holds only the trained policy"):
    train_lib.train(Setup.from_config(tiny_router_config()), lean, log=lambda s: None)


# ------------------------------------------------------------------ bad configs
@pytest.mark.parametrize("field,value", [
    ("dqn.n_step", 0), ("dqn.num_envs", 0), ("dqn.gamma", 1.5), ("dqn.eps_end", -0.1),
    ("dqn.target_update", "soft"), ("dqn.credit", "both"), ("dqn.credit", "request"),
    ("dqn.hidden", "64,x"), ("dqn.activation", "swish"), ("dqn.obs_norm", "minmax"),
    ("dqn.rate_scale", 0.0), ("dqn.learning_rate", 0.0), ("train.chunk_iterations", 7),
    ("dqn.n_step", 200),
    ("dqn.huber_delta", 0.0), ("dqn.max_grad_norm", 0.0), ("dqn.center_rate", 2.5),
    ("dqn.lr_final_frac", -0.5), ("train.eval_episodes", 0), ("train.eval_episode_len", 0),
    ("dqn.num_envs", "x"), ("dqn.action_mask", "always"), ("dqn.action_mask", "on_time"),
    ("dqn.action_mask", "on_time_else_any"), ("dqn.mask_slack", 0.0),
    ("dqn.reference", "1.25,1"), ("dqn.reference", "0,1,0"), ("dqn.reference", "1.25,2,0"),
    ("dqn.reference", "1.25,1,0.5"), ("dqn.reference", "1.25,x,0"),
])
def test_bad_config_raises_naming_the_field(field, value):
  config = _tabular_config()
  section, key = field.split(".")
  config[section][key] = value
  env = TabularEnv(num_tasks=3, num_models=2, episode_len=6)    # credit=False: 'request' fails
  with pytest.raises(ValueError, match=rf"config\.{section}\.{key}"):
    dqn.make_train(*_typed(config), env, CHAIN, env, CHAIN)


def test_bad_train_values_raise_naming_the_field(tiny_router_config):
  config = tiny_router_config()
  config.train.rate_multipliers = "0.5,x"
  with pytest.raises(ValueError, match=r"config\.train\.rate_multipliers"):
    Setup.from_config(config)
  config.train.rate_multipliers = "1,-2"
  with pytest.raises(ValueError, match=r"config\.train\.rate_multipliers"):
    Setup.from_config(config)
  config.train.rate_multipliers = ""
  config.num_seeds = 0
  with pytest.raises(ValueError, match=r"config\.num_seeds"):
    Setup.from_config(config)


def test_behaviour_action_hand_cases():
  greedy, rand, demo = jnp.array([0, 0, 0, 0]), jnp.array([1, 1, 1, 1]), jnp.array([2, 2, 2, 2])
  u = jnp.array([0.05, 0.3, 0.6, 0.9])
  # eps 0.8, demo_frac 0.5: demo below 0.4, random in [0.4, 0.8), greedy from 0.8.
  np.testing.assert_array_equal(dqn.behaviour_action(greedy, rand, demo, u, 0.8, 0.5),
                                [2, 2, 1, 0])
  np.testing.assert_array_equal(dqn.behaviour_action(greedy, rand, demo, u, 0.8, 0.0),
                                [1, 1, 1, 0])
  np.testing.assert_array_equal(dqn.behaviour_action(greedy, rand, demo, u, 0.0, 1.0),
                                [0, 0, 0, 0])


@pytest.mark.slow
def test_demonstrations_come_from_the_greedy_and_earn_more_than_random(direct_runs,
                                                                       tiny_router_config):
  """dqn.demo: with epsilon 1 (the tiny run) and demo_frac 1 every action is the deadline-aware
  greedy's, which earns more per decision than the random exploration of the same run
  without a demonstrator (about +9% here); no demonstrator without dqn.demo."""
  config = tiny_router_config("request")
  assert dqn._demonstrator(config_lib.dqn_config(config), None, False) is None
  config.dqn.demo, config.dqn.demo_frac = "deadline_greedy", 1.0
  setup = Setup.from_config(config)
  demo = dqn._demonstrator(setup.dqn, setup.env(credit=True)[1], False)
  assert float(demo.slack) == 1.25 and float(demo.dump) == 0.0
  _, _, stats = _direct_run(config)
  _, _, plain = direct_runs["request"]
  per_decision = lambda runs: sum(np.asarray(s.reward).sum() for s in runs) / sum(
      np.asarray(s.decisions).sum() for s in runs)
  assert per_decision(stats) > 1.03 * per_decision(plain), (per_decision(stats),
                                                           per_decision(plain))
  with pytest.raises(ValueError, match="config.dqn.demo: expected one of"):
    config.dqn.demo = "oracle"
    config_lib.dqn_config(config)
