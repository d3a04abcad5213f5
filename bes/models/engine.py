"""A slot-based continuous-batching engine over the Flax OPT model (JetStream-style API).

The serving runtime and the profiler drive it iteration by iteration, exactly as the
simulator models an instance (design page "Execution"):

  engine = Engine(params, config, num_slots=8, max_len=512)
  state = engine.init_decode_state()
  prefix = engine.prefill(prompt_tokens)         # prompt KV + first token + its logprob
  state = engine.insert(prefix, state, slot=3)   # the request now runs in slot 3
  state, tokens, logprobs = engine.generate_step(state, key)  # one token per active slot
  state = engine.free(state, slot=3)             # the request left; slot 3 is free again

  prefixes = engine.prefill_batch([p0, p1], temperatures, top_ps, seeds)  # one call, K rows
  state = engine.insert_batch(prefixes, state, slots=[0, 5])             # one call, K slots

One simulator iteration maps onto the engine as: `prefill_batch` the admitted requests (their
first tokens; one call, so one fixed cost, as the serving model charges), `generate_step`
once (one more token for every request that was already running), then `insert_batch` the
admitted prefixes, so that every request gains exactly one token per iteration as the design
page says; `free` the slots of requests that completed.

Every function is a jitted pure function of a typed `DecodeState` (a `flax.struct.dataclass`
pytree); `insert`, `generate_step` and `free` donate the state's buffers, so the caller must
use the returned state and never the one passed in.

`Engine(..., mesh=mesh)` runs tensor-parallel over a device slice (an engine worker's
devices): params sharded by their logical axes (`bes.models.opt_sharding`), the cache over
its heads, sharding propagated through the same jitted functions; tokens and logprobs come
back replicated. Without a mesh nothing changes (one device).

Choices:
  * Prompts are right-padded to a length bucket (powers of two from 16, and `max_len`
    itself), so `prefill` and `insert` compile once per bucket, not once per prompt length.
    `prefill_batch` pads K prompts to the longest one's bucket and K to a power of two (or
    num_slots): one compilation per (bucket, batch size), len(buckets) * ~log2(num_slots);
    its padding rows are one pad token, greedy, and `insert_batch` skips them (slot -1).
    A prompt's KV occupies cache entries 0..P-1 of its slot, and the token fed at a step goes
    to entry `cache_len`: a slot's valid cache region is always the prefix 0..cache_len-1,
    so its attention mask is `arange(max_len) < cache_len` (+ the new entry).
  * Sampling parameters are per request (per slot): `prefill` takes a `temperature`, `top_p`
    and `seed` (traced: no recompilation per value; defaults: the engine's `temperature`,
    top_p 1), the `Prefix` carries them and `insert` stores them in the slot. A row is
    greedy (exactly argmax) when its temperature is 0, else a categorical draw from
    `logits / temperature` restricted to the top-p nucleus (`sampling.top_p_mask`, applied
    only to rows with top_p < 1). The logprob returned is that of the chosen token under
    the model's distribution (`log_softmax` of the unscaled logits), whatever the settings.
  * Random streams: the draw of a request's token j (j = 0 for prefill's first token,
    j = tokens generated before it otherwise) uses the key `fold_in(fold_in(K, seed), j)`,
    K the key passed to that `prefill` / `generate_step` call (`jax.random.key(0)` when none
    is passed). With a constant K (the serving worker passes none) a request's tokens depend
    only on its prompt, its sampling parameters and its seed: not on its slot, the batch or
    the iteration. Requests with the same seed draw the same random numbers. A prefill
    without a `seed` takes one from its key (`random.bits(key)`), so callers that pass
    distinct keys per request (the older API) get independent streams.
  * A slot that is inactive, or whose cache is full (`cache_len == max_len`), does not
    advance: its bookkeeping and its cache are left exactly as they were (the cache entry the
    batched forward writes for it is restored), and it reports token -1 with logprob 0.
    A full slot stays active until the caller frees it.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from bes.models import opt
from bes.models import opt_sharding
from bes.models import sampling as sampling_lib
from bes.models.opt_config import OPTConfig

MIN_BUCKET = 16


@flax.struct.dataclass
class Prefix:
  """A prefilled prompt, ready to be inserted into a slot.

  Attributes:
    k, v: the prompt's keys/values, [layers, bucket_len, heads, head_dim]; entries >= length
      are padding.
    length: int32 [], the prompt length P in tokens.
    token: int32 [], the first generated token (sampled from the logits at position P-1).
    logprob: float32 [], its log-probability under the model.
    temperature, top_p: float32 [], the request's sampling parameters (0 = greedy).
    seed: uint32 [], the request's sampling seed (module docstring, "Random streams").
  """
  k: jnp.ndarray
  v: jnp.ndarray
  length: jnp.ndarray
  token: jnp.ndarray
  logprob: jnp.ndarray
  temperature: jnp.ndarray
  top_p: jnp.ndarray
  seed: jnp.ndarray


@flax.struct.dataclass
class DecodeState:
  """Everything the engine keeps per slot (S = num_slots).

  Attributes:
    cache: the KV cache, k and v of shape [layers, S, max_len, heads, head_dim].
    next_token: int32 [S], the last sampled token, fed at the next step.
    position: int32 [S], OPT position id (before the +2 offset) of `next_token`.
    cache_len: int32 [S], filled cache entries; `next_token`'s KV goes to entry cache_len.
    active: bool [S], whether a request occupies the slot.
    generated: int32 [S], tokens generated so far (the prefill's first token counts).
    temperature, top_p: float32 [S], the slot's sampling parameters (set by `insert`).
    seed: uint32 [S], the slot's sampling seed (set by `insert`).
  """
  cache: opt.KVCache
  next_token: jnp.ndarray
  position: jnp.ndarray
  cache_len: jnp.ndarray
  active: jnp.ndarray
  generated: jnp.ndarray
  temperature: jnp.ndarray
  top_p: jnp.ndarray
  seed: jnp.ndarray


def prefill_buckets(max_len: int, min_bucket: int = MIN_BUCKET) -> tuple[int, ...]:
  """Padded prompt lengths (tokens): powers of two from `min_bucket` below max_len, then max_len."""
  buckets, b = [], min_bucket
  while b < max_len:
    buckets.append(b)
    b *= 2
  return tuple(buckets) + (max_len,)


def _row_keys(key, seed, index):
  """Per-row keys fold_in(fold_in(key, seed[i]), index[i]) for seed uint32 [B], index int32 [B]."""
  return jax.vmap(lambda s, j: jax.random.fold_in(jax.random.fold_in(key, s), j))(seed, index)


def _sample(logits: jnp.ndarray, keys: jnp.ndarray, temperature: jnp.ndarray,
            top_p: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Tokens int32 [B] and their logprobs float32 [B] from logits [B, V], per-row parameters.

  keys: [B] PRNG keys; temperature, top_p: float32 [B]. Rows with temperature 0 take the
  argmax; the sort of top-p and the draws run only when some row samples (`lax.cond`).
  """
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def draw(_):
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    nucleus = jax.lax.cond(
        jnp.any(top_p < 1.0),
        lambda x: jnp.where((top_p < 1.0)[:, None],
                            sampling_lib.top_p_mask(x, top_p[:, None]), x),
        lambda x: x, scaled)
    drawn = jax.vmap(jax.random.categorical)(keys, nucleus).astype(jnp.int32)
    return jnp.where(temperature > 0, drawn, greedy)

  tokens = jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy, None)
  return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _prefill(params, tokens, length, key, temperature, top_p, seed, *, config: OPTConfig,
             dtype, mesh=None):
  """Prefix of one right-padded prompt: tokens int32 [L], length int32 [] (real tokens);
  temperature, top_p float32 [], seed uint32 []."""
  bucket = tokens.shape[0]
  mask = (jnp.arange(bucket) < length)[None]
  cache = opt.init_cache(config, 1, bucket, dtype)
  logits, cache = opt.forward(params, config, tokens[None], opt.opt_positions(mask), cache,
                              jnp.zeros((1,), jnp.int32), mask, mesh=mesh)
  last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, axis=0, keepdims=True)
  keys = _row_keys(key, seed[None], jnp.zeros((1,), jnp.int32))
  token, logprob = _sample(last, keys, temperature[None], top_p[None])
  return Prefix(k=cache.k[:, 0], v=cache.v[:, 0], length=length, token=token[0],
                logprob=logprob[0], temperature=temperature, top_p=top_p, seed=seed)


