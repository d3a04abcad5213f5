"""Exact simulated time: the jitted environment against the exact oracle (`bes.reference`,
integer ticks of the profile's own decimals) on profiles whose times are not whole
microseconds, saturated runs of 10^5+ iterations, hour-long traces, multi-hour latencies,
far deadlines, ties, and what the clock refuses."""
import jax
import numpy as np
import pytest

from bes import clock, reference
from bes.env import rollout as rollout_lib
from bes.env.serving_env import make_env
from bes.profile import default_profile, profile_from_dict
from bes.requests import Requests
from bes.serving_config import ServingConfig
from tests import env_testing


def _profile(decode, fixed=0.0, per_token=0.0, instances=1, quality=0.5):
  return profile_from_dict({"name": "exact", "provenance": "test", "tasks": ["a"], "models": [
      {"name": "m", "instances": instances, "gpus_per_instance": 1, "max_batch": len(decode),
       "decode_step_s": list(decode), "prefill_s_fixed": fixed, "prefill_s_per_token": per_token,
       "quality": {"a": quality}}]})


def _requests(arrival_us, output_len, prompt_len=None, task=None):
  n = len(arrival_us)
  return Requests(gap_us=np.diff(np.asarray(arrival_us, np.int64), prepend=0).astype(np.int32),
                  task=np.zeros(n, np.int32) if task is None else np.asarray(task, np.int32),
                  prompt_len=np.zeros(n, np.int32) if prompt_len is None else
                  np.asarray(prompt_len, np.int32),
                  output_len=np.asarray(output_len, np.int32))


def _run_both(profile, requests, actions, config, chunk=None):
  """(env outcomes dict, env step rewards, reference result) on the same requests."""
  n = len(np.asarray(requests.gap_us))
  env, params = make_env(profile, config, env_testing.replay(requests, len(profile.tasks)),
                         episode_len=n, record=True)
  out, rewards = rollout_lib.run_episode(env, params, env_testing.action_table(actions),
                                         jax.random.PRNGKey(0), chunk=chunk)
  return out, rewards, reference.simulate(profile, requests, actions, config), env


def _assert_same(out, rewards, ref, label=""):
  """Model, instance, rejection and on-time identical; latency within 1 us of the exact one
  (the env records whole microseconds, rounded down); utilities and step rewards equal."""
  for f in ("model", "instance", "rejected", "on_time"):
    np.testing.assert_array_equal(out[f], getattr(ref, f), err_msg=f"{label}: {f}")
  lat, exact = np.asarray(out["latency_us"]), np.asarray(ref.latency_us)
  served = ~ref.rejected
  err = np.abs(lat[served] - np.floor(exact[served]))
  assert err.size == 0 or err.max() <= 1, f"{label}: latency off by {err.max()} us"
  np.testing.assert_allclose(out["utility"], ref.utility, rtol=0, atol=1e-6)
  np.testing.assert_allclose(rewards, ref.step_reward, rtol=0, atol=1e-4)


def test_saturated_instance_runs_1e5_iterations_without_drift():
  """One instance, batch 4, sub-microsecond decode times, arrivals above capacity for ~17
  minutes: over 10^5 iterations every request's fate equals the exact oracle's."""
  rng = np.random.default_rng(0)
  n = 3000
  profile = _profile(decode=(0.0052347, 0.0061234567, 0.0070000001, 0.008111111111111),
                     fixed=0.000123456789, per_token=3.3e-9)
  arrival = np.cumsum(rng.exponential(1e6 / 3.0, n)).astype(np.int64)
  requests = _requests(arrival, rng.integers(150, 300, n), rng.integers(0, 400, n))
  config = ServingConfig(deadline_s=5.0, deadline_per_token_s=0.03, queue_capacity=16)
  out, rewards, ref, _ = _run_both(profile, requests, np.zeros(n, int), config, chunk=1000)
  assert ref.num_iterations >= 100_000
  assert 0.05 < ref.rejected.mean() < 0.9                  # saturated, not all rejected
  _assert_same(out, rewards, ref, "saturated")


@pytest.mark.slow
def test_hour_long_saturated_trace_on_the_default_profile():
  """One hour of bursty arrivals above capacity on the roofline profile (times to the
  nanosecond), random routing: identical fates, latencies within 1 us."""
  from bes.workloads import default_workload_config, sample, workload_from_config
  profile = default_profile()
  cfg = default_workload_config()
  cfg.rate = 40.0
  requests = jax.device_get(sample(workload_from_config(cfg, profile.tasks),
                                   jax.random.PRNGKey(3), 150_000))
  arrival = np.cumsum(np.asarray(requests.gap_us, np.int64))
  keep = int(np.searchsorted(arrival, 3_600_000_000))
  requests = jax.tree_util.tree_map(lambda x: np.asarray(x)[:keep], requests)
  actions = np.random.default_rng(0).integers(0, len(profile.models), keep)
  config = ServingConfig(deadline_s=2.0, deadline_per_token_s=0.03, queue_capacity=8)
  out, rewards, ref, _ = _run_both(profile, requests, actions, config, chunk=20_000)
  assert arrival[keep - 1] > 3_500_000_000 and ref.rejected.any()
  _assert_same(out, rewards, ref, "hour")


