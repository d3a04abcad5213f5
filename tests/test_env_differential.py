"""The jitted environment against the plain-Python reference, request by request.

Cases are grouped by *structure* (models, instances, max batch, queue capacity, tasks,
episode length), which fixes the environment's shapes; within a structure, many variants
(latency tables, quality, deadlines, reward mode, requests, actions) run in one `vmap`, so
hundreds of random cases cost a handful of compilations.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import reference
from bes.env import rollout as rollout_lib
from bes.env.serving_env import make_env
from bes.profile import profile_from_dict
from bes.serving_config import ServingConfig
from tests import env_testing, sim_cases

NUM_STRUCTURES = 8
VARIANTS = 12
NUM_REQUESTS = 120


def _variant(base, seed, v, capacity, n):
  """A case with `base`'s structure and everything else random."""
  rng = np.random.default_rng([seed, v])
  kind = int(rng.integers(3))                      # ms grid | whole us | sub-microsecond
  grid = kind == 0
  fresh = sim_cases.random_profile(rng, num_models=len(base.models), num_tasks=len(base.tasks),
                                   grid=grid, fine=kind == 2)
  models = []
  for b, f in zip(base.models, fresh.models):
    d = f.__dict__ | {"instances": b.instances, "max_batch": b.max_batch}
    decode = np.resize(np.asarray(f.decode_step_s), b.max_batch)
    models.append(dict(d, decode_step_s=[float(x) for x in decode], quality=dict(f.quality)))
  profile = profile_from_dict({"name": "v", "provenance": "test", "tasks": list(base.tasks),
                               "models": models})
  requests = sim_cases.random_requests(rng, n, len(base.tasks), grid_us=1000 if grid else None)
  config = sim_cases.random_config(rng, len(base.tasks))
  config = ServingConfig(**(config.__dict__ | {"queue_capacity": capacity}))
  actions = sim_cases.random_actions(rng, n, len(base.models))
  return profile, requests, actions, config


def _structure(seed):
  rng = np.random.default_rng(1000 + seed)
  base = sim_cases.random_profile(rng)
  capacity = int(rng.integers(1, 5))
  cases = [_variant(base, seed, v, capacity, NUM_REQUESTS) for v in range(VARIANTS)]
  built = [make_env(p, c, env_testing.replay(r, len(p.tasks)), NUM_REQUESTS, record=True)
           for p, r, _, c in cases]
  env = built[0][0]
  params = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[b[1] for b in built])
  actions = jnp.asarray(np.stack([a for _, _, a, _ in cases]))
  return env, params, actions, cases


def _assert_matches(out, rewards, case, label):
  profile, requests, actions, config = case
  ref = reference.simulate(profile, requests, actions, config)
  np.testing.assert_array_equal(out["model"], ref.model, err_msg=f"{label}: model")
  np.testing.assert_array_equal(out["rejected"], ref.rejected, err_msg=f"{label}: rejected")
  np.testing.assert_array_equal(out["instance"], ref.instance, err_msg=f"{label}: instance")
  _assert_latency(out["latency_us"], ref, label)
  np.testing.assert_array_equal(out["on_time"], ref.on_time, err_msg=f"{label}: on_time")
  np.testing.assert_allclose(out["utility"], ref.utility, rtol=0, atol=1e-6, err_msg=f"{label}: utility")
  np.testing.assert_array_equal(out["arrival"], np.asarray(ref.arrival_us) / 1e6)
  if rewards is not None:
    np.testing.assert_allclose(rewards, ref.step_reward, rtol=0, atol=1e-5, err_msg=f"{label}: reward")


def _assert_latency(env_us, ref, label):
  """The env records whole microseconds rounded down; the oracle's latency is exact: they
  agree within 1 us plus the env's stated clock error (far below 1 us here)."""
  env_us, ref_us = np.asarray(env_us), np.asarray(ref.latency_us)
  np.testing.assert_array_equal(env_us < 0, ref_us < 0, err_msg=f"{label}: rejected latency")
  err = np.abs(env_us - np.floor(ref_us))
  assert np.all(err <= 1), f"{label}: latency off by up to {err.max()} us"


