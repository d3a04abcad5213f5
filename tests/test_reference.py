"""Tests of the plain-Python reference simulator (`bes.reference`).

Hand-computed scenarios (the arithmetic is written out in comments, times in integer
microseconds) and properties checked over random cases from `tests.sim_cases`.
"""
import fractions

import numpy as np
import pytest

from bes.profile import profile_from_dict
from bes.reference import simulate
from bes.requests import Requests
from bes.serving_config import ServingConfig
from tests import sim_cases


def _model(name="m", instances=1, decode=(0.010,), fixed=0.0, per_token=0.0, quality=0.8,
           tasks=("t",)):
  q = quality if isinstance(quality, dict) else {t: quality for t in tasks}
  return {"name": name, "instances": instances, "gpus_per_instance": 1, "max_batch": len(decode),
          "decode_step_s": list(decode), "prefill_s_fixed": fixed,
          "prefill_s_per_token": per_token, "quality": q}


def _profile(*models, tasks=("t",)):
  return profile_from_dict({"name": "hand", "provenance": "test", "tasks": list(tasks),
                            "models": list(models)})


def _requests(arrival_us, output_len, prompt_len=None, task=None):
  n = len(arrival_us)
  return Requests(gap_us=np.diff(np.asarray(arrival_us, np.int64), prepend=0).astype(np.int32),
                  task=np.zeros(n, np.int32) if task is None else np.asarray(task, np.int32),
                  prompt_len=np.zeros(n, np.int32) if prompt_len is None
                  else np.asarray(prompt_len, np.int32),
                  output_len=np.asarray(output_len, np.int32))


def _cfg(**kw):
  kw.setdefault("deadline_s", 1.0)
  return ServingConfig(**kw)


# --------------------------------------------------------------------------- hand-computed


def test_single_request_on_idle_instance():
  # decode 10 ms at b=1, prefill 2 ms + 10 us/token. Arrival 1000, prompt 100, 3 tokens.
  # Iteration 1 (admits): 10000 + 2000 + 100 * 10 = 13000 -> first token at 14000.
  # Iterations 2, 3: 10000 each -> 24000, 34000 (complete). Latency 33000 <= budget 50000.
  p = _profile(_model(decode=(0.010, 0.015), fixed=0.002, per_token=10e-6, quality=0.8))
  res = simulate(p, _requests([1000], [3], [100]), [0], _cfg(deadline_s=0.05))
  assert res.arrival_us.tolist() == [1000]
  assert res.admit_us.tolist() == [1000]
  assert res.first_token_us.tolist() == [14000]
  assert res.completion_us.tolist() == [34000]
  assert res.latency_us.tolist() == [33000]
  assert res.on_time.tolist() == [True] and res.rejected.tolist() == [False]
  assert res.utility.dtype == np.float32 and res.utility[0] == np.float32(0.8)
  assert res.step_reward.tolist() == [pytest.approx(0.8)]
  np.testing.assert_allclose(res.latency_s(), [0.033])
  assert res.num_iterations == 3


def test_second_request_waits_for_iteration_end():
  # max_batch 2: decode 10 ms (b=1), 15 ms (b=2); prefill fixed 2 ms, prompts 0.
  # r0 @0 (2 tokens): iteration [0, 12000) -> first token at 12000.
  # r1 @5000 (1 token) waits; at 12000 it is admitted with r0 running: b=2,
  #   15000 + 2000 = 17000 -> ends at 29000: r0's 2nd token (done), r1's 1st (done).
  p = _profile(_model(decode=(0.010, 0.015), fixed=0.002))
  res = simulate(p, _requests([0, 5000], [2, 1]), [0, 0], _cfg())
  assert res.admit_us.tolist() == [0, 12000]
  assert res.completion_us.tolist() == [29000, 29000]
  assert res.latency_us.tolist() == [29000, 24000]


