"""The fixed-point clock (`bes.clock`) against Python's exact integers and Fractions."""
import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import clock

ONE = clock.FRAC_ONE


def _val(x: clock.Fixed) -> np.ndarray:
  """Exact value in units of 10^-9 us, as Python ints (object array)."""
  us = np.asarray(x.us).astype(np.int64)
  fr = np.asarray(x.frac).astype(np.int64)
  assert np.all((fr >= 0) & (fr < ONE))
  return np.array([int(u) * ONE + int(f) for u, f in zip(us.reshape(-1), fr.reshape(-1))],
                  dtype=object).reshape(us.shape)


def _rand_fixed(rng, n, max_us):
  us = rng.integers(0, max_us, n)
  fr = rng.integers(0, ONE, n)
  return clock.fixed(us, fr)


@pytest.mark.parametrize("jit", [False, True])
def test_add_sub_mul_exact(jit):
  rng = np.random.default_rng(0)
  a, b = _rand_fixed(rng, 500, 2 ** 29), _rand_fixed(rng, 500, 2 ** 29)
  n = rng.integers(0, 2 ** 31 - 1, 500)
  n[:50] = rng.integers(0, 70_000, 50)
  small = _rand_fixed(rng, 500, 3)                    # typical: 0..2 us per prompt token
  f = jax.jit if jit else (lambda g: g)
  np.testing.assert_array_equal(_val(f(clock.add)(a, b)), _val(a) + _val(b))
  np.testing.assert_array_equal(_val(f(clock.sub)(a, b)), _val(a) - _val(b))
  got = f(clock.mul)(jnp.asarray(n, jnp.int32), small)
  want = [int(k) * int(v) for k, v in zip(n, _val(small))]
  # us wraps modulo 2^32: compare modulo 2^32 us
  mod = (1 << 32) * ONE
  np.testing.assert_array_equal([int(v) % mod for v in _val(got)], [w % mod for w in want])
  p = rng.integers(0, 2 ** 30, 500)
  q, r = f(clock.wide_mul)(jnp.asarray(n, jnp.int32), jnp.asarray(p, jnp.int32))
  for k, pp, qq, rr in zip(n, p, np.asarray(q), np.asarray(r)):
    assert 0 <= rr < 2 ** 30
    assert (int(k) * int(pp) - int(rr)) % (1 << 62) == (int(qq) << 30) % (1 << 62)


@pytest.mark.parametrize("jit", [False, True])
def test_floor_div_is_exact(jit):
  rng = np.random.default_rng(1)
  d = _rand_fixed(rng, 400, 20_000)
  d = clock.Fixed(jnp.maximum(d.us, 1), d.frac)
  s = _rand_fixed(rng, 400, 2 ** 28)
  # exact multiples and one-off neighbours: the ties the float estimate gets wrong
  k = rng.integers(0, 5000, 400)
  m = clock.mul(jnp.asarray(k, jnp.int32), d)
  s = clock.where(jnp.arange(400) % 3 == 0, m, s)
  s = clock.where(jnp.arange(400) % 3 == 1, clock.sub(m, clock.fixed(0, 1)), s)
  f = jax.jit(clock.floor_div) if jit else clock.floor_div
  got = np.asarray(f(s, d))
  want = [max(0, int(x) // int(y)) for x, y in zip(_val(s), _val(d))]
  np.testing.assert_array_equal(got, want)
  # negative slack: 0
  assert int(clock.floor_div(clock.fixed(-5, 3), clock.fixed(7, 0))) == 0


def test_to_fixed_takes_the_decimal_as_given():
  """Decimals with up to 15 places in seconds are exact; finer ones round to 1 fs."""
  xs = [0.0052347, 1e-6, 2.5e-9, 0.0, 0.007, 1.234567890123456e-3, 1 / 3]
  us, fr = clock.to_fixed(xs)
  assert (us[4], fr[4]) == (7000, 0)                       # not 7000.000000000000146 us
  assert (us[0], fr[0]) == (5234, 700_000_000)
  assert (us[1], fr[1]) == (1, 0) and (us[2], fr[2]) == (0, 2_500_000)
  for x, u, f in zip(xs, us, fr):
    exact = fractions.Fraction(repr(x)) * 10 ** 6 * ONE
    assert abs(int(u) * ONE + int(f) - exact) <= fractions.Fraction(1, 2)
    assert 0 <= f < ONE


def test_sum_does_not_drift():
  """4e5 additions of 5234.7 us (2.09e9 us, just under the wrap): the exact sum."""
  us, fr = clock.to_fixed(0.0052347)
  step = clock.fixed(us, fr)
  n = 400_000
  total = clock.mul(jnp.int32(n), step)                 # closed form ...
  acc = jax.lax.fori_loop(0, n, lambda i, t: clock.add(t, step), clock.fixed(0, 0))  # ... and summed
  assert _val(total) == _val(acc)
  exact = fractions.Fraction("0.0052347") * 10 ** 6 * n
  assert fractions.Fraction(int(_val(total)), ONE) == exact        # no error at all
