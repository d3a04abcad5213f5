"""Log-likelihood of continuations given contexts, as lm-evaluation-harness computes it.

A request is (context tokens, continuation tokens). Its score is the sum over the continuation
tokens of log p(token | everything before it), from one no-cache forward pass over
`(context + continuation)[:-1]` (`bes.models.opt.forward_full`), truncated from the left to the
model's `max_position_embeddings` tokens like the harness does. An empty context is replaced
by the single token `config.eos_token_id` (the harness's prefix token).

Text is tokenised as the harness's `_encode_pair` does (`encode_pair`): whitespace at the end
of the context moves to the front of the continuation, the continuation's tokens are
`encode(context + continuation)[len(encode(context)):]`, and no special tokens (no BOS) are
added.

Requests are scored in batches of a fixed `batch_size` (short batches padded with dummy rows),
each right-padded to a length bucket (powers of two from 16), so the jitted scorer compiles
once per bucket; requests are sorted by length first to limit padding.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bes.models import opt
from bes.models.opt_config import OPTConfig

MIN_BUCKET = 16


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context tokens, continuation tokens) of a text pair, harness-style (see module doc)."""
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    continuation = context[-n_spaces:] + continuation
    context = context[:-n_spaces]
  whole = tokenizer.encode(context + continuation, add_special_tokens=False)
  context_tokens = tokenizer.encode(context, add_special_tokens=False)
  return list(whole[:len(context_tokens)]), list(whole[len(context_tokens):])


def bucket_length(length: int, max_len: int, min_bucket: int = MIN_BUCKET) -> int:
  """Smallest power of two >= length (at least `min_bucket`), capped at `max_len` tokens."""
  b = min_bucket
  while b < length:
    b *= 2
  return min(b, max_len)


def _row(context: Sequence[int], continuation: Sequence[int], config: OPTConfig,
         max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs int32 [n], targets int32 [n]) of one request; the last len(cont) targets are scored."""
  if not continuation:
    raise ValueError("scoring: a continuation must have at least one token")
  whole = (list(context) or [config.eos_token_id]) + list(continuation)
  whole = whole[-(max_len + 1):]
  return np.asarray(whole[:-1], np.int32), np.asarray(whole[1:], np.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def _score_batch(params, tokens, mask, targets, target_mask, *, config: OPTConfig):
  """Sums of target log-probs float32 [B] and whether every target is the argmax bool [B].

  tokens, targets: int32 [B, T]; mask: bool [B, T] real inputs; target_mask: bool [B, T]
  positions whose target is a continuation token.
  """
  logits = opt.forward_full(params, config, tokens, mask)
  logp = jax.nn.log_softmax(logits, axis=-1)
  target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  total = jnp.sum(jnp.where(target_mask, target_logp, 0.0), axis=-1)
  greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | ~target_mask, axis=-1)
  return total, greedy


def loglikelihoods(params, config: OPTConfig, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                   batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Log-likelihood (nats) of each request's continuation given its context.

  Args:
    params: OPT parameters.
    config: their `OPTConfig`.
    requests: (context token ids, continuation token ids) pairs; continuations non-empty.
    batch_size: rows per jitted forward pass.

  Returns:
    (float64 [N] sums of continuation token log-probs, bool [N] whether the continuation is
    the greedy one), in request order.
  """
  if batch_size < 1:
    raise ValueError(f"scoring: batch_size must be >= 1, got {batch_size}")
  max_len = config.max_position_embeddings
  for i, (context, continuation) in enumerate(requests):
    ids = list(context) + list(continuation)
    if ids and (min(ids) < 0 or max(ids) >= config.vocab_size):
      raise ValueError(f"scoring: request {i}: token ids must be in [0, {config.vocab_size})")
  rows = [_row(c, x, config, max_len) + (len(x),) for c, x in requests]
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
  sums = np.zeros(len(rows), np.float64)
  greedy = np.zeros(len(rows), bool)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    width = bucket_length(max(len(rows[i][0]) for i in chunk), max_len)
    tokens = np.full((batch_size, width), config.pad_token_id, np.int32)
    targets = np.zeros((batch_size, width), np.int32)
    mask = np.zeros((batch_size, width), bool)
    target_mask = np.zeros((batch_size, width), bool)
    for r, i in enumerate(chunk):
      inputs, tgt, n_cont = rows[i]
      n = len(inputs)
      tokens[r, :n], targets[r, :n], mask[r, :n] = inputs, tgt, True
      target_mask[r, max(n - n_cont, 0):n] = True
    total, is_greedy = _score_batch(params, tokens, mask, targets, target_mask, config=config)
    total, is_greedy = np.asarray(total), np.asarray(is_greedy)
    for r, i in enumerate(chunk):
      sums[i], greedy[i] = total[r], is_greedy[r]
  return sums, greedy