def test_batch_full_waits():
  # max_batch 1, decode 10 ms, no prefill. r0 @0 (2 tokens) runs [0,10000), [10000,20000).
  # r1 @0 (same instant, finds the instance busy) waits: at 10000 the batch is full (1/1),
  # so it is admitted only at 20000 -> completes at 30000.
  p = _profile(_model(decode=(0.010,)))
  res = simulate(p, _requests([0, 0], [2, 1]), [0, 0], _cfg())
  assert res.admit_us.tolist() == [0, 20000]
  assert res.completion_us.tolist() == [20000, 30000]
  assert res.latency_us.tolist() == [20000, 30000]


def test_arrival_exactly_at_iteration_end_waits():
  # max_batch 2, decode 10 ms (b=1), 15 ms (b=2), no prefill. r0 @0 (3 tokens).
  # At 10000 r0's iteration ends; the next one starts at once with b=1 (before r1 @10000
  # is routed) and ends at 20000. r1 waits, is admitted at 20000: b=2 -> 35000.
  # r0: tokens at 10000, 20000, 35000; r1: one token at 35000 -> latency 25000.
  p = _profile(_model(decode=(0.010, 0.015)))
  res = simulate(p, _requests([0, 10000], [3, 1]), [0, 0], _cfg())
  assert res.admit_us.tolist() == [0, 20000]
  assert res.completion_us.tolist() == [35000, 35000]
  assert res.latency_us.tolist() == [35000, 25000]
  # Both completions are after a_1 = 10000: step 1 earns both.
  np.testing.assert_allclose(res.step_reward, [0.0, 1.6], rtol=1e-6)


def test_rejection_at_queue_capacity():
  # max_batch 1, queue_capacity 1, decode 10 ms. r0 @0 runs, r1 @0 waits (queue 1/1),
  # r2 @0 and r3 @1000 find the queue full: rejected at once, utility -miss_penalty.
  # r0 completes at 10000, r1 is admitted then and completes at 20000.
  p = _profile(_model(decode=(0.010,), quality=0.8))
  cfg = _cfg(queue_capacity=1, miss_penalty=0.5)
  res = simulate(p, _requests([0, 0, 0, 1000], [1, 1, 1, 1]), [0] * 4, cfg)
  assert res.rejected.tolist() == [False, False, True, True]
  assert res.latency_us.tolist() == [10000, 20000, -1, -1]
  assert res.completion_us.tolist() == [10000, 20000, -1, -1]
  assert res.on_time.tolist() == [True, True, False, False]
  np.testing.assert_array_equal(res.utility, np.float32([0.8, 0.8, -0.5, -0.5]))
  assert np.isinf(res.latency_s()[2:]).all()
  # Steps: a = 0, 0, 0, 1000. Rejections belong to their own step; r0 (10000) and
  # r1 (20000) complete after the last arrival: the last step drains them.
  np.testing.assert_allclose(res.step_reward, [0.0, 0.0, -0.5, -0.5 + 1.6], rtol=1e-6)


def test_jsq_tie_break_lowest_index():
  # One model, 3 instances of max_batch 1, decode 10 ms. Four arrivals @0 go to
  # instances 0, 1, 2 (loads 0,0,0 -> 1,0,0 -> 1,1,0), then 0 again (1,1,1: lowest index).
  # r4 @5000: loads (2,1,1) -> instance 1. r3 is admitted on instance 0 at 10000.
  p = _profile(_model(instances=3, decode=(0.010,)))
  loads_seen = []

  def policy(i, view, loads):
    loads_seen.append(loads)
    assert view.index == i and not hasattr(view, "output_len")
    return 0

  res = simulate(p, _requests([0, 0, 0, 0, 5000], [1] * 5), policy, _cfg())
  assert res.instance.tolist() == [0, 1, 2, 0, 1]
  assert res.admit_us.tolist() == [0, 0, 0, 10000, 10000]
  assert res.completion_us.tolist() == [10000, 10000, 10000, 20000, 20000]
  # (running, waiting) per instance seen by the policy before r3 and r4 are routed.
  assert loads_seen[3] == [[(1, 0), (1, 0), (1, 0)]]
  assert loads_seen[4] == [[(1, 1), (1, 0), (1, 0)]]


