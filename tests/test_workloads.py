"""Tests of the synthetic workloads: Poisson, bursty, task mixes, lengths, config."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import workloads as W
from bes.workloads import bursty as bursty_lib
from bes.workloads import lengths as lengths_lib
from bes.workloads.mix import mix_from_strings

TASKS = ["arc_easy", "piqa", "winogrande", "lambada_openai"]
CONV = "bes/data/traces/azure_llm_2023_conv.csv"
CODE = "bes/data/traces/azure_llm_2023_code.csv"


def _poisson(rate, mix=None, lengths=None):
  return W.PoissonWorkload(jnp.float32(rate), mix or W.TaskMix.uniform(4),
                           lengths or W.LengthModel.azure_conv(4))


def _bursty(rate, **knobs):
  knobs = {**bursty_lib.DEFAULT_BURSTY, **knobs}  # Every leaf float32: one compile per shape.
  return W.BurstyWorkload(jnp.float32(rate), W.TaskMix.uniform(4), W.LengthModel.azure_conv(4),
                          **{k: jnp.float32(v) for k, v in knobs.items()})


N = 4000  # Most tests draw this many requests, so `sample` compiles once per workload type.
KEYS = jax.random.split(jax.random.key(99), 16)


def _bursty_streams(rate, n=N, **knobs):
  """16 independent bursty streams of n requests, Requests [16, n]."""
  return jax.vmap(lambda k: W.sample(_bursty(rate, **knobs), k, n))(KEYS)


def _rate(requests):
  """len / (last arrival) in requests per second, pooled over leading batch axes."""
  gaps = np.asarray(requests.gap_us, np.int64)
  return gaps.size / (gaps.sum() / 1e6)


def _window_count_cv(requests, window_s=10.0):
  a = requests.arrival_s()
  counts = np.bincount((a // window_s).astype(np.int64))[:-1]  # Drop the partial last window.
  return counts.std() / counts.mean()


def test_azure_conv_fit_matches_trace():
  trace = W.load_trace_csv(CONV)
  fit = W.fit_lognormal_lengths(trace.prompt_len, trace.output_len)
  np.testing.assert_allclose([fit["prompt_mu"], fit["prompt_sigma"]], lengths_lib.AZURE_CONV_PROMPT,
                             atol=6e-5)
  np.testing.assert_allclose([fit["output_mu"], fit["output_sigma"]], lengths_lib.AZURE_CONV_OUTPUT,
                             atol=6e-5)


def test_bursty_defaults_fit_code_trace():
  fit = W.fit_bursty_params(W.load_trace_csv(CODE).arrival_s, window_s=10.0)
  for name in ("rate_sigma", "cv_median", "cv_sigma"):
    assert fit[name] == pytest.approx(bursty_lib.DEFAULT_BURSTY[name], abs=0.006), name


def test_poisson_rate_gaps_mix_and_lengths():
  mix = W.TaskMix.create([7.0, 1.0, 1.0, 1.0])  # Normalised to 0.7, 0.1, 0.1, 0.1.
  wide = W.LengthModel.azure_conv(4, max_prompt_len=10**6, max_output_len=10**6)
  r = W.sample(_poisson(4.0, mix, wide), jax.random.key(0), 20_000)
  chex.assert_tree_shape_prefix(r, (20_000,))          # every field, one entry per request
  chex.assert_type(jax.tree.leaves(r), jnp.int32)
  assert _rate(r) == pytest.approx(4.0, rel=0.03)
  gaps = np.asarray(r.gap_us, np.float64)
  assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.04)
  assert gaps.min() >= 0
  freq = np.bincount(np.asarray(r.task), minlength=4) / 20_000
  np.testing.assert_allclose(freq, [0.7, 0.1, 0.1, 0.1], atol=0.015)
  assert np.median(r.prompt_len) == pytest.approx(np.exp(6.6333), rel=0.05)
  assert np.median(r.output_len) == pytest.approx(np.exp(5.0190), rel=0.05)
  assert np.asarray(r.output_len).min() >= 1 and np.asarray(r.prompt_len).min() >= 1


@pytest.mark.parametrize("make", [lambda m: _poisson(20.0, m),
                                  lambda m: W.BurstyWorkload(jnp.float32(20.0), m,
                                                             W.LengthModel.azure_conv(4))])
def test_shifts_take_effect_at_the_breakpoint(make):
  mix = mix_from_strings("1,0,0,0", "30:0,1,0,0;60.5:0,0,0,1", 4)
  r = W.sample(make(mix), jax.random.key(2), N)
  a_us = np.cumsum(np.asarray(r.gap_us, np.int64))
  task = np.asarray(r.task)
  assert a_us[-1] > 70e6
  np.testing.assert_array_equal(task[a_us < 30_000_000], 0)
  np.testing.assert_array_equal(task[(a_us >= 30_000_000) & (a_us < 60_500_000)], 1)
  np.testing.assert_array_equal(task[a_us >= 60_500_000], 3)


def test_elapsed_is_exact_and_compares_exactly():
  t = W.Elapsed.zero()
  gaps = np.array([2**31 - 1, 999_999, 1, 1_500_000, 0, 7], np.int64)
  for g in gaps:
    t = t.advance(jnp.int32(g))
  assert int(t.s) * 10**6 + int(t.us) == gaps.sum()
  exact = W.Elapsed.zero().advance(jnp.int32(600_500_000))
  assert bool(exact.at_or_after(600.5)) and not bool(exact.at_or_after(600.5001))
  before = W.Elapsed.zero().advance(jnp.int32(600_499_999))
  assert not bool(before.at_or_after(600.5))


def test_lengths_within_clip_bounds():
  small = W.LengthModel.azure_conv(4, max_prompt_len=300, max_output_len=40)
  r = W.sample(_poisson(5.0, lengths=small), jax.random.key(3), N)
  for x, hi in ((r.prompt_len, 300), (r.output_len, 40)):
    x = np.asarray(x)
    assert x.min() >= 1 and x.max() == hi  # The clip is reached: the bound is live.


def test_per_task_lengths():
  model = W.LengthModel.create(2, prompt=([2.0, 6.0], [0.0, 0.0]), output=([1.0, 3.0], 0.0))
  prompt, output = jax.vmap(model.draw)(jax.random.split(jax.random.key(0), 2), jnp.array([0, 1]))
  np.testing.assert_array_equal(prompt, np.rint(np.exp([2.0, 6.0])))
  np.testing.assert_array_equal(output, np.rint(np.exp([1.0, 3.0])))
  with pytest.raises(ValueError, match="sigma"):
    W.LengthModel.create(2, prompt=(1.0, -1.0))
  with pytest.raises(ValueError, match="max_output_len"):
    W.LengthModel.create(2, max_output_len=0)


def test_vmap_over_rates_gives_two_streams():
  key = jax.random.key(5)
  r = jax.vmap(lambda rate: W.sample(_poisson(rate), key, N))(jnp.array([1.0, 10.0]))
  chex.assert_tree_shape_prefix(r, (2, N))
  assert _rate(jax.tree.map(lambda x: x[0], r)) == pytest.approx(1.0, rel=0.06)
  assert _rate(jax.tree.map(lambda x: x[1], r)) == pytest.approx(10.0, rel=0.06)
  rb = jax.vmap(lambda rate: W.sample(_bursty(rate), key, N))(jnp.array([1.0, 10.0]))
  assert not np.array_equal(rb.gap_us[0], rb.gap_us[1])


def test_different_keys_differ():
  a = W.sample(_poisson(3.0), jax.random.key(6), N)
  b = W.sample(_poisson(3.0), jax.random.key(7), N)
  again = W.sample(_poisson(3.0), jax.random.key(6), N)
  bursty = _bursty_streams(3.0)  # 16 keys in one vmap.
  first, second = (jax.tree.map(lambda x, i=i: x[i], bursty) for i in (0, 1))
  for x, y in ((a, b), (first, second)):
    for field in ("gap_us", "task", "prompt_len", "output_len"):
      assert not np.array_equal(getattr(x, field), getattr(y, field)), field
  np.testing.assert_array_equal(a.gap_us, again.gap_us)
  np.testing.assert_array_equal(bursty.gap_us, _bursty_streams(3.0).gap_us)


@pytest.mark.parametrize("workload,exact", [(_poisson(3.0), True),
                                            (_bursty(3.0, window_s=0.5), False)])
def test_sample_equals_repeated_next(workload, exact):
  key = jax.random.key(8)
  n = 24
  got = W.sample(workload, key, n)
  k_init, k_steps = jax.random.split(key)
  state = jax.jit(workload.init)(k_init)
  step = jax.jit(workload.next)
  rows = []
  for k in jax.random.split(k_steps, n):
    request, state = step(k, state)
    rows.append(request)
  np.testing.assert_array_equal(got.task, [q.task for q in rows])
  for field in ("gap_us", "prompt_len", "output_len"):
    want = np.array([getattr(q, field) for q in rows])
    if exact:
      np.testing.assert_array_equal(getattr(got, field), want)
    else:
      # Same random draws, but XLA may fuse the float32 math of the scan body differently
      # from `next` jitted alone: a gap may round one or two microseconds apart.
      np.testing.assert_allclose(getattr(got, field), want, rtol=2e-5, atol=2)
      assert np.mean(np.asarray(getattr(got, field)) == want) >= 0.9


def test_bursty_long_run_rate_and_window_variation():
  bursty = _bursty_streams(2.0)
  assert _rate(bursty) == pytest.approx(2.0, rel=0.10)
  poisson = W.sample(_poisson(2.0), jax.random.key(10), N)
  cv_bursty = np.mean([_window_count_cv(jax.tree.map(lambda x, i=i: x[i], bursty))
                       for i in range(16)])
  cv_poisson = _window_count_cv(poisson)
  assert cv_poisson < 0.35  # ~ 1 / sqrt(20 requests per window).
  assert cv_bursty > 0.9 and cv_bursty > 3 * cv_poisson


def test_bursty_rate_holds_when_gaps_cross_many_windows():
  # Mean gap 2 s over 1-s windows: most gaps cross windows of different rates, some more
  # than MAX_CROSSINGS of them.
  assert _rate(_bursty_streams(0.5, window_s=1.0, rate_sigma=0.8)) == pytest.approx(0.5, rel=0.05)


def test_bursty_without_variation_is_poisson():
  r = _bursty_streams(5.0, rate_sigma=0.0, cv_median=1.0, cv_sigma=0.0)
  gaps = np.asarray(r.gap_us, np.float64)
  assert _rate(r) == pytest.approx(5.0, rel=0.02)
  assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
  assert _window_count_cv(jax.tree.map(lambda x: x[0], r)) < 0.3


def test_create_validates_knobs():
  mix, model = W.TaskMix.uniform(4), W.LengthModel.azure_conv(4)
  with pytest.raises(ValueError, match=r"poisson workload.rate_per_s: expected a number > 0"):
    W.PoissonWorkload.create(0.0, mix, model)
  with pytest.raises(ValueError, match=r"bursty workload.rate_per_s: expected a number > 0"):
    W.BurstyWorkload.create(-2.0, mix, model)
  w = W.BurstyWorkload.create(2.0, mix, model, window_s=5.0)
  assert float(w.window_s) == 5.0 and float(w.cv_median) == pytest.approx(1.32)


def test_task_mix_validation():
  with pytest.raises(ValueError, match=">= 0"):
    W.TaskMix.create([0.5, -0.1])
  with pytest.raises(ValueError, match="positive sum"):
    W.TaskMix.create([[1.0, 0.0], [0.0, 0.0]], [10.0])
  with pytest.raises(ValueError, match="need 1 breakpoints"):
    W.TaskMix.create([[1.0, 0.0], [0.0, 1.0]], [])
  with pytest.raises(ValueError, match="increasing"):
    W.TaskMix.create([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [20.0, 10.0])
  mix = W.TaskMix.create([2.0, 2.0, 4.0])
  np.testing.assert_allclose(mix.probs, [[0.25, 0.25, 0.5]])


def test_default_config_builds_each_kind():
  cfg = W.default_workload_config()
  assert cfg.kind == "poisson" and cfg.lengths == "auto" and cfg.bursty.window_s == 10.0
  w = W.workload_from_config(cfg, TASKS)
  assert isinstance(w, W.PoissonWorkload) and float(w.rate_per_s) == 5.0
  np.testing.assert_allclose(w.mix.probs, [[0.25] * 4])
  cfg.kind = "bursty"
  cfg.rate = 3.0
  cfg.task_mix = [0.7, 0.1, 0.1, 0.1]  # A list works as well as a string.
  cfg.shifts = "600:0.1,0.1,0.1,0.7;1200:1,1,1,1"
  cfg.bursty.rate_sigma = 0.5
  w = W.workload_from_config(cfg, TASKS)
  assert isinstance(w, W.BurstyWorkload) and float(w.rate_sigma) == 0.5
  np.testing.assert_allclose(w.mix.probs, [[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7],
                                           [0.25] * 4], rtol=1e-6)
  np.testing.assert_allclose(w.mix.breakpoints_s, [600.0, 1200.0])


@pytest.mark.parametrize("key,value,message", [
    ("kind", "uniform", "config.workload.kind"),
    ("task_mix", "0.5,0.5", r"task_mix: expected 4 weights"),
    ("task_mix", "0.5,x,0,0", r"task_mix: expected comma-separated numbers"),
    ("task_mix", "0,0,0,0", r"task_mix: weights must be"),
    ("shifts", "600 0.7,0.1,0.1,0.1", r"shifts: item .* must look like"),
    ("shifts", "ten:1,0,0,0", r"shifts: item .* is not a number"),
    ("shifts", "600:1,0,0", r"shifts \(item .*\): expected 4 weights"),
    ("shifts", "600:1,0,0,0;300:0,1,0,0", r"shifts: item .* strictly increasing"),
    ("shifts", "600:", r"shifts: item .* has no weights"),
    ("rate", 0.0, r"config.workload.rate: expected a number > 0"),
    ("rate", "fast", r"config.workload.rate: expected a number"),
    ("lengths", "trace", r"lengths: 'trace' needs kind 'trace'"),
    ("lengths", "uniform", r"config.workload.lengths: expected one of"),
    ("max_output_len", 0, r"max_output_len: expected an integer >= 1 tokens"),
    ("max_prompt_len", 10.5, r"max_prompt_len: expected an integer >= 1 tokens"),
])
def test_config_errors(key, value, message):
  cfg = W.default_workload_config()
  cfg[key] = value
  with pytest.raises(ValueError, match=message):
    W.workload_from_config(cfg, TASKS)


@pytest.mark.parametrize("knob,value,message", [
    ("cv_median", 0.0, "cv_median: expected a number > 0"),
    ("window_s", -1.0, "window_s: expected a number > 0"),
    ("window_s", 5000.0, "window_s: expected 0.001 to 2000 s"),
    ("window_s", 1e-7, "window_s: expected 0.001 to 2000 s"),
    ("rate_sigma", -0.1, "rate_sigma: expected a number >= 0"),
    ("cv_sigma", "wide", "cv_sigma: expected a number"),
    ("burst_len", 3.0, r"unknown knob\(s\) \['burst_len'\]"),
])
def test_config_bursty_errors(knob, value, message):
  cfg = W.default_workload_config()
  cfg.kind = "bursty"
  cfg.bursty[knob] = value
  with pytest.raises(ValueError, match=r"config.workload.bursty(\.|: )" + message):
    W.workload_from_config(cfg, TASKS)


def test_config_trace_errors():
  cfg = W.default_workload_config()
  cfg.kind = "trace"
  with pytest.raises(ValueError, match=r"config.workload.trace: kind 'trace' needs a CSV path"):
    W.workload_from_config(cfg, TASKS)
  cfg.trace = "no/such/trace.csv"
  with pytest.raises(ValueError, match=r"config.workload.trace: no such file"):
    W.workload_from_config(cfg, TASKS)


def test_gamma_from_uniforms_moments():
  from bes.workloads.base import GAMMA_UNIFORMS, log_gamma_from_uniforms, open_uniforms
  draw = jax.jit(jax.vmap(
      lambda k, a: log_gamma_from_uniforms(open_uniforms(k, GAMMA_UNIFORMS), a), (0, None)))
  keys = jax.random.split(jax.random.key(13), 100_000)
  for shape, tol in ((0.05, 0.06), (0.3, 0.02), (1.0, 0.02), (7.0, 0.02)):
    x = np.exp(np.asarray(draw(keys, jnp.float32(shape)), np.float64))
    assert x.mean() == pytest.approx(shape, rel=tol), shape
    assert x.var() == pytest.approx(shape, rel=4 * tol), shape  # Var[Gamma(a, 1)] = a.