def _prefill_batch(params, tokens, lengths, key, temperature, top_p, seed, *,
                   config: OPTConfig, dtype, mesh=None):
  """Batched `_prefill`: tokens int32 [K, L] right-padded, lengths int32 [K] (>= 1);
  temperature, top_p float32 [K], seed uint32 [K]. Returns a Prefix with a leading K axis."""
  k_rows, bucket = tokens.shape
  mask = jnp.arange(bucket)[None] < lengths[:, None]
  cache = opt.init_cache(config, k_rows, bucket, dtype)
  logits, cache = opt.forward(params, config, tokens, opt.opt_positions(mask), cache,
                              jnp.zeros((k_rows,), jnp.int32), mask, mesh=mesh)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  keys = _row_keys(key, seed, jnp.zeros((k_rows,), jnp.int32))
  token, logprob = _sample(last, keys, temperature, top_p)
  return Prefix(k=jnp.moveaxis(cache.k, 1, 0), v=jnp.moveaxis(cache.v, 1, 0), length=lengths,
                token=token, logprob=logprob, temperature=temperature, top_p=top_p, seed=seed)


def _insert_batch(prefix: Prefix, state: DecodeState, slots) -> DecodeState:
  """`state` with row i of the batched `prefix` written into slot slots[i] (int32 [K]);
  rows with slots[i] < 0 are skipped (scatters with out-of-range indices dropped)."""
  num_slots = state.active.shape[0]
  idx = jnp.where(slots < 0, num_slots, slots)  # out of range: dropped
  bucket = prefix.k.shape[2]
  dtype = state.cache.k.dtype
  put = lambda a, vals: a.at[idx].set(vals, mode="drop")
  cache = opt.KVCache(
      k=state.cache.k.at[:, idx, :bucket].set(
          jnp.moveaxis(prefix.k, 0, 1).astype(dtype), mode="drop"),
      v=state.cache.v.at[:, idx, :bucket].set(
          jnp.moveaxis(prefix.v, 0, 1).astype(dtype), mode="drop"))
  return DecodeState(
      cache=cache,
      next_token=put(state.next_token, prefix.token),
      position=put(state.position, prefix.length),
      cache_len=put(state.cache_len, prefix.length),
      active=put(state.active, True),
      generated=put(state.generated, 1),
      temperature=put(state.temperature, prefix.temperature),
      top_p=put(state.top_p, prefix.top_p),
      seed=put(state.seed, prefix.seed))


