"""OPT's logical axes and tensor-parallel sharding (bes.models.opt_sharding, Engine(mesh=...)).

The multi-device cases run in a child with 8 forced CPU devices (tests/multidevice.py): a
sharded forward (model axis 8, and data 2 x model 4) equals the unsharded logits, full and
cached decode steps, and a sharded Engine generates the unsharded engine's greedy tokens.
"""
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from bes.models import opt, opt_sharding
from bes.models.opt_config import OPTConfig, opt_config
from bes.parallel import mesh as mesh_lib
from tests.multidevice import run_on_devices

_IS_NAMES = lambda x: isinstance(x, tuple) and all(isinstance(n, str) for n in x)
_IS_SHAPE = lambda x: isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def _abstract_mesh(model: int, data: int = 1) -> AbstractMesh:
  return AbstractMesh((1, data, model), mesh_lib.MESH_AXES)


@pytest.mark.parametrize("name", ["opt-125m", "opt-350m"])
def test_every_param_has_logical_axes(name):
  config = opt_config(name)
  axes = opt.param_logical_axes(config)
  shapes = opt.param_shapes(config)
  flat_axes, tree_axes = jax.tree.flatten(axes, is_leaf=_IS_NAMES)
  flat_shapes, tree_shapes = jax.tree.flatten(shapes, is_leaf=_IS_SHAPE)
  assert tree_axes == tree_shapes
  rules = dict(mesh_lib.LOGICAL_RULES)
  for names, shape in zip(flat_axes, flat_shapes):
    assert len(names) == len(shape) and all(n in rules for n in names), (names, shape)
  layer = axes["layers"][0]
  assert layer["qkv"]["kernel"] == ("embed", "heads")
  assert layer["out"]["kernel"] == ("heads", "embed")
  assert layer["fc1"]["kernel"] == ("embed", "mlp") and axes["embed_tokens"] == ("vocab", "embed")
  assert opt.CACHE_AXES == ("layers", "cache_batch", "length", "heads", "kv")


def test_init_params_is_a_plain_dict_of_the_module():
  config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     ffn_dim=32, max_position_embeddings=32)
  params = opt.init_params(config, jax.random.key(0), std=0.5)
  assert type(params) is dict and type(params["layers"]) is list
  assert jax.tree.map(lambda x: tuple(x.shape), params) == opt.param_shapes(config)
  assert np.all(np.asarray(params["layers"][1]["attn_ln"]["scale"]) == 1)
  assert 0.3 < float(np.std(np.asarray(params["embed_tokens"]))) < 0.7
  assert set(opt.to_flax(params)) >= {"layers_0", "layers_1", "embed_tokens"}
  assert opt.from_flax(opt.to_flax(params), config)["layers"][1] is params["layers"][1]


def test_regroup_qkv_round_trip_and_layout():
  config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                     ffn_dim=32, max_position_embeddings=32)
  params = jax.device_get(opt.init_params(config, jax.random.key(0)))
  grouped = opt_sharding.regroup_qkv(params, config, groups=2)
  back = opt_sharding.regroup_qkv(grouped, config, groups=2, inverse=True)
  np.testing.assert_array_equal(back["layers"][0]["qkv"]["kernel"],
                                params["layers"][0]["qkv"]["kernel"])
  # Grouped columns [group, Q|K|V, heads/group, head_dim]: group 1's K is head 2-3's K.
  bias = params["layers"][0]["qkv"]["bias"].reshape(3, 4, 4)  # [Q|K|V, head, head_dim]
  got = grouped["layers"][0]["qkv"]["bias"].reshape(2, 3, 2, 4)
  np.testing.assert_array_equal(got[1, 1], bias[1, 2:4])


def test_mesh_divisibility_errors_name_the_field():
  with pytest.raises(ValueError, match=r"OPTConfig.num_attention_heads=12 .* 'model' axis \(8 "):
    opt_sharding.check_mesh(opt_config("opt-125m"), _abstract_mesh(8))
  config = OPTConfig(vocab_size=64, hidden_size=16, num_attention_heads=4, ffn_dim=30)
  with pytest.raises(ValueError, match=r"OPTConfig.ffn_dim=30 .* \(4 devices\)"):
    opt_sharding.check_mesh(config, _abstract_mesh(4))
  # A vocabulary the axis does not divide is replicated, not refused.
  rules = dict(opt_sharding.rules(OPTConfig(vocab_size=50, hidden_size=16, num_attention_heads=4,
                                            ffn_dim=32), _abstract_mesh(4)))
  assert rules["vocab"] is None and rules["heads"] == "model"