@pytest.mark.parametrize("reward,window,penalty,want", [
    ("hard", 0.04, 0.5, -0.5),        # late, hard: -miss_penalty
    ("hard", 0.04, 0.0, 0.0),
    ("soft", 0.04, 0.5, 0.8 * 0.75),  # 0.8 * (1 - 10000 / 40000)
    ("soft", 0.005, 0.5, 0.0),        # 0.8 * max(0, 1 - 10000 / 5000)
])
def test_late_utility_hard_and_soft(reward, window, penalty, want):
  # decode 10 ms, 3 tokens -> latency 30000; budget 20000 -> 10000 us late.
  p = _profile(_model(decode=(0.010,), quality=0.8))
  cfg = _cfg(deadline_s=0.02, reward=reward, soft_window_s=window, miss_penalty=penalty)
  res = simulate(p, _requests([0], [3]), [0], cfg)
  assert res.latency_us.tolist() == [30000] and res.on_time.tolist() == [False]
  assert res.utility[0] == pytest.approx(want, abs=1e-6)
  if reward == "soft":  # the exact float32 arithmetic of the contract
    frac = np.float32(1) - np.float32(10000) / np.float32(round(window * 1e6))
    assert res.utility[0] == np.float32(0.8) * max(np.float32(0), frac)


def test_per_token_deadline():
  # latency 30000 (3 tokens x 10 ms). Budget 20000 alone: late; with 4 ms per output
  # token: 20000 + 3 * 4000 = 32000 >= 30000: on time. Latency == budget is on time.
  p = _profile(_model(decode=(0.010,), quality=0.8))
  late = simulate(p, _requests([0], [3]), [0], _cfg(deadline_s=0.02))
  ok = simulate(p, _requests([0], [3]), [0], _cfg(deadline_s=0.02, deadline_per_token_s=0.004))
  edge = simulate(p, _requests([0], [3]), [0], _cfg(deadline_s=0.018, deadline_per_token_s=0.004))
  assert late.on_time.tolist() == [False] and ok.on_time.tolist() == [True]
  assert edge.on_time.tolist() == [True] and edge.utility[0] == np.float32(0.8)


def test_prefill_cost_of_multi_request_admission():
  # max_batch 4, decode 10/12/14/16 ms, prefill 2 ms + 12.5 us/token (12500 ns).
  # r0 @0 (prompt 0, 2 tokens): [0, 10000 + 2000 = 12000).
  # r1 @1000 (prompt 101), r2 @2000 (40), r3 @3000 (0) wait; at 12000 all three are
  # admitted (b=4): prefill = 2000 + 141 * 12.5 = 3762.5 us (exact: no rounding),
  # decode 16000 -> ends at 12000 + 19762.5 = 31762.5 (everyone's last token).
  p = _profile(_model(decode=(0.010, 0.012, 0.014, 0.016), fixed=0.002, per_token=12.5e-6))
  res = simulate(p, _requests([0, 1000, 2000, 3000], [2, 1, 1, 1], [0, 101, 40, 0]),
                 [0] * 4, _cfg())
  assert res.admit_us.tolist() == [0, 12000, 12000, 12000]
  assert res.completion_us.tolist() == [31762.5] * 4
  assert res.latency_us.tolist() == [31762.5, 30762.5, 29762.5, 28762.5]
  assert res.completion_ticks[0] == 31762.5 * res.ticks_per_us


def test_completion_at_an_arrival_belongs_to_previous_step():
  # max_batch 1, decode 10 ms; q = 0.1, 0.2, 0.4 for tasks a, b, c.
  # r0 (a) @0 completes at 10000 == a_1: step 0. r1 (b) @10000 finds the instance idle
  # (its iteration ended at 10000) and completes at 20000 in (10000, 25000]: step 1.
  # r2 (c) @25000 completes at 35000, after the last arrival: step 2 (drain).
  tasks = ("a", "b", "c")
  p = _profile(_model(decode=(0.010,), quality={"a": 0.1, "b": 0.2, "c": 0.4}, tasks=tasks),
               tasks=tasks)
  res = simulate(p, _requests([0, 10000, 25000], [1, 1, 1], task=[0, 1, 2]), [0] * 3, _cfg())
  assert res.admit_us.tolist() == [0, 10000, 25000]
  np.testing.assert_allclose(res.step_reward, [0.1, 0.2, 0.4], rtol=1e-6)


