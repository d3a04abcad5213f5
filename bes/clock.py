"""The simulator's clock: integer microseconds.

Every time inside the serving model (arrival gaps, iteration durations, prefill costs,
deadlines, latencies) is an integer number of microseconds. Integer arithmetic is exact,
runs the same on CPU, GPU and TPU (no float64 needed), and one microsecond is the
resolution of the Azure traces. Profiles state times in float seconds; they are
quantised once, here, by the two functions below, and both the jitted environment and
the plain-Python reference use these same functions, so they agree to the microsecond.

Times are kept as int32. Absolute time is never stored: requests carry the gap to the
previous arrival and the environment keeps every time relative to the latest arrival,
so an episode may last any number of hours. What int32 does bound is how long one
request stays in the system (about 35 minutes, `MAX_LATENCY_US`).
"""
from __future__ import annotations

import numpy as np

US_PER_S = 1_000_000
# Largest representable span in int32 microseconds (~2147 s). A request whose latency
# would exceed this cannot be represented; the environment saturates instead.
MAX_LATENCY_US = np.iinfo(np.int32).max // 2


def seconds_to_us(seconds) -> np.ndarray:
  """Rounds seconds (float, array-like) to the nearest integer microsecond (int64)."""
  return np.rint(np.asarray(seconds, dtype=np.float64) * US_PER_S).astype(np.int64)


def seconds_to_ns(seconds) -> np.ndarray:
  """Rounds seconds to the nearest integer nanosecond (int64); used for per-token costs."""
  return np.rint(np.asarray(seconds, dtype=np.float64) * 1e9).astype(np.int64)


def prefill_us(num_tokens, fixed_us, per_token_ns):
  """Prefill cost in microseconds of an iteration admitting `num_tokens` prompt tokens.

  Exactly `fixed_us + floor(num_tokens * per_token_ns / 1000)`, computed without
  overflowing int32 for up to ~2 million tokens (per_token_ns split into whole
  microseconds and a nanosecond remainder). Works on Python ints, numpy and jax arrays.
  """
  whole_us = per_token_ns // 1000
  rem_ns = per_token_ns % 1000
  return fixed_us + whole_us * num_tokens + (rem_ns * num_tokens) // 1000
