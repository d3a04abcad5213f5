"""Loads a local HuggingFace-format OPT checkpoint into `bes.models.opt` params.

Reads `config.json` and the weights from, in this order of preference, `model.safetensors`,
a sharded `model.safetensors.index.json`, `pytorch_model.bin` or a sharded
`pytorch_model.bin.index.json`. Safetensors files are read with numpy (no torch); torch is
imported lazily, and only for `.bin` files. Never touches the hub (`local_files_only`).

Both key prefixes are accepted (`model.decoder.*` from `OPTForCausalLM`, `decoder.*` from
`OPTModel`); `lm_head.weight` may be absent (tied) and, when present, must equal the token
embedding since the model ties them.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from bes.models import opt
from bes.models.opt_config import OPTConfig

_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
# HF per-layer tensor name -> (our group, leaf, transpose).
_LAYER_MAP = {
    "self_attn_layer_norm.weight": ("attn_ln", "scale", False),
    "self_attn_layer_norm.bias": ("attn_ln", "bias", False),
    "self_attn.out_proj.weight": ("out", "kernel", True),
    "self_attn.out_proj.bias": ("out", "bias", False),
    "final_layer_norm.weight": ("mlp_ln", "scale", False),
    "final_layer_norm.bias": ("mlp_ln", "bias", False),
    "fc1.weight": ("fc1", "kernel", True),
    "fc1.bias": ("fc1", "bias", False),
    "fc2.weight": ("fc2", "kernel", True),
    "fc2.bias": ("fc2", "bias", False),
}
_QKV = ("q_proj", "k_proj", "v_proj")


def load_config(directory: str) -> OPTConfig:
  """The `OPTConfig` of `directory/config.json`."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {directory!r}: no config.json found")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  return OPTConfig.from_hf_dict(d, source=path)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(path)


def _read_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"{path}: reading PyTorch .bin checkpoints needs torch "
                     "(pip install torch), or convert the checkpoint to safetensors") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
          for k, v in state.items()}


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint's weight file(s), by HF name, as numpy arrays."""
  if not os.path.isdir(directory):
    raise ValueError(f"checkpoint directory {directory!r} does not exist")
  for name, reader in (("model.safetensors", _read_safetensors),
                       ("pytorch_model.bin", _read_bin)):
    single = os.path.join(directory, name)
    if os.path.isfile(single):
      return reader(single)
    index = single + ".index.json"
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: expected a 'weight_map' object")
      tensors = {}
      for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
          raise ValueError(f"{index}: shard {shard!r} is missing")
        tensors.update(reader(shard_path))
      return tensors
  raise ValueError(f"checkpoint {directory!r}: no model.safetensors, "
                   "model.safetensors.index.json, pytorch_model.bin or "
                   "pytorch_model.bin.index.json found")


def _strip_prefix(name: str) -> str | None:
  for prefix in ("model.decoder.", "decoder."):
    if name.startswith(prefix):
      return name[len(prefix):]
  return None


