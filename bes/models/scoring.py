"""Zero-shot multiple-choice scoring, as lm-evaluation-harness computes it.

`loglikelihoods` scores (context, continuation) token pairs; `load_task`, `requests_for`,
`accuracy` and `evaluate` turn JSONL task files into acc / acc_norm (the format and the
definitions are in `launch/eval_quality.py`, the command-line evaluator).

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

import csv
import functools
import json
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bes import io_util
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


def loglikelihoods(params, config: OPTConfig,
                   requests: Sequence[tuple[Sequence[int], Sequence[int]]],
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


# Zero-shot multiple-choice tasks (JSONL files) and their accuracy.

COLUMNS = ("model", "task", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def _is_ids(x) -> bool:
  return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_example(line: str, where: str) -> dict:
  """One JSONL example, checked; `where` is 'file:line' for the error messages."""
  try:
    ex = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e})") from e
  if not isinstance(ex, dict):
    raise ValueError(f"{where}: expected a JSON object with context, choices, label")
  missing = [k for k in ("context", "choices", "label") if k not in ex]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}")
  context, choices, label = ex["context"], ex["choices"], ex["label"]
  text = isinstance(context, str)
  if not text and not _is_ids(context):
    raise ValueError(f"{where}: field 'context': expected a string or a list of token ids, "
                     f"got {context!r}")
  ok = isinstance(choices, list) and len(choices) >= 2 and all(
      (isinstance(c, str) and c) if text else (_is_ids(c) and c) for c in choices)
  if not ok:
    kind = "non-empty strings" if text else "non-empty token-id lists"
    raise ValueError(f"{where}: field 'choices': expected a list of >= 2 {kind} (the same "
                     f"kind as 'context'), got {choices!r}")
  if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
    raise ValueError(f"{where}: field 'label': expected an integer in [0, {len(choices)}), "
                     f"got {label!r}")
  return {"context": context, "choices": choices, "label": label, "text": text}


def load_task(path: str, limit: int | None = None) -> list[dict]:
  """The examples of a JSONL task file (blank lines skipped)."""
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = f.readlines()
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(path, "task file ")) from None
  except OSError as e:
    raise ValueError(f"task file {path!r}: cannot read: {e}") from e
  examples = [parse_example(line, f"{path}:{i + 1}") for i, line in enumerate(lines)
              if line.strip()]
  if not examples:
    raise ValueError(f"task file {path!r}: expected at least one example, got none")
  return examples[:limit] if limit else examples


def requests_for(examples: list[dict], tokenizer, delimiter: str, source: str):
  """(requests [(context ids, continuation ids)], lengths for acc_norm), choices flattened."""
  requests, lengths = [], []
  for i, ex in enumerate(examples):
    if ex["text"] and tokenizer is None:
      raise ValueError(f"{source}: example {i + 1} is text, but the checkpoint has no tokenizer "
                       "(save one in the checkpoint directory, or give token ids)")
    for choice in ex["choices"]:
      if ex["text"]:
        requests.append(encode_pair(tokenizer, ex["context"], delimiter + choice))
      else:
        requests.append((ex["context"], choice))
      lengths.append(len(choice))
  return requests, lengths


def stderr(p: float, n: int) -> float:
  """Standard error of a mean of n 0/1 outcomes with mean p: sqrt(p(1-p)/(n-1))."""
  return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else math.nan


def accuracy(examples: list[dict], lls: np.ndarray, lengths) -> dict[str, float]:
  """acc, acc_norm and their standard errors from the flattened per-choice log-likelihoods."""
  hits, hits_norm, k = [], [], 0
  for ex in examples:
    n = len(ex["choices"])
    ll, length = np.asarray(lls[k:k + n]), np.asarray(lengths[k:k + n], float)
    hits.append(int(np.argmax(ll)) == ex["label"])
    hits_norm.append(int(np.argmax(ll / length)) == ex["label"])
    k += n
  acc, acc_norm = float(np.mean(hits)), float(np.mean(hits_norm))
  return {"acc": acc, "acc_stderr": stderr(acc, len(hits)),
          "acc_norm": acc_norm, "acc_norm_stderr": stderr(acc_norm, len(hits))}


def parse_tasks(items: Sequence[str] | None) -> list[tuple[str, str]]:
  """['name=path', ...] -> [(name, path), ...]."""
  out = []
  for item in items or []:
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise ValueError(f"--tasks: expected NAME=PATH.jsonl, got {item!r}")
    out.append((name.strip(), path.strip()))
  if not out:
    raise ValueError("--tasks: expected at least one NAME=PATH.jsonl")
  return out


def evaluate(params, config, tokenizer, tasks, batch_size: int, delimiter: str = " ",
             limit: int | None = None) -> dict[str, dict[str, float]]:
  """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr}} over (name, path) task files."""
  results = {}
  for name, path in tasks:
    examples = load_task(path, limit)
    requests, lengths = requests_for(examples, tokenizer, delimiter, path)
    lls, _ = loglikelihoods(params, config, requests, batch_size)
    results[name] = accuracy(examples, lls, lengths)
  return results


def write_csv(path: str, model: str, results: dict[str, dict[str, float]]) -> None:
  """One row per task with the columns of `COLUMNS`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for task, r in results.items():
      writer.writerow([model, task] + [f"{r[c]:.6f}" for c in COLUMNS[2:]])