def test_empty_trace():
  res = simulate(_profile(_model()), _requests([], []), [], _cfg())
  assert res.utility.shape == res.step_reward.shape == res.latency_s().shape == (0,)


def test_bad_inputs_are_refused():
  p = _profile(_model(), _model(name="m2"))
  reqs = _requests([0, 0, 0], [1, 1, 1])
  with pytest.raises(ValueError, match="request 2"):
    simulate(p, reqs, [0, 1, 2], _cfg())
  with pytest.raises(ValueError, match="request 1"):
    simulate(p, reqs, [0, -1, 0], _cfg())
  with pytest.raises(ValueError, match="request 0"):
    simulate(p, reqs, lambda i, v, l: 5, _cfg())
  with pytest.raises(ValueError, match="request 0"):
    simulate(p, reqs, [True, 0, 0], _cfg())
  with pytest.raises(ValueError, match="actions: expected 3"):
    simulate(p, reqs, [0, 1], _cfg())
  with pytest.raises(ValueError, match=r"requests.output_len\[1\]"):
    simulate(p, _requests([0, 0], [1, 0]), [0, 0], _cfg())
  with pytest.raises(ValueError, match=r"requests.task\[0\]"):
    simulate(p, _requests([0], [1], task=[3]), [0], _cfg())
  with pytest.raises(ValueError, match="1 microsecond"):
    simulate(_profile(_model(decode=(4e-7,))), _requests([0], [1]), [0], _cfg())
  with pytest.raises(ValueError, match="queue_capacity"):
    simulate(p, reqs, [0, 0, 0], _cfg(queue_capacity=0))


# --------------------------------------------------------------------------- properties

SEEDS = range(50)
N = 250


def _case(seed):
  profile, reqs, actions, cfg = sim_cases.random_case(seed, N)
  return profile, reqs, actions, cfg, simulate(profile, reqs, actions, cfg)


_CASES = {}


def _cached(seed):
  if seed not in _CASES:
    _CASES[seed] = _case(seed)
  return _CASES[seed]


def _us(seconds):
  """A profile time as written (its shortest decimal), in exact microseconds."""
  return fractions.Fraction(repr(float(seconds))) * 10 ** 6


def _decode_us(model):
  return [_us(x) for x in model.decode_step_s]


def _prefill_us(model, tokens):
  return _us(model.prefill_s_fixed) + int(tokens) * _us(model.prefill_s_per_token)


def _loads_at(res, i, m, num_instances):
  """(running, waiting) per instance of model m just before request i is routed,
  reconstructed from the outcomes of requests 0..i-1 alone."""
  a = res.arrival_us[i]
  prev = (np.arange(len(res.arrival_us)) < i) & ~res.rejected & (res.model == m)
  out = []
  for k in range(num_instances):
    on_k = prev & (res.instance == k)
    running = on_k & (res.admit_us <= a) & (res.completion_us > a)
    waiting = on_k & (res.admit_us > a)
    out.append((int(running.sum()), int(waiting.sum())))
  return out


