"""OPT architectures: the named sizes of the family and their arithmetic (pure Python).

Numbers are those of the released facebook/opt-* `config.json` files. Nothing here imports
JAX, so the profile builder (`bes.roofline`) can use it cheaply.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class OPTConfig:
  """One OPT architecture, with HuggingFace's field names.

  `word_embed_proj_dim != hidden_size` (OPT-350M) means token embeddings of that width are
  projected in (`project_in`) and out (`project_out`). `do_layer_norm_before=False`
  (OPT-350M) is post-LayerNorm and has no final LayerNorm.
  """
  vocab_size: int = 50272
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  ffn_dim: int = 3072
  max_position_embeddings: int = 2048
  word_embed_proj_dim: int | None = None
  do_layer_norm_before: bool = True
  enable_bias: bool = True
  layer_norm_elementwise_affine: bool = True
  pad_token_id: int = 1
  bos_token_id: int = 2
  eos_token_id: int = 2
  activation_function: str = "relu"

  def __post_init__(self):
    if self.word_embed_proj_dim is None:
      object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"OPTConfig: hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.activation_function != "relu":
      raise ValueError(f"OPTConfig: activation_function must be 'relu', got {self.activation_function!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def projects_embeddings(self) -> bool:
    return self.word_embed_proj_dim != self.hidden_size

  def num_params(self) -> int:
    """Parameter count, tied output embedding counted once."""
    h, f, v, e = self.hidden_size, self.ffn_dim, self.vocab_size, self.word_embed_proj_dim
    per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
    total = v * e + (self.max_position_embeddings + 2) * h + self.num_hidden_layers * per_layer
    if self.projects_embeddings:
      total += 2 * e * h  # project_in and project_out (no bias)
    if self.do_layer_norm_before:
      total += 2 * h  # final LayerNorm
    return total

  def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
    """KV-cache bytes one token occupies over all layers (keys and values)."""
    return 2 * self.num_hidden_layers * self.hidden_size * bytes_per_value

  def flops_per_token(self, context_len: int = 0) -> float:
    """Forward FLOPs for one token: 2 per weight (matmuls) plus attention over `context_len`."""
    matmul_weights = self.num_hidden_layers * (4 * self.hidden_size**2 + 2 * self.hidden_size * self.ffn_dim)
    matmul_weights += self.vocab_size * self.word_embed_proj_dim  # LM head
    attention = self.num_hidden_layers * 2 * 2 * self.hidden_size * context_len  # QK^T and AV
    return 2.0 * matmul_weights + attention

  def to_hf_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(model_type="opt", architectures=["OPTForCausalLM"])
    return d

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config") -> "OPTConfig":
    """Reads a HuggingFace OPT config.json dict; unknown keys are ignored."""
    if d.get("model_type", "opt") != "opt":
      raise ValueError(f"{source}: field 'model_type' must be 'opt', got {d.get('model_type')!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim")
    missing = [k for k in required if k not in d]
    if missing:
      raise ValueError(f"{source}: missing field(s) {missing} required for an OPT config")
    return cls(**{k: v for k, v in d.items() if k in fields})


def _opt(hidden, layers, heads, ffn, **kw) -> OPTConfig:
  return OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                   ffn_dim=ffn, **kw)


NAMED_CONFIGS: dict[str, OPTConfig] = {
    "opt-125m": _opt(768, 12, 12, 3072),
    "opt-350m": _opt(1024, 24, 16, 4096, word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": _opt(2048, 24, 32, 8192),
    "opt-2.7b": _opt(2560, 32, 32, 10240),
    "opt-6.7b": _opt(4096, 32, 32, 16384),
    "opt-13b": _opt(5120, 40, 40, 20480),
    "opt-30b": _opt(7168, 48, 56, 28672),
    "opt-66b": _opt(9216, 64, 72, 36864),
}


def opt_config(name: str) -> OPTConfig:
  """The named OPT size, e.g. 'opt-125m' (a 'facebook/' prefix is accepted)."""
  key = name.lower().removeprefix("facebook/")
  if key not in NAMED_CONFIGS:
    raise ValueError(f"unknown OPT model {name!r}; known: {sorted(NAMED_CONFIGS)}")
  return NAMED_CONFIGS[key]