def test_exact_ties_between_arrivals_and_sub_microsecond_iterations():
  """Decode 1234.5 us: two iterations end exactly at 2469 us, where r1 arrives. A tie is a
  tie (iteration end first): the iteration starting at 2469 is formed without r1, which
  waits for the next one, exactly as the oracle says."""
  profile = _profile(decode=(0.0012345, 0.0012345))
  requests = _requests([0, 2469, 2469], [3, 1, 1])
  out, rewards, ref, _ = _run_both(profile, requests, [0, 0, 0],
                                   ServingConfig(deadline_s=1.0, queue_capacity=4))
  _assert_same(out, rewards, ref, "tie")
  # r0 runs 3 iterations: ends at 3703.5; r1 and r2 are admitted then, done at 4938.
  np.testing.assert_allclose(ref.latency_us, [3703.5, 4938 - 2469, 4938 - 2469])
  np.testing.assert_array_equal(out["latency_us"], [3703, 2469, 2469])


def test_ties_within_the_rounding_of_finer_times_follow_the_rounded_clock():
  """The documented exception: a profile time with more than 15 decimal places in seconds
  is rounded to the femtosecond. Decode 1000.0000000004 us rounds to 1000 us, so the env's
  first iteration ends exactly at r1's arrival (a tie: end first, r1 waits an iteration),
  while in the oracle's exact time it ends 4e-10 us later (r1 joins the next iteration)."""
  profile = _profile(decode=(0.0010000000000004, 0.0010000000000004))
  assert repr(profile.models[0].decode_step_s[0]) == "0.0010000000000004"
  us, frac = clock.to_fixed(0.0010000000000004)
  assert (us, frac) == (1000, 0)
  requests = _requests([0, 1000], [2, 1])
  out, _, ref, _ = _run_both(profile, requests, [0, 0],
                             ServingConfig(deadline_s=1.0, queue_capacity=4))
  np.testing.assert_array_equal(out["latency_us"], [2000, 2000])   # r1 admitted at 2000
  np.testing.assert_allclose(ref.latency_us, [2000, 1000], atol=1e-6)   # r1 admitted at 1000+


def test_400k_token_request_latency_and_far_deadline_are_exact():
  """A trace row with 400,000 output tokens on OPT-6.7B (about 5,240 s): the latency is exact
  (the int32 clock used to wrap it to ~948 s), and its 12,002 s budget (2 s + 30 ms/token,
  beyond 2^30 us) is carried in deadline epochs: on time, as in the oracle."""
  profile = default_profile()
  m = [x.name for x in profile.models].index("opt-6.7b")
  requests = _requests([0, 1_000_000], [400_000, 10], [100, 100])
  config = ServingConfig(deadline_s=2.0, deadline_per_token_s=0.03, queue_capacity=8)
  out, rewards, ref, env = _run_both(profile, requests, [m, m], config)
  assert env.long_deadlines
  _assert_same(out, rewards, ref, "400k")
  assert 5_000e6 < ref.latency_us[0] < 5_500e6 and out["on_time"][0]
  tight = ServingConfig(deadline_s=2.0, deadline_per_token_s=0.01, queue_capacity=8)
  out, rewards, ref, env = _run_both(profile, requests, [m, m], tight)
  _assert_same(out, rewards, ref, "400k tight")
  assert not out["on_time"][0]


@pytest.mark.parametrize("reward", ["hard", "soft"])
def test_requests_hours_late_are_late_with_exact_latency(reward):
  """max_batch 1, 0.1 s per step, thirty 1000-token requests at once: request k completes
  at 100 (k + 1) s, up to ~2,970 s late. They are late (never `on_time` with an infinite
  latency, as the int32 clock had it), with exact latencies and final utilities."""
  profile = _profile(decode=(0.1,), quality=0.5)
  requests = _requests(np.zeros(30, np.int64), np.full(30, 1000))
  config = ServingConfig(deadline_s=2.0, deadline_per_token_s=0.03, reward=reward,
                         soft_window_s=2.0, miss_penalty=0.25, queue_capacity=64)
  out, rewards, ref, _ = _run_both(profile, requests, np.zeros(30, int), config)
  _assert_same(out, rewards, ref, reward)
  np.testing.assert_array_equal(out["latency_us"], (np.arange(30) + 1) * 100_000_000)
  assert out["on_time"].sum() == 0
  np.testing.assert_allclose(out["utility"], -0.25 if reward == "hard" else 0.0)
  assert np.all(np.isfinite(out["latency"]))


@pytest.mark.parametrize("change,match", [
    (dict(decode=(300.0,)), "iteration may last"),
    (dict(decode=(1e-7,)), "decode_step_s"),
    (dict(deadline_s=600.0), "deadline_s"),
    (dict(soft_window_s=900.0), "soft_window_s"),
])
def test_make_env_refuses_what_the_clock_cannot_hold(change, match):
  profile = _profile(decode=change.pop("decode", (0.01,)))
  config = ServingConfig(**change)
  with pytest.raises(ValueError, match=match):
    make_env(profile, config, env_testing.replay(_requests([0], [1]), 1), episode_len=1)
