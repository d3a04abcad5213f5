"""Jitted batched generation with the Flax OPT: prefill + `lax.while_loop` decode.

A batch of prompts of different lengths is left-padded to a common length P (pads masked
out), prefilled in one `forward`, then decoded one token per step inside `lax.while_loop`
with static shapes: the KV cache holds P + max_new_tokens slots and every row writes step i's
key/value to slot P + i - 1. Each row stops at its first EOS (which it keeps) or after
`max_new_tokens`; the loop ends when every row has stopped.

Sampling (`SamplingConfig`): greedy (argmax), or a categorical draw from `logits / temperature`
after top-k and then top-p (nucleus) filtering, in HF's order.

Log-probabilities: the one returned for a token is that of the chosen token under the
model's unmodified distribution, `log_softmax(logits)` at temperature 1 without top-k/top-p
truncation (what scoring and quality estimates need), whatever the sampling settings.
"""
from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp

from bes.models import opt
from bes.models.opt_config import OPTConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is chosen (hashable: a static argument under jit).

  Attributes:
    greedy: argmax decoding; the other fields are then ignored.
    temperature: > 0, divides the logits before sampling.
    top_k: keep the k most likely tokens (0 = no top-k).
    top_p: keep the smallest set of most likely tokens whose probability mass is >= top_p
      (1.0 = no top-p).
  """
  greedy: bool = True
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"SamplingConfig: temperature must be > 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig: top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig: top_p must be in (0, 1], got {self.top_p}")


@flax.struct.dataclass
class DecodeState:
  """State of the decode loop (B rows, N = max_new_tokens, S = cache slots).

  Attributes:
    step: int32 [], number of tokens generated so far (per row, counting stopped rows).
    cache: the KV cache, [layers, B, S, heads, head_dim].
    kv_mask: bool [B, S], the attendable cache slots.
    last_token: int32 [B], the token to feed next.
    position: int32 [B], its OPT position (before the +2 offset).
    done: bool [B], the row has emitted EOS.
    tokens: int32 [B, N] generated tokens (pad id after a row stopped).
    logprobs: float32 [B, N] their log-probabilities (0 after a row stopped).
    key: the PRNG key for the next draw.
  """
  step: jnp.ndarray
  cache: opt.KVCache
  kv_mask: jnp.ndarray
  last_token: jnp.ndarray
  position: jnp.ndarray
  done: jnp.ndarray
  tokens: jnp.ndarray
  logprobs: jnp.ndarray
  key: jnp.ndarray


@flax.struct.dataclass
class GenerateOutput:
  """tokens int32 [B, N], logprobs float32 [B, N], lengths int32 [B] (tokens up to and
  including EOS; entries past a row's length are the pad id and 0)."""
  tokens: jnp.ndarray
  logprobs: jnp.ndarray
  lengths: jnp.ndarray


def top_k_mask(logits, k: int):
  """logits [..., V] with all but the k largest per row set to -inf (ties at the kth kept)."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_mask(logits, p: float):
  """logits [..., V] with tokens outside the top-p nucleus set to -inf.

  The nucleus is the smallest prefix of tokens sorted by decreasing probability whose mass is
  >= p; the most likely token is always kept (and tokens tied with the least likely kept).
  """
  sorted_logits = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  cutoff = jnp.min(jnp.where(mass_before < p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def choose(logits, key, sampling: SamplingConfig):
  """Next tokens int32 [B] from float32 logits [B, V]."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / sampling.temperature
  if sampling.top_k:
    logits = top_k_mask(logits, min(sampling.top_k, logits.shape[-1]))
  if sampling.top_p < 1.0:
    logits = top_p_mask(logits, sampling.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _pick(logits, key, sampling):
  """(token int32 [B], its unmodified log-probability float32 [B]) from logits [B, V]."""
  token = choose(logits, key, sampling)
  logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], -1)[:, 0]
  return token, logprob


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "sampling"))
def generate(params: opt.Params, config: OPTConfig, prompts, prompt_mask, key,
             max_new_tokens: int, sampling: SamplingConfig = SamplingConfig()) -> GenerateOutput:
  """Generates up to `max_new_tokens` tokens for each left-padded prompt.

  Args:
    params: OPT parameters (float32 or bfloat16).
    config: the architecture.
    prompts: int32 [B, P] left-padded prompt tokens.
    prompt_mask: bool [B, P], True on real prompt tokens (every row needs at least one).
    key: PRNG key (unused when greedy).
    max_new_tokens: N >= 1.
    sampling: the decoding rule.
  Returns:
    GenerateOutput with tokens/logprobs [B, N] and per-row lengths.
  """
  b, p = prompts.shape
  n = max_new_tokens
  max_len = p + n - 1  # the last generated token is never fed back
  prompt_mask = prompt_mask.astype(bool)
  dtype = params["embed_tokens"].dtype
  kv_mask = jnp.zeros((b, max_len), bool).at[:, :p].set(prompt_mask)
  positions = opt.opt_positions(prompt_mask)
  logits, cache = opt.forward(params, config, prompts, positions,
                              opt.init_cache(config, b, max_len, dtype),
                              jnp.zeros((b,), jnp.int32), kv_mask, last_only=True)
  key, sub = jax.random.split(key)
  token, logprob = _pick(logits[:, -1], sub, sampling)
  pad = jnp.int32(config.pad_token_id)
  state = DecodeState(
      step=jnp.int32(1), cache=cache, kv_mask=kv_mask, last_token=token,
      position=prompt_mask.sum(axis=1).astype(jnp.int32),
      done=token == config.eos_token_id,
      tokens=jnp.full((b, n), pad).at[:, 0].set(token),
      logprobs=jnp.zeros((b, n), jnp.float32).at[:, 0].set(logprob), key=key)

  def cond(s: DecodeState):
    return (s.step < n) & ~jnp.all(s.done)

  def body(s: DecodeState) -> DecodeState:
    slot = p + s.step - 1
    kv_mask = s.kv_mask.at[:, slot].set(True)
    logits, cache = opt.forward(params, config, s.last_token[:, None], s.position[:, None],
                                s.cache, jnp.full((b,), slot, jnp.int32), kv_mask)
    key, sub = jax.random.split(s.key)
    token, logprob = _pick(logits[:, 0], sub, sampling)
    token = jnp.where(s.done, pad, token)
    logprob = jnp.where(s.done, 0.0, logprob)
    return DecodeState(
        step=s.step + 1, cache=cache, kv_mask=kv_mask, last_token=token,
        position=s.position + 1, done=s.done | (token == config.eos_token_id),
        tokens=s.tokens.at[:, s.step].set(token),
        logprobs=s.logprobs.at[:, s.step].set(logprob), key=key)

  state = jax.lax.while_loop(cond, body, state) if n > 1 else state
  is_eos = state.tokens == config.eos_token_id
  first_eos = jnp.argmax(is_eos, axis=1)
  lengths = jnp.where(is_eos.any(axis=1), first_eos + 1, n).astype(jnp.int32)
  return GenerateOutput(tokens=state.tokens, logprobs=state.logprobs, lengths=lengths)
