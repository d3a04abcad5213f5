"""What every workload shares: an exact elapsed-time clock and `sample`.

A workload is a `flax.struct.dataclass` with two pure, jittable methods:

  state = workload.init(key)
  request, state = workload.next(key, state)   # request: Requests of scalar int32s

`next` is O(1): a few random draws per request, so it can run once per environment step
inside `jax.jit`, `jax.vmap` and `lax.scan`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes import clock
from bes.requests import Requests

_US = clock.US_PER_S
# Largest float32 below 2**31: gaps saturate here (about 2147 s) instead of overflowing.
_MAX_GAP_US = 2.0**31 - 128


@struct.dataclass
class Elapsed:
  """Time since the workload start, exact: `s` whole seconds + `us` microseconds.

  Attributes:
    s: int32 whole seconds (good for 68 years).
    us: int32 microseconds within the second, in [0, 1e6).
  """
  s: jnp.ndarray
  us: jnp.ndarray

  @classmethod
  def zero(cls) -> "Elapsed":
    return cls(s=jnp.zeros((), jnp.int32), us=jnp.zeros((), jnp.int32))

  def advance(self, gap_us) -> "Elapsed":
    """Adds `gap_us` (int32 microseconds, >= 0) without overflowing int32."""
    gap_us = jnp.asarray(gap_us, jnp.int32)
    us = self.us + gap_us % _US
    carry = (us >= _US).astype(jnp.int32)
    return Elapsed(s=self.s + gap_us // _US + carry, us=us - carry * _US)

  def seconds(self) -> jnp.ndarray:
    """Elapsed time in float32 seconds (approximate: ~0.25 ms resolution after an hour)."""
    return self.s.astype(jnp.float32) + self.us.astype(jnp.float32) * 1e-6

  def at_or_after(self, t_s) -> jnp.ndarray:
    """Exact `elapsed >= t_s` for float32 times `t_s` in seconds (any shape), bool."""
    t_s = jnp.asarray(t_s, jnp.float32)
    whole = jnp.floor(t_s)
    frac_us = jnp.rint((t_s - whole) * _US).astype(jnp.int32)
    whole = whole.astype(jnp.int32)
    return (self.s > whole) | ((self.s == whole) & (self.us >= frac_us))


def open_uniforms(key: jax.Array, n: int) -> jnp.ndarray:
  """n float32 uniforms in the open interval (0, 1) from ONE threefry call: [n].

  Workloads draw everything a request needs (gap, task, lengths) from these by inverse CDFs,
  which keeps `next` cheap to compile and to run. 24-bit resolution, centred in its bins.
  """
  bits = jax.random.bits(key, (n,), jnp.uint32) >> 8
  return (bits.astype(jnp.float32) + 0.5) * (1.0 / 2**24)


GAMMA_TRIES = 4  # Marsaglia-Tsang candidates per gamma draw (each accepted w.p. >= 0.95).
GAMMA_UNIFORMS = 2 * GAMMA_TRIES + 1


def log_gamma_from_uniforms(u, shape) -> jnp.ndarray:
  """log of a Gamma(shape, 1) draw (float32 scalar) from GAMMA_UNIFORMS uniforms in (0, 1).

  Marsaglia & Tsang (2000) for Gamma(shape + 1), boosted to Gamma(shape) by U**(1 / shape), all
  in log space so tiny shapes (large CVs) do not underflow. Branch-free and O(1): of
  GAMMA_TRIES candidates the first accepted is kept; if none is (probability < 0.05**4 ~ 6e-6),
  the candidate at z = 0 (the mode of the proposal) is used.
  """
  shape = jnp.asarray(shape, jnp.float32)
  d = shape + 1.0 - 1.0 / 3.0
  c = 1.0 / jnp.sqrt(9.0 * d)
  z = jax.scipy.special.ndtri(u[:GAMMA_TRIES])
  accept_u = u[GAMMA_TRIES:2 * GAMMA_TRIES]
  v = (1.0 + c * z)**3
  safe_v = jnp.where(v > 0, v, 1.0)
  ok = (v > 0) & (jnp.log(accept_u) < 0.5 * z**2 + d - d * safe_v + d * jnp.log(safe_v))
  first = jnp.argmax(ok)
  log_v = jnp.where(jnp.any(ok), jnp.log(safe_v[first]), 0.0)
  return jnp.log(d) + log_v + jnp.log(u[2 * GAMMA_TRIES]) / shape


def to_gap_us(gap_us) -> jnp.ndarray:
  """Rounds a float gap in microseconds to int32, saturating at ~2147 s (2**31 - 128 us)."""
  gap_us = jnp.rint(jnp.asarray(gap_us, jnp.float32))
  return jnp.clip(gap_us, 0.0, _MAX_GAP_US).astype(jnp.int32)


def positive_float(value, where: str, strict: bool) -> float:
  """`value` as a finite float > 0 (strict) or >= 0; ValueError naming `where` otherwise."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: expected a number, got {value!r}") from None
  if not np.isfinite(number) or number < 0 or (strict and number == 0):
    raise ValueError(f"{where}: expected a number {'>' if strict else '>='} 0, got {value!r}")
  return number


@functools.partial(jax.jit, static_argnums=2)
def sample(workload, key: jax.Array, n: int) -> Requests:
  """Draws `n` requests from `workload`: a jitted `lax.scan` over `workload.next`.

  Exactly `state = workload.init(k0)`, then `workload.next(keys[i], state)` for
  `keys = jax.random.split(k1, n)` where `k0, k1 = jax.random.split(key)`.

  Returns:
    Requests with int32 fields of shape [n].
  """
  k_init, k_steps = jax.random.split(key)
  state = workload.init(k_init)

  def step(state, k):
    request, state = workload.next(k, state)
    return state, request

  _, requests = jax.lax.scan(step, state, jax.random.split(k_steps, n))
  return requests
