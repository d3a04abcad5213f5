"""bes/router/features.py: the opt-in observation features (queues, predict), end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import policies
from bes.env import observation
from bes.env import instances as inst
from bes.experiment import Setup
from bes.experiment import train as train_lib, workdir as workdir_lib
from bes.router import dqn, features
from bes.router.policy import LearnedPolicy
from bes.router.qnetwork import make_qnetwork
from configs import paper


def _config():
  c = paper.get_config()
  c.workload.kind = "poisson"
  c.workload.rate = 200.0           # enough load that instances queue
  c.env.queue_capacity = 4
  c.env.episode_len = 64
  c.dqn.num_envs, c.dqn.batch_size, c.dqn.replay_capacity = 4, 8, 32
  c.dqn.num_iterations, c.dqn.learning_starts = 20, 2
  c.train.chunk_iterations, c.train.eval_episode_len, c.train.eval_episodes = 10, 16, 1
  c.dqn.features = "queues"
  return c


def _loaded_state(config, steps=40):
  setup = Setup.from_config(config)
  env, params = setup.env()
  profile = setup.profile
  obs, state = env.reset(jax.random.PRNGKey(0), params)
  big = policies.static(len(profile.models) - 1, len(profile.tasks), len(profile.models))
  step = jax.jit(lambda k, s, a: env.step(k, s, a, params))
  for i in range(steps):
    obs, state, *_ = step(jax.random.PRNGKey(i + 1), state, big(jax.random.PRNGKey(0), obs, state))
  return env, obs, state


def test_queue_features_hand_computed():
  config = _config()
  env, obs, state = _loaded_state(config)
  m, t = env.num_models, env.num_tasks
  layout = features.layout(t, m, "queues")
  got = np.asarray(features.extend(obs, state, layout))
  assert got.shape == (t + 3 * m + 1,) == (layout.size,)
  np.testing.assert_array_equal(got[:t + m], np.asarray(obs[:-1]))
  assert got[-1] == obs[-1]                                    # the rate stays last
  for g, (gs, b) in enumerate(zip(state.groups, env.max_batch)):
    load = np.asarray(inst.load(gs))
    i = int(np.argmin(load))
    waiting = int(inst.waiting(gs)[i])
    assert got[t + m + 2 * g] == pytest.approx(load[i] / b)
    assert got[t + m + 2 * g + 1] == pytest.approx(waiting / env.queue_capacity)
  # Only the largest model was loaded: it queues, the others are empty.
  assert got[t + m + 2 * (m - 1) + 1] > 0 and got[t + m] == 0
  assert np.array_equal(features.extend(obs, state, features.layout(t, m, "paper")), obs)
  with pytest.raises(ValueError, match="config.dqn.features"):
    features.check("all")


def test_learned_policy_and_training_use_the_features():
  config = _config()
  env, obs, state = _loaded_state(config, steps=10)
  layout = features.layout(env.num_tasks, env.num_models, "queues")
  network = make_qnetwork(layout, Setup.from_config(config).dqn)
  extended = features.extend(obs, state, layout)
  params = network.init(jax.random.PRNGKey(0), extended[None])
  policy = LearnedPolicy(params=params, network=network)
  action = jax.jit(lambda p, o, s: p(None, o, s))(policy, obs, state)
  assert int(action) == int(jnp.argmax(network.apply(params, extended)))
  # Training with the features: transitions store extended observations.
  _train_one_chunk(Setup.from_config(config), extra_per_model=2)


def _train_one_chunk(setup, extra_per_model: int):
  """One chunk of training and an evaluation with `setup`'s features: the replay stores
  observations `extra_per_model` values per model longer than the environment's."""
  env, params_env = setup.env(credit=True)
  eval_env, eval_params = setup.env(episode_len=16)
  trainer = dqn.make_train(setup.dqn, setup.train, env, params_env, eval_env, eval_params)
  ls = jax.jit(trainer.init)(jax.random.PRNGKey(0))
  assert ls.replay.obs.shape[-1] == env.obs_size + extra_per_model * env.num_models
  ls, stats = jax.jit(trainer.chunk)(ls)
  assert int(ls.replay.count.sum()) > 0 and np.isfinite(float(stats.loss))
  ev = jax.jit(lambda ls, k: trainer.evaluate(ls, k, 1))(ls, jax.random.PRNGKey(1))
  assert 0.0 <= float(ev.availability) <= 1.0