@pytest.mark.parametrize("seed", SEEDS)
def test_outcomes_rewards_and_utilities(seed):
  profile, reqs, actions, cfg, res = _cached(seed)
  arrival = np.cumsum(np.asarray(reqs.gap_us, np.int64))
  np.testing.assert_array_equal(res.arrival_us, arrival)
  np.testing.assert_array_equal(res.model, actions)
  done = ~res.rejected
  # Exactly one outcome: rejected (no times) xor completed after arriving.
  for f in ("latency_us", "completion_us", "admit_us", "first_token_us"):
    assert np.all(getattr(res, f)[res.rejected] == -1), f
  np.testing.assert_allclose(res.completion_us[done], arrival[done] + res.latency_us[done],
                             rtol=0, atol=1e-6)
  assert np.all(arrival[done] <= res.admit_us[done])
  assert np.all(res.admit_us[done] < res.first_token_us[done])
  assert np.all(res.first_token_us[done] <= res.completion_us[done])
  assert np.all(res.first_token_us[done & (np.asarray(reqs.output_len) == 1)] ==
                res.completion_us[done & (np.asarray(reqs.output_len) == 1)])
  # On time iff latency <= deadline budget.
  task, out_len = np.asarray(reqs.task), np.asarray(reqs.output_len, np.int64)
  budget = cfg.deadline_us(len(profile.tasks))[task] + cfg.deadline_per_token_us * out_len
  np.testing.assert_array_equal(res.on_time, done & (res.latency_us <= budget))
  # Utilities take only the allowed values.
  q = profile.quality_matrix()[res.model, task]
  penalty = np.float32(-cfg.miss_penalty)
  late = done & ~res.on_time
  assert np.all(res.utility[res.rejected] == penalty)
  assert np.all(res.utility[res.on_time] == q[res.on_time])
  if cfg.reward == "hard":
    assert np.all(res.utility[late] == penalty)
  else:
    lateness = (res.latency_us[late] - budget[late]).astype(np.float32)
    frac = np.float32(1) - lateness / np.float32(cfg.soft_window_us)
    np.testing.assert_allclose(res.utility[late], q[late] * np.maximum(np.float32(0), frac),
                               rtol=1e-6, atol=1e-7)
    assert np.all((res.utility[late] >= 0) & (res.utility[late] <= q[late]))
  # Step rewards: a rejection at its own step, a completion at the last step before it.
  assert res.step_reward.dtype == np.float64
  np.testing.assert_allclose(res.step_reward.sum(), res.utility.astype(np.float64).sum(), atol=1e-6)
  step = np.where(res.rejected, np.arange(N),
                  np.searchsorted(arrival, res.completion_us, side="left") - 1)
  assert np.all(step[done] >= np.arange(N)[done])
  np.testing.assert_allclose(np.bincount(step, res.utility.astype(np.float64), minlength=N),
                             res.step_reward, atol=1e-9)


def _served_alone(res, i, idx):
  """Request i found its instance idle and nothing joined it before it completed
  (idx: the completed requests on its instance)."""
  others = idx[idx != i]
  busy_before = np.any((others < i) & (res.completion_us[others] > res.arrival_us[i]))
  joined = np.any((others > i) & (res.arrival_us[others] < res.completion_us[i]))
  return not busy_before and not joined


@pytest.mark.parametrize("seed", SEEDS)
def test_fifo_batch_limit_and_service_time_bounds(seed):
  profile, reqs, actions, cfg, res = _cached(seed)
  prompt, out_len = np.asarray(reqs.prompt_len, np.int64), np.asarray(reqs.output_len, np.int64)
  done = ~res.rejected
  for m, model in enumerate(profile.models):
    decode = _decode_us(model)
    for k in range(model.instances):
      idx = np.flatnonzero(done & (res.model == m) & (res.instance == k))
      # FIFO: admitted (and so producing first tokens) in arrival order.
      assert np.all(np.diff(res.admit_us[idx]) >= 0)
      assert np.all(np.diff(res.first_token_us[idx]) >= 0)
      # Never more than max_batch running: check at every admission instant.
      for t in np.unique(res.admit_us[idx]):
        running = (res.admit_us[idx] <= t) & (res.completion_us[idx] > t)
        assert running.sum() <= model.max_batch
      eps = 1e-6
      for i in idx:
        own_prefill = _prefill_us(model, prompt[i])
        assert res.first_token_us[i] - res.admit_us[i] >= float(min(decode) + own_prefill) - eps
        assert res.latency_us[i] >= float(out_len[i] * min(decode) + own_prefill) - eps
        # Alone on an idle instance until it completes: exactly its own service time.
        if _served_alone(res, i, idx):
          assert res.admit_us[i] == res.arrival_us[i]
          assert res.latency_us[i] == float(out_len[i] * decode[0] + own_prefill)