@pytest.mark.parametrize("seed", range(NUM_STRUCTURES))
def test_env_equals_reference_request_by_request(seed):
  env, params, actions, cases = _structure(seed)

  def run(params, actions, key):
    state, traj = rollout_lib.rollout(env, params, env_testing.action_table(actions), key,
                                      NUM_REQUESTS)
    return state.outcomes, traj["reward"], traj["done"]

  keys = jax.random.split(jax.random.PRNGKey(seed), VARIANTS)
  outcomes, rewards, done = jax.jit(jax.vmap(run))(params, actions, keys)
  out = rollout_lib.outcomes_to_numpy(outcomes)
  assert np.all(np.asarray(done)[:, -1]) and not np.any(np.asarray(done)[:, :-1])
  for v, case in enumerate(cases):
    _assert_matches({k: x[v] for k, x in out.items()}, np.asarray(rewards[v]), case,
                    f"structure {seed} variant {v}")


@pytest.mark.parametrize("seed,max_passes", [(0, 1), (3, 2)])
def test_bounded_passes_give_the_same_outcomes(seed, max_passes):
  """`step_async` (environments out of lockstep) decides exactly as `step` does."""
  env, params, actions, cases = _structure(seed)
  calls = NUM_REQUESTS * 6

  def run(params, actions, key):
    policy = env_testing.action_table(actions)
    obs, state = env.reset(key, params)

    def body(carry, k):
      obs, state, snapshot, total, decided, finished = carry
      obs, state, reward, done, dec, _ = env.step_async(k, state, policy(k, obs, state), params,
                                                        max_passes)
      first = ~finished                                  # still in the first episode
      snapshot = jax.tree_util.tree_map(lambda new, old: jnp.where(done & first, new, old),
                                        state.outcomes, snapshot)
      return (obs, state, snapshot, total + jnp.where(first, reward, 0.0),
              decided + (dec & first), finished | done), None

    init = (obs, state, state.outcomes, jnp.float32(0), jnp.int32(0), jnp.bool_(False))
    (_, _, snapshot, total, decided, finished), _ = jax.lax.scan(
        body, init, jax.random.split(key, calls))
    return snapshot, total, decided, finished

  keys = jax.random.split(jax.random.PRNGKey(seed), VARIANTS)
  outcomes, total, decided, done = jax.jit(jax.vmap(run))(params, actions, keys)
  assert np.all(np.asarray(done)), "an episode did not finish within the call budget"
  np.testing.assert_array_equal(np.asarray(decided), NUM_REQUESTS)
  out = rollout_lib.outcomes_to_numpy(outcomes)
  for v, case in enumerate(cases):
    _assert_matches({k: x[v] for k, x in out.items()}, None, case, f"async {seed}/{v}")
    ref = reference.simulate(*case)
    np.testing.assert_allclose(float(total[v]), ref.utility.astype(np.float64).sum(), atol=1e-4)


def _hand_profile(decode=(0.010, 0.012), fixed=0.001, per_token=1e-5, instances=1):
  return profile_from_dict({"name": "hand", "provenance": "test", "tasks": ["a"], "models": [
      {"name": "m", "instances": instances, "gpus_per_instance": 1, "max_batch": len(decode),
       "decode_step_s": list(decode), "prefill_s_fixed": fixed, "prefill_s_per_token": per_token,
       "quality": {"a": 0.5}}]})