def convert_tensors(tensors: dict[str, np.ndarray], config: OPTConfig, dtype=jnp.float32,
                    source: str = "checkpoint") -> opt.Params:
  """Maps HF OPT tensors onto the `opt.init_params` layout, checking every shape.

  Raises:
    ValueError naming the tensor, the expected and the found shape on a mismatch, or listing
    the missing / unexpected tensors.
  """
  n = config.num_hidden_layers
  flat: dict[str, np.ndarray] = {}  # our path "a/b" -> array; layer tensors stacked later
  per_layer: dict[tuple[str, str], list] = {}
  qkv: dict[tuple[int, str, str], np.ndarray] = {}
  unexpected, lm_head = [], None
  for name, value in tensors.items():
    if name == "lm_head.weight":
      lm_head = value
      continue
    short = _strip_prefix(name)
    m = _LAYER_RE.match(short) if short else None
    if short in ("embed_tokens.weight", "embed_positions.weight"):
      flat[short.split(".")[0]] = value
    elif short in ("project_in.weight", "project_out.weight"):
      flat[short.split(".")[0]] = value.T
    elif short in ("final_layer_norm.weight", "final_layer_norm.bias"):
      flat["final_ln/" + ("scale" if short.endswith("weight") else "bias")] = value
    elif m and int(m.group(1)) < n and m.group(2) in _LAYER_MAP:
      group, leaf, transpose = _LAYER_MAP[m.group(2)]
      per_layer.setdefault((group, leaf), [None] * n)[int(m.group(1))] = (
          value.T if transpose else value)
    elif m and int(m.group(1)) < n and re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)",
                                                     m.group(2)):
      proj, kind = m.group(2).split(".")[1:]
      qkv[(int(m.group(1)), proj, kind)] = value
    else:
      unexpected.append(name)

  missing = []
  for (group, leaf), values in per_layer.items():
    missing += [f"layers.{i}.{group}.{leaf}" for i, v in enumerate(values) if v is None]
  for i in range(n):
    for proj in _QKV:
      for kind in ("weight", "bias"):
        if (i, proj, kind) not in qkv:
          missing.append(f"decoder.layers.{i}.self_attn.{proj}.{kind}")
  for group, leaf, _ in set(_LAYER_MAP.values()):
    if (group, leaf) not in per_layer:
      missing.append(f"decoder.layers.*.{group}.{leaf}")
  if not missing:
    for kind, leaf, transpose in (("weight", "kernel", True), ("bias", "bias", False)):
      stacked = []
      for i in range(n):
        parts = [qkv[(i, p, kind)] for p in _QKV]
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
          raise ValueError(f"{source}: layer {i} q/k/v_proj.{kind} shapes differ: {shapes}")
        stacked.append(np.concatenate([p.T if transpose else p for p in parts], axis=-1))
      per_layer[("qkv", leaf)] = stacked

  shapes = opt.param_shapes(config)
  expected_paths = jax.tree_util.tree_flatten_with_path(
      shapes, is_leaf=lambda x: isinstance(x, tuple))[0]
  leaves = []
  for path, shape in expected_paths:
    keys = [p.key for p in path]
    if keys[0] == "layers":
      values = per_layer.get((keys[1], keys[2]))
      if values is None or any(v is None for v in values):
        leaves.append(None)
        continue
      for i, v in enumerate(values):
        if v.shape != shape[1:]:
          raise ValueError(f"{source}: tensor layers.{i}.{keys[1]}.{keys[2]} has shape "
                           f"{v.shape}, expected {shape[1:]} for this config")
      leaves.append(np.stack(values))
      continue
    key = "/".join(keys)
    value = flat.pop(key, None)
    if value is None:
      missing.append(key)
      leaves.append(None)
    elif value.shape != shape:
      raise ValueError(f"{source}: tensor {key} has shape {value.shape}, expected {shape} "
                       "for this config")
    else:
      leaves.append(value)
  unexpected += [f"(decoder.){k}" for k in flat]
  if missing or unexpected:
    raise ValueError(f"{source}: tensors do not match the OPT config; missing: {missing}; "
                     f"unexpected: {unexpected}")
  if lm_head is not None:
    embed = shapes["embed_tokens"]
    if lm_head.shape != embed:
      raise ValueError(f"{source}: tensor lm_head.weight has shape {lm_head.shape}, "
                       f"expected {embed}")
  treedef = jax.tree.structure(shapes, is_leaf=lambda x: isinstance(x, tuple))
  return jax.tree.unflatten(treedef, [jnp.asarray(v, dtype) for v in leaves])


def load_checkpoint(directory: str, dtype=jnp.float32) -> tuple[OPTConfig, opt.Params]:
  """(config, params) of the HF-format OPT checkpoint in local `directory`, params in dtype."""
  config = load_config(directory)
  params = convert_tensors(read_tensors(directory), config, dtype, source=directory)
  return config, params


def load_tokenizer(directory: str):
  """The transformers tokenizer saved in `directory`, or None when it holds none."""
  names = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
  if not any(os.path.isfile(os.path.join(directory, n)) for n in names):
    return None
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(directory, local_files_only=True)
