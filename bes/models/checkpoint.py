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

import jax
import jax.numpy as jnp
import numpy as np

from bes import io_util
from bes.models import opt
from bes.models.opt_config import OPTConfig

_PREFIXES = ("model.decoder.", "decoder.")
# Our per-layer leaf -> (HF tensor name under layers.{i}., transpose).
_LAYER_LEAVES = {
    ("attn_ln", "scale"): ("self_attn_layer_norm.weight", False),
    ("attn_ln", "bias"): ("self_attn_layer_norm.bias", False),
    ("out", "kernel"): ("self_attn.out_proj.weight", True),
    ("out", "bias"): ("self_attn.out_proj.bias", False),
    ("mlp_ln", "scale"): ("final_layer_norm.weight", False),
    ("mlp_ln", "bias"): ("final_layer_norm.bias", False),
    ("fc1", "kernel"): ("fc1.weight", True),
    ("fc1", "bias"): ("fc1.bias", False),
    ("fc2", "kernel"): ("fc2.weight", True),
    ("fc2", "bias"): ("fc2.bias", False),
}


def hf_shapes(config: OPTConfig) -> dict[str, tuple[int, ...]]:
  """Shape of every HF OPT decoder tensor (names without the 'model.decoder.' prefix)."""
  h, f, v, e = config.hidden_size, config.ffn_dim, config.vocab_size, config.word_embed_proj_dim
  shapes = {"embed_tokens.weight": (v, e),
            "embed_positions.weight": (config.max_position_embeddings + opt.POSITION_OFFSET, h)}
  if config.projects_embeddings:
    shapes.update({"project_in.weight": (h, e), "project_out.weight": (e, h)})
  if config.do_layer_norm_before:
    shapes.update({"final_layer_norm.weight": (h,), "final_layer_norm.bias": (h,)})
  per_layer = {f"self_attn.{p}_proj.{kind}": (h, h) if kind == "weight" else (h,)
               for p in ("q", "k", "v", "out") for kind in ("weight", "bias")}
  per_layer.update({"self_attn_layer_norm.weight": (h,), "self_attn_layer_norm.bias": (h,),
                    "final_layer_norm.weight": (h,), "final_layer_norm.bias": (h,),
                    "fc1.weight": (f, h), "fc1.bias": (f,), "fc2.weight": (h, f),
                    "fc2.bias": (h,)})
  for i in range(config.num_hidden_layers):
    shapes.update({f"layers.{i}.{k}": s for k, s in per_layer.items()})
  return shapes


def load_config(directory: str) -> OPTConfig:
  """The `OPTConfig` of `directory/config.json`."""
  if not os.path.isdir(directory):
    raise ValueError(f"checkpoint directory {directory!r} does not exist")
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {directory!r}: no config.json found")
  return OPTConfig.from_hf_dict(_read_json(path), source=path)


def _read_json(path: str):
  """The JSON value of file `path` (UTF-8, BOM allowed); ValueError naming it otherwise."""
  try:
    with open(path, encoding="utf-8-sig") as f:
      return json.load(f)
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(path)) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  # framework="flax" (not "numpy") so bfloat16 tensors read too (as ml_dtypes bfloat16).
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework="flax") as f:
      return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError is not exported)
    raise ValueError(f"{path}: expected a complete safetensors file, cannot read it "
                     f"({type(e).__name__}: {e}); truncated or still downloading?") from None


def _read_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"{path}: reading PyTorch .bin checkpoints needs torch "
                     "(pip install torch), or convert the checkpoint to safetensors") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many types)
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise ValueError(f"{path}: expected a complete PyTorch checkpoint, cannot read it "
                     f"({type(e).__name__}: {first}); truncated or still downloading?") from None
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
      loaded = _read_json(index)
      weight_map = loaded.get("weight_map") if isinstance(loaded, dict) else None
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
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      return name[len(prefix):]
  return None