def test_hand_computed_case():
  """Three requests on one instance with max batch 2 (times in ms):
  r0 arrives 0 (prompt 100, 2 tokens): idle, iteration 10 + 1 + 100 * 0.01 = 12 -> ends 12.
  r1 arrives 5 (1 token): waits; iteration at 12 admits it: 12 (b=2) + 1 (prefill, 0 tokens)
    -> ends 25: r0 done (latency 25), r1 done (latency 20).
  r2 arrives 30 (3 tokens): idle, 10 + 1 -> 41, then 51, 61: latency 31.
  Step rewards: (0, 5] nothing; (5, 30] r0 + r1; the last step drains r2."""
  from bes.requests import from_arrivals
  profile = _hand_profile()
  requests = from_arrivals([0.0, 0.005, 0.030], [0, 0, 0], [100, 0, 0], [2, 1, 3])
  env, params = make_env(profile, ServingConfig(deadline_s=1.0, queue_capacity=2),
                         env_testing.replay(requests, 1), episode_len=3, record=True)
  out, rewards = rollout_lib.run_episode(env, params, env_testing.action_table([0, 0, 0]),
                                         jax.random.PRNGKey(0))
  np.testing.assert_array_equal(out["latency_us"], [25000, 20000, 31000])
  np.testing.assert_allclose(rewards, [0.0, 1.0, 0.5])


def test_clock_exact_over_hours_and_across_int32_wraparound():
  """Two hours of sparse traffic (7.2e9 us, beyond 2^32): the wrapping int32 clock gives the
  reference's exact per-request latencies, and arrivals are recovered to the microsecond."""
  rng = np.random.default_rng(7)
  n = 300
  arrival_us = np.sort(rng.integers(0, 7_200_000_000, n))
  arrival_us[150] = arrival_us[149]                                 # a simultaneous arrival
  from bes.requests import Requests
  requests = Requests(gap_us=np.diff(arrival_us, prepend=0).astype(np.int32),
                      task=np.zeros(n, np.int32), prompt_len=rng.integers(0, 500, n).astype(np.int32),
                      output_len=rng.integers(1, 300, n).astype(np.int32))
  profile = _hand_profile(decode=(0.0123457, 0.0150001), fixed=0.0021, per_token=3.3e-5)
  config = ServingConfig(deadline_s=2.0, deadline_per_token_s=0.004, reward="soft",
                         soft_window_s=1.0, queue_capacity=2)
  env, params = make_env(profile, config, env_testing.replay(requests, 1), episode_len=n,
                         record=True)
  out, rewards = rollout_lib.run_episode(env, params, env_testing.action_table(np.zeros(n)),
                                         jax.random.PRNGKey(0))
  ref = reference.simulate(profile, requests, np.zeros(n, int), config)
  _assert_latency(out["latency_us"], ref, "hours")
  np.testing.assert_array_equal(out["on_time"], ref.on_time)
  assert np.all(np.rint(out["arrival"] * 1e6).astype(np.int64) == arrival_us)
  np.testing.assert_allclose(rewards.sum(), ref.utility.sum(), atol=1e-4)


def test_vmapped_environments_are_independent_and_rewards_sum_to_utilities():
  """Many streams of one workload in one vmap: each environment's rewards over an episode
  equal the sum of its requests' utilities, and every request has exactly one outcome."""
  from bes.profile import default_profile
  from bes.workloads import default_workload_config, workload_from_config
  profile = default_profile()
  cfg = default_workload_config()
  cfg.rate = 60.0
  workload = workload_from_config(cfg, profile.tasks)
  env, params = make_env(profile, ServingConfig(deadline_s=2.0, queue_capacity=8), workload,
                         episode_len=200, record=True)
  policy = lambda key, obs, state: jax.random.randint(key, (), 0, 3)
  run = jax.jit(jax.vmap(lambda k: rollout_lib.rollout(env, params, policy, k, 200)))
  state, traj = run(jax.random.split(jax.random.PRNGKey(1), 8))
  out = rollout_lib.outcomes_to_numpy(state.outcomes)
  assert np.all(out["model"] >= 0)
  assert np.all((out["latency_us"] > 0) ^ out["rejected"])
  np.testing.assert_allclose(np.asarray(traj["reward"]).sum(1), out["utility"].sum(1), atol=1e-3)
  assert len({float(x) for x in out["arrival"][:, -1]}) == 8        # independent streams
