"""The simulator's clock: fixed-point microseconds that do not drift.

**Representation.** A time or duration is a `Fixed(us, frac)` pair of int32 arrays:
`us` whole microseconds and `frac` in [0, 10^9) units of 10^-9 us (one femtosecond), so
the value is `us + frac / 10^9` microseconds. Only int32 arithmetic is used (adds, and
products split into base-1000 digits whose partial products stay below 2^31; one float32
estimate corrected exactly for divisions): no 64-bit types, so the same program runs on
CPU, GPU and TPU.

**Exactness.** A profile states times in seconds as JSON numbers, i.e. decimals. Each is
converted once, exactly (`to_fixed`: the decimal that the float64 prints as, through
`fractions.Fraction`), to femtoseconds. Every time given with at most 15 decimal places
in seconds (any measured or roofline profile: they are written to the nanosecond or
picosecond) is represented exactly, and from then on every sum and product is exact, with
the sub-microsecond remainder carried per instance: an instance's clock after any number
of iterations is the exact sum of the profile's times, and an arrival that coincides with
an iteration end is a tie exactly when it really is one. Finer times are rounded to the
femtosecond (ties to even): an error of at most 5e-10 us per decode step, per prefill's
fixed cost and per prompt token prefilled, so below 1 us for the first 2e9 of them in one
busy period (an instance restarts from an exact arrival whenever it goes idle).

**Wrap-around.** `us` is a wrapping clock (two's complement, like TCP sequence numbers):
times are only compared through differences, exact while they lie within 2^31 us (35.8
min) of each other. The environment keeps every difference it takes well inside that
(`MAX_PASS_US`, `EPOCH_US`, `LATE_CLAMP_US`; see `bes/env/instances.py`), so episodes and
single requests may last any number of hours.

Arrivals, deadlines and latency budgets are whole microseconds (`seconds_to_us`): the
traces' resolution, and the serving config's numbers are rounded to it once.
"""
from __future__ import annotations

import fractions
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

US_PER_S = 1_000_000
FRAC_ONE = 10 ** 9                  # units of frac per microsecond (femtoseconds)
# One event pass of an instance advances its clock by at most MAX_PASS_US plus one
# iteration (closed-form skips stop there), and one iteration may last at most
# MAX_ITERATION_US: so a pass moves a clock by less than 2^29 us.
MAX_PASS_US = 1 << 28               # ~268 s
MAX_ITERATION_US = 1 << 28
# Long spans are carried in epochs of EPOCH_US (latencies, far deadlines); a request late
# by more than LATE_CLAMP_US stays "late by LATE_CLAMP_US" (its utility no longer changes:
# soft windows are limited to less than that).
EPOCH_US = 1 << 30                  # ~17.9 min
LATE_CLAMP_US = 1 << 29             # ~8.9 min


class Fixed(NamedTuple):
  """A fixed-point time or duration: `us + frac / 10^9` microseconds (int32 arrays, any
  shape; `frac` in [0, 10^9)). A pytree (NamedTuple), so it jits, vmaps and scans."""
  us: jnp.ndarray
  frac: jnp.ndarray


# ------------------------------------------------------------------------------- host side
def seconds_to_us(seconds) -> np.ndarray:
  """Rounds seconds (float, array-like) to the nearest integer microsecond (int64)."""
  return np.rint(np.asarray(seconds, dtype=np.float64) * US_PER_S).astype(np.int64)


def as_given(seconds: float) -> fractions.Fraction:
  """The exact value of a profile time as written: the shortest decimal that the float64
  prints as (what a JSON file holds), e.g. 0.007 -> 7/1000, not the binary float's value."""
  return fractions.Fraction(repr(float(seconds)))


