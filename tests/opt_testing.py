"""Shared test helpers: tiny random transformers OPT models saved as local HF checkpoints.

`make_hf_checkpoint(tmp_path, variant=...)` builds a random `transformers.OPTForCausalLM`
and writes it with `save_pretrained` (safetensors, optionally sharded) or as PyTorch `.bin`
file(s), so `bes.models.checkpoint.load_checkpoint` can be tested against the real thing.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers

# Tiny shapes: vocab 96, 2 layers. 'pre' is OPT-125M-like (pre-LayerNorm), 'post_proj' is
# OPT-350M-like (post-LayerNorm, word_embed_proj_dim != hidden_size, no final LayerNorm).
VARIANTS = {
    "pre": dict(hidden_size=32, num_attention_heads=4, ffn_dim=64, num_hidden_layers=2,
                word_embed_proj_dim=32, do_layer_norm_before=True),
    "post_proj": dict(hidden_size=32, num_attention_heads=4, ffn_dim=48, num_hidden_layers=2,
                      word_embed_proj_dim=16, do_layer_norm_before=False),
}
VOCAB = 96
MAX_POSITIONS = 64


def hf_config(variant: str = "pre", std: float = 0.2) -> transformers.OPTConfig:
  """The transformers OPTConfig of a tiny test variant."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
  return transformers.OPTConfig(vocab_size=VOCAB, max_position_embeddings=MAX_POSITIONS,
                                init_std=std, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                                dropout=0.0, attention_dropout=0.0, **VARIANTS[variant])


def make_hf_model(variant: str = "pre", std: float = 0.2, seed: int = 0):
  """A random float32 `OPTForCausalLM` in eval mode; biases and LayerNorms randomised too,
  so that every parameter matters in a comparison."""
  torch.manual_seed(seed)
  model = transformers.OPTForCausalLM(hf_config(variant, std)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, std)
      elif "layer_norm.weight" in name:
        p.normal_(1.0, 0.1)
  return model


def _save_bin(model, directory: str, shards: int):
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if shards == 1:
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    return
  names = sorted(state)
  weight_map = {}
  for i, chunk in enumerate(np.array_split(np.array(names, dtype=object), shards)):
    fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
    torch.save({k: state[k] for k in chunk}, os.path.join(directory, fname))
    weight_map.update({k: fname for k in chunk})
  with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


def make_hf_checkpoint(tmp_path, variant: str = "pre", std: float = 0.2,
                       safetensors: bool = True, shards: int = 1, seed: int = 0):
  """Saves a random tiny OPT to `tmp_path/<variant>-...`; returns (directory, hf_model).

  Args:
    tmp_path: a directory (pytest's tmp_path).
    variant: 'pre' (pre-LayerNorm) or 'post_proj' (post-LayerNorm with embedding projections).
    std: init std of the weights (and of the randomised biases).
    safetensors: save with `save_pretrained` (safetensors) or as PyTorch `.bin` file(s).
    shards: number of weight files (> 1 writes a sharded checkpoint with an index).
    seed: torch seed.
  """
  model = make_hf_model(variant, std, seed)
  directory = os.path.join(str(tmp_path), f"{variant}-{'st' if safetensors else 'bin'}"
                           f"-{shards}-{seed}")
  os.makedirs(directory, exist_ok=True)
  if safetensors:
    if shards == 1:
      model.save_pretrained(directory)
    else:
      total = sum(p.numel() * p.element_size() for p in model.parameters())
      model.save_pretrained(directory, max_shard_size=max(1, total // shards + 1))
  else:
    model.config.save_pretrained(directory)
    _save_bin(model, directory, shards)
  return directory, model


def save_word_tokenizer(directory: str, vocab_size: int = VOCAB):
  """Saves a whitespace word-level tokenizer ('<s>'=0, '<pad>'=1, '</s>'=2, '<unk>'=3,
  'w4'..'w{vocab_size-1}') to `directory`, as a transformers fast tokenizer; returns it."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
  vocab.update({f"w{i}": i for i in range(4, vocab_size)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              pad_token="<pad>", eos_token="</s>",
                                              unk_token="<unk>")
  fast.save_pretrained(directory)
  return fast
