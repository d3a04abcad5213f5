"""Clairvoyant references and the held-out protocol: hand-computed predictions with true
lengths, the rollout improvement property, same requests as every policy, t intervals."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import clairvoyant, heuristics, metrics
from bes.env import observation
from bes.env import rollout
from bes.experiment import Setup, heldout
from configs import default as default_config
from tests import env_testing
from tests.test_heuristics import _tiny_env

KEY = jax.random.PRNGKey(0)


def test_true_lengths_replace_the_means_for_the_request_alone():
  env, params = _tiny_env()
  greedy = heuristics.deadline_greedy(params, mean_output_len=50, mean_prompt_len=100, slack=1.0)
  obs, state = env_testing.state_after(env, params, [1, 1, 1])
  # Big holds 1 running + 2 waiting (test_heuristics: 2.028 s with the means). The request's
  # own 7 tokens instead of 50: its decode 7 * 10.06 ms instead of 503 ms; its 100-token
  # prompt is the mean's, so its prefill is unchanged; the three ahead keep the means.
  np.testing.assert_allclose(greedy.predict_us(state, 7, 100), [7_000, 2_028_000 - 432_580],
                             rtol=1e-6)
  # A 400-token prompt adds 300 * 10 us of its own prefill on big (none on small).
  np.testing.assert_allclose(greedy.predict_us(state, 7, 400) - greedy.predict_us(state, 7, 100),
                             [0, 3_000], rtol=1e-6)
  # The replayed requests are 7 tokens long: the clairvoyant knows big is 1.595 s, late, as
  # the mean-based greedy thinks; with a 1.6 s budget instead it is on time and better.
  cg = clairvoyant.ClairvoyantGreedy(greedy)
  assert int(cg(KEY, obs, state)) == int(greedy(KEY, obs, state)) == 0
  roomy = clairvoyant.ClairvoyantGreedy(greedy.replace(deadline_us=jnp.full(2, 1.6e6)))
  assert int(roomy(KEY, obs, state)) == 1 and int(greedy.replace(
      deadline_us=jnp.full(2, 1.6e6))(KEY, obs, state)) == 0


def test_the_clairvoyant_refuses_a_runtime_view():
  env, params = _tiny_env()
  cg = clairvoyant.ClairvoyantGreedy(heuristics.deadline_greedy(params, 50, 100))
  obs, state = env_testing.state_after(env, params, [])
  with pytest.raises(ValueError, match="true lengths.*ServingView"):
    cg(KEY, obs, observation.as_view(state))


@pytest.fixture(scope="module")
def loaded():
  """The default config (bursty, 20 req/s), 100-request recorded episodes, a greedy with
  untuned knobs (the third episode has a burst it handles badly: room to improve)."""
  setup = Setup.from_config(default_config.get_config())
  env, params = setup.env(episode_len=100, record=True)
  greedy = heuristics.deadline_greedy(params, 195.0, 1021.0, slack=1.25, turnover=0.0, dump=1.0)
  return env, params, greedy


def test_full_horizon_lookahead_never_loses_to_its_base_and_sees_the_same_requests(loaded):
  env, params, greedy = loaded
  gains = []
  for s in range(3):
    key = jax.random.PRNGKey(s)
    base, base_rewards = rollout.run_episode(env, params, greedy, key)
    look, look_rewards = clairvoyant.run_lookahead_episode(env, params, greedy, key,
                                                           horizon=env.episode_len, chunk=50)
    for field in ("arrival", "task"):
      np.testing.assert_array_equal(base[field], look[field])
    np.testing.assert_allclose(look_rewards.sum(), look["utility"].sum(), rtol=1e-5)
    gains.append(look["utility"].sum() - base["utility"].sum())
  assert min(gains) >= -1e-4 and max(gains) > 1.0, gains


def test_bad_horizon_and_unrecorded_env_are_refused(loaded):
  env, params, greedy = loaded
  with pytest.raises(ValueError, match="horizon must be >= 0"):
    clairvoyant.run_lookahead_episode(env, params, greedy, KEY, -1)
  unrecorded = env.__class__(**{**env.__dict__, "record": False})
  with pytest.raises(ValueError, match="record=True"):
    clairvoyant.run_lookahead_episode(unrecorded, params, greedy, KEY, 0)


def test_mean_ci_hand_computed():
  mean, half = metrics.mean_ci([1.0, 2.0, 3.0])       # sd 1, t(0.975, 2) = 4.3027
  assert mean == 2.0 and half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
  assert np.isnan(metrics.mean_ci([5.0])[1])
  with pytest.raises(ValueError, match="level"):
    metrics.mean_ci([1.0, 2.0], level=1.5)


def test_protocol_file_errors_name_the_field(tmp_path):
  assert set(heldout.load_protocol("configs/heldout.py")["families"]) >= {"bursty20", "azure_code"}
  bad = tmp_path / "p.py"
  for body, match in [
      ("def get_protocol(): return dict(families={})", "non-empty 'families'"),
      ("def get_protocol(): return dict(families={'a': dict(about='x', overrides={})}, "
       "seeds=5, num_requests=10)", r"families\['a'\] must have exactly the keys"),
      ("def get_protocol(): return dict(families={'a': dict(held_out=True, about='x', "
       "overrides={})}, seeds=1, num_requests=10)", "seeds must be an integer >= 2"),
      ("def get_protocol(): return dict(families={'a': dict(held_out=True, about='x', "
       "overrides={})}, seeds=2, num_requests=10, horizons=(-1,))", "horizons")]:
    bad.write_text(body)
    with pytest.raises(ValueError, match=match):
      heldout.load_protocol(str(bad))
  with pytest.raises(ValueError, match="no such file"):
    heldout.load_protocol(str(tmp_path / "missing.py"))


def test_summaries_pick_the_best_heuristic_and_pair_the_difference():
  raw = dict(name="f", about="", held_out=True, overrides={}, num_requests=10, seeds=3, peak=0.7,
             values={"learned": {"utility": [0.5, 0.6, 0.7], "availability": [1, 1, 1]},
                     "deadline_greedy": {"utility": [0.4, 0.6, 0.8], "availability": [1, 1, 1]},
                     "load_threshold": {"utility": [0.3, 0.3, 0.3], "availability": [1, 1, 1]},
                     "clairvoyant_greedy": {"utility": [0.6, 0.6, 0.6],
                                            "availability": [1, 1, 1]}})
  s = heldout.summarize_family(raw)
  assert s["best_heuristic"] == "deadline_greedy" and s["best_clairvoyant"] == "clairvoyant_greedy"
  mean, half = s["learned_minus_best"]                  # differences 0.1, 0, -0.1: sd 0.1
  assert mean == pytest.approx(0.0, abs=1e-12)
  assert half == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
  text = heldout.format_markdown([s], "python launch/heldout.py")
  assert "| f | yes | 0.700 |" in text and "(vs deadline_greedy)" in text