def to_fixed(seconds) -> tuple[np.ndarray, np.ndarray]:
  """Seconds (array-like) -> (us int64, frac int64): each value as given (`as_given`) in
  femtoseconds, rounded to the nearest integer (ties to even; exact for up to 15 decimal
  places)."""
  x = np.asarray(seconds, dtype=np.float64)
  flat = [round(as_given(v) * US_PER_S * FRAC_ONE) for v in x.reshape(-1)]
  us = np.array([t // FRAC_ONE for t in flat], np.int64).reshape(x.shape)
  frac = np.array([t % FRAC_ONE for t in flat], np.int64).reshape(x.shape)
  return us, frac


# ------------------------------------------------------------------------------- device side
def fixed(us, frac=0) -> Fixed:
  """A `Fixed` from int32-convertible parts (frac defaults to 0: whole microseconds)."""
  us = jnp.asarray(us, jnp.int32)
  return Fixed(us, jnp.broadcast_to(jnp.asarray(frac, jnp.int32), us.shape))


def add(a: Fixed, b: Fixed) -> Fixed:
  """a + b (exact; `us` wraps)."""
  frac = a.frac + b.frac                                   # < 2 * 10^9 < 2^31
  carry = (frac >= FRAC_ONE).astype(jnp.int32)
  return Fixed(a.us + b.us + carry, frac - carry * FRAC_ONE)


def add_us(a: Fixed, us) -> Fixed:
  """a + whole microseconds."""
  return Fixed(a.us + us, a.frac)


def where(cond, a: Fixed, b: Fixed) -> Fixed:
  return Fixed(jnp.where(cond, a.us, b.us), jnp.where(cond, a.frac, b.frac))


def wide_mul(n, p):
  """(q, r) with n * p = q * 2^30 + r exactly, 0 <= r < 2^30, for int32 0 <= n < 2^31 and
  0 <= p < 2^30 (q wraps past 2^31): whole-microsecond products split into epochs of
  `EPOCH_US` = 2^30 us (deadline budgets). Four partial products of 15/16-bit halves."""
  n = jnp.asarray(n, jnp.int32)
  p = jnp.asarray(p, jnp.int32)
  n1, n0 = n >> 16, n & 0xFFFF                              # n1 < 2^15, n0 < 2^16
  h, l = p >> 15, p & 0x7FFF                                # h, l < 2^15
  a = n1 * h                                                # weight 2^31
  b = n1 * l                                                # weight 2^16
  c = n0 * h                                                # weight 2^15
  d = n0 * l                                                # weight 2^0
  mask = (1 << 30) - 1
  q = 2 * a + (b >> 14) + (c >> 15) + (d >> 30)
  r = ((b & 0x3FFF) << 16) + ((c & 0x7FFF) << 15)           # each < 2^30: sum < 2^31
  q, r = q + (r >> 30), r & mask
  r = r + (d & mask)
  return q + (r >> 30), r & mask


def _base1000(v, num: int) -> list:
  """The `num` lowest base-1000 digits of int32 v >= 0 (the last one is the rest)."""
  digits = []
  for _ in range(num - 1):
    digits.append(v % 1000)
    v = v // 1000
  return digits + [v]


def mul(n, x: Fixed) -> Fixed:
  """n * x for int32 0 <= n < 2^31 (exact; `us` wraps). The femtosecond product n * frac
  (up to 2^61) is formed from base-1000 digits (every partial product below 10^7) with the
  carries propagated, then split at 10^9."""
  n = jnp.asarray(n, jnp.int32)
  nd = _base1000(n, 4)                                      # nd[3] <= 2
  fd = _base1000(x.frac, 3)                                 # frac < 10^9
  col = [sum(nd[i] * fd[k - i] for i in range(4) if 0 <= k - i < 3) for k in range(6)]
  carry, low = jnp.zeros_like(n), []
  for k in range(3):                                        # digits of weight 1, 10^3, 10^6
    c = col[k] + carry
    low.append(c % 1000)
    carry = c // 1000
  q = carry + col[3] + col[4] * 1000 + col[5] * 1_000_000   # = floor(n * frac / 10^9) < 2^31
  return Fixed(n * x.us + q, low[0] + low[1] * 1000 + low[2] * 1_000_000)


def sub(a: Fixed, b: Fixed) -> Fixed:
  """a - b (exact; negative values have us < 0 and frac in [0, 10^9))."""
  frac = a.frac - b.frac
  borrow = (frac < 0).astype(jnp.int32)
  return Fixed(a.us - b.us - borrow, frac + borrow * FRAC_ONE)


def is_neg(a: Fixed) -> jnp.ndarray:
  """a < 0 (for a difference of two times within 2^31 us of each other)."""
  return a.us < 0


def to_f32(a: Fixed) -> jnp.ndarray:
  """Approximate float32 microseconds (for estimates and soft utilities, never for order)."""
  return a.us.astype(jnp.float32) + a.frac.astype(jnp.float32) * (1.0 / FRAC_ONE)


def floor_div(s: Fixed, d: Fixed) -> jnp.ndarray:
  """The largest integer j >= 0 with j * d <= s, int32 (0 when s < d or s < 0), for
  durations d >= 1 us and s < 2^31 us.

  A float32 estimate (error below 2^-21 relative) is corrected twice exactly: the exact
  remainder s - j * d is re-divided in float32 (now exact to +-1), then a last +-1 step.
  """
  s_f, d_f = to_f32(s), to_f32(d)
  big = jnp.float32(2 ** 31 - 256)
  j = jnp.clip(jnp.floor(s_f / d_f), 0, big).astype(jnp.int32)
  rem = sub(s, mul(j, d))
  j = jnp.clip(j + jnp.floor(to_f32(rem) / d_f).astype(jnp.int32), 0, None)
  rem = sub(s, mul(j, d))
  j = jnp.where(is_neg(rem), j - 1, j)
  j = jnp.where(~is_neg(sub(rem, d)) & ~is_neg(rem), j + 1, j)
  return jnp.where(is_neg(s), 0, jnp.maximum(j, 0))
