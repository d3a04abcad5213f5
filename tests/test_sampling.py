"""Tests of jitted batched generation (`bes.models.sampling`) on a tiny random Flax OPT."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes.models import opt
from bes.models import sampling
from bes.models.opt_config import OPTConfig

CONFIG = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   ffn_dim=64, max_position_embeddings=64)
GREEDY = sampling.SamplingConfig()
N = 12


@pytest.fixture(scope="module")
def params():
  return opt.init_params(CONFIG, jax.random.key(0), std=0.3)


def _prompts():
  """Left-padded prompts of lengths 5, 2 and 4: tokens [3, 5], mask [3, 5]."""
  rng = np.random.default_rng(0)
  tokens = np.full((3, 5), CONFIG.pad_token_id, np.int32)
  mask = np.zeros((3, 5), bool)
  for b, n in enumerate((5, 2, 4)):
    tokens[b, 5 - n:] = rng.integers(3, CONFIG.vocab_size, n)
    mask[b, 5 - n:] = True
  return tokens, mask


def _reference_greedy(params, config, tokens, mask, n):
  """Greedy by re-running the full forward on the growing (right-padded) sequence."""
  b, p = tokens.shape
  tokens = np.concatenate([tokens, np.full((b, n), config.pad_token_id, np.int32)], axis=1)
  mask = np.concatenate([mask, np.zeros((b, n), bool)], axis=1)
  full = jax.jit(opt.forward_full, static_argnums=1)
  out, lps = [], []
  for i in range(n):
    logits = np.asarray(full(params, config, tokens, mask))[:, p + i - 1]
    nxt = logits.argmax(-1).astype(np.int32)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    lps.append(logits[np.arange(b), nxt] - logz)
    out.append(nxt)
    tokens[:, p + i], mask[:, p + i] = nxt, True
  return np.stack(out, 1), np.stack(lps, 1)


@pytest.fixture(scope="module")
def reference(params):
  return _reference_greedy(params, CONFIG, *_prompts(), N)


def test_greedy_equals_argmax_of_full_forward(params, reference):
  tokens, mask = _prompts()
  out = sampling.generate(params, CONFIG, tokens, mask, jax.random.key(0), N, GREEDY)
  ref_tokens, ref_logprobs = reference
  assert (ref_tokens != CONFIG.eos_token_id).all()  # the test model never emits EOS here
  np.testing.assert_array_equal(np.asarray(out.tokens), ref_tokens)
  np.testing.assert_allclose(np.asarray(out.logprobs), ref_logprobs, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(out.lengths), [N] * 3)
  assert len(set(map(tuple, ref_tokens.tolist()))) == 3  # rows differ: padding handled per row


@pytest.mark.parametrize("rule", [sampling.SamplingConfig(greedy=False, top_k=1),
                                  sampling.SamplingConfig(greedy=False, temperature=1e-5)],
                         ids=["top_k=1", "temperature->0"])
def test_degenerate_sampling_is_greedy(params, rule):
  tokens, mask = _prompts()
  greedy = sampling.generate(params, CONFIG, tokens, mask, jax.random.key(0), N, GREEDY)
  out = sampling.generate(params, CONFIG, tokens, mask, jax.random.key(7), N, rule)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(greedy.logprobs), atol=1e-6)


def test_top_p_masks_hand_made_distribution():
  logits = jnp.log(jnp.array([[0.15, 0.5, 0.05, 0.3]]))
  kept = lambda p: np.isfinite(np.asarray(sampling.top_p_mask(logits, p)))[0].tolist()
  assert kept(0.4) == [False, True, False, False]  # the top token alone has mass 0.5 >= 0.4
  assert kept(0.8) == [False, True, False, True]   # 0.5 + 0.3 >= 0.8
  assert kept(0.81) == [True, True, False, True]
  assert kept(0.999) == [True, True, True, True]
  np.testing.assert_array_equal(np.asarray(sampling.top_p_mask(logits, 0.8))[0, [1, 3]],
                                np.asarray(logits)[0, [1, 3]])
  # Sampling with top_p = 0.8 only ever draws tokens 1 and 3, in ratio 0.5 : 0.3.
  rule = sampling.SamplingConfig(greedy=False, top_p=0.8)
  draws = jax.vmap(lambda k: sampling.choose(logits, k, rule))(
      jax.random.split(jax.random.key(0), 4000))[:, 0]
  counts = np.bincount(np.asarray(draws), minlength=4)
  assert counts[0] == counts[2] == 0
  assert abs(counts[1] / counts.sum() - 0.625) < 0.04


def test_top_k_masks_all_but_k():
  logits = jnp.array([[0.1, 3.0, -1.0, 2.0, 0.5]])
  kept = np.isfinite(np.asarray(sampling.top_k_mask(logits, 2)))[0]
  np.testing.assert_array_equal(kept, [False, True, False, True, False])


def test_eos_stops_a_row_and_pads_after(params, reference):
  tokens, mask = _prompts()
  ref, _ = reference
  # Declare as EOS a token that row 0 emits at step 3 and that row 1 emits later or never.
  eos = int(ref[0, 3])
  config = dataclasses.replace(CONFIG, eos_token_id=eos)
  out = sampling.generate(params, config, tokens, mask, jax.random.key(0), N, GREEDY)
  out_tokens, out_lp = np.asarray(out.tokens), np.asarray(out.logprobs)
  for b in range(3):
    hits = np.flatnonzero(ref[b] == eos)
    stop = hits[0] + 1 if len(hits) else N
    assert out.lengths[b] == stop
    np.testing.assert_array_equal(out_tokens[b, :stop], ref[b, :stop])
    assert (out_tokens[b, stop:] == CONFIG.pad_token_id).all()
    assert (out_lp[b, stop:] == 0).all() and (out_lp[b, :stop] < 0).all()
  assert out.lengths[0] <= 4


def test_same_key_same_sample_different_keys_differ(params):
  tokens, mask = _prompts()
  rule = sampling.SamplingConfig(greedy=False, temperature=1.5, top_k=40, top_p=0.95)
  run = lambda seed: np.asarray(sampling.generate(
      params, CONFIG, tokens, mask, jax.random.key(seed), N, rule).tokens)
  np.testing.assert_array_equal(run(1), run(1))
  assert (run(1) != run(2)).any()


def test_invalid_sampling_config():
  with pytest.raises(ValueError, match="temperature"):
    sampling.SamplingConfig(greedy=False, temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="top_k"):
    sampling.SamplingConfig(top_k=-1)
