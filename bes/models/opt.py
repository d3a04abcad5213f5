"""OPT (Zhang et al., 2022) decoder as a Flax linen module whose parameters carry logical axes.

Modules `LayerNorm`, `Dense`, `DecoderLayer`, `OPT`, in the style of MaxText's layers: every
parameter is created with `nn.with_logical_partitioning` ('vocab', 'embed', 'heads', 'mlp',
'length'), and `bes.parallel.mesh.LOGICAL_RULES` map the names onto the ('seed', 'data',
'model') mesh (heads, MLP and vocabulary over 'model'; placed by `bes/models/opt_sharding.py`).

The public API is pure functions over a plain nested dict of arrays (unboxed) with one dict
per decoder layer in `params["layers"]` (a list), thin wrappers over `OPT(...).apply` that
rename `layers[i]` <-> the module's `layers_i` (`to_flax` / `from_flax`), so checkpoints, the
engine, sampling and scoring see the same pytree as before: `init_params`, `forward`,
`forward_full`, `param_shapes`, `param_logical_axes`, `KVCache` / `init_cache` / `CACHE_AXES`.

Decode speed on CPU (launch/benchmark_decode.py): the layers are unrolled (a Python loop of
per-layer submodules over per-layer weights, not `nn.scan` over stacked ones: XLA:CPU copied
each sliced layer out of the stack on every step), and new keys/values are scattered into
the [layers, ...] cache in place: the optimized HLO of the decode loop holds no copy of the
weights or of the whole cache (tests/test_opt_sharding.py checks it).

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

Layout: kernels are [in, out]; Q, K and V are fused into one `qkv` kernel [hidden, 3 * hidden]
whose columns are [groups, 3 (Q|K|V), heads / groups, head_dim]. groups = 1 (`init_params`
and checkpoints: Q | K | V, heads major in each) unless `forward` gets a mesh whose 'model'
axis has M > 1 devices: then groups = M (`opt_sharding.shard_params` regrouped them), so the
contiguous shard m holds the Q, K and V of whole heads (Megatron's layout).
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from bes.models.layers import LAYER_NORM_EPS, Dense, LayerNorm, constrain, param_init  # noqa: F401
from bes.models.opt_config import OPTConfig
from bes.parallel import mesh as mesh_lib

Params = dict  # plain nested dict pytree of jnp arrays

POSITION_OFFSET = 2  # OPT's learned position table has two extra leading rows.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free
# Logical axes of the KV cache arrays [layers, batch, max_len, heads, head_dim].
CACHE_AXES = ("layers", "cache_batch", "length", "heads", "kv")


@flax.struct.dataclass
class KVCache:
  """Per-layer attention keys and values.

  Attributes:
    k: [layers, batch, max_len, heads, head_dim] keys, in the param dtype (axes CACHE_AXES).
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


def qkv_groups(mesh: Mesh | None) -> int:
  """Column groups of the fused qkv kernel (module docstring): the mesh's 'heads' shards."""
  return 1 if mesh is None else mesh_lib.axis_size(mesh, "heads")


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


