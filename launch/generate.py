r"""Generates continuations of a batch of prompts with a local HF-format OPT checkpoint.

  python launch/generate.py --checkpoint=/path/to/opt-125m --prompts=prompts.json \
    --max_new_tokens=32 --greedy --out=out.json
  python launch/generate.py --checkpoint=DIR --prompts=prompts.json --max_new_tokens=32 \
    --nogreedy --temperature=0.8 --top_k=50 --top_p=0.95 --seed=0 --dtype=bfloat16 --out=out.json

`--prompts` is a JSON list of prompts, each a list of token ids, or a string when the
checkpoint directory has a tokenizer. The prompts are left-padded into one batch and decoded
by `bes.models.sampling.generate` (one jitted prefill + `lax.while_loop` decode).

Output JSON: {"tokens": [[...]], "logprobs": [[...]]} per prompt, each cut after its EOS, with
"text" (the decoded continuations) added when the directory has a tokenizer. A logprob is
that of the chosen token under the model's unmodified (temperature 1, untruncated)
distribution.
"""
from __future__ import annotations

import json
import os

from absl import app
from absl import flags

import jax
import jax.numpy as jnp
import numpy as np

from bes import cli_errors, io_util
from bes.models import checkpoint
from bes.models import sampling

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Local HF-format OPT checkpoint directory.")
_PROMPTS = flags.DEFINE_string("prompts", None, "JSON file: a list of token-id lists or strings.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate per prompt (>= 1).")
_GREEDY = flags.DEFINE_bool("greedy", None, "Argmax decoding (the default unless a sampling flag "
                            "--temperature/--top_k/--top_p is given); --nogreedy samples.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k filtering (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Top-p (nucleus) filtering (1.0: off).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for sampling.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
_OUT = flags.DEFINE_string("out", None, "Output JSON path.")


def read_prompts(path: str, tokenizer) -> list[list[int]]:
  """Token-id lists of the prompts in JSON file `path` (strings encoded with `tokenizer`)."""
  if not os.path.isfile(path):
    raise ValueError(f"--prompts: file {path!r} does not exist")
  try:
    with open(path, encoding="utf-8-sig") as f:
      prompts = json.load(f)
  except UnicodeDecodeError:
    raise ValueError(f"--prompts: {io_util.not_utf8_message(path)}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"--prompts: {path} is not valid JSON ({e})") from e
  if not isinstance(prompts, list) or not prompts:
    raise ValueError(f"--prompts: {path} must hold a non-empty JSON list of prompts")
  out = []
  for i, p in enumerate(prompts):
    if isinstance(p, str):
      if tokenizer is None:
        raise ValueError(f"--prompts: prompt {i} of {path} is a string but the checkpoint "
                         "directory has no tokenizer; give token-id lists instead")
      p = tokenizer(p)["input_ids"]
    elif not (isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                          for t in p)):
      raise ValueError(f"--prompts: prompt {i} of {path} must be a string or a list of "
                       f"integer token ids, got {p!r:.80}")
    if not p:
      raise ValueError(f"--prompts: prompt {i} of {path} is empty")
    out.append(list(p))
  return out


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [B, P], mask bool [B, P]): the prompts left-padded to the longest."""
  p = max(len(x) for x in prompts)
  tokens = np.full((len(prompts), p), pad_id, np.int32)
  mask = np.zeros((len(prompts), p), bool)
  for b, x in enumerate(prompts):
    tokens[b, p - len(x):] = x
    mask[b, p - len(x):] = True
  return tokens, mask


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for flag in (_CHECKPOINT, _PROMPTS, _OUT):
    if not flag.value:
      raise ValueError(f"--{flag.name} is required")
  if _MAX_NEW.value < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {_MAX_NEW.value}")
  sampling_flags = [f.name for f in (_TEMPERATURE, _TOP_K, _TOP_P) if f.present]
  if _GREEDY.value and sampling_flags:
    raise ValueError(f"--greedy conflicts with the sampling flag(s) {sampling_flags}")
  greedy = _GREEDY.value if _GREEDY.value is not None else not sampling_flags
  rule = sampling.SamplingConfig(greedy=greedy, temperature=_TEMPERATURE.value,
                                 top_k=_TOP_K.value, top_p=_TOP_P.value)
  if not os.path.isdir(_CHECKPOINT.value):
    raise ValueError(f"--checkpoint: directory {_CHECKPOINT.value!r} does not exist")
  io_util.check_writable_file(_OUT.value, "--out")   # before loading and generating
  tokenizer = checkpoint.load_tokenizer(_CHECKPOINT.value)
  prompts = read_prompts(_PROMPTS.value, tokenizer)
  config, params = checkpoint.load_checkpoint(_CHECKPOINT.value, dtype=jnp.dtype(_DTYPE.value))
  for i, p in enumerate(prompts):
    if bad := [t for t in p if not 0 <= t < config.vocab_size]:
      raise ValueError(f"--prompts: prompt {i} has token ids {bad[:5]} outside the vocabulary "
                       f"[0, {config.vocab_size})")
    if len(p) + _MAX_NEW.value > config.max_position_embeddings:
      raise ValueError(f"--prompts: prompt {i} ({len(p)} tokens) + --max_new_tokens exceeds "
                       f"max_position_embeddings {config.max_position_embeddings}")
  tokens, mask = left_pad(prompts, config.pad_token_id)
  out = sampling.generate(params, config, tokens, mask, jax.random.key(_SEED.value),
                          _MAX_NEW.value, rule)
  lengths = np.asarray(out.lengths)
  result = {
      "tokens": [r[:n].tolist() for r, n in zip(np.asarray(out.tokens), lengths)],
      "logprobs": [r[:n].tolist() for r, n in zip(np.asarray(out.logprobs), lengths)],
  }
  if tokenizer is not None:
    result["text"] = [tokenizer.decode(t, skip_special_tokens=True) for t in result["tokens"]]
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f)
  print(f"wrote {len(prompts)} continuations ({int(lengths.sum())} tokens) to {_OUT.value}")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
