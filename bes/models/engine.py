"""A slot-based continuous-batching engine over the Flax OPT model (JetStream-style API).

The serving runtime and the profiler drive it iteration by iteration, exactly as the
simulator models an instance (design page "Execution"):

  engine = Engine(params, config, num_slots=8, max_len=512)
  state = engine.init_decode_state()
  prefix = engine.prefill(prompt_tokens)         # prompt KV + first token + its logprob
  state = engine.insert(prefix, state, slot=3)   # the request now runs in slot 3
  state, tokens, logprobs = engine.generate_step(state, key)  # one token per active slot
  state = engine.free(state, slot=3)             # the request left; slot 3 is free again

One simulator iteration maps onto the engine as: `prefill` each admitted request (its first
token), `generate_step` once (one more token for every request that was already running),
then `insert` the admitted prefixes, so that every request gains exactly one token per
iteration as the design page says; `free` the slots of requests that completed.

Every function is a jitted pure function of a typed `DecodeState` (a `flax.struct.dataclass`
pytree); `insert`, `generate_step` and `free` donate the state's buffers, so the caller must
use the returned state and never the one passed in.

Choices:
  * Prompts are right-padded to a length bucket (powers of two from 16, and `max_len`
    itself), so `prefill` and `insert` compile once per bucket, not once per prompt length.
    A prompt's KV occupies cache entries 0..P-1 of its slot, and the token fed at a step goes
    to entry `cache_len`: a slot's valid cache region is always the prefix 0..cache_len-1,
    so its attention mask is `arange(max_len) < cache_len` (+ the new entry).
  * Sampling is greedy (argmax) when `temperature == 0` (the default), else a categorical
    draw from `logits / temperature`. The logprob returned is that of the chosen token under
    the model's distribution (`log_softmax` of the unscaled logits), whatever the temperature.
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

from bes.models import opt
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
  """
  k: jnp.ndarray
  v: jnp.ndarray
  length: jnp.ndarray
  token: jnp.ndarray
  logprob: jnp.ndarray


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
  """
  cache: opt.KVCache
  next_token: jnp.ndarray
  position: jnp.ndarray
  cache_len: jnp.ndarray
  active: jnp.ndarray
  generated: jnp.ndarray


def prefill_buckets(max_len: int, min_bucket: int = MIN_BUCKET) -> tuple[int, ...]:
  """Padded prompt lengths (tokens): powers of two from `min_bucket` below max_len, then max_len."""
  buckets, b = [], min_bucket
  while b < max_len:
    buckets.append(b)
    b *= 2
  return tuple(buckets) + (max_len,)


def _sample(logits: jnp.ndarray, key: jnp.ndarray | None,
            temperature: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Tokens int32 [B] and their logprobs float32 [B] from logits float32 [B, V]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    tokens = jax.random.categorical(key, logits.astype(jnp.float32) / temperature, axis=-1)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _prefill(params, tokens, length, key, *, config: OPTConfig, dtype, temperature: float):
  """Prefix of one right-padded prompt: tokens int32 [L], length int32 [] (real tokens)."""
  bucket = tokens.shape[0]
  mask = (jnp.arange(bucket) < length)[None]
  cache = opt.init_cache(config, 1, bucket, dtype)
  logits, cache = opt.forward(params, config, tokens[None], opt.opt_positions(mask), cache,
                              jnp.zeros((1,), jnp.int32), mask)
  last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, axis=0, keepdims=True)
  token, logprob = _sample(last, key, temperature)
  return Prefix(k=cache.k[:, 0], v=cache.v[:, 0], length=length, token=token[0],
                logprob=logprob[0])


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
      generated=state.generated.at[slot].set(1))


def _free(state: DecodeState, slot, *, pad_token_id: int) -> DecodeState:
  """`state` with slot `slot` inactive and its counters reset (its cache is masked, not zeroed)."""
  return state.replace(
      next_token=state.next_token.at[slot].set(pad_token_id),
      position=state.position.at[slot].set(0),
      cache_len=state.cache_len.at[slot].set(0),
      active=state.active.at[slot].set(False),
      generated=state.generated.at[slot].set(0))


def _generate_step(params, state: DecodeState, key, *, config: OPTConfig, temperature: float):
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
                              state.position[:, None], state.cache, index, kv_mask)
  keep = advance[None, :, None, None]
  cache = opt.KVCache(
      k=cache.k.at[:, rows, index].set(jnp.where(keep, cache.k[:, rows, index], old_k)),
      v=cache.v.at[:, rows, index].set(jnp.where(keep, cache.v[:, rows, index], old_v)))
  tokens, logprobs = _sample(logits[:, 0], key, temperature)
  step = advance.astype(jnp.int32)
  new_state = DecodeState(
      cache=cache,
      next_token=jnp.where(advance, tokens, state.next_token),
      position=state.position + step,
      cache_len=state.cache_len + step,
      active=state.active,
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
    temperature: 0 for greedy decoding, > 0 to sample from logits / temperature.
  """

  def __init__(self, params, config: OPTConfig, num_slots: int, max_len: int,
               dtype=jnp.float32, temperature: float = 0.0,
               buckets: Sequence[int] | None = None):
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
    self._prefill = jax.jit(functools.partial(
        _prefill, config=config, dtype=self.dtype, temperature=self.temperature))
    self._insert = jax.jit(_insert, donate_argnums=(1,))
    self._free = jax.jit(functools.partial(_free, pad_token_id=config.pad_token_id),
                         donate_argnums=(0,))
    self._generate = jax.jit(functools.partial(
        _generate_step, config=config, temperature=self.temperature), donate_argnums=(1,))

  def init_decode_state(self) -> DecodeState:
    """All slots free, cache zeroed ([layers, num_slots, max_len, heads, head_dim])."""
    s = self.num_slots
    return DecodeState(
        cache=opt.init_cache(self.config, s, self.max_len, self.dtype),
        next_token=jnp.full((s,), self.config.pad_token_id, jnp.int32),
        position=jnp.zeros((s,), jnp.int32),
        cache_len=jnp.zeros((s,), jnp.int32),
        active=jnp.zeros((s,), bool),
        generated=jnp.zeros((s,), jnp.int32))

  def bucket_for(self, length: int) -> int:
    """The padded length (tokens) a prompt of `length` tokens is prefilled at."""
    return next(b for b in self.buckets if b >= length)

  def prefill(self, tokens: Sequence[int] | np.ndarray | jnp.ndarray,
              key: jnp.ndarray | None = None) -> Prefix:
    """Runs the prompt (int32 [P], 1 <= P < max_len) and samples its first generated token.

    `key` (a PRNG key) is needed only when temperature > 0.
    """
    tokens = np.asarray(tokens).reshape(-1)
    length = tokens.shape[0]
    if not 1 <= length < self.max_len:
      raise ValueError(f"Engine.prefill: prompt length must be in [1, max_len - 1 = "
                       f"{self.max_len - 1}] tokens, got {length}")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"Engine.prefill: tokens must be integers, got dtype {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
      raise ValueError(f"Engine.prefill: token ids must be in [0, {self.config.vocab_size}), "
                       f"got min {tokens.min()} max {tokens.max()}")
    key = self._check_key(key, "prefill")
    padded = np.full((self.bucket_for(length),), self.config.pad_token_id, np.int32)
    padded[:length] = tokens
    return self._prefill(self.params, jnp.asarray(padded), jnp.int32(length), key)

  def insert(self, prefix: Prefix, state: DecodeState, slot: int) -> DecodeState:
    """Places `prefix` in slot `slot` (replacing whatever ran there); donates `state`."""
    return self._insert(prefix, state, jnp.int32(self._check_slot(slot, "insert")))

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
    return self._free(state, jnp.int32(self._check_slot(slot, "free")))

  def _check_slot(self, slot: int, what: str) -> int:
    if not 0 <= int(slot) < self.num_slots:
      raise ValueError(f"Engine.{what}: slot must be in [0, {self.num_slots}), got {slot}")
    return int(slot)

  def _check_key(self, key, what: str):
    if self.temperature > 0.0 and key is None:
      raise ValueError(f"Engine.{what}: a PRNG key is required when temperature > 0")
    return jax.random.key(0) if key is None else key
