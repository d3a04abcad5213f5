"""Conformance of the Flax OPT (`bes.models.opt`) with transformers' PyTorch OPTForCausalLM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bes.models import checkpoint
from bes.models import opt
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


@pytest.fixture(scope="module", params=[("pre", True, 1), ("post_proj", True, 1),
                                        ("pre", False, 1), ("post_proj", True, 3),
                                        ("pre", False, 2)],
                ids=["pre-st", "post_proj-st", "pre-bin", "post_proj-st-sharded",
                     "pre-bin-sharded"])
def loaded(request, tmp_path_factory):
  variant, safetensors, shards = request.param
  directory, model = opt_testing.make_hf_checkpoint(
      tmp_path_factory.mktemp("ckpt"), variant=variant, safetensors=safetensors, shards=shards)
  config, params = checkpoint.load_checkpoint(directory)
  return config, params, model


def test_full_forward_matches_transformers_on_left_padded_batch(loaded):
  config, params, model = loaded
  tokens, mask = _left_padded(LENGTHS)
  ours = np.asarray(jax.jit(opt.forward_full, static_argnums=1)(params, config, tokens, mask))
  theirs = _hf_logits(model, tokens, mask)
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)
  # Each row alone (no padding) gives the same logits as inside the padded batch.
  for b, n in enumerate(LENGTHS):
    alone = _hf_logits(model, tokens[b:b + 1, -n:], mask[b:b + 1, -n:])
    np.testing.assert_allclose(ours[b, -n:], alone[0], atol=1e-4, rtol=1e-4)


def test_incremental_decoding_with_cache_equals_full_forward(loaded):
  config, params, _ = loaded
  tokens, mask = _left_padded((9, 4, 6), seed=1)
  b, t = tokens.shape
  full = np.asarray(opt.forward_full(params, config, tokens, mask))
  prompt = 3  # prefill the first 3 columns, then feed one column at a time
  max_len = t + 2
  cache = opt.init_cache(config, b, max_len)
  kv_mask = np.zeros((b, max_len), bool)
  positions = np.asarray(opt.opt_positions(mask))
  step = jax.jit(opt.forward, static_argnums=1)
  kv_mask[:, :prompt] = mask[:, :prompt]
  logits, cache = step(params, config, tokens[:, :prompt], positions[:, :prompt], cache,
                       jnp.zeros((b,), jnp.int32), kv_mask)
  got = [np.asarray(logits)]
  for i in range(prompt, t):
    kv_mask[:, i] = mask[:, i]
    logits, cache = step(params, config, tokens[:, i:i + 1], positions[:, i:i + 1], cache,
                         jnp.full((b,), i, jnp.int32), kv_mask)
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  np.testing.assert_allclose(got[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_cache_rows_with_different_indices(loaded):
  """Rows at different cache offsets (continuous batching) match their own full forward."""
  config, params, _ = loaded
  rng = np.random.default_rng(2)
  seqs = [rng.integers(3, opt_testing.VOCAB, n) for n in (6, 2)]
  max_len = 8
  cache = opt.init_cache(config, 2, max_len)
  step = jax.jit(opt.forward, static_argnums=1)
  # Prefill row 0 with 5 tokens and row 1 with 1 token (right-padded prompt block of 5).
  tokens = np.ones((2, 5), np.int32)
  tokens[0], tokens[1, 0] = seqs[0][:5], seqs[1][0]
  kv_mask = np.zeros((2, max_len), bool)
  kv_mask[0, :5], kv_mask[1, :1] = True, True
  positions = np.array([np.arange(5), np.zeros(5)], np.int32)
  _, cache = step(params, config, tokens, positions, cache, jnp.zeros(2, jnp.int32), kv_mask)
  kv_mask[0, 5], kv_mask[1, 1] = True, True
  logits, cache = step(params, config, np.array([[seqs[0][5]], [seqs[1][1]]], np.int32),
                       np.array([[5], [1]], np.int32), cache, jnp.array([5, 1], jnp.int32),
                       kv_mask)
  for b, seq in enumerate(seqs):
    full = opt.forward_full(params, config, seq[None].astype(np.int32),
                            np.ones((1, len(seq)), bool))
    np.testing.assert_allclose(np.asarray(logits[b, 0]), np.asarray(full[0, -1]), atol=1e-5,
                               rtol=1e-5)


def test_bfloat16_runs_and_is_close(loaded):
  config, params, model = loaded
  params_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  tokens, mask = _left_padded(LENGTHS)
  ours = np.asarray(opt.forward_full(params_bf16, config, tokens, mask))
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
    shapes = jax.eval_shape(lambda k, c=config: opt.init_params(c, k), jax.random.key(0))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert n == config.num_params(), name