def test_device_bytes_large_models():
  """Weights per device (bf16) of the large served OPTs: 13B on 2, 30B on 4, 66B on 8."""
  for name, model, most_gib in [("opt-13b", 2, 12.5), ("opt-30b", 4, 14.5), ("opt-66b", 8, 16.5)]:
    config = opt_config(name)
    per_device = opt_sharding.device_bytes(config, _abstract_mesh(model))
    total = 2 * config.num_params()
    assert total / model <= per_device < 1.01 * total / model + 2 * 2**30, name
    assert per_device / 2**30 < most_gib, (name, per_device / 2**30)


_FORWARD = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from bes.models import opt, opt_sharding
    from bes.models.opt_config import OPTConfig
    from bes.parallel import mesh as mesh_lib
    cfg = OPTConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                    ffn_dim=128, max_position_embeddings=64)
    params = opt.init_params(cfg, jax.random.key(0), std=0.3)
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, 96)
    mask = jnp.ones((4, 12), bool).at[0, :3].set(False)

    def decode(params, mesh):
      # Prefill 12 tokens into a 16-slot cache, then 3 single-token steps.
      cache = opt.init_cache(cfg, 4, 16)
      if mesh is not None:
        cache = opt_sharding.shard_cache(cache, mesh)
      kv = jnp.zeros((4, 16), bool).at[:, :12].set(mask)
      step = jax.jit(lambda p, t, pos, c, i, m: opt.forward(p, cfg, t, pos, c, i, m, mesh=mesh))
      logits, cache = step(params, tokens, opt.opt_positions(mask), cache,
                           jnp.zeros((4,), jnp.int32), kv)
      out, last = [logits], jnp.argmax(logits[:, -1], -1)
      pos = mask.sum(1).astype(jnp.int32)
      for i in range(3):
        kv = kv.at[:, 12 + i].set(True)
        logits, cache = step(params, last[:, None], pos[:, None] + i, cache,
                             jnp.full((4,), 12 + i, jnp.int32), kv)
        out.append(logits)
        last = jnp.argmax(logits[:, 0], -1)
      return [np.asarray(x) for x in out], cache

    spec = lambda a: list(a.sharding.spec) + [None] * (a.ndim - len(a.sharding.spec))
    full = jax.jit(lambda p, t, m, mesh=None: opt.forward_full(p, cfg, t, m, mesh=mesh),
                   static_argnames="mesh")
    ref_full = np.asarray(full(params, tokens, mask))
    ref_steps, _ = decode(params, None)
    result = {}
    for shape in [(1, 1, 8), (1, 2, 4)]:
      mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(*shape))
      sharded = opt_sharding.shard_params(params, cfg, mesh)
      got = full(sharded, tokens, mask, mesh=mesh)
      steps, cache = decode(sharded, mesh)
      result[str(shape)] = dict(
          full=float(np.abs(np.asarray(got) - ref_full).max()),
          steps=max(float(np.abs(a - b).max()) for a, b in zip(steps, ref_steps)),
          qkv_spec=spec(sharded["layers"][0]["qkv"]["kernel"]),
          embed_spec=spec(sharded["embed_tokens"]), cache_spec=spec(cache.k),
          shard_rows=int(sharded["layers"][0]["fc2"]["kernel"].addressable_shards[0].data.shape[0]),
          round_trip=all(jax.tree.leaves(jax.tree.map(
              lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
              opt_sharding.unshard_params(sharded, cfg, mesh), params))))
    print(json.dumps(result))
""")


def test_sharded_forward_equals_unsharded():
  result = run_on_devices(8, _FORWARD, timeout=180)
  for shape, r in result.items():
    assert r["full"] < 1e-4 and r["steps"] < 1e-4, (shape, r)
    assert r["round_trip"], shape
    assert r["qkv_spec"] == [None, "model"] and r["embed_spec"] == ["model", None], r
    assert r["cache_spec"] == [None, None, None, "model", None], r
  assert result["(1, 1, 8)"]["shard_rows"] == 128 // 8
  assert result["(1, 2, 4)"]["shard_rows"] == 128 // 4


_ENGINE = textwrap.dedent("""
    import json
    import jax, numpy as np
    from bes.models import engine, opt, opt_sharding
    from bes.models.opt_config import OPTConfig
    from bes.parallel import mesh as mesh_lib
    # vocab 100: not divisible by 8, so the embedding / LM head is replicated.
    cfg = OPTConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                    ffn_dim=128, max_position_embeddings=64)
    params = opt.init_params(cfg, jax.random.key(0), std=0.3)

    def run(mesh):
      eng = engine.Engine(params, cfg, num_slots=4, max_len=32, mesh=mesh, buckets=(16, 32))
      state = eng.init_decode_state()
      prefix = eng.prefill_batch([[5, 6, 7], [8, 9, 10, 11, 12], [40]])
      state = eng.insert_batch(prefix, state, [0, 1, 2])
      one = eng.prefill([3, 4, 50, 51])
      state = eng.insert(one, state, 3)
      tokens, logprobs = [np.asarray(prefix.token).tolist(), int(one.token)], []
      for i in range(5):
        state, tok, lp = eng.generate_step(state)
        tokens.append(np.asarray(tok).tolist())
        logprobs.append(np.asarray(lp))
        if i == 1:
          state = eng.free(state, 1)
      return tokens, np.stack(logprobs), state, eng

    spec = lambda a: list(a.sharding.spec) + [None] * (a.ndim - len(a.sharding.spec))
    want, want_lp, _, _ = run(None)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, model=8))
    got, got_lp, state, eng = run(mesh)
    print(json.dumps(dict(want=want, got=got, lp=float(np.abs(want_lp - got_lp).max()),
                          cache_spec=spec(state.cache.k),
                          embed_spec=spec(eng.params["embed_tokens"]),
                          compiles=eng._generate._cache_size())))
