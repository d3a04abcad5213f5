"""The slot engine against the no-cache forward: greedy continuations, slot reuse, isolation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes.models import engine as engine_lib
from bes.models import opt
from bes.models.opt_config import OPTConfig

CONFIG = OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   ffn_dim=64, max_position_embeddings=64)
MAX_LEN = 40


@pytest.fixture(scope="module")
def params():
  # A larger init std than the default gives peaked, well-separated logits (no argmax ties).
  return opt.init_params(CONFIG, jax.random.key(0), std=0.3)


@pytest.fixture(scope="module")
def engine(params):
  return engine_lib.Engine(params, CONFIG, num_slots=3, max_len=MAX_LEN)


@jax.jit
def _full_logits(params, tokens, mask):
  return opt.forward_full(params, CONFIG, tokens, mask)


def reference(params, prompt, steps):
  """Greedy continuation by argmax of `forward_full` over the whole sequence, step by step.

  The sequence is right-padded to MAX_LEN + 1 tokens (one compilation for every length).
  """
  seq, logprobs = list(prompt), []
  for _ in range(steps):
    n = len(seq)
    tokens = np.full((1, MAX_LEN + 1), CONFIG.pad_token_id, np.int32)
    tokens[0, :n] = seq
    logits = np.asarray(_full_logits(params, tokens, np.arange(MAX_LEN + 1)[None] < n))[0, n - 1]
    tok = int(np.argmax(logits))
    logprobs.append(float(jax.nn.log_softmax(logits)[tok]))
    seq.append(tok)
  return seq[len(prompt):], logprobs


def prompt(seed, length):
  return np.random.default_rng(seed).integers(3, CONFIG.vocab_size, size=length).tolist()


def test_staggered_slots_match_greedy_reference(engine, params):
  prompts = {0: prompt(1, 5), 1: prompt(2, 17), 2: prompt(3, 1)}
  start = {0: 0, 1: 2, 2: 5}  # requests join at different iterations
  total = 12
  got = {s: [] for s in prompts}
  lps = {s: [] for s in prompts}
  state = engine.init_decode_state()
  for it in range(total):
    for s, t0 in start.items():
      if it == t0:
        prefix = engine.prefill(prompts[s])
        got[s].append(int(prefix.token))
        lps[s].append(float(prefix.logprob))
        state = engine.insert(prefix, state, s)
    state, toks, lp = engine.generate_step(state)
    toks, lp = np.asarray(toks), np.asarray(lp)
    for s, t0 in start.items():
      if it >= t0:
        got[s].append(int(toks[s]))
        lps[s].append(float(lp[s]))
      else:
        assert toks[s] == -1 and lp[s] == 0.0
  for s in prompts:
    want, want_lp = reference(params, prompts[s], len(got[s]))
    assert got[s] == want, f"slot {s}"
    np.testing.assert_allclose(lps[s], want_lp, atol=1e-4)
  assert np.asarray(state.generated).tolist() == [len(got[s]) for s in range(3)]
  np.testing.assert_array_equal(state.position, state.cache_len)
  np.testing.assert_array_equal(
      state.cache_len, [len(prompts[s]) + len(got[s]) - 1 for s in range(3)])


def test_free_and_reuse_slot_is_clean(engine, params):
  state = engine.init_decode_state()
  state = engine.insert(engine.prefill(prompt(4, 20)), state, 0)  # a long request ...
  for _ in range(6):
    state, _, _ = engine.generate_step(state)
  state = engine.free(state, 0)  # ... leaves, and a short one takes its slot
  assert not bool(state.active[0]) and int(state.cache_len[0]) == 0
  short = prompt(5, 3)
  prefix = engine.prefill(short)
  state = engine.insert(prefix, state, 0)
  got = [int(prefix.token)]
  for _ in range(8):
    state, toks, _ = engine.generate_step(state)
    got.append(int(toks[0]))
  assert got == reference(params, short, len(got))[0]


def test_inactive_slots_do_not_change(engine):
  state = engine.init_decode_state()
  state = engine.insert(engine.prefill(prompt(6, 4)), state, 1)
  state, _, _ = engine.generate_step(state)
  state = engine.insert(engine.prefill(prompt(7, 6)), state, 2)
  state = engine.free(state, 2)  # slot 2: freed after holding a request; slot 0: never used
  before = jax.tree.map(np.array, state)
  state, toks, lps = engine.generate_step(state)
  after = jax.tree.map(np.array, state)
  for s in (0, 2):
    assert toks[s] == -1 and lps[s] == 0.0
    for name in ("next_token", "position", "cache_len", "active", "generated"):
      assert getattr(after, name)[s] == getattr(before, name)[s], name
    np.testing.assert_array_equal(after.cache.k[:, s], before.cache.k[:, s])
    np.testing.assert_array_equal(after.cache.v[:, s], before.cache.v[:, s])
  assert after.generated[1] == before.generated[1] + 1


def test_full_slot_stops_and_buckets_bound_lengths(engine):
  assert engine.buckets == (16, 32, MAX_LEN)
  assert engine.bucket_for(1) == 16 and engine.bucket_for(17) == 32 and engine.bucket_for(33) == 40
  state = engine.insert(engine.prefill(prompt(8, MAX_LEN - 3)), engine.init_decode_state(), 0)
  toks = []
  for _ in range(5):
    state, t, _ = engine.generate_step(state)
    toks.append(int(t[0]))
  assert toks[3:] == [-1, -1] and min(toks[:3]) >= 0  # entries 37, 38, 39 then full
  assert int(state.cache_len[0]) == MAX_LEN and bool(state.active[0])


def test_sampling_with_temperature_is_keyed_in_bfloat16(params):
  eng = engine_lib.Engine(params, CONFIG, num_slots=2, max_len=32, dtype=jnp.bfloat16,
                          temperature=1.0)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(eng.params))
  with pytest.raises(ValueError, match="PRNG key"):
    eng.prefill([5, 6, 7])
  def run(seed):
    state = eng.init_decode_state()
    for s in range(2):
      state = eng.insert(eng.prefill([5, 6, 7], jax.random.key(seed + s)), state, s)
    out = []
    for i in range(6):
      state, t, lp = eng.generate_step(state, jax.random.fold_in(jax.random.key(seed), i))
      out.append(np.asarray(t))
    assert state.cache.k.dtype == jnp.bfloat16 and lp.dtype == jnp.float32
    assert (np.asarray(lp) <= 0).all() and int(state.cache_len[0]) == 3 + 6
    return np.stack(out)
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.array_equal(run(1), run(2))
  assert run(1).min() >= 0 and run(1).max() < CONFIG.vocab_size


@pytest.mark.parametrize("bad,match", [([], "prompt length"), (list(range(3, 3 + MAX_LEN)),
                                       "prompt length"), ([1, 500], r"token ids")])
def test_bad_prompts_are_refused(engine, bad, match):
  with pytest.raises(ValueError, match=match):
    engine.prefill(bad)


def test_bad_construction_is_refused(params):
  with pytest.raises(ValueError, match="max_len"):
    engine_lib.Engine(params, CONFIG, num_slots=1, max_len=1000)
  with pytest.raises(ValueError, match="num_slots"):
    engine_lib.Engine(params, CONFIG, num_slots=0, max_len=16)
  eng = engine_lib.Engine(params, CONFIG, num_slots=2, max_len=16)
  with pytest.raises(ValueError, match="slot"):
    eng.free(eng.init_decode_state(), 2)



def test_prefill_batch_matches_prefill_row_by_row(engine):
  # Three prompts of different lengths (buckets 16 and 32: padded to 32), batch padded to 3
  # rows (num_slots); greedy and sampled rows with seeds; then two prompts (2 rows).
  prompts = [prompt(10, 5), prompt(11, 20), prompt(12, 1)]
  temps, top_ps, seeds = [0.0, 1.3, 0.7], [1.0, 0.9, 1.0], [0, 5, 2**32 + 7]
  batch = engine.prefill_batch(prompts, temps, top_ps, seeds)
  assert engine.batch_sizes == (1, 2, 3) and batch.token.shape == (3,)
  assert batch.k.shape == (3, CONFIG.num_hidden_layers, 32, 4, 8)
  singles = [engine.prefill(p, temperature=t, top_p=q, seed=s)
             for p, t, q, s in zip(prompts, temps, top_ps, seeds)]
  for i, one in enumerate(singles):
    assert int(batch.token[i]) == int(one.token), i
    np.testing.assert_allclose(float(batch.logprob[i]), float(one.logprob), atol=1e-5)
    n = len(prompts[i])
    np.testing.assert_allclose(batch.k[i, :, :n], one.k[:, :n], atol=1e-5)
    assert int(batch.length[i]) == n and int(batch.seed[i]) == int(one.seed)
  two = engine.prefill_batch(prompts[1:], temps[1:], top_ps[1:], seeds[1:])
  assert two.token.shape == (2,)
  np.testing.assert_array_equal(two.token, batch.token[1:])
  # The padded row of a 3-prompt batch at 4 slots is there and ignored.
  eng4 = engine_lib.Engine(engine.params, CONFIG, num_slots=4, max_len=MAX_LEN)
  b4 = eng4.prefill_batch(prompts, temps, top_ps, seeds)
  assert b4.token.shape == (4,) and eng4.batch_sizes == (1, 2, 4)
  np.testing.assert_array_equal(b4.token[:3], batch.token)


def test_insert_batch_equals_inserts_and_decodes_like_them(engine, params):
  prompts = [prompt(13, 7), prompt(14, 18)]
  state_a = engine.insert(engine.prefill(prompts[0], seed=0), engine.init_decode_state(), 2)
  state_a = engine.insert(engine.prefill(prompts[1], seed=0), state_a, 0)
  batch = engine.prefill_batch(prompts)
  with pytest.raises(ValueError, match="distinct"):
    engine.insert_batch(batch, engine.init_decode_state(), [1, 1])
  state_b = engine.insert_batch(batch, engine.init_decode_state(), [2, 0])
  for name in ("next_token", "position", "cache_len", "active", "generated", "temperature",
               "top_p", "seed"):
    np.testing.assert_array_equal(getattr(state_a, name), getattr(state_b, name), name)
  for slot, n in ((2, 7), (0, 18)):  # entries past the prompt are padding (masked)
    np.testing.assert_allclose(state_a.cache.k[:, slot, :n], state_b.cache.k[:, slot, :n],
                               atol=1e-5)
    np.testing.assert_allclose(state_a.cache.v[:, slot, :n], state_b.cache.v[:, slot, :n],
                               atol=1e-5)
  # A padded row (slot -1) writes nothing: slot 1 stays free and zero.
  assert not bool(state_b.active[1]) and not np.asarray(state_b.cache.k[:, 1]).any()
  got = {0: [int(batch.token[1])], 2: [int(batch.token[0])]}
  for _ in range(5):
    state_b, toks, _ = engine.generate_step(state_b)
    for s in got:
      got[s].append(int(toks[s]))
  assert got[2] == reference(params, prompts[0], 6)[0]
  assert got[0] == reference(params, prompts[1], 6)[0]


def test_prefill_batch_refuses_bad_input(engine):
  with pytest.raises(ValueError, match="num_slots"):
    engine.prefill_batch([[5]] * 4)
  with pytest.raises(ValueError, match="prompt length"):
    engine.prefill_batch([[5], []])
  with pytest.raises(ValueError, match="top_p"):
    engine.prefill_batch([[5]], [0.0], [0.0], [0])
  with pytest.raises(ValueError, match="one entry per prompt"):
    engine.prefill_batch([[5], [6]], [0.0])
