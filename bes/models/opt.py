"""OPT (Zhang et al., 2022) decoder in Flax: pure functions over a nested-dict params pytree.

Implementation choice: no `nn.Module` classes. Parameters are a plain nested dict of arrays
(the pytree a Flax module's `params` collection would be) with one dict per decoder layer in
`params["layers"]` (a list), and `forward` is a pure, jittable function of
`(params, tokens, positions, cache, cache_index, kv_mask)` with the config static.

Decode speed on CPU (see launch/benchmark_decode.py): the layer loop is unrolled over
per-layer weight arrays rather than a `lax.scan` over stacked ones, because XLA:CPU copies
each dynamically sliced layer (weights and cache) out of the stacked arrays on every step.
New keys/values are scattered into the [layers, ...] cache in place (the optimized HLO
of the decode loop holds no copy of the weights or of the whole cache).

Numerics follow transformers' PyTorch `OPTForCausalLM`:
  * learned positions with OPT's offset of 2 (`embed_positions[position + 2]`), positions from
    the attention mask (`opt_positions`) so left-padded batches are exact;
  * pre-LayerNorm (`do_layer_norm_before=True`, final LayerNorm) or post-LayerNorm (OPT-350M,
    no final LayerNorm), LayerNorm eps 1e-5;
  * `word_embed_proj_dim != hidden_size` (OPT-350M): `project_in` after the token embedding,
    `project_out` before the tied LM head (both without bias);
  * ReLU MLP; queries scaled by head_dim**-0.5; output embedding tied to `embed_tokens`.
Matmuls run in the param dtype (float32 or bfloat16); LayerNorm statistics, the attention
softmax and the logits are float32.

Layout: Q, K and V projections are fused into one `qkv` kernel [hidden, 3 * hidden] (columns
Q | K | V, heads major within each), kernels are [in, out] (Flax's Dense convention).
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from bes.models.opt_config import OPTConfig

Params = dict  # plain nested dict pytree of jnp arrays

POSITION_OFFSET = 2  # OPT's learned position table has two extra leading rows.
LAYER_NORM_EPS = 1e-5
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free


@flax.struct.dataclass
class KVCache:
  """Per-layer attention keys and values.

  Attributes:
    k: [layers, batch, max_len, heads, head_dim] keys, in the param dtype.
    v: same shape, values.
  """
  k: jnp.ndarray
  v: jnp.ndarray

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(config: OPTConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
  """An all-zero cache of `max_len` slots (tokens) per row."""
  shape = (config.num_hidden_layers, batch, max_len, config.num_attention_heads, config.head_dim)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def param_shapes(config: OPTConfig) -> dict:
  """Nested dict of the shape of every parameter (same structure as `init_params`).

  `layers` is a list of num_hidden_layers per-layer dicts; kernels are [in, out].
  """
  h, f, v, e, n = (config.hidden_size, config.ffn_dim, config.vocab_size,
                   config.word_embed_proj_dim, config.num_hidden_layers)
  layer = {
      "attn_ln": {"scale": (h,), "bias": (h,)},
      "qkv": {"kernel": (h, 3 * h), "bias": (3 * h,)},
      "out": {"kernel": (h, h), "bias": (h,)},
      "mlp_ln": {"scale": (h,), "bias": (h,)},
      "fc1": {"kernel": (h, f), "bias": (f,)},
      "fc2": {"kernel": (f, h), "bias": (h,)},
  }
  shapes = {
      "embed_tokens": (v, e),
      "embed_positions": (config.max_position_embeddings + POSITION_OFFSET, h),
      "layers": [layer] * n,
  }
  if config.projects_embeddings:
    shapes["project_in"] = (e, h)
    shapes["project_out"] = (h, e)
  if config.do_layer_norm_before:
    shapes["final_ln"] = {"scale": (h,), "bias": (h,)}
  return shapes


def init_params(config: OPTConfig, key, dtype=jnp.float32, std: float = 0.02) -> Params:
  """Random parameters as HF initialises OPT: normal(0, std) weights, zero biases, unit scales."""
  shapes = param_shapes(config)
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
  keys = jax.random.split(key, len(leaves))
  out = []
  for path, shape, k in zip(paths, leaves, keys):
    if "scale" in path:
      out.append(jnp.ones(shape, dtype))
    elif "bias" in path:
      out.append(jnp.zeros(shape, dtype))
    else:
      out.append((std * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
  return jax.tree.unflatten(treedef, out)


def opt_positions(mask: jnp.ndarray) -> jnp.ndarray:
  """OPT position ids before the +2 offset: int32 [B, T] from a bool [B, T] token mask.

  `cumsum(mask) - 1` on real tokens and 0 on pads (HF computes -1 there; pads are masked
  out of attention, so only the pad rows' own outputs differ).
  """
  mask = mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=1) * mask - 1, 0).astype(jnp.int32)


def _layer_norm(x, p):
  """LayerNorm over the last axis with float32 statistics; returns x's dtype."""
  xf = x.astype(jnp.float32)
  mean = xf.mean(-1, keepdims=True)
  var = jnp.square(xf - mean).mean(-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
  return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


def _dense(x, p):
  return jnp.einsum("...i,io->...o", x, p["kernel"]) + p["bias"]


def _write_cache(cache, layer: int, new, cache_index):
  """Writes new [B, T, N, D] into cache [L, B, S, N, D] at [layer, b, cache_index[b] + t].

  One scatter into the whole cache (in place when the buffer is donated or loop-carried);
  out-of-range slots are dropped.
  """
  b, t = new.shape[:2]
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]
  slots = cache_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
  return cache.at[layer, rows, slots].set(new.astype(cache.dtype), mode="drop")


def _attention(q, k, v, allowed):
  """Scaled dot-product attention.

  Args:
    q: [B, T, N, D] queries, already scaled by D**-0.5.
    k, v: [B, S, N, D] cached keys and values.
    allowed: bool [B, T, S].
  Returns:
    [B, T, N, D] in q's dtype; the softmax is computed in float32.
  """
  if q.shape[1] == 1:
    # Decode (one query): written over the [B, S, N, D] cache layout without a query axis;
    # measured ~15% faster per step on CPU than the general form below at batch 16-32 (XLA
    # still transposes the cache layer for the batched dot in both).
    scores = jnp.einsum("bnd,bsnd->bsn", q[:, 0], k, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed[:, 0, :, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=1).astype(v.dtype)
    return jnp.einsum("bsn,bsnd->bnd", probs, v)[:, None]
  scores = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32)
  scores = jnp.where(allowed[:, None], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bnts,bsnd->btnd", probs, v)


def _decoder_layer(config: OPTConfig, layer: int, x, p, cache: KVCache, cache_index, allowed):
  """Decoder layer `layer` on x [B, T, H]; returns (x, cache with its new keys/values)."""
  b, t, h = x.shape
  n, d = config.num_attention_heads, config.head_dim
  pre_ln = config.do_layer_norm_before

  residual = x
  y = _layer_norm(x, p["attn_ln"]) if pre_ln else x
  qkv = _dense(y, p["qkv"]).reshape(b, t, 3, n, d)
  q = qkv[:, :, 0] * jnp.asarray(d**-0.5, x.dtype)
  cache = KVCache(k=_write_cache(cache.k, layer, qkv[:, :, 1], cache_index),
                  v=_write_cache(cache.v, layer, qkv[:, :, 2], cache_index))
  attn = _attention(q, cache.k[layer], cache.v[layer], allowed).reshape(b, t, h)
  x = residual + _dense(attn, p["out"])
  if not pre_ln:
    x = _layer_norm(x, p["attn_ln"])

  residual = x
  y = _layer_norm(x, p["mlp_ln"]) if pre_ln else x
  y = _dense(jax.nn.relu(_dense(y, p["fc1"])), p["fc2"])
  x = residual + y
  if not pre_ln:
    x = _layer_norm(x, p["mlp_ln"])
  return x, cache


def forward(params: Params, config: OPTConfig, tokens, positions, cache: KVCache,
            cache_index, kv_mask, *, last_only: bool = False):
  """Runs T new tokens per row through the decoder, reading and extending the KV cache.

  Args:
    params: OPT parameters (`init_params` layout), float32 or bfloat16.
    config: the architecture (static under jit).
    tokens: int32 [B, T] token ids.
    positions: int32 [B, T] OPT positions before the +2 offset (see `opt_positions`).
    cache: KVCache with S = max_len slots per row.
    cache_index: int32 [B]; row b's T new keys/values go to slots cache_index[b] + t.
    kv_mask: bool [B, S]; slot s is attendable iff kv_mask[b, s], already covering the new
      tokens (True for real new tokens, False for pads).
    last_only: (static) compute the logits of the last position only, [B, 1, vocab]: a
      prefill that only samples the next token skips T - 1 LM-head matmuls.
  Returns:
    (logits float32 [B, T, vocab], the updated KVCache). Query t of row b attends to slot s
    iff kv_mask[b, s] and s <= cache_index[b] + t.
  """
  dtype = params["embed_tokens"].dtype
  t = tokens.shape[1]
  x = params["embed_tokens"][tokens]
  if config.projects_embeddings:
    x = x @ params["project_in"]
  x = x + params["embed_positions"][positions + POSITION_OFFSET]
  x = x.astype(dtype)

  query_pos = cache_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # [B, T]
  slots = jnp.arange(cache.max_len, dtype=jnp.int32)
  allowed = kv_mask[:, None, :] & (slots[None, None, :] <= query_pos[:, :, None])  # [B, T, S]
  cache_index = cache_index.astype(jnp.int32)

  for i, p in enumerate(params["layers"]):
    x, cache = _decoder_layer(config, i, x, p, cache, cache_index, allowed)

  if last_only:
    x = x[:, -1:]
  if config.do_layer_norm_before:
    x = _layer_norm(x, params["final_ln"])
  if config.projects_embeddings:
    x = x @ params["project_out"]
  logits = jnp.einsum("bte,ve->btv", x, params["embed_tokens"],
                      preferred_element_type=jnp.float32)
  return logits, cache


def forward_full(params: Params, config: OPTConfig, tokens, attention_mask):
  """No-cache scoring of whole (left- or right-padded) sequences.

  Args:
    tokens: int32 [B, T]; attention_mask: bool [B, T] (True on real tokens).
  Returns:
    float32 [B, T, vocab] logits; positions are computed from the mask.
  """
  b, t = tokens.shape
  attention_mask = attention_mask.astype(bool)
  cache = init_cache(config, b, t, params["embed_tokens"].dtype)
  logits, _ = forward(params, config, tokens, opt_positions(attention_mask), cache,
                      jnp.zeros((b,), jnp.int32), attention_mask)
  return logits