""")


def test_sharded_engine_generates_the_same_greedy_tokens():
  r = run_on_devices(8, _ENGINE, timeout=180)
  assert r["got"] == r["want"] and r["lp"] < 1e-4, r
  assert r["cache_spec"] == [None, None, None, "model", None]
  assert r["embed_spec"] == [None, None]            # vocab 100 % 8: replicated
  assert r["compiles"] == 1                         # the state keeps its sharding


def test_decode_loop_copies_no_weights():
  """The optimized HLO of `sampling.generate` holds no copy of a weight anywhere, and copies
  the whole [layers, B, S, heads, head_dim] cache only in the entry computation (the loop's
  initial value), never per step (layers unrolled over per-layer arrays; opt docstring)."""
  import re  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from bes.models import sampling  # pylint: disable=import-outside-toplevel
  config = OPTConfig(vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                     ffn_dim=80, max_position_embeddings=64)
  params = opt.abstract_params(config)
  prompts = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  mask = jax.ShapeDtypeStruct((2, 8), bool)
  hlo = sampling.generate.lower(params, config, prompts, mask, jax.random.key(0),
                                6).compile().as_text()
  assert re.search(r"while\(", hlo)
  weights = {",".join(map(str, x.shape)) for x in jax.tree.leaves(params) if x.ndim == 2}
  cache = "2,2,13,4,12"          # [layers, B, 8 prompt + 6 new - 1 slots, heads, head_dim]
  assert f"f32[{cache}]" in hlo
  computation, bad, cache_copies = None, [], 0
  for line in hlo.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      computation = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
    m = re.search(r"= f32\[([\d,]+)\]\S* copy\(", line)
    if m and (m.group(1) in weights or (m.group(1) == cache and computation != "ENTRY")):
      bad.append(f"{computation}: {line.strip()}")
    cache_copies += bool(m) and m.group(1) == cache
  assert not bad, bad
  assert cache_copies <= 2                    # k and v, once per call


_HOST_CHECKPOINT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from bes.models import checkpoint, opt, opt_sharding
    from bes.parallel import mesh as mesh_lib
    cfg, host = checkpoint.load_checkpoint(sys.argv[1], on_host=True)
    _, ref = checkpoint.load_checkpoint(sys.argv[1])
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(1, 1, 4))
    sharded = opt_sharding.shard_params(host, cfg, mesh)
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, cfg.vocab_size)
    mask = jnp.ones((2, 10), bool)
    want = np.asarray(jax.jit(lambda p: opt.forward_full(p, cfg, tokens, mask))(ref))
    got = np.asarray(jax.jit(lambda p: opt.forward_full(p, cfg, tokens, mask, mesh=mesh))(sharded))
    fc1 = sharded["layers"][0]["fc1"]["kernel"]
    print(json.dumps(dict(diff=float(np.abs(got - want).max()), full=list(fc1.shape),
                          shard=list(fc1.addressable_shards[0].data.shape),
                          devices=len(fc1.sharding.device_set))))
""")


@pytest.mark.slow
def test_checkpoint_loaded_on_host_is_sharded_as_loaded(tmp_path):
  """A real (tiny HF) checkpoint read into host memory, placed shard by shard on 4 devices:
  the same logits as the checkpoint loaded whole on one device."""
  from tests import opt_testing   # pylint: disable=import-outside-toplevel
  directory, _ = opt_testing.make_hf_checkpoint(tmp_path, variant="pre")
  out = run_on_devices(4, _HOST_CHECKPOINT.replace("sys.argv[1]", repr(str(directory))))
  assert out["diff"] < 1e-5
  assert out["devices"] == 4 and out["full"] == [32, 64] and out["shard"] == [32, 16]
