"""Tests for bes.metrics on hand-computed cases."""
import json
import math

import numpy as np
import pytest

from bes import metrics as M
from bes import profile as P

Q = np.array([[0.2, 0.9], [0.6, 0.3]])  # best per task: [0.6, 0.9]


def _profile():
  models = [
      {"name": name, "instances": inst, "gpus_per_instance": 1, "max_batch": 1,
       "decode_step_s": [0.01], "prefill_s_fixed": 0.0, "prefill_s_per_token": 0.0,
       "quality": {"a": float(q[0]), "b": float(q[1])}}
      for name, inst, q in (("m0", 1, Q[0]), ("m1", 3, Q[1]))]
  return P.profile_from_dict({"name": "t", "provenance": "", "tasks": ["a", "b"], "models": models})


def test_availability_mean_utility_rejected_fraction():
  assert M.availability([True, False, True, True]) == 0.75
  assert M.mean_utility([0.5, -1.0, 1.5]) == pytest.approx(1 / 3)
  assert M.rejected_fraction(np.array([0, 0, 1, 0, 1], bool)) == 0.4
  with pytest.raises(ValueError, match="on_time expected at least one request"):
    M.availability([])
  with pytest.raises(ValueError, match="1-D"):
    M.mean_utility([[1.0]])


def test_peak_from_tasks_mix_and_profile():
  assert M.peak(Q, np.array([0, 0, 1])) == pytest.approx((0.6 + 0.6 + 0.9) / 3)
  assert M.peak(Q, mix=[1, 3]) == pytest.approx(0.25 * 0.6 + 0.75 * 0.9)
  assert M.peak(_profile(), [1, 1]) == pytest.approx(0.9)
  with pytest.raises(ValueError, match="exactly one of task"):
    M.peak(Q)
  with pytest.raises(ValueError, match="exactly one of task"):
    M.peak(Q, [0], mix=[1, 1])
  with pytest.raises(ValueError, match=r"integer indices in \[0, 2\)"):
    M.peak(Q, [0, 2])
  with pytest.raises(ValueError, match="integer indices"):
    M.peak(Q, [0.5])
  with pytest.raises(ValueError, match="2 non-negative weights"):
    M.peak(Q, mix=[1, -1])


ARRIVAL = np.array([0.0, 9.999999, 10.0, 35.0, 39.5])
UTILITY = np.array([1.0, 0.0, 0.5, 0.2, 0.4])


def test_window_performance_skips_empty_windows_and_is_exact_at_edges():
  start, perf = M.window_performance(ARRIVAL, UTILITY, window_s=10.0)
  np.testing.assert_array_equal(start, [0.0, 10.0, 30.0])  # [20, 30) is empty: skipped
  np.testing.assert_allclose(perf, [0.5, 0.5, 0.3])
  start, perf = M.window_performance(ARRIVAL, UTILITY, window_s=20.0)
  np.testing.assert_array_equal(start, [0.0, 20.0])
  np.testing.assert_allclose(perf, [0.5, 0.3])
  with pytest.raises(ValueError, match="window_s expected > 0"):
    M.window_performance(ARRIVAL, UTILITY, window_s=0.0)
  with pytest.raises(ValueError, match="utility expected shape"):
    M.window_performance(ARRIVAL, UTILITY[:2])


def test_frac_windows_at_least():
  # Window performances [0.5, 0.5, 0.3].
  assert M.frac_windows_at_least(ARRIVAL, UTILITY, peak=0.5, frac=1.0) == pytest.approx(2 / 3)
  assert M.frac_windows_at_least(ARRIVAL, UTILITY, peak=0.5, frac=0.6) == 1.0  # 0.3 >= 0.3
  assert M.frac_windows_at_least(ARRIVAL, UTILITY, peak=0.6, frac=1.0) == 0.0


def test_perf_per_gpu():
  assert M.perf_per_gpu(12.0, 3.0, 4) == 1.0
  with pytest.raises(ValueError, match="duration_s expected > 0"):
    M.perf_per_gpu(1.0, 0.0, 1)
  with pytest.raises(ValueError, match="num_gpus expected an integer >= 1"):
    M.perf_per_gpu(1.0, 1.0, 0)