def test_predict_features_are_the_reference_greedys_view():
  """'predict': per model the greedy's predicted latency over the request's deadline
  (clipped, a rejecting model reads the cap) and its pick; the same from the simulator's
  state and from a runtime's ServingView; refused without a predictor."""
  config = _config()
  env, obs, state = _loaded_state(config)
  m, t = env.num_models, env.num_tasks
  _, params = Setup.from_config(config).env()
  layout = features.layout(t, m, "predict")
  assert features.predictor(features.layout(t, m, "queues"), params) is None
  greedy = features.predictor(layout, params)
  assert float(greedy.slack) == features.REFERENCE_SLACK
  got = np.asarray(features.extend(obs, state, layout, greedy))
  assert got.shape == (t + 5 * m + 1,) == (layout.size,)
  queues = np.asarray(features.extend(obs, state, features.layout(t, m, "queues")))
  np.testing.assert_array_equal(got[:t + 3 * m], queues[:-1])
  assert got[-1] == obs[-1]
  # The deadline written out from the env's params, not through the greedy.
  task = int(np.argmax(np.asarray(obs[:t])))
  deadline = (float(params.deadline_us[task])
              + float(params.deadline_per_token_us) * float(greedy.mean_output_len))
  predicted = np.asarray(greedy.predict_us(state))
  slack = got[t + 3 * m:t + 4 * m]
  np.testing.assert_allclose(slack, np.clip(predicted / deadline, 0, 4), rtol=1e-6)
  rejects = np.asarray(observation.serving_view(state).rejects())
  assert rejects[-1] and slack[-1] == 4.0                      # the loaded model's queue is full
  assert 0 < slack[0] < 4
  advice = got[t + 4 * m:t + 5 * m]
  np.testing.assert_array_equal(advice, np.eye(m)[int(greedy(None, obs, state))])
  view = observation.serving_view(state)
  np.testing.assert_array_equal(features.extend(obs, view, layout, greedy), got)
  with pytest.raises(ValueError, match="needs a latency predictor"):
    features.extend(obs, state, layout)
  # The learned policy carries its predictor: the same pick from the state and the view.
  network = make_qnetwork(layout, Setup.from_config(config).dqn)
  policy = LearnedPolicy(params=network.init(jax.random.PRNGKey(0), got[None]),
                         network=network, predictor=greedy)
  act = jax.jit(lambda p, o, s: p(None, o, s))
  assert int(act(policy, obs, state)) == int(act(policy, obs, view)) == int(
      jnp.argmax(network.apply(policy.params, got)))


def test_training_with_predict_features_and_demonstrations():
  config = _config()
  config.dqn.features, config.dqn.demo, config.dqn.demo_frac = "predict", "deadline_greedy", 0.5
  config.dqn.action_mask = "on_time"
  setup = Setup.from_config(config)
  params_env = setup.env(credit=True)[1]
  demo = dqn._demonstrator(setup.dqn, params_env, False)
  reference = features.reference_greedy(params_env)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, demo, reference))
  _train_one_chunk(setup, extra_per_model=4)