def _insert(prefix: Prefix, state: DecodeState, slot) -> DecodeState:
  """`state` with `prefix` written into slot `slot` (int32 []) and the slot active."""
  start = (0, slot, 0, 0, 0)
  dtype = state.cache.k.dtype
  cache = opt.KVCache(
      k=jax.lax.dynamic_update_slice(state.cache.k, prefix.k[:, None].astype(dtype), start),
      v=jax.lax.dynamic_update_slice(state.cache.v, prefix.v[:, None].astype(dtype), start))
  return DecodeState(
      cache=cache,
      next_token=state.next_token.at[slot].set(prefix.token),
      position=state.position.at[slot].set(prefix.length),
      cache_len=state.cache_len.at[slot].set(prefix.length),
      active=state.active.at[slot].set(True),
      generated=state.generated.at[slot].set(1),
      temperature=state.temperature.at[slot].set(prefix.temperature),
      top_p=state.top_p.at[slot].set(prefix.top_p),
      seed=state.seed.at[slot].set(prefix.seed))


def _free(state: DecodeState, slot, *, pad_token_id: int) -> DecodeState:
  """`state` with slot `slot` inactive and its counters reset (its cache is masked, not zeroed)."""
  return state.replace(
      next_token=state.next_token.at[slot].set(pad_token_id),
      position=state.position.at[slot].set(0),
      cache_len=state.cache_len.at[slot].set(0),
      active=state.active.at[slot].set(False),
      generated=state.generated.at[slot].set(0))


