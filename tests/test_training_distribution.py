"""The randomised training distribution (config.train: rate_multipliers, task_mixes,
burstiness): each training environment's own workload, bad values named, and the
heuristics tuned on the same distribution (one rollout per sampled environment)."""
import jax
import numpy as np
import pytest

from bes import heuristics, policies
from bes.experiment import Setup, workdir as workdir_lib


def _randomised(tiny_router_config):
  config = tiny_router_config()
  config.workload.kind = "bursty"
  config.train.rate_multipliers = "0.5,2"
  config.train.task_mixes = "uniform;0.9,0.1;0.2,0.8"
  config.train.burstiness = "0.5,1,1.5,0"
  return config


def test_each_training_environment_runs_its_own_variant(tiny_router_config):
  config = _randomised(tiny_router_config)
  config.dqn.num_envs = 12
  setup = Setup.from_config(config)
  te = setup.train_envs()
  assert te.batched
  w = te.params.workload
  base = config.workload
  mixes = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
  for i in range(12):
    assert float(w.rate_per_s[i]) == pytest.approx(base.rate * [0.5, 2][i % 2])
    np.testing.assert_allclose(w.mix.probs[i, 0], mixes[i % 3], rtol=1e-6)
    b = [0.5, 1, 1.5, 0][i % 4]
    assert float(w.rate_sigma[i]) == pytest.approx(base.bursty.rate_sigma * b)
    assert float(w.cv_sigma[i]) == pytest.approx(base.bursty.cv_sigma * b)
    assert float(w.cv_median[i]) == pytest.approx(base.bursty.cv_median ** b, rel=1e-6)
  # Evaluation keeps the configured workload.
  assert float(te.eval_params.workload.rate_per_s) == pytest.approx(base.rate)
  assert float(te.eval_params.workload.rate_sigma) == pytest.approx(base.bursty.rate_sigma)


@pytest.mark.parametrize("key,value,match", [
    ("burstiness", "1,-1", r"config\.train\.burstiness: expected numbers >= 0"),
    ("task_mixes", "uniform;0.5,x", r"config\.workload \(training environment 1\)\.task_mix"),
])
def test_bad_distribution_values_are_named(tiny_router_config, key, value, match):
  config = tiny_router_config()
  config.workload.kind = "bursty"
  config.train[key] = value
  with pytest.raises(ValueError, match=match):
    Setup.from_config(config).train_envs()


def test_burstiness_needs_bursty_arrivals(tiny_router_config):
  config = tiny_router_config()                                  # Poisson arrivals
  config.train.burstiness = "0.5,1"
  with pytest.raises(ValueError, match=r"config\.train\.burstiness: needs "
                                       r"config\.workload\.kind='bursty'"):
    Setup.from_config(config).train_envs()


def test_heuristics_are_tuned_on_the_training_distribution(tiny_router_config):
  config = _randomised(tiny_router_config)
  config.dqn.num_envs = 6
  setup = Setup.from_config(config)
  score_params, where = workdir_lib.tuning_distribution(setup)
  assert "6 environments of the randomised training distribution" == where
  env, params = setup.env()
  key = jax.random.PRNGKey(3)
  policy, report = heuristics.tune("deadline_greedy", env, params, key, slacks=(0.5, 4.0),
                                   turnovers=(1.0,), dumps=(0.0,), score_params=score_params)
  assert report["num_keys"] == 6
  # By hand: each candidate, each environment variant on its own key (tune's rollout keys).
  keys = jax.random.split(jax.random.split(key)[1], 6)
  by_hand = []
  for c in report["candidates"]:
    one = policies.stack([heuristics.from_dict("deadline_greedy", c, params)])
    scores = [float(heuristics.evaluate(env, jax.tree_util.tree_map(lambda x, i=i: x[i],
                                                                    score_params),
                                        one, keys[i:i + 1], env.episode_len)[0, 0])
              for i in range(6)]
    by_hand.append(np.mean(scores))
  np.testing.assert_allclose(report["scores"], by_hand, rtol=1e-5, atol=1e-6)
  assert report["best_index"] == int(np.argmax(by_hand))
  # A single workload keeps the 4 rollouts of the configured one.
  assert workdir_lib.tuning_distribution(Setup.from_config(tiny_router_config())) == (
      None, "the training workload")
