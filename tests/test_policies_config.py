"""Fixed policies, config plumbing, serving-config validation and the integer clock."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import clock, policies
from bes.experiment import Setup, config as config_lib
from bes.env.serving_env import make_env
from bes.profile import default_profile
from bes.serving_config import ServingConfig
from configs import default as default_config


class _State:
  def __init__(self, index):
    self.index = jnp.int32(index)


def _obs(task, num_tasks=4):
  return jnp.concatenate([jax.nn.one_hot(task, num_tasks), jnp.zeros(4)])


def test_fixed_policies_route_as_specified():
  names = ["a", "b", "c"]
  key = jax.random.PRNGKey(0)
  static = policies.parse_policy("static:b", 3, 4, names)
  assert [int(static(key, _obs(t), _State(0))) for t in range(4)] == [1, 1, 1, 1]
  tmap = policies.parse_policy("task_map:0,c,1,2", 3, 4, names)
  assert [int(tmap(key, _obs(t), _State(0))) for t in range(4)] == [0, 2, 1, 2]
  rr = policies.parse_policy("round_robin", 3, 4, names)
  assert [int(rr(key, _obs(0), _State(i))) for i in range(5)] == [0, 1, 2, 0, 1]
  rnd = policies.parse_policy("random", 3, 4, names)
  draws = [int(rnd(k, _obs(0), _State(0))) for k in jax.random.split(key, 200)]
  assert set(draws) == {0, 1, 2}
  # One compiled function serves every fixed policy (they are pytrees of one structure).
  stacked = policies.stack([static, tmap, rr])
  out = jax.vmap(lambda p: p(key, _obs(1), _State(2)))(stacked)
  np.testing.assert_array_equal(out, [1, 2, 2])


@pytest.mark.parametrize("spec,message", [
    ("static:3", "out of range"), ("static:zz", "neither a model index"),
    ("task_map:0,1,2", "needs 4 models"), ("round_robin:1", "expected"), ("", "expected")])
def test_policy_spec_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    policies.parse_policy(spec, 3, 4, ["a", "b", "c"])


def test_default_config_builds_the_environment_and_errors_name_the_key():
  config = default_config.get_config()
  setup = Setup.from_config(config)
  env, params = setup.env()
  profile = setup.profile
  assert env.instances == (1, 1, 2) and env.obs_size == 4 + 3 + 1
  assert profile.num_gpus == 4
  obs, state = jax.jit(env.reset)(jax.random.PRNGKey(0), params)
  assert obs.shape == (env.obs_size,) and float(obs[:4].sum()) == 1.0
  config.env.deadline_s = "1,2"
  with pytest.raises(ValueError, match="config.env: field 'deadline_s'"):
    Setup.from_config(config)
  config.env.deadline_s = "1,2,3,4"
  assert config_lib.serving_config_from(config.env, 4).deadline_s == (1.0, 2.0, 3.0, 4.0)
  config.env.reward = "medium"
  with pytest.raises(ValueError, match="reward"):
    Setup.from_config(config)


@pytest.mark.parametrize("field,value", [
    ("deadline_s", 0.0), ("deadline_s", (1.0, 2.0)), ("deadline_per_token_s", -1.0),
    ("reward", "x"), ("soft_window_s", 0.0), ("miss_penalty", -0.1), ("queue_capacity", 0),
    ("queue_capacity", 1.5)])
def test_serving_config_validation_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    ServingConfig(**{field: value}).validate(num_tasks=4)


def test_prefill_cost_is_exact_fixed_point_arithmetic():
  """instances.prefill_cost = fixed + tokens * per_token, exact to the femtosecond."""
  import fractions
  from bes.env.instances import GroupParams, prefill_cost
  fx = lambda seconds: clock.Fixed(*(jnp.asarray(x, jnp.int32) for x in clock.to_fixed(seconds)))
  gp = GroupParams(decode=fx([0.01, 0.01]), prefill_fixed=fx(3e-6), prefill_per_token=fx(1.5e-6))
  got = prefill_cost(gp, jnp.int32(7))                      # 3 + 7 * 1.5 = 13.5 us
  assert (int(got.us), int(got.frac)) == (13, 500_000_000)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 2_000_000, 200)
  per_token_s = np.round(rng.uniform(0, 1e-4, 200), 13)
  for t, p in zip(tokens, per_token_s):
    gp = gp.replace(prefill_per_token=fx(p))
    got = jax.jit(prefill_cost)(gp, jnp.int32(t))
    want = 3 + int(t) * fractions.Fraction(repr(float(p))) * 10 ** 6
    assert int(got.us) * clock.FRAC_ONE + int(got.frac) == want * clock.FRAC_ONE
  assert clock.seconds_to_us(0.0123456) == 12346


def test_make_env_refuses_bad_arguments():
  profile = default_profile()
  workload = Setup.from_config(default_config.get_config()).workload
  with pytest.raises(ValueError, match="episode_len"):
    make_env(profile, ServingConfig(), workload, episode_len=0)
  with pytest.raises(ValueError, match="rate_ema_alpha"):
    make_env(profile, ServingConfig(), workload, episode_len=8, rate_ema_alpha=0.0)


def test_measured_cpu_profile_runs_in_the_simulator():
  """The profiler's output (results/cpu_profile_tiny.json) loads and drives the environment."""
  import os
  from bes.env import rollout as rollout_lib
  from bes.profile import load_profile
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "results", "cpu_profile_tiny.json")
  profile = load_profile(path)
  config = default_config.get_config()
  config.workload.kind = "poisson"
  config.workload.rate = 50.0
  env, params = Setup.from_config(config, profile).env(episode_len=64, record=True)
  policy = policies.round_robin(len(profile.tasks), len(profile.models))
  out, rewards = rollout_lib.run_episode(env, params, policy, jax.random.PRNGKey(0))
  assert np.all(out["model"] == np.arange(64) % len(profile.models))
  np.testing.assert_allclose(rewards.sum(), out["utility"].sum(), atol=1e-4)