def _generate_step(params, state: DecodeState, key, *, config: OPTConfig, mesh=None):
  """One decode iteration: every active, non-full slot feeds `next_token` and samples the next."""
  num_slots, max_len = state.cache.k.shape[1], state.cache.k.shape[2]
  advance = state.active & (state.cache_len < max_len)
  index = jnp.minimum(state.cache_len, max_len - 1)
  rows = jnp.arange(num_slots)
  entries = jnp.arange(max_len)[None, :]
  # A slot that does not advance attends only to the entry it writes (no all-masked rows).
  kv_mask = ((entries <= state.cache_len[:, None]) & advance[:, None]) | (entries == index[:, None])
  old_k, old_v = state.cache.k[:, rows, index], state.cache.v[:, rows, index]
  logits, cache = opt.forward(params, config, state.next_token[:, None],
                              state.position[:, None], state.cache, index, kv_mask, mesh=mesh)
  keep = advance[None, :, None, None]
  cache = opt.KVCache(
      k=cache.k.at[:, rows, index].set(jnp.where(keep, cache.k[:, rows, index], old_k)),
      v=cache.v.at[:, rows, index].set(jnp.where(keep, cache.v[:, rows, index], old_v)))
  keys = _row_keys(key, state.seed, state.generated)
  tokens, logprobs = _sample(logits[:, 0], keys, state.temperature, state.top_p)
  step = advance.astype(jnp.int32)
  new_state = state.replace(
      cache=cache,
      next_token=jnp.where(advance, tokens, state.next_token),
      position=state.position + step,
      cache_len=state.cache_len + step,
      generated=state.generated + step)
  return new_state, jnp.where(advance, tokens, -1), jnp.where(advance, logprobs, 0.0)