@pytest.mark.parametrize("seed", SEEDS[::5])
def test_jsq_rejection_and_reported_loads_match_reconstruction(seed):
  profile, reqs, actions, cfg, res = _cached(seed)
  seen = []

  def policy(i, view, loads):
    assert view.arrival_us == res.arrival_us[i] and view.task == reqs.task[i]
    seen.append(loads)
    return int(actions[i])

  again = simulate(profile, reqs, policy, cfg)
  for f in ("model", "instance", "latency_us", "admit_us", "rejected", "utility", "step_reward"):
    np.testing.assert_array_equal(getattr(again, f), getattr(res, f), err_msg=f)
  for i in range(N):
    m = int(res.model[i])
    loads = _loads_at(res, i, m, profile.models[m].instances)
    assert seen[i][m] == loads, i
    total = [r + w for r, w in loads]
    assert res.instance[i] == int(np.argmin(total))  # fewest, ties: lowest index
    assert res.rejected[i] == (loads[res.instance[i]][1] >= cfg.queue_capacity), i
    assert all(w <= cfg.queue_capacity for _, w in loads)


@pytest.mark.parametrize("seed", SEEDS[::10])
def test_an_hour_later_changes_nothing(seed):
  # Integer microseconds: the same trace starting one hour later (after two early requests
  # that are long done) gives exactly the same outcomes, every time shifted by 3.6e9 us.
  profile, reqs, actions, cfg, res = _cached(seed)
  hour = 3_600_000_000
  # Two one-token requests at 1800 s and 3590 s, then the trace 10 s later (gaps are int32).
  pre = Requests(gap_us=np.int32([1_800_000_000, 1_790_000_000]), task=np.int32([0, 0]),
                 prompt_len=np.int32([0, 0]), output_len=np.int32([1, 1]))
  gap = np.asarray(reqs.gap_us).copy()
  gap[0] += 10_000_000
  both = Requests(*(np.concatenate([np.asarray(x), np.asarray(y)]) for x, y in zip(
      (pre.gap_us, pre.task, pre.prompt_len, pre.output_len),
      (gap, reqs.task, reqs.prompt_len, reqs.output_len))))
  late = simulate(profile, both, np.concatenate([[0, 0], actions]), cfg)
  assert late.completion_us[1] < late.arrival_us[2]  # done before the trace starts
  for f in ("latency_us", "instance", "rejected", "on_time", "utility", "step_reward"):
    np.testing.assert_array_equal(getattr(late, f)[2:], getattr(res, f), err_msg=f)
  done = ~res.rejected
  np.testing.assert_array_equal(late.completion_us[2:][done], res.completion_us[done] + hour)


def test_generated_cases_exercise_the_edge_cases():
  """Across the seeds: simultaneous arrivals, arrivals exactly at an iteration end of their
  instance, rejections, late and on-time requests under both reward modes."""
  counts = dict(zero_gap=0, at_iteration_end=0, rejected=0, late=0, on_time=0, alone=0,
                batch_full=0)
  modes = set()
  for seed in SEEDS:
    profile, reqs, actions, cfg, res = _cached(seed)
    modes.add(cfg.reward)
    counts["zero_gap"] += int(np.sum(np.asarray(reqs.gap_us)[1:] == 0))
    counts["rejected"] += int(res.rejected.sum())
    counts["on_time"] += int(res.on_time.sum())
    counts["late"] += int(np.sum(~res.rejected & ~res.on_time))
    ends = {(m, k, t) for m, k, t in zip(res.model, res.instance, res.first_token_us)}
    ends |= {(m, k, t) for m, k, t in zip(res.model, res.instance, res.completion_us)}
    for m, k in {(int(m), int(k)) for m, k in zip(res.model, res.instance)}:
      idx = np.flatnonzero(~res.rejected & (res.model == m) & (res.instance == k))
      counts["alone"] += sum(_served_alone(res, i, idx) for i in idx)
      b = profile.models[m].max_batch
      counts["batch_full"] += sum(
          int(np.sum((res.admit_us[idx] <= t) & (res.completion_us[idx] > t)) == b)
          for t in np.unique(res.admit_us[idx]))
    counts["at_iteration_end"] += sum(
        (m, k, a) in ends for m, k, a in zip(res.model, res.instance, res.arrival_us))
  assert modes == {"hard", "soft"}
  assert all(c >= 20 for c in counts.values()), counts