def test_latency_percentiles_exclude_rejected():
  lat = np.array([1.0, 2.0, 3.0, 4.0, np.inf])
  rej = np.array([False, False, False, False, True])
  p = M.latency_percentiles(lat, rej)
  assert p == {50: pytest.approx(2.5), 90: pytest.approx(3.7), 99: pytest.approx(3.97)}
  assert M.latency_percentiles(lat, rej, qs=(0, 100)) == {0: 1.0, 100: 4.0}
  assert all(math.isnan(v) for v in M.latency_percentiles([np.inf], [True]).values())
  with pytest.raises(ValueError, match="completed .* expected finite"):
    M.latency_percentiles([1.0, np.inf], [False, False])


def test_max_sustainable_rate():
  # Unsorted sweep: sorted availabilities 1.0, 0.995, 0.98, 0.95 -> 2 is the last passing rate.
  assert M.max_sustainable_rate([4, 1, 2, 3], [0.95, 1.0, 0.995, 0.98]) == 2.0
  # Non-monotone: recovery at rate 3 after a failure at rate 2 does not count.
  assert M.max_sustainable_rate([1, 2, 3, 4], [1.0, 0.98, 0.995, 0.9]) == 1.0
  assert M.max_sustainable_rate([1, 2, 3], [1.0, 0.99, 0.99]) == 3.0  # >= target passes
  assert M.max_sustainable_rate([1, 2], [0.9, 1.0]) is None
  assert M.max_sustainable_rate([1, 2], [0.9, 0.8], target=0.85) == 1.0
  with pytest.raises(ValueError, match="one per rate"):
    M.max_sustainable_rate([1, 2], [1.0])


def _outcomes():
  return {
      "arrival": np.array([1.0, 4.0, 12.0, 16.0]),
      "task": np.array([0, 1, 1, 0], np.int32),
      "model": np.array([1, 0, 1, 0], np.int32),
      "instance": np.array([0, 0, 2, 0], np.int32),
      "latency": np.array([0.5, 1.5, np.inf, 3.0]),
      "on_time": np.array([True, True, False, False]),
      "rejected": np.array([False, False, True, False]),
      "utility": np.array([0.6, 0.9, 0.0, 0.1], np.float32),
  }


def test_summarize_hand_computed():
  s = M.summarize(_outcomes(), _profile(), window_s=10.0)
  # peak = mean(0.6, 0.9, 0.9, 0.6) = 0.75; windows: [0,10) -> 0.75, [10,20) -> 0.05.
  expected = {
      "num_requests": 4, "availability": 0.5, "mean_utility": 0.4, "peak": 0.75,
      "frac_windows_ge_96": 0.5, "frac_windows_ge_98": 0.5,
      "perf_per_gpu": 1.6 / 16.0 / 4,  # utility sum / last arrival (s) / (1 + 3 GPUs)
      "p50_latency_s": 1.5, "p90_latency_s": 2.7, "p99_latency_s": 2.97, "rejected_frac": 0.25,
  }
  assert set(s) == set(expected)
  for k, v in expected.items():
    assert s[k] == pytest.approx(v, rel=1e-6), k
  assert isinstance(s["num_requests"], int)
  json.loads(json.dumps(s, allow_nan=False))
  assert M.summarize(_outcomes(), _profile(), duration_s=32.0)["perf_per_gpu"] == pytest.approx(
      1.6 / 32.0 / 4, rel=1e-6)


def test_summarize_all_rejected_is_strict_json():
  o = _outcomes()
  o["rejected"][:] = True
  o["latency"][:] = np.inf
  s = M.summarize(o, _profile())
  assert s["p50_latency_s"] is None and s["rejected_frac"] == 1.0
  json.dumps(s, allow_nan=False)


def test_summarize_bad_outcomes():
  o = _outcomes()
  del o["utility"]
  with pytest.raises(ValueError, match=r"missing key\(s\) \['utility'\]"):
    M.summarize(o, _profile())
  o = _outcomes()
  o["task"] = o["task"][:3]
  with pytest.raises(ValueError, match="one shape"):
    M.summarize(o, _profile())