def convert_tensors(tensors: dict[str, np.ndarray], config: OPTConfig, dtype=jnp.float32,
                    source: str = "checkpoint", on_host: bool = False) -> opt.Params:
  """Maps HF OPT tensors (by HF name) onto the `opt.init_params` layout: jax arrays on the
  default device, or (`on_host`) numpy arrays in `dtype` that no device holds yet.

  Raises:
    ValueError naming the tensor, the expected and the found shape on a mismatch; listing the
    missing and unexpected tensors; or when `lm_head.weight` is not the tied token embedding.
  """
  if not (config.enable_bias and config.layer_norm_elementwise_affine):
    raise ValueError(f"{source}: OPT configs with enable_bias=False or "
                     "layer_norm_elementwise_affine=False are not supported")
  expected = hf_shapes(config)
  found, unexpected, lm_head = {}, [], None
  for name, value in tensors.items():
    short = _strip_prefix(name)
    if name == "lm_head.weight":
      lm_head = value
    elif short in expected and short not in found:
      found[short] = value
    else:
      unexpected.append(name)
  missing = ["model.decoder." + k for k in expected if k not in found]
  if missing or unexpected:
    raise ValueError(f"{source}: tensors do not match the OPT config; missing: {missing}; "
                     f"unexpected: {unexpected}")
  for short, shape in expected.items():
    if found[short].shape != shape:
      raise ValueError(f"{source}: tensor model.decoder.{short} has shape "
                       f"{tuple(found[short].shape)}, expected {shape} for this config")
  if lm_head is not None:
    embed = found["embed_tokens.weight"]
    if lm_head.shape != embed.shape:
      raise ValueError(f"{source}: tensor lm_head.weight has shape {tuple(lm_head.shape)}, "
                       f"expected {embed.shape}")
    if not np.array_equal(lm_head, embed):
      raise ValueError(f"{source}: lm_head.weight differs from model.decoder.embed_tokens."
                       "weight; only the tied output embedding of OPT is supported")

  layers = []
  for i in range(config.num_hidden_layers):
    get = lambda k, i=i: found[f"layers.{i}.{k}"]
    p = {}
    for (group, leaf), (name, transpose) in _LAYER_LEAVES.items():
      p.setdefault(group, {})[leaf] = get(name).T if transpose else get(name)
    p["qkv"] = {
        "kernel": np.concatenate([get(f"self_attn.{x}_proj.weight").T for x in "qkv"], axis=-1),
        "bias": np.concatenate([get(f"self_attn.{x}_proj.bias") for x in "qkv"]),
    }
    layers.append(p)
  params = {"embed_tokens": found["embed_tokens.weight"],
            "embed_positions": found["embed_positions.weight"], "layers": layers}
  if config.projects_embeddings:
    params["project_in"] = found["project_in.weight"].T
    params["project_out"] = found["project_out.weight"].T
  if config.do_layer_norm_before:
    params["final_ln"] = {"scale": found["final_layer_norm.weight"],
                          "bias": found["final_layer_norm.bias"]}
  if on_host:
    params = jax.tree.map(lambda x: np.asarray(x, dtype=jnp.dtype(dtype)), params)
  else:
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  want = opt.param_shapes(config)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  want["layers"] = list(want["layers"])
  assert got == want, (got, want)  # internal consistency of the two layouts
  return params


def load_checkpoint(directory: str, dtype=jnp.float32,
                    on_host: bool = False) -> tuple[OPTConfig, opt.Params]:
  """(config, params) of the HF-format OPT checkpoint in local `directory`, params in dtype.
  `on_host`: numpy arrays in host memory, for `opt_sharding.shard_params` to place shard by
  shard (a model larger than one device's memory never lands whole on one device)."""
  config = load_config(directory)
  params = convert_tensors(read_tensors(directory), config, dtype, source=directory,
                           on_host=on_host)
  return config, params


def load_tokenizer(directory: str):
  """The transformers tokenizer saved in `directory`, or None when it holds none."""
  names = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
  if not any(os.path.isfile(os.path.join(directory, n)) for n in names):
    return None
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(directory, local_files_only=True)