class DecoderLayer(nn.Module):
  """Decoder layer `index`: x [B, T, H] -> (x, cache with this layer's new keys/values).

  Params: attn_ln, mlp_ln (LayerNorm); qkv [H, 3H] ('embed', 'heads': fused, grouped as the
  module docstring says), out [H, H] ('heads', 'embed'), fc1 [H, F] ('embed', 'mlp'),
  fc2 [F, H] ('mlp', 'embed').
  """
  config: OPTConfig
  index: int
  mesh: Mesh | None = None
  param_dtype: Any = jnp.float32
  std: float = 0.02

  @nn.compact
  def __call__(self, x, cache: KVCache, cache_index, allowed):
    c, mesh = self.config, self.mesh
    b, t, h = x.shape
    n, d, g = c.num_attention_heads, c.head_dim, qkv_groups(self.mesh)
    pre_ln = c.do_layer_norm_before
    dense = functools.partial(Dense, param_dtype=self.param_dtype, std=self.std)
    attn_ln = LayerNorm(self.param_dtype, name="attn_ln")
    mlp_ln = LayerNorm(self.param_dtype, name="mlp_ln")
    heads = lambda a: constrain(a.reshape(b, t, n, d), ("batch", "length", "heads", "kv"), mesh)
    embed = lambda a: constrain(a, ("batch", "length", "embed"), mesh)

    residual = x
    y = attn_ln(x) if pre_ln else x
    qkv = dense(3 * h, ("embed", "heads"), name="qkv")(y).reshape(b, t, g, 3, n // g, d)
    q = heads(qkv[:, :, :, 0]) * jnp.asarray(d**-0.5, x.dtype)
    cache = KVCache(k=_write_cache(cache.k, self.index, heads(qkv[:, :, :, 1]), cache_index),
                    v=_write_cache(cache.v, self.index, heads(qkv[:, :, :, 2]), cache_index))
    attn = _attention(q, cache.k[self.index], cache.v[self.index], allowed)
    attn = constrain(attn, ("batch", "length", "heads", "kv"), mesh).reshape(b, t, h)
    x = embed(residual + dense(h, ("heads", "embed"), name="out")(attn))
    if not pre_ln:
      x = attn_ln(x)

    residual = x
    y = mlp_ln(x) if pre_ln else x
    y = constrain(jax.nn.relu(dense(c.ffn_dim, ("embed", "mlp"), name="fc1")(y)),
                  ("batch", "length", "mlp"), mesh)
    x = embed(residual + dense(h, ("mlp", "embed"), name="fc2")(y))
    if not pre_ln:
      x = mlp_ln(x)
    return x, cache


class OPT(nn.Module):
  """OPT decoder + tied LM head; `__call__` is `forward` (its docstring) on unboxed params.

  Params: embed_tokens [vocab, E] ('vocab', 'embed'), embed_positions [max_pos + 2, H]
  ('length', 'embed'), layers_i (DecoderLayer), project_in [E, H] / project_out [H, E]
  ('embed', 'embed', OPT-350M only), final_ln (pre-LayerNorm models only).
  mesh: activations and the cache are constrained to their logical shardings on it, and the
  qkv kernel is read in its grouped layout (None: unsharded).
  """
  config: OPTConfig
  mesh: Mesh | None = None
  param_dtype: Any = jnp.float32
  std: float = 0.02

  @nn.compact
  def __call__(self, tokens, positions, cache: KVCache, cache_index, kv_mask,
               last_only: bool = False):
    c, mesh, pd = self.config, self.mesh, self.param_dtype
    h, e = c.hidden_size, c.word_embed_proj_dim
    normal = lambda names: param_init("normal", names, pd, self.std)
    embed_tokens = self.param("embed_tokens", normal(("vocab", "embed")), (c.vocab_size, e))
    embed_positions = self.param("embed_positions", normal(("length", "embed")),
                                 (c.max_position_embeddings + POSITION_OFFSET, h))
    dtype = embed_tokens.dtype
    t = tokens.shape[1]
    x = embed_tokens[tokens]
    if c.projects_embeddings:
      x = x @ self.param("project_in", normal(("embed", "embed")), (e, h))
    x = x + embed_positions[positions + POSITION_OFFSET]
    x = constrain(x.astype(dtype), ("batch", "length", "embed"), mesh)

    query_pos = cache_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # [B, T]
    slots = jnp.arange(cache.max_len, dtype=jnp.int32)
    allowed = kv_mask[:, None, :] & (slots[None, None, :] <= query_pos[:, :, None])  # [B, T, S]
    cache_index = cache_index.astype(jnp.int32)
    cache_axes = lambda kv: KVCache(k=constrain(kv.k, CACHE_AXES, mesh),
                                    v=constrain(kv.v, CACHE_AXES, mesh))
    cache = cache_axes(cache)

    for i in range(c.num_hidden_layers):
      x, cache = DecoderLayer(c, i, mesh, pd, self.std, name=f"layers_{i}")(
          x, cache, cache_index, allowed)
    cache = cache_axes(cache)   # returned as it came: a decode loop keeps one sharding

    if last_only:
      x = x[:, -1:]
    if c.do_layer_norm_before:
      x = LayerNorm(pd, name="final_ln")(x)
    if c.projects_embeddings:
      x = x @ self.param("project_out", normal(("embed", "embed")), (h, e))
    logits = jnp.einsum("bte,ve->btv", x, embed_tokens, preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"), mesh), cache


def to_flax(params: Params) -> dict:
  """The module's `params` collection of a `init_params`-layout pytree (layers[i] -> layers_i)."""
  out = {k: v for k, v in params.items() if k != "layers"}
  out.update({f"layers_{i}": p for i, p in enumerate(params["layers"])})
  return out


def from_flax(variables: dict, config: OPTConfig) -> Params:
  """The `init_params` layout of the module's `params` collection (layers_i -> layers[i])."""
  n = config.num_hidden_layers
  out = {k: v for k, v in variables.items() if not k.startswith("layers_")}
  out["layers"] = [variables[f"layers_{i}"] for i in range(n)]
  return out


def _boxed_init(config: OPTConfig, dtype, std: float, key):
  """The module's boxed (LogicallyPartitioned) `params`, from a 1-token dummy forward."""
  module = OPT(config, param_dtype=dtype, std=std)
  one = jnp.zeros((1, 1), jnp.int32)
  return module.init(key, one, one, init_cache(config, 1, 1, dtype), jnp.zeros((1,), jnp.int32),
                     jnp.ones((1, 1), bool))["params"]


def abstract_params(config: OPTConfig, dtype=jnp.float32) -> Params:
  """The module's parameters as ShapeDtypeStructs in the `init_params` layout (no allocation)."""
  boxed = jax.eval_shape(functools.partial(_boxed_init, config, jnp.dtype(dtype), 0.02),
                         jax.random.key(0))
  return from_flax(nn.unbox(boxed), config)


@functools.lru_cache(maxsize=16)
def _abstract_leaves(config: OPTConfig, dtype):
  return jax.tree_util.tree_flatten_with_path(abstract_params(config, dtype))


def init_params(config: OPTConfig, key, dtype=jnp.float32, std: float = 0.02, *,
                shardings=None) -> Params:
  """Random parameters as HF initialises OPT: normal(0, std) weights (drawn in float32), zero
  biases, unit LayerNorm scales, a plain nested dict in the `param_shapes` layout.

  The module's parameters (`abstract_params`), drawn leaf by leaf with the keys
  `split(key, leaves)` in pytree order: the same values as before OPT was a module, so a seed
  keeps its weights (`OPT(config).init` draws the same distributions with linen's per-path
  keys, other values). shardings: a pytree of the same structure; each leaf is placed there
  as soon as it is drawn (one leaf at a time on the default device: a model too large for
  one device can be drawn sharded).
  """
  dtype = jnp.dtype(dtype)
  paths, treedef = _abstract_leaves(config, dtype)
  places = [None] * len(paths) if shardings is None else treedef.flatten_up_to(shardings)
  out = []
  for (path, leaf), k, place in zip(paths, jax.random.split(key, len(paths)), places):
    fill = {"scale": jnp.ones, "bias": jnp.zeros}.get(path[-1].key)
    x = (fill(leaf.shape, dtype) if fill else
         (std * jax.random.normal(k, leaf.shape, jnp.float32)).astype(dtype))
    out.append(x if place is None else jax.device_put(x, place))
  return jax.tree.unflatten(treedef, out)


def param_logical_axes(config: OPTConfig) -> dict:
  """Each parameter's logical axis names (a tuple of str per leaf), same structure as
  `init_params`, read from the module's partitioning metadata (no allocation)."""
  boxed = jax.eval_shape(functools.partial(_boxed_init, config, jnp.float32, 0.02),
                         jax.random.key(0))
  specs = nn.get_partition_spec(boxed)
  names = jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  return from_flax(names, config)


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


def opt_positions(mask: jnp.ndarray) -> jnp.ndarray:
  """OPT position ids before the +2 offset: int32 [B, T] from a bool [B, T] token mask.

  `cumsum(mask) - 1` on real tokens and 0 on pads (HF computes -1 there; pads are masked
  out of attention, so only the pad rows' own outputs differ).
  """
  mask = mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=1) * mask - 1, 0).astype(jnp.int32)


