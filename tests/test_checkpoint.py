"""Tests of the HF-format OPT checkpoint loader (`bes.models.checkpoint`)."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bes.models import checkpoint
from bes.models import opt
from tests import opt_testing


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(directory, config, params) of the 'post_proj' model saved as one safetensors file."""
  directory, model = opt_testing.make_hf_checkpoint(tmp_path_factory.mktemp("ref"),
                                                    variant="post_proj")
  config, params = checkpoint.load_checkpoint(directory)
  return directory, model, config, params


def test_config_and_layout(reference):
  _, model, config, params = reference
  assert config.hidden_size == 32 and config.word_embed_proj_dim == 16
  assert not config.do_layer_norm_before and config.projects_embeddings
  assert jax.tree.map(lambda x: tuple(x.shape), params) == opt.param_shapes(config)
  # The fused QKV kernel is [q | k | v] of the transposed torch weights.
  sd = model.state_dict()
  q = sd["model.decoder.layers.1.self_attn.q_proj.weight"].numpy()
  v = sd["model.decoder.layers.1.self_attn.v_proj.weight"].numpy()
  np.testing.assert_array_equal(params["layers"][1]["qkv"]["kernel"][:, :32], q.T)
  np.testing.assert_array_equal(params["layers"][1]["qkv"]["kernel"][:, 64:], v.T)


@pytest.mark.parametrize("safetensors,shards", [(True, 3), (False, 1), (False, 2)],
                         ids=["safetensors-sharded", "bin", "bin-sharded"])
def test_all_formats_load_the_same_params(reference, tmp_path, safetensors, shards):
  _, _, _, params = reference
  directory, _ = opt_testing.make_hf_checkpoint(tmp_path, variant="post_proj",
                                                safetensors=safetensors, shards=shards)
  names = os.listdir(directory)
  files = sum(n.endswith((".safetensors", ".bin")) for n in names)
  assert files == 1 if shards == 1 else files > 1
  _, loaded = checkpoint.load_checkpoint(directory)
  _assert_same_params(loaded, params)


def test_decoder_prefix_without_lm_head(reference, tmp_path):
  directory, model, _, params = reference
  state = {k.removeprefix("model."): v.contiguous() for k, v in model.state_dict().items()
           if k != "lm_head.weight"}
  out = tmp_path / "opt_model"
  out.mkdir()
  save_file(state, str(out / "model.safetensors"))
  (out / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
  _assert_same_params(checkpoint.load_checkpoint(str(out))[1], params)


def test_bfloat16_safetensors_and_dtype(reference, tmp_path):
  directory, model, _, params = reference
  out = tmp_path / "bf16"
  model.to(torch.bfloat16).save_pretrained(str(out))
  model.float()
  _, loaded = checkpoint.load_checkpoint(str(out), dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(loaded))
  _assert_same_params(loaded, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def _rewrite(directory, tmp_path, edit):
  """Copy of the checkpoint whose tensor dict went through `edit`."""
  tensors = checkpoint.read_tensors(directory)
  edit(tensors)
  out = tmp_path / "edited"
  out.mkdir()
  save_file({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
            str(out / "model.safetensors"))
  (out / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
  return str(out)


def test_shape_mismatch_names_tensor_and_shapes(reference, tmp_path):
  directory = reference[0]
  name = "model.decoder.layers.1.fc1.weight"
  bad = _rewrite(directory, tmp_path, lambda t: t.update({name: t[name][:, :-1]}))
  with pytest.raises(ValueError, match=r"layers\.1\.fc1\.weight has shape \(48, 31\), "
                     r"expected \(48, 32\)"):
    checkpoint.load_checkpoint(bad)


def test_missing_and_unexpected_tensors_listed(reference, tmp_path):
  def edit(t):
    del t["model.decoder.layers.0.self_attn.k_proj.bias"]
    t["model.decoder.layers.7.fc1.bias"] = np.zeros(3, np.float32)
  bad = _rewrite(reference[0], tmp_path, edit)
  with pytest.raises(ValueError, match=r"missing: \['model\.decoder\.layers\.0\.self_attn\."
                     r"k_proj\.bias'\]; unexpected: \['model\.decoder\.layers\.7\.fc1\.bias'\]"):
    checkpoint.load_checkpoint(bad)


def test_untied_lm_head_rejected(reference, tmp_path):
  bad = _rewrite(reference[0], tmp_path,
                 lambda t: t.update({"lm_head.weight": t["model.decoder.embed_tokens.weight"] + 1}))
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    checkpoint.load_checkpoint(bad)


def test_bad_directories(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    checkpoint.load_checkpoint(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="no config.json"):
    checkpoint.load_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(opt_testing.hf_config().to_dict()))
  with pytest.raises(ValueError, match="no model.safetensors"):
    checkpoint.load_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json: not valid JSON"):
    checkpoint.load_config(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match="model_type"):
    checkpoint.load_config(str(tmp_path))


def test_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  directory, _ = opt_testing.make_hf_checkpoint(tmp_path, safetensors=False)
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ValueError, match="needs torch"):
    checkpoint.load_checkpoint(directory)


def test_load_tokenizer_none_without_tokenizer_files(reference):
  assert checkpoint.load_tokenizer(reference[0]) is None


def test_on_host_loads_numpy_that_no_device_holds(reference):
  directory, _, _, params = reference
  _, host = checkpoint.load_checkpoint(directory, on_host=True)
  assert all(type(x) is np.ndarray for x in jax.tree.leaves(host))
  _assert_same_params(host, params)
  _, host16 = checkpoint.load_checkpoint(directory, dtype=jnp.bfloat16, on_host=True)
  assert all(type(x) is np.ndarray and x.dtype == jnp.bfloat16 for x in jax.tree.leaves(host16))
  _assert_same_params(host16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
