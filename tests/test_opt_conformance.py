"""Conformance of the Flax OPT (`bes.models.opt`) with transformers' PyTorch OPTForCausalLM."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bes.models import checkpoint
from bes.models import opt
from bes.models import sampling
from bes.models.opt_config import opt_config
from tests import opt_testing

LENGTHS = (7, 3, 5)  # prompt lengths of the left-padded test batch


def _left_padded(lengths, seed=0, vocab=opt_testing.VOCAB):
  """int32 tokens [B, T] and bool mask [B, T], row b with lengths[b] real tokens at the end."""
  rng = np.random.default_rng(seed)
  t = max(lengths)
  tokens = np.ones((len(lengths), t), np.int32)  # pad id 1
  mask = np.zeros((len(lengths), t), bool)
  for b, n in enumerate(lengths):
    tokens[b, t - n:] = rng.integers(3, vocab, n)
    mask[b, t - n:] = True
  return tokens, mask


def _hf_logits(model, tokens, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.logits.float().numpy()


@pytest.fixture(scope="module", params=[("pre", True, 1), ("post_proj", True, 3),
                                        ("post_proj", False, 1)],
                ids=["pre-safetensors", "post_proj-safetensors-sharded", "post_proj-bin"])
def loaded(request, tmp_path_factory):
  variant, safetensors, shards = request.param
  directory, model = opt_testing.make_hf_checkpoint(
      tmp_path_factory.mktemp("ckpt"), variant=variant, safetensors=safetensors, shards=shards)
  config, params = checkpoint.load_checkpoint(directory)
  return config, params, model


_FULL = jax.jit(opt.forward_full, static_argnums=1)
_STEP = jax.jit(opt.forward, static_argnums=1)
_STEP_LAST = jax.jit(functools.partial(opt.forward, last_only=True), static_argnums=1)
MAX_LEN = max(LENGTHS) + 2  # cache slots in the incremental tests


def test_full_forward_matches_transformers_on_left_padded_batch(loaded):
  config, params, model = loaded
  tokens, mask = _left_padded(LENGTHS)
  ours = np.asarray(_FULL(params, config, tokens, mask))
  theirs = _hf_logits(model, tokens, mask)
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)
  # Each row alone (no padding) gives the same logits as inside the padded batch.
  for b, n in enumerate(LENGTHS):
    alone = _hf_logits(model, tokens[b:b + 1, -n:], mask[b:b + 1, -n:])
    np.testing.assert_allclose(ours[b, -n:], alone[0], atol=1e-4, rtol=1e-4)


def test_incremental_decoding_with_cache_equals_full_forward(loaded):
  config, params, _ = loaded
  tokens, mask = _left_padded(LENGTHS, seed=1)
  b, t = tokens.shape
  full = np.asarray(_FULL(params, config, tokens, mask))
  prompt = 3  # prefill the first 3 columns, then feed one column at a time
  cache = opt.init_cache(config, b, MAX_LEN)
  kv_mask = np.zeros((b, MAX_LEN), bool)
  positions = np.asarray(opt.opt_positions(mask))
  kv_mask[:, :prompt] = mask[:, :prompt]
  logits, cache = _STEP(params, config, tokens[:, :prompt], positions[:, :prompt], cache,
                        jnp.zeros((b,), jnp.int32), kv_mask)
  got = [np.asarray(logits)]
  for i in range(prompt, t):
    kv_mask[:, i] = mask[:, i]
    logits, cache = _STEP(params, config, tokens[:, i:i + 1], positions[:, i:i + 1], cache,
                          jnp.full((b,), i, jnp.int32), kv_mask)
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  np.testing.assert_allclose(got[mask], full[mask], atol=1e-5, rtol=1e-5)
  # last_only gives the last position's logits of the same step.
  last, _ = _STEP_LAST(params, config, tokens[:, :prompt], positions[:, :prompt],
                       opt.init_cache(config, b, MAX_LEN), jnp.zeros((b,), jnp.int32), kv_mask)
  assert last.shape == (b, 1, config.vocab_size)
  real = mask[:, prompt - 1]  # rows whose last prompt column is a real token
  np.testing.assert_allclose(np.asarray(last[real, 0]), full[real, prompt - 1], atol=1e-5,
                             rtol=1e-5)


def test_cache_rows_with_different_indices(loaded):
  """Rows at different cache offsets (continuous batching) match their own full forward."""
  config, params, _ = loaded
  lengths = (3, 1, 2)  # prompt lengths; each row then gets one more token at its own index
  seqs, mask = _left_padded([n + 1 for n in lengths], seed=2)
  seqs = [seqs[b, -(n + 1):] for b, n in enumerate(lengths)]
  tokens = np.ones((3, 3), np.int32)  # prompts right-padded into one block of 3
  kv_mask = np.zeros((3, MAX_LEN), bool)
  positions = np.zeros((3, 3), np.int32)
  for b, n in enumerate(lengths):
    tokens[b, :n], kv_mask[b, :n], positions[b, :n] = seqs[b][:n], True, np.arange(n)
  _, cache = _STEP(params, config, tokens, positions, opt.init_cache(config, 3, MAX_LEN),
                   jnp.zeros(3, jnp.int32), kv_mask)
  for b, n in enumerate(lengths):
    kv_mask[b, n] = True
  logits, _ = _STEP(params, config, np.array([[s[-1]] for s in seqs], np.int32),
                    np.array([[n] for n in lengths], np.int32), cache,
                    jnp.array(lengths, jnp.int32), kv_mask)
  full_tokens, full_mask = _left_padded([n + 1 for n in lengths], seed=2)
  full = np.asarray(_FULL(params, config, full_tokens, full_mask))
  np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, -1], atol=1e-5, rtol=1e-5)


def test_greedy_continuations_equal_transformers_generate(loaded):
  config, params, model = loaded
  tokens, mask = _left_padded(LENGTHS, seed=3)
  n = 24
  ours = sampling.generate(params, config, tokens, mask, jax.random.key(0), n,
                           sampling.SamplingConfig(greedy=True))
  with torch.no_grad():
    theirs = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(mask, dtype=torch.long),
                            max_new_tokens=n, do_sample=False,
                            pad_token_id=config.pad_token_id).numpy()[:, tokens.shape[1]:]
  # HF stops early when every row has emitted EOS, and pads stopped rows like we do.
  theirs = np.pad(theirs, ((0, 0), (0, n - theirs.shape[1])), constant_values=config.pad_token_id)
  np.testing.assert_array_equal(np.asarray(ours.tokens), theirs)
  assert len(np.unique(theirs)) >= 3  # not one token repeated everywhere


def test_bfloat16_runs_and_is_close(loaded):
  config, params, model = loaded
  params_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  tokens, mask = _left_padded(LENGTHS)
  ours = np.asarray(_FULL(params_bf16, config, tokens, mask))
  assert ours.dtype == np.float32 and np.isfinite(ours).all()
  theirs = _hf_logits(model, tokens, mask)
  err = np.abs(ours[mask] - theirs[mask]).max()
  assert err < 0.05 * np.abs(theirs[mask]).max(), err
  assert err > 0  # it really ran in bfloat16


def test_named_configs_build_shapes():
  """Every named size from 125M to 66B has consistent param shapes (no allocation)."""
  for name in ("opt-125m", "opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b",
               "opt-30b", "opt-66b"):
    config = opt_config(name)
    shapes = jax.tree.leaves(opt.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    assert sum(int(np.prod(s)) for s in shapes) == config.num_params(), name
    assert len(opt.param_shapes(config)["layers"]) == config.num_hidden_layers
  # And init_params builds exactly those shapes (traced only, for the 350M variant).
  config = opt_config("opt-350m")
  traced = jax.eval_shape(lambda k: opt.init_params(config, k), jax.random.key(0))
  assert jax.tree.map(lambda x: tuple(x.shape), traced) == opt.param_shapes(config)