def test_reference_knobs_reach_the_demonstrator_and_the_predictor(tmp_path):
  """dqn.reference (slack, turnover, dump) builds the demonstrator, the training predictor
  and the predictor a loaded policy carries (the serving runtime's) alike."""
  config = _config()
  config.dqn.features, config.dqn.demo, config.dqn.demo_frac = "predict", "deadline_greedy", 0.5
  config.dqn.reference = "2,0,1"
  setup = Setup.from_config(config)
  assert setup.dqn.reference == (2.0, 0.0, 1.0)
  params_env = setup.env(credit=True)[1]
  demo = dqn._demonstrator(setup.dqn, params_env, False)
  layout = features.layout(setup.env()[0].num_tasks, setup.env()[0].num_models, "predict")
  for greedy in (demo, features.predictor(layout, params_env, knobs=setup.dqn.reference)):
    assert (float(greedy.slack), float(greedy.turnover), float(greedy.dump)) == (2.0, 0.0, 1.0)
  default = features.reference_greedy(params_env)
  assert (float(default.slack), float(default.turnover), float(default.dump)) == (1.25, 1.0, 0.0)
  train_lib.train(setup, str(tmp_path), log=lambda m: None, stop_after_chunks=1)
  [policy] = workdir_lib.load_policies(str(tmp_path))
  assert (float(policy.predictor.slack), float(policy.predictor.dump)) == (2.0, 1.0)


def test_on_time_action_mask_keeps_greedy_choices_feasible():
  """dqn.action_mask='on_time': the greedy choice ranges over the models the reference
  greedy predicts on time plus its pick; Q-values themselves are unmasked."""
  config = _config()
  config.dqn.features, config.dqn.action_mask = "predict", "on_time"
  setup = Setup.from_config(config)
  m, t = 3, 4
  network = make_qnetwork(features.layout(t, m, "predict"), setup.dqn)
  layout = network.layout
  # Hand-made observations: slack ratios and the greedy's pick per row.
  rows = [([0.5, 0.9, 2.0], 1), ([3.0, 3.0, 4.0], 2), ([0.1, 0.81, 0.79], 0)]
  obs = []
  for slack, pick in rows:
    parts = {"task": np.eye(t)[0], "load": np.zeros(m), "queues": np.zeros(2 * m),
             "slack": np.asarray(slack), "advice": np.eye(m)[pick], "rate": np.ones(1)}
    obs.append(np.asarray(layout.concat({k: jnp.asarray(v, jnp.float32)
                                         for k, v in parts.items()})))
  obs = jnp.asarray(np.stack(obs))
  # slack x 1.25 <= 1: 0.5 yes, 0.9 no, 0.79 yes, 0.81 no; the pick always allowed.
  np.testing.assert_array_equal(network.allowed(obs), [[True, True, False],
                                                       [False, False, True],
                                                       [True, False, True]])
  q = jnp.asarray([[0.0, 1.0, 5.0], [9.0, 8.0, 1.0], [0.0, 7.0, 0.5]])
  np.testing.assert_array_equal(network.greedy(q, obs), [1, 2, 2])
  # 'on_time_else_any': the same where some model is on time, every model where none is.
  lifted = network.clone(action_mask="on_time_else_any")
  np.testing.assert_array_equal(lifted.allowed(obs), [[True, True, False], [True, True, True],
                                                      [True, False, True]])
  np.testing.assert_array_equal(lifted.greedy(q, obs), [1, 0, 2])
  # A lower mask_slack also allows models predicted slightly late: slack x 1.0 <= 1 admits
  # 0.81 in row 3 (row 1's 0.9 was allowed already, as the greedy's pick).
  loose = network.clone(mask_slack=1.0)
  np.testing.assert_array_equal(loose.allowed(obs), [[True, True, False],
                                                     [False, False, True],
                                                     [True, True, True]])
  unmasked = make_qnetwork(layout, Setup.from_config(_config()).dqn)
  np.testing.assert_array_equal(unmasked.greedy(q, obs), [2, 0, 1])
  # The masked values a Double-DQN target argmax-es: the allowed ones kept, the rest far below.
  masked = np.asarray(network.mask_values(q, obs))
  np.testing.assert_array_equal(masked[network.allowed(obs)], q[network.allowed(obs)])
  assert masked[~np.asarray(network.allowed(obs))].max() < -1e8
