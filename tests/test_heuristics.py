"""Hand-written routers: hand-computed decisions, no output-length leak, vmapped tuning."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import heuristics, policies
from bes.env.serving_env import make_env
from bes.experiment import Setup
from bes.profile import profile_from_dict
from bes.requests import Requests
from bes.serving_config import ServingConfig
from configs import default as default_config
from tests import env_testing

KEY = jax.random.PRNGKey(0)


def _tiny_env(quality=((0.3, 0.9), (0.8, 0.5))):
  """Two models, two tasks, one instance each. 'small': batch 4, 1 ms per iteration, no
  prefill; 'big': batch 1, 10 ms per iteration, prefill 2 ms + 10 us/token. Deadline 1 s.
  quality[m][t]. Requests (replayed): 5 simultaneous arrivals at t = 0, task 0, 100-token
  prompts, 7-token outputs."""
  tasks = ["t0", "t1"]
  models = [
      dict(name="small", instances=1, gpus_per_instance=1, max_batch=4,
           decode_step_s=[1e-3] * 4, prefill_s_fixed=0.0, prefill_s_per_token=0.0),
      dict(name="big", instances=1, gpus_per_instance=1, max_batch=1, decode_step_s=[10e-3],
           prefill_s_fixed=2e-3, prefill_s_per_token=10e-6)]
  for m, q in zip(models, quality):
    m["quality"] = dict(zip(tasks, q))
  profile = profile_from_dict(dict(name="tiny", provenance="test", tasks=tasks, models=models))
  n = 5
  requests = Requests(gap_us=np.zeros(n, np.int32), task=np.zeros(n, np.int32),
                      prompt_len=np.full(n, 100, np.int32), output_len=np.full(n, 7, np.int32))
  config = ServingConfig(deadline_s=1.0, deadline_per_token_s=0.0, queue_capacity=8)
  return make_env(profile, config, env_testing.replay(requests, 2), episode_len=n)


def test_deadline_greedy_hand_computed():
  env, params = _tiny_env()
  greedy = heuristics.deadline_greedy(params, mean_output_len=50, mean_prompt_len=100, slack=1.0)
  # Empty cluster: small 50 * 1 ms; big 3 ms prefill + 50 * (10 ms + 1/50 * 3 ms). Both on
  # time (1 s): the better model for task 0, big.
  obs, state = env_testing.state_after(env, params, [])
  np.testing.assert_allclose(greedy.predict_us(state), [50_000, 506_000], rtol=1e-6)
  assert int(greedy(KEY, obs, state)) == 1
  # A slack of 3 makes big late (1.518 s) but not small: small.
  assert int(greedy.replace(slack=jnp.float32(3.0))(KEY, obs, state)) == 0
  # Big holds 1 running (iteration ends at 13 ms) + 2 waiting: queue position 3 of batch 1,
  # 13 ms + 3 * 50 * 10.06 ms + 3 ms + 503 ms = 2.028 s, late; only small is on time.
  obs, state = env_testing.state_after(env, params, [1, 1, 1])
  np.testing.assert_allclose(greedy.predict_us(state), [50_000, 2_028_000], rtol=1e-6)
  assert int(greedy(KEY, obs, state)) == 0
  # Without the turnover term big's prediction loses the 3 * 3 ms + 3 ms of interference.
  no_turnover = greedy.replace(turnover=jnp.float32(0.0))
  np.testing.assert_allclose(no_turnover.predict_us(state)[1], 2_016_000, rtol=1e-6)
  # Nothing on time (slack 100): the fastest predicted, small; with dump, the slowest, big.
  hopeless = greedy.replace(slack=jnp.float32(100.0))
  assert int(hopeless(KEY, obs, state)) == 0
  assert int(hopeless.replace(dump=jnp.float32(1.0))(KEY, obs, state)) == 1
  # For task 1 small is the better model, and on time.
  state1 = state.replace(request=state.request.replace(task=jnp.int32(1)))
  assert int(greedy(KEY, obs, state1)) == 0


def test_deadline_greedy_sees_a_full_queue_as_rejection():
  env, params = _tiny_env()
  env = env.__class__(**{**env.__dict__, "queue_capacity": 1})
  greedy = heuristics.deadline_greedy(params, 1, 0, slack=1e-6)      # everything "on time"
  obs, state = env_testing.state_after(env, params, [1, 1])                           # big: 1 running, 1 waiting
  assert float(greedy.predict_us(state)[1]) > 1e29
  assert int(greedy(KEY, obs, state)) == 0
  # Nothing on time and dump: the request goes where it is rejected, harming no one.
  dump = heuristics.deadline_greedy(params, 2000, 0, slack=1.0, dump=1)    # small: 2 s
  assert int(dump(KEY, obs, state)) == 1


def test_load_threshold_hand_set_loads():
  env, params = _tiny_env()
  policy = heuristics.load_threshold(params, [2.0, 0.5])
  obs = lambda task, loads: jnp.concatenate([jax.nn.one_hot(task, 2), jnp.asarray(loads), jnp.zeros(1)])
  decide = lambda task, loads: int(policy(KEY, obs(task, loads), None))
  assert decide(0, [0.0, 0.0]) == 1          # task 0: big first, below 0.5
  assert decide(0, [0.0, 0.5]) == 0          # big at its threshold: small
  assert decide(1, [0.0, 0.0]) == 0          # task 1: small first
  assert decide(1, [2.5, 0.2]) == 1          # small above 2.0, big below
  assert decide(0, [3.0, 1.0]) == 0          # none below: ratios 1.5 (small), 2.0 (big)
  assert decide(0, [5.0, 1.0]) == 1          # none below: ratios 2.5, 2.0
  # The environment's observed load: big holds 3 requests in 1 instance x batch 1.
  o, state = env_testing.state_after(env, params, [1, 1, 1])
  np.testing.assert_allclose(o[2:4], [0.0, 3.0])
  assert int(policy(KEY, o, state)) == 0


def _default_env(rate, episode_len):
  config = default_config.get_config()
  config.workload.kind = "poisson"
  config.workload.rate = rate
  setup = Setup.from_config(config)
  env, params = setup.env(episode_len=episode_len)
  profile = setup.profile
  return env, params, profile


def test_decisions_never_depend_on_the_output_length():
  env, params, _ = _default_env(40.0, 64)
  greedy = heuristics.deadline_greedy(params, 200, 850, slack=1.25)
  threshold = heuristics.load_threshold(params, [2.0, 1.0, 0.25])
  obs, state = env.reset(KEY, params)
  step = jax.jit(env.step)
  for i, k in enumerate(jax.random.split(KEY, 48)):                  # a loaded cluster
    obs, state, *_ = step(k, state, jnp.int32(i % 3), params)
  for policy in (greedy, threshold):
    decide = jax.jit(lambda p, s: p(KEY, obs, s))
    actions = {int(decide(policy, state.replace(
        request=state.request.replace(output_len=jnp.int32(n))))) for n in (1, 200, 5000)}
    assert len(actions) == 1
  assert jnp.all(greedy.predict_us(state) == greedy.predict_us(
      state.replace(request=state.request.replace(output_len=jnp.int32(1)))))


@pytest.fixture(scope="module")
def heavy():
  """The default profile under Poisson 40 req/s, 256-request episodes, and the greedy tuned
  on it over three slacks (2 keys); shared to compile once."""
  env, params, profile = _default_env(40.0, 256)
  policy, report = heuristics.tune("deadline_greedy", env, params, KEY, slacks=(0.5, 1.25, 4.0),
                                   turnovers=(1.0,), dumps=(0.0,), num_keys=2)
  return env, params, profile, policy, report


def test_vmapped_tuning_returns_the_best_candidate_of_its_grid(heavy):
  env, params, _, policy, report = heavy
  keys = jax.random.split(jax.random.split(KEY)[1], 2)              # tune's rollout keys
  assert [c["slack"] for c in report["candidates"]] == [0.5, 1.25, 4.0]
  one_by_one = [float(np.mean(heuristics.evaluate(
      env, params, policies.stack([heuristics.from_dict("deadline_greedy", c, params)]), keys,
      env.episode_len))) for c in report["candidates"]]
  np.testing.assert_allclose(report["scores"], one_by_one, rtol=1e-5, atol=1e-6)
  assert report["best_index"] == int(np.argmax(one_by_one))
  assert heuristics.to_dict(policy) == dict(name="deadline_greedy", **report["knobs"])
  assert len(set(np.round(one_by_one, 6))) > 1                      # the knob matters
  # The load-threshold grid: every model but the fallback (lowest mean quality) over the levels.
  env, params = _tiny_env(quality=((0.3, 0.9), (0.8, 0.7)))
  policy, report = heuristics.tune("load_threshold", env, params, KEY, levels=(0.5, 3.0),
                                   num_keys=2)
  assert [c["thresholds"] for c in report["candidates"]] == [[3.0, 0.5], [3.0, 3.0]]
  assert report["best_index"] == int(np.argmax(report["scores"]))
  np.testing.assert_allclose(policy.thresholds, report["knobs"]["thresholds"])


def test_knobs_round_trip_through_json_and_bad_knobs_are_refused():
  env, params = _tiny_env()
  for policy in (heuristics.deadline_greedy(params, 120.5, 800, slack=1.5, turnover=0.0,
                                            dump=1),
                 heuristics.load_threshold(params, [0.5, 1.25])):
    d = json.loads(json.dumps(heuristics.to_dict(policy)))
    rebuilt = heuristics.from_dict(d["name"], d, params)
    chex.assert_trees_all_equal(rebuilt, policy)
  with pytest.raises(ValueError, match="unknown heuristic 'nope'"):
    heuristics.tune("nope", env, params, KEY)
  with pytest.raises(ValueError, match="thresholds must be 2"):
    heuristics.load_threshold(params, [1.0])
  with pytest.raises(ValueError, match="slack"):
    heuristics.deadline_greedy(params, 100, 100, slack=0.0)
  with pytest.raises(ValueError, match="dump must be 0 or 1"):
    heuristics.deadline_greedy(params, 100, 100, dump=0.5)
  with pytest.raises(ValueError, match="bad knobs"):
    heuristics.from_dict("load_threshold", dict(thresholds=[1.0, 1.0], slack=2.0), params)
  with pytest.raises(ValueError, match="not 'load_threshold'"):
    heuristics.from_dict("load_threshold", dict(name="deadline_greedy"), params)


def test_mean_lengths_of_a_replayed_workload_are_exact():
  requests = Requests(gap_us=np.ones(4, np.int32), task=np.zeros(4, np.int32),
                      prompt_len=np.array([10, 20, 30, 40], np.int32),
                      output_len=np.array([1, 2, 3, 6], np.int32))
  assert heuristics.mean_lengths(env_testing.replay(requests, 1), KEY, 4) == (25.0, 3.0)


def test_tuned_greedy_beats_static_policies_under_heavy_load(heavy):
  """Poisson 40 req/s on the default profile: the largest model alone overloads (most
  requests late), the smallest alone wastes quality; the tuned greedy beats both."""
  env, params, profile, _, report = heavy
  m, t = len(profile.models), len(profile.tasks)
  keys = jax.random.split(jax.random.split(KEY)[1], 2)
  statics = policies.stack([policies.static(i, t, m) for i in range(m)])
  static_scores = np.asarray(heuristics.evaluate(env, params, statics, keys, env.episode_len))
  static_scores = static_scores.mean(1)
  assert report["score"] > static_scores[0] + 0.05, (report, static_scores)   # opt-125m
  assert report["score"] > static_scores[2] + 0.05, (report, static_scores)   # opt-6.7b
