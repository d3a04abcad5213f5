"""Serving metrics over per-request outcomes (host-side numpy).

Definitions follow the "Metrics" section of the serving-model design page. Every function
takes per-request arrays of shape [N] in arrival order; times are float seconds from the start
of the trace. Choices the page leaves open, stated once here:

- Windows are aligned to the start of the trace (time 0): window k holds the requests that
  arrived in [k * window_s, (k + 1) * window_s), computed exactly in integer microseconds.
  Windows with no arrival have no performance and are skipped (neither counted nor averaged).
- "At or above X% of peak" compares a window's mean utility with `frac * peak` allowing an
  absolute slack of 1e-9 utility (float rounding of the same accuracies).
- Performance per GPU divides the total utility by the trace duration, taken as the time from
  the start of the trace (0) to the last arrival, and by the deployment's GPUs. A run whose
  every arrival is at 0 s has no duration and no performance per GPU: `summarize` refuses it
  (ValueError) rather than report inf. Trace files cannot produce one: `load_trace_csv`
  refuses a zero-span trace (one row, or all arrivals equal) when it is loaded, before any
  simulation.
- Latency percentiles are over completed requests only (rejected requests have no latency);
  the fraction rejected is reported separately. Percentiles use numpy's default (linear
  interpolation between order statistics). Late requests are included: they completed.
- Max sustainable rate: the sweep is sorted by rate, and the answer is the highest rate below
  which every swept rate (itself included) reaches the target. A rate that reaches the target
  above a failing one is not counted: noise at a lower rate is taken as a real failure.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from bes import clock
from bes.profile import Profile

OUTCOME_KEYS = ("arrival", "task", "model", "instance", "latency", "on_time", "rejected", "utility")
_ATOL = 1e-9


def _array(x, name: str, dtype=None) -> np.ndarray:
  a = np.asarray(x, dtype=dtype)
  if a.ndim != 1:
    raise ValueError(f"metrics: {name} expected a 1-D array of per-request values, got shape {a.shape}")
  return a


def _nonempty(x, name: str, dtype=None) -> np.ndarray:
  a = _array(x, name, dtype)
  if a.size == 0:
    raise ValueError(f"metrics: {name} expected at least one request, got none")
  return a


def availability(on_time) -> float:
  """Fraction of requests completed on time. on_time: bool [N], N >= 1."""
  return float(np.mean(_nonempty(on_time, "on_time", bool)))


def mean_utility(utility) -> float:
  """Mean utility per request. utility: float [N], N >= 1."""
  return float(np.mean(_nonempty(utility, "utility", np.float64)))


def rejected_fraction(rejected) -> float:
  """Fraction of requests rejected at arrival. rejected: bool [N], N >= 1."""
  return float(np.mean(_nonempty(rejected, "rejected", bool)))


def _quality(profile_or_quality_matrix) -> np.ndarray:
  if isinstance(profile_or_quality_matrix, Profile):
    return profile_or_quality_matrix.quality_matrix().astype(np.float64)
  q = np.asarray(profile_or_quality_matrix, np.float64)
  if q.ndim != 2 or 0 in q.shape:
    raise ValueError(f"metrics: quality matrix expected shape [num_models, num_tasks], got {q.shape}")
  return q


def peak(profile_or_quality_matrix, task=None, *, mix=None) -> float:
  """Peak utility: every request served on time by the best model for its task.

  Args:
    profile_or_quality_matrix: a `Profile` or q [num_models, num_tasks].
    task: int [N], the requests' task indices; peak = mean_i max_m q[m, task_i].
    mix: instead of `task`, a task mix [num_tasks] (non-negative weights, normalised here);
      peak = sum_t mix[t] * max_m q[m, t].
  """
  best = _quality(profile_or_quality_matrix).max(axis=0)
  if (task is None) == (mix is None):
    raise ValueError("metrics.peak: expected exactly one of task (per-request indices) or mix")
  if mix is not None:
    w = _array(mix, "mix", np.float64)
    if w.shape != best.shape or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
      raise ValueError(f"metrics.peak: mix expected {best.size} non-negative weights with a "
                       f"positive sum, got {w.tolist()}")
    return float(np.dot(w / w.sum(), best))
  t = _nonempty(task, "task")
  if not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= best.size:
    raise ValueError(f"metrics.peak: task expected integer indices in [0, {best.size}), "
                     f"got values in [{t.min()}, {t.max()}] of dtype {t.dtype}")
  return float(np.mean(best[t]))


def window_performance(arrival_s, utility, window_s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
  """Mean utility of the requests that arrived in each window of `window_s` seconds.

  Returns:
    (window_start_s float64 [W], mean_utility float64 [W]) for the W windows (aligned to time
    0) holding at least one arrival, in time order; empty windows are skipped.
  """
  arrival = _nonempty(arrival_s, "arrival_s", np.float64)
  u = _array(utility, "utility", np.float64)
  if u.shape != arrival.shape:
    raise ValueError(f"metrics: utility expected shape {arrival.shape} (one per arrival), got {u.shape}")
  window_us = int(clock.seconds_to_us(window_s))
  if window_us <= 0:
    raise ValueError(f"metrics: window_s expected > 0 seconds, got {window_s!r}")
  if np.any(arrival < 0) or not np.isfinite(arrival).all():
    raise ValueError("metrics: arrival_s expected finite times >= 0 seconds from the trace start")
  k = clock.seconds_to_us(arrival) // window_us
  windows, inverse = np.unique(k, return_inverse=True)
  sums = np.bincount(inverse, weights=u, minlength=windows.size)
  counts = np.bincount(inverse, minlength=windows.size)
  return windows * window_us / clock.US_PER_S, sums / counts


def frac_windows_at_least(arrival_s, utility, peak: float, frac: float,
                          window_s: float = 10.0) -> float:
  """Fraction of non-empty windows whose mean utility is >= frac * peak (slack 1e-9)."""
  _, perf = window_performance(arrival_s, utility, window_s)
  return float(np.mean(perf >= frac * peak - _ATOL))


def perf_per_gpu(utility_sum: float, duration_s: float, num_gpus: int) -> float:
  """Utility delivered per second of trace per GPU: utility_sum / duration_s / num_gpus."""
  if not duration_s > 0:
    raise ValueError(f"metrics.perf_per_gpu: duration_s expected > 0 seconds, got {duration_s!r}")
  if int(num_gpus) != num_gpus or num_gpus < 1:
    raise ValueError(f"metrics.perf_per_gpu: num_gpus expected an integer >= 1, got {num_gpus!r}")
  return float(utility_sum) / float(duration_s) / int(num_gpus)


def latency_percentiles(latency_s, rejected, qs: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
  """Latency percentiles in seconds over completed (non-rejected) requests: {q: seconds}.

  Rejected requests are excluded (see `rejected_fraction`); with no completed request every
  percentile is nan. A completed request must have a finite latency.
  """
  lat = _array(latency_s, "latency_s", np.float64)
  rej = _array(rejected, "rejected", bool)
  if rej.shape != lat.shape:
    raise ValueError(f"metrics: rejected expected shape {lat.shape} (one per latency), got {rej.shape}")
  done = lat[~rej]
  if not np.isfinite(done).all():
    raise ValueError("metrics: latency_s of a completed (non-rejected) request expected finite, "
                     f"got {done[~np.isfinite(done)][:3].tolist()}")
  if done.size == 0:
    return {q: float("nan") for q in qs}
  return {q: float(v) for q, v in zip(qs, np.percentile(done, list(qs)))}


def max_sustainable_rate(rates, availabilities, target: float = 0.99) -> float | None:
  """Highest swept rate up to which availability stays >= target (None if the lowest fails).

  The sweep is sorted by rate; scanning upwards, the answer is the last rate before the first
  one whose availability is below `target` (so a later recovery does not count).
  """
  r = _nonempty(rates, "rates", np.float64)
  a = _array(availabilities, "availabilities", np.float64)
  if a.shape != r.shape:
    raise ValueError(f"metrics: availabilities expected shape {r.shape} (one per rate), got {a.shape}")
  order = np.argsort(r, kind="stable")
  best = None
  for rate, avail in zip(r[order], a[order]):
    if not avail >= target:
      break
    best = float(rate)
  return best


def _none_if_nan(x: float) -> float | None:
  return None if np.isnan(x) else x


def summarize(outcomes: Mapping[str, np.ndarray], profile: Profile, window_s: float = 10.0,
              duration_s: float | None = None) -> dict[str, float | int]:
  """All headline metrics of a run, as a JSON-able dict of Python numbers.

  Args:
    outcomes: per-request arrays [N]: arrival (s), task, model, instance, latency (s, inf when
      rejected), on_time (bool), rejected (bool), utility (float).
    profile: the deployment (quality for `peak`, GPU count for `perf_per_gpu`).
    window_s: window length in seconds for the window metrics.
    duration_s: trace duration in seconds for `perf_per_gpu`; default the last arrival time.

  Latency percentiles are None when every request was rejected (strict JSON has no nan).
  """
  missing = [k for k in OUTCOME_KEYS if k not in outcomes]
  if missing:
    raise ValueError(f"metrics.summarize: outcomes missing key(s) {missing}; expected {list(OUTCOME_KEYS)}")
  o = {k: np.asarray(outcomes[k]) for k in OUTCOME_KEYS}
  n = o["arrival"].shape
  bad = [k for k in OUTCOME_KEYS if o[k].shape != n]
  if bad or len(n) != 1 or n[0] == 0:
    raise ValueError(f"metrics.summarize: outcomes expected non-empty 1-D arrays of one shape, "
                     f"got shapes { {k: o[k].shape for k in OUTCOME_KEYS} }")
  duration = float(np.max(o["arrival"])) if duration_s is None else duration_s
  if duration_s is None and not duration > 0:
    raise ValueError(f"metrics.summarize: all {n[0]} arrival(s) at 0 s: zero duration, so "
                     "perf_per_gpu is undefined; expected a last arrival after 0 s or duration_s")
  pk = peak(profile, o["task"])
  lat = latency_percentiles(o["latency"], o["rejected"])
  return {
      "num_requests": int(n[0]),
      "availability": availability(o["on_time"]),
      "mean_utility": mean_utility(o["utility"]),
      "peak": pk,
      "frac_windows_ge_96": frac_windows_at_least(o["arrival"], o["utility"], pk, 0.96, window_s),
      "frac_windows_ge_98": frac_windows_at_least(o["arrival"], o["utility"], pk, 0.98, window_s),
      "perf_per_gpu": perf_per_gpu(np.sum(o["utility"], dtype=np.float64), duration, profile.num_gpus),
      "p50_latency_s": _none_if_nan(lat[50]),
      "p90_latency_s": _none_if_nan(lat[90]),
      "p99_latency_s": _none_if_nan(lat[99]),
      "rejected_frac": rejected_fraction(o["rejected"]),
  }


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
  """(mean, half-width) of the Student-t confidence interval of the mean of `values` [K]
  (independent runs, e.g. evaluation seeds): mean ± t_{(1+level)/2, K-1} * sd / sqrt(K),
  sd with K - 1 degrees of freedom. One value: half-width nan (no interval)."""
  from scipy import stats   # jax depends on scipy; imported here to keep import time low
  x = _nonempty(values, "values", np.float64)
  if not 0 < level < 1:
    raise ValueError(f"mean_ci: level must be in (0, 1), got {level!r}")
  if x.size == 1:
    return float(x[0]), float("nan")
  half = stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
  return float(x.mean()), float(half)
