"""Bursty, MAF-style arrivals: every time window draws its own rate and burstiness.

Time is cut into windows of `window_s` seconds. Window w draws

  rate_w = rate_per_s * m_w,   m_w = exp(rate_sigma * z - rate_sigma**2 / 2)  (lognormal, E[m] = 1)
  cv_w   = cv_median * exp(cv_sigma * z')                                    (lognormal CV)

with z, z' independent standard normals, in the spirit of the Gamma-process fits of the
Microsoft Azure Functions (MAF) traces used by AlpaServe.

How a gap is drawn (O(1) per request):
- The window of the PREVIOUS arrival sets the gap's shape: an operational-time gap
  g ~ Gamma(shape = 1 / cv**2, scale = cv**2) (mean 1, CV cv) of that window.
- Operational time runs at each window's own rate: g is spent at rate_w until the end of the
  previous arrival's window, then at the next window's rate (drawn on entering it), and so on.
  Inside one window this is exactly Gamma(1/cv**2, cv**2/rate_w) seconds.
- At most `MAX_CROSSINGS` (2) window ends are handled this way per gap; a gap still running
  after that spends its rest at the mean rate `rate_per_s` (E[m] = 1) over windows whose laws
  are never drawn (only when several consecutive windows expect fewer than about one arrival
  each). An arrival landing in such a window draws a fresh law for it.
Because every gap has mean 1 in operational time and window w holds rate_w * window_s of it,
the long-run rate is `rate_per_s` (E[m] = 1) instead of being dragged down by long gaps in
slow windows (what a plain "previous window sets the whole gap" scheme does: measured -16% at
2.57 req/s with the defaults).

Defaults (`DEFAULT_BURSTY`) are `fit_bursty_params` on the Azure code trace
(`bes/data/traces/azure_llm_2023_code.csv`, window 10 s):
  window_s = 10.0 s, rate_sigma = 1.14, cv_median = 1.32, cv_sigma = 0.49.
At the trace's 2.57 req/s (100,000 requests, seed 3) they give a 10-s count CV of 1.6-1.9
(trace: 1.67; Poisson: 0.19), but only ~5% empty 10-s windows (trace: 56%) and a pooled
inter-arrival CV of ~3 (trace: 13): the real trace is more on/off than a lognormal rate.
Replay the trace itself (`TraceWorkload`) for that.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes import clock
from bes.requests import Requests
from bes.workloads.base import (GAMMA_UNIFORMS, Elapsed, log_gamma_from_uniforms, open_uniforms,
                                positive_float, to_gap_us)
from bes.workloads.lengths import LengthModel
from bes.workloads.mix import TaskMix

DEFAULT_BURSTY = {"window_s": 10.0, "rate_sigma": 1.14, "cv_median": 1.32, "cv_sigma": 0.49}


def fit_bursty_params(arrival_s, window_s: float = 10.0, min_gaps: int = 3) -> dict[str, float]:
  """Fits (rate_sigma, cv_median, cv_sigma) of `BurstyWorkload` to arrival times in seconds.

  cv_median, cv_sigma: median and standard deviation of log of the inter-arrival CV within each
    window holding at least `min_gaps` gaps.
  rate_sigma: moment match of the window counts: Var[count] = n**2 (exp(s**2) - 1) + n E[cv**2]
    (rate variation plus the renewal noise of n = mean count arrivals with CV cv), where
    E[cv**2] = cv_median**2 exp(2 cv_sigma**2).
  """
  a = np.asarray(arrival_s, np.float64)
  if a.size < 2 or window_s <= 0:
    raise ValueError("fit_bursty_params: need >= 2 arrivals and window_s > 0")
  idx = np.floor((a - a[0]) / window_s).astype(np.int64)
  counts = np.bincount(idx)
  cvs = []
  for w in np.flatnonzero(counts >= min_gaps + 1):
    gaps = np.diff(a[idx == w])
    if gaps.mean() > 0:
      cvs.append(gaps.std() / gaps.mean())
  cvs = np.asarray(cvs)
  if cvs.size < 2 or np.any(cvs <= 0):
    raise ValueError("fit_bursty_params: too few windows with varied gaps to fit a CV")
  cv_median = float(np.median(cvs))
  cv_sigma = float(np.log(cvs).std())
  n = counts.mean()
  noise = n * cv_median**2 * np.exp(2 * cv_sigma**2)
  rate_sigma = float(np.sqrt(np.log1p(max(counts.var() - noise, 0.0) / n**2)))
  return {"rate_sigma": rate_sigma, "cv_median": cv_median, "cv_sigma": cv_sigma}


MAX_CROSSINGS = 2
_MAX_US = 2**31 - 1


def _add_sat(a, b):
  """a + b for int32 values >= 0, saturating at int32 max."""
  return jnp.minimum(a, _MAX_US - b) + b


@struct.dataclass
class BurstyState:
  """Where a bursty stream is.

  Attributes:
    t: exact time of the latest arrival.
    window: int32 index of its window (counted by the stream: window k covers
      [k * window_us, (k + 1) * window_us) microseconds, window_us = rint(window_s * 1e6)).
    to_end_us: int32 microseconds from the latest arrival to the end of its window (> 0).
    rate_mult: float32 rate multiplier m_w of that window.
    cv: float32 inter-arrival CV of that window.
  """
  t: Elapsed
  window: jnp.ndarray
  to_end_us: jnp.ndarray
  rate_mult: jnp.ndarray
  cv: jnp.ndarray


@struct.dataclass
class BurstyWorkload:
  """Gamma inter-arrivals whose rate and CV are redrawn every window (module docstring).

  Attributes (float32 scalars, pytree leaves):
    rate_per_s: mean arrival rate, requests per second (> 0).
    mix: the task mix. lengths: the length model.
    window_s: window length in seconds (0.001 to 2000; default 10).
    rate_sigma: sigma of the lognormal rate multiplier (>= 0; 0 = same rate every window).
    cv_median: median inter-arrival CV of a window (> 0; 1 with cv_sigma 0 = Poisson).
    cv_sigma: sigma of log CV across windows (>= 0).
  """
  rate_per_s: jnp.ndarray
  mix: TaskMix
  lengths: LengthModel
  window_s: jnp.ndarray = DEFAULT_BURSTY["window_s"]
  rate_sigma: jnp.ndarray = DEFAULT_BURSTY["rate_sigma"]
  cv_median: jnp.ndarray = DEFAULT_BURSTY["cv_median"]
  cv_sigma: jnp.ndarray = DEFAULT_BURSTY["cv_sigma"]

  @classmethod
  def create(cls, rate_per_s: float, mix: TaskMix, lengths: LengthModel,
             where: str = "bursty workload", **knobs) -> "BurstyWorkload":
    """Validated workload; `knobs` override DEFAULT_BURSTY (window_s, rate_sigma, cv_median,
    cv_sigma). Errors name `where.<knob>`."""
    unknown = set(knobs) - set(DEFAULT_BURSTY)
    if unknown:
      raise ValueError(f"{where}: unknown knob(s) {sorted(unknown)}; "
                       f"expected {list(DEFAULT_BURSTY)}")
    knobs = {**DEFAULT_BURSTY, **knobs}
    values = {"rate_per_s": positive_float(rate_per_s, f"{where}.rate_per_s", strict=True)}
    for name in DEFAULT_BURSTY:
      values[name] = positive_float(knobs[name], f"{where}.{name}",
                                    strict=name in ("window_s", "cv_median"))
    if not 1e-3 <= values["window_s"] <= 2000:
      raise ValueError(f"{where}.window_s: expected 0.001 to 2000 s, got {knobs['window_s']!r}")
    return cls(mix=mix, lengths=lengths, **{k: np.float32(v) for k, v in values.items()})

  def _window_law(self, z) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(rate multiplier, CV) of a fresh window from standard normals z [..., 2] (float32)."""
    z = jnp.moveaxis(z, -1, 0)
    sigma = jnp.asarray(self.rate_sigma, jnp.float32)
    rate_mult = jnp.exp(sigma * z[0] - 0.5 * sigma**2)
    cv = jnp.asarray(self.cv_median, jnp.float32) * jnp.exp(self.cv_sigma * z[1])
    return rate_mult, cv

  def _window_us(self) -> jnp.ndarray:
    return jnp.rint(jnp.asarray(self.window_s, jnp.float32) * clock.US_PER_S).astype(jnp.int32)

  def _rate_per_us(self, rate_mult) -> jnp.ndarray:
    return jnp.asarray(self.rate_per_s, jnp.float32) * rate_mult / clock.US_PER_S

  def init(self, key: jax.Array) -> BurstyState:
    rate_mult, cv = self._window_law(jax.random.normal(key, (2,), jnp.float32))
    return BurstyState(t=Elapsed.zero(), window=jnp.zeros((), jnp.int32),
                       to_end_us=self._window_us(), rate_mult=rate_mult, cv=cv)

  def next(self, key: jax.Array, state: BurstyState) -> tuple[Requests, BurstyState]:
    """One arrival (module docstring): O(1), MAX_CROSSINGS unrolled window crossings."""
    # Uniforms: task, prompt, output, (rate, CV) of the windows a gap may enter
    # (MAX_CROSSINGS crossed, then the landing window), then the gamma draw.
    n_law = 2 * (MAX_CROSSINGS + 1)
    u = open_uniforms(key, 3 + n_law + GAMMA_UNIFORMS)
    fresh_mults, fresh_cvs = self._window_law(
        jax.scipy.special.ndtri(u[3:3 + n_law]).reshape(MAX_CROSSINGS + 1, 2))
    window_us = self._window_us()
    # Operational-time gap, mean 1 (log space keeps tiny shapes, large CVs, from underflowing).
    op = jnp.exp(log_gamma_from_uniforms(u[3 + n_law:], 1.0 / state.cv**2)) * state.cv**2
    gap_us = jnp.zeros((), jnp.int32)
    window, to_end, rate_mult, cv = state.window, state.to_end_us, state.rate_mult, state.cv
    running = jnp.ones((), bool)
    for j in range(MAX_CROSSINGS):
      capacity = to_end.astype(jnp.float32) * self._rate_per_us(rate_mult)
      cross = running & (op > capacity)
      fresh_mult, fresh_cv = fresh_mults[j], fresh_cvs[j]
      gap_us = jnp.where(cross, _add_sat(gap_us, to_end), gap_us)
      op = jnp.where(cross, op - capacity, op)
      window = window + cross.astype(jnp.int32)
      to_end = jnp.where(cross, window_us, to_end)
      rate_mult = jnp.where(cross, fresh_mult, rate_mult)
      cv = jnp.where(cross, fresh_cv, cv)
      running = cross
    # The rest of the gap fits in the current window, unless MAX_CROSSINGS ends were crossed:
    # then it fills this window and runs on at the mean rate (E[m] = 1) over windows not drawn.
    capacity = to_end.astype(jnp.float32) * self._rate_per_us(rate_mult)
    beyond = op > capacity
    rest_us = to_gap_us(jnp.where(beyond, to_end + (op - capacity) / self._rate_per_us(1.0),
                                  op / self._rate_per_us(rate_mult)))
    gap_us = _add_sat(gap_us, rest_us)
    # Landing at or past the window end (only after MAX_CROSSINGS, or by rounding).
    over = rest_us - to_end
    past = over >= 0
    over = jnp.maximum(over, 0)
    window = window + jnp.where(past, over // window_us + 1, 0)
    to_end = jnp.where(past, window_us - over % window_us, to_end - rest_us)
    fresh_mult, fresh_cv = fresh_mults[MAX_CROSSINGS], fresh_cvs[MAX_CROSSINGS]
    t = state.t.advance(gap_us)
    state = BurstyState(t=t, window=window, to_end_us=to_end,
                        rate_mult=jnp.where(past, fresh_mult, rate_mult),
                        cv=jnp.where(past, fresh_cv, cv))
    task = self.mix.task_from_uniform(u[0], t)
    prompt_len, output_len = self.lengths.from_uniforms(u[1:3], task)
    return Requests(gap_us=gap_us, task=task, prompt_len=prompt_len, output_len=output_len), state