class Engine:
  """Continuous batching over `num_slots` slots of a `max_len`-token KV cache each.

  Args:
    params: OPT parameters (`bes.models.opt.init_params` or a loaded checkpoint); cast to
      `dtype` if they are not already.
    config: the model's `OPTConfig`.
    num_slots: the largest running batch (requests decoded together).
    max_len: cache entries per slot (tokens): prompt + generated tokens fed back, at most
      `config.max_position_embeddings`.
    dtype: dtype of the parameters and the KV cache (logits are always float32).
    temperature: the default sampling temperature of `prefill` (0: greedy decoding, > 0 to
      sample from logits / temperature); a prefill may set its own (per request).
    mesh: run tensor-parallel on this ('seed', 'data', 'model') mesh (e.g. `make_mesh(
      MeshConfig(data=1, model=-1))` over a worker's devices): the params are placed by
      `opt_sharding.shard_params` (heads, MLP and vocabulary split over 'model'), the decode
      state's cache by `opt.CACHE_AXES` (split over its heads), the rest of the state
      replicated; every jitted call keeps those shardings. None: one device, unsharded.
  """

  def __init__(self, params, config: OPTConfig, num_slots: int, max_len: int,
               dtype=jnp.float32, temperature: float = 0.0,
               buckets: Sequence[int] | None = None, mesh: Mesh | None = None):
    if num_slots < 1:
      raise ValueError(f"Engine: num_slots must be >= 1, got {num_slots}")
    if not 2 <= max_len <= config.max_position_embeddings:
      raise ValueError(f"Engine: max_len must be in [2, max_position_embeddings="
                       f"{config.max_position_embeddings}], got {max_len}")
    if not (temperature >= 0.0 and np.isfinite(temperature)):
      raise ValueError(f"Engine: temperature must be a finite number >= 0, got {temperature}")
    self.buckets = tuple(sorted(buckets)) if buckets else prefill_buckets(max_len)
    if self.buckets[-1] != max_len or self.buckets[0] < 1:
      raise ValueError(f"Engine: buckets must be positive and end at max_len={max_len}, "
                       f"got {self.buckets}")
    self.config, self.num_slots, self.max_len = config, num_slots, max_len
    self.dtype, self.temperature = jnp.dtype(dtype), float(temperature)
    self.params = jax.tree.map(lambda x: x.astype(self.dtype) if x.dtype != self.dtype else x,
                               params)
    self.mesh = mesh
    state_out = {}   # jit's out_shardings of a DecodeState (none: unsharded)
    if mesh is not None:
      self.params = opt_sharding.shard_params(self.params, config, mesh)
      state_out = dict(out_shardings=self._state_shardings())
    self._key0 = jax.random.key(0)
    self._prefill = jax.jit(functools.partial(_prefill, config=config, dtype=self.dtype,
                                              mesh=mesh))
    self._insert = jax.jit(_insert, donate_argnums=(1,), **state_out)
    self._prefill_batch = jax.jit(functools.partial(_prefill_batch, config=config,
                                                    dtype=self.dtype, mesh=mesh))
    self._insert_batch = jax.jit(_insert_batch, donate_argnums=(1,), **state_out)
    sizes, k = [], 1
    while k < num_slots:
      sizes.append(k)
      k *= 2
    self.batch_sizes = tuple(sizes) + (num_slots,)
    self._free = jax.jit(functools.partial(_free, pad_token_id=config.pad_token_id),
                         donate_argnums=(0,), **state_out)
    if mesh is not None:
      rep = opt_sharding.replicated(mesh)
      state_out = dict(out_shardings=(state_out["out_shardings"], rep, rep))
    self._generate = jax.jit(functools.partial(_generate_step, config=config, mesh=mesh),
                             donate_argnums=(1,), **state_out)
    self._init_state = (self._fresh_state if mesh is None else
                        jax.jit(self._fresh_state, out_shardings=self._state_shardings()))

  def _state_shardings(self) -> DecodeState:
    """The DecodeState's shardings on the mesh: the cache by opt.CACHE_AXES, the rest
    replicated."""
    cache, rep = opt_sharding.cache_sharding(self.mesh), opt_sharding.replicated(self.mesh)
    return DecodeState(cache=opt.KVCache(k=cache, v=cache), next_token=rep, position=rep,
                       cache_len=rep, active=rep, generated=rep, temperature=rep, top_p=rep,
                       seed=rep)

  def init_decode_state(self) -> DecodeState:
    """All slots free, cache zeroed ([layers, num_slots, max_len, heads, head_dim]; with a
    mesh, built already sharded)."""
    return self._init_state()

  def _fresh_state(self) -> DecodeState:
    s = self.num_slots
    return DecodeState(
        cache=opt.init_cache(self.config, s, self.max_len, self.dtype),
        next_token=jnp.full((s,), self.config.pad_token_id, jnp.int32),
        position=jnp.zeros((s,), jnp.int32),
        cache_len=jnp.zeros((s,), jnp.int32),
        active=jnp.zeros((s,), bool),
        generated=jnp.zeros((s,), jnp.int32),
        temperature=jnp.zeros((s,), jnp.float32),
        top_p=jnp.ones((s,), jnp.float32),
        seed=jnp.zeros((s,), jnp.uint32))

  def bucket_for(self, length: int) -> int:
    """The padded length (tokens) a prompt of `length` tokens is prefilled at."""
    return next(b for b in self.buckets if b >= length)

  def prefill(self, tokens: Sequence[int] | np.ndarray | jnp.ndarray,
              key: jnp.ndarray | None = None, *, temperature: float | None = None,
              top_p: float = 1.0, seed: int | None = None) -> Prefix:
    """Runs the prompt (int32 [P], 1 <= P < max_len) and samples its first generated token.

    temperature (default: the engine's), top_p in (0, 1] and seed (taken mod 2**32; default:
    drawn from `key`) are the request's sampling parameters, kept by `insert` for its slot.
    `key` (a PRNG key) is required when neither `temperature` nor `seed` is given and the
    engine's temperature is > 0 (the older API); else it defaults to `jax.random.key(0)`.
    """
    tokens = self._check_prompt(tokens, "prefill")
    length = tokens.shape[0]
    if temperature is None:
      temperature = self.temperature
      if seed is None:
        key = self._check_key(key, "prefill")
    if not (temperature >= 0.0 and np.isfinite(temperature)):
      raise ValueError(f"Engine.prefill: temperature must be a finite number >= 0, "
                       f"got {temperature}")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"Engine.prefill: top_p must be in (0, 1], got {top_p}")
    key = self._key0 if key is None else key
    seed = (jax.random.bits(key, dtype=jnp.uint32) if seed is None
            else np.uint32(int(seed) % 2**32))
    padded = np.full((self.bucket_for(length),), self.config.pad_token_id, np.int32)
    padded[:length] = tokens
    # numpy arguments travel with the jitted call (no separate eager transfers).
    return self._prefill(self.params, padded, np.int32(length), key,
                         np.float32(temperature), np.float32(top_p), seed)

  def batch_size_for(self, count: int) -> int:
    """The padded batch size (rows) `prefill_batch` runs `count` prompts at."""
    return next(b for b in self.batch_sizes if b >= count)

  def prefill_batch(self, prompts: Sequence[Sequence[int] | np.ndarray],
                    temperatures: Sequence[float] | None = None,
                    top_ps: Sequence[float] | None = None,
                    seeds: Sequence[int] | None = None) -> Prefix:
    """`prefill` of K = len(prompts) prompts (1 <= K <= num_slots) in one jitted call.

    The prompts are right-padded to the bucket of the longest one and the batch to
    `batch_size_for(K)` rows (a power of two, or num_slots), so there is one compilation per
    (bucket, batch size). Returns a Prefix with a leading axis of that many rows: row i < K
    is prompt i's, rows >= K are padding (insert them at slot -1, i.e. not at all).
    temperatures (default: the engine's), top_ps (default 1) and seeds (default 0; taken mod
    2**32) are per prompt. Row i equals `prefill(prompts[i], temperature=..., top_p=...,
    seed=...)`: the same first token (the same PRNG stream, "Random streams") and logprob up
    to float rounding.
    """
    count = len(prompts)
    if not 1 <= count <= self.num_slots:
      raise ValueError(f"Engine.prefill_batch: need 1 to num_slots={self.num_slots} prompts, "
                       f"got {count}")
    prompts = [self._check_prompt(p, "prefill_batch") for p in prompts]
    temperatures = ([self.temperature] * count if temperatures is None
                    else [float(t) for t in temperatures])
    top_ps = [1.0] * count if top_ps is None else [float(t) for t in top_ps]
    seeds = [0] * count if seeds is None else [int(s) for s in seeds]
    if not len(temperatures) == len(top_ps) == len(seeds) == count:
      raise ValueError("Engine.prefill_batch: temperatures, top_ps and seeds must have one "
                       "entry per prompt")
    for t, p in zip(temperatures, top_ps):
      if not (t >= 0.0 and np.isfinite(t)):
        raise ValueError(f"Engine.prefill_batch: temperature must be a finite number >= 0, "
                         f"got {t}")
      if not 0.0 < p <= 1.0:
        raise ValueError(f"Engine.prefill_batch: top_p must be in (0, 1], got {p}")
    rows = self.batch_size_for(count)
    bucket = self.bucket_for(max(len(p) for p in prompts))
    tokens = np.full((rows, bucket), self.config.pad_token_id, np.int32)
    lengths = np.ones((rows,), np.int32)  # padding rows: one pad token, greedy
    temp = np.zeros((rows,), np.float32)
    top = np.ones((rows,), np.float32)
    seed = np.zeros((rows,), np.uint32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)] = p
      lengths[i], temp[i], top[i], seed[i] = len(p), temperatures[i], top_ps[i], seeds[i] % 2**32
    return self._prefill_batch(self.params, tokens, lengths, self._key0, temp, top, seed)

  def insert_batch(self, prefix: Prefix, state: DecodeState, slots: Sequence[int]
                   ) -> DecodeState:
    """Places row i of a `prefill_batch` result in slot slots[i] in one jitted call; rows
    beyond len(slots), or with slot -1, are skipped; donates `state`."""
    rows = prefix.token.shape[0]
    if len(slots) > rows:
      raise ValueError(f"Engine.insert_batch: {len(slots)} slots for {rows} rows")
    padded = np.full((rows,), -1, np.int32)
    for i, s in enumerate(slots):
      padded[i] = -1 if s == -1 else self._check_slot(s, "insert_batch")
    real = padded[padded >= 0]
    if len(set(real.tolist())) != len(real):
      raise ValueError(f"Engine.insert_batch: slots must be distinct, got {list(slots)}")
    return self._insert_batch(prefix, state, padded)

  def insert(self, prefix: Prefix, state: DecodeState, slot: int) -> DecodeState:
    """Places `prefix` in slot `slot` (replacing whatever ran there); donates `state`."""
    return self._insert(prefix, state, np.int32(self._check_slot(slot, "insert")))

  def generate_step(self, state: DecodeState, key: jnp.ndarray | None = None
                    ) -> tuple[DecodeState, jnp.ndarray, jnp.ndarray]:
    """Advances every active slot by one token; donates `state`.

    Returns:
      (new state, tokens int32 [num_slots], logprobs float32 [num_slots]); a slot that did
      not advance (free, or cache full) reports token -1 and logprob 0.
    """
    return self._generate(self.params, state, self._check_key(key, "generate_step"))

  def free(self, state: DecodeState, slot: int) -> DecodeState:
    """Marks slot `slot` free; donates `state`."""
    return self._free(state, np.int32(self._check_slot(slot, "free")))

  def _check_prompt(self, tokens, what: str) -> np.ndarray:
    tokens = np.asarray(tokens).reshape(-1)
    length = tokens.shape[0]
    if not 1 <= length < self.max_len:
      raise ValueError(f"Engine.{what}: prompt length must be in [1, max_len - 1 = "
                       f"{self.max_len - 1}] tokens, got {length}")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"Engine.{what}: tokens must be integers, got dtype {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
      raise ValueError(f"Engine.{what}: token ids must be in [0, {self.config.vocab_size}), "
                       f"got min {tokens.min()} max {tokens.max()}")
    return tokens

  def _check_slot(self, slot: int, what: str) -> int:
    if not 0 <= int(slot) < self.num_slots:
      raise ValueError(f"Engine.{what}: slot must be in [0, {self.num_slots}), got {slot}")
    return int(slot)

  def _check_key(self, key, what: str):
    if self.temperature > 0.0 and key is None:
      raise ValueError(f"Engine.{what}: a PRNG key is required when temperature > 0")
    return self._key0 if key is None else key