def forward(params: Params, config: OPTConfig, tokens, positions, cache: KVCache,
            cache_index, kv_mask, *, last_only: bool = False, mesh: Mesh | None = None):
  """Runs T new tokens per row through the decoder, reading and extending the KV cache.

  Args:
    params: OPT parameters (`init_params` layout), float32 or bfloat16; with `mesh`, as
      `opt_sharding.shard_params(params, config, mesh)` placed them (qkv columns grouped).
    config: the architecture (static under jit).
    tokens: int32 [B, T] token ids.
    positions: int32 [B, T] OPT positions before the +2 offset (see `opt_positions`).
    cache: KVCache with S = max_len slots per row.
    cache_index: int32 [B]; row b's T new keys/values go to slots cache_index[b] + t.
    kv_mask: bool [B, S]; slot s is attendable iff kv_mask[b, s], already covering the new
      tokens (True for real new tokens, False for pads).
    last_only: (static) compute the logits of the last position only, [B, 1, vocab]: a
      prefill that only samples the next token skips T - 1 LM-head matmuls.
    mesh: (static) run tensor-parallel on this ('seed', 'data', 'model') mesh; None: unsharded.
  Returns:
    (logits float32 [B, T, vocab], the updated KVCache). Query t of row b attends to slot s
    iff kv_mask[b, s] and s <= cache_index[b] + t.
  """
  return OPT(config, mesh=mesh).apply({"params": to_flax(params)}, tokens, positions, cache,
                                      cache_index, kv_mask, last_only=last_only)


def forward_full(params: Params, config: OPTConfig, tokens, attention_mask, *,
                 mesh: Mesh | None = None):
  """No-cache scoring of whole (left- or right-padded) sequences.

  Args:
    tokens: int32 [B, T]; attention_mask: bool [B, T] (True on real tokens).
    mesh: as in `forward`.
  Returns:
    float32 [B, T, vocab] logits; positions are computed from the mask.
  """
  b, t = tokens.shape
  attention_mask = attention_mask.astype(bool)
  cache = init_cache(config, b, t, params["embed_tokens"].dtype)
  logits, _ = forward(params, config, tokens, opt_positions(attention_mask), cache,
                      jnp.zeros((b,), jnp.int32), attention_mask, mesh=mesh)
  return logits
