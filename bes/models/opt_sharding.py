"""Places OPT parameters and KV caches on a device mesh by their logical axes (tensor parallel).

  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, model=4))
  sharded = shard_params(params, config, mesh)     # heads / mlp / vocab split over 'model'
  cache = shard_cache(opt.init_cache(config, 8, 512), mesh)
  logits, cache = opt.forward(sharded, config, ..., cache, ..., mesh=mesh)

Each parameter's logical names (`opt.param_logical_axes`, from the module's metadata) and the
cache's (`opt.CACHE_AXES`) go through `bes.parallel.mesh.LOGICAL_RULES`: 'heads', 'mlp' and
'vocab' onto the 'model' axis, everything else replicated. A decoder layer then runs
Megatron-style: qkv and fc1 split by output columns, out and fc2 by input rows (one
all-reduce each), attention and the cache local to each device's heads.

Choices:
  * The fused qkv kernel and bias are regrouped ([groups = model shards, 3, heads / groups,
    head_dim] columns, `opt` module docstring) so a contiguous shard holds whole heads;
    `unshard_params` undoes it.
  * num_attention_heads and ffn_dim must be divisible by the 'model' axis (an error names the
    field). A vocabulary the axis does not divide is not padded: the tied embedding / LM head
    is then replicated (vocab_size * word_embed_proj_dim values on every device; every
    released OPT's 50272 divides by 2, 4, 8, 16 and 32).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bes.models import opt
from bes.models.opt_config import OPTConfig
from bes.parallel import mesh as mesh_lib


def check_mesh(config: OPTConfig, mesh: Mesh) -> None:
  """Refuses a config whose heads or ffn_dim the mesh's 'model' axis does not divide."""
  shards = mesh_lib.axis_size(mesh, "heads")
  for field in ("num_attention_heads", "ffn_dim"):
    size = getattr(config, field)
    if size % shards:
      raise ValueError(f"OPTConfig.{field}={size} is not divisible by the mesh's 'model' axis "
                       f"({shards} devices)")


def rules(config: OPTConfig, mesh: Mesh) -> tuple:
  """LOGICAL_RULES, with 'vocab' replicated when the 'model' axis does not divide it."""
  if config.vocab_size % mesh_lib.axis_size(mesh, "vocab"):
    return tuple((k, None if k == "vocab" else v) for k, v in mesh_lib.LOGICAL_RULES)
  return mesh_lib.LOGICAL_RULES


def param_shardings(config: OPTConfig, mesh: Mesh) -> dict:
  """NamedSharding of every parameter (the `init_params` structure)."""
  check_mesh(config, mesh)
  table = rules(config, mesh)
  return jax.tree.map(lambda names: mesh_lib.logical_sharding(mesh, names, table),
                      opt.param_logical_axes(config),
                      is_leaf=lambda x: isinstance(x, tuple))


def cache_sharding(mesh: Mesh) -> NamedSharding:
  """NamedSharding of the KV cache's k and v [layers, batch, max_len, heads, head_dim]."""
  return mesh_lib.logical_sharding(mesh, opt.CACHE_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def regroup_qkv(params: opt.Params, config: OPTConfig, groups: int,
                inverse: bool = False) -> opt.Params:
  """params with every layer's qkv columns from Q | K | V ([3, heads, head_dim]) to
  [groups, 3, heads / groups, head_dim] (inverse: back); numpy or jax leaves alike."""
  if groups == 1:
    return params
  n, d = config.num_attention_heads, config.head_dim
  inner = (groups, 3, n // groups, d) if inverse else (3, groups, n // groups, d)

  def regroup(x):
    xp = np if isinstance(x, np.ndarray) else jnp
    lead = x.shape[:-1]
    y = xp.swapaxes(xp.reshape(x, lead + inner), len(lead), len(lead) + 1)
    return xp.reshape(y, lead + (3 * n * d,))

  layers = [dict(p, qkv={k: regroup(v) for k, v in p["qkv"].items()})
            for p in params["layers"]]
  return dict(params, layers=layers)


def shard_params(params: opt.Params, config: OPTConfig, mesh: Mesh) -> opt.Params:
  """`params` (`init_params` layout: numpy, or jax arrays on any devices) placed with
  `jax.device_put` by their logical axes, then their qkv columns regrouped on the mesh (no
  device ever holds more than one layer's whole qkv); the input of `opt.forward(..., mesh)`."""
  shardings = param_shardings(config, mesh)
  placed = jax.device_put(params, shardings)
  groups = opt.qkv_groups(mesh)
  if groups == 1:
    return placed
  qkv = [p["qkv"] for p in placed["layers"]]
  regroup = jax.jit(lambda q: regroup_qkv({"layers": [{"qkv": x} for x in q]}, config, groups),
                    out_shardings={"layers": [{"qkv": p["qkv"]} for p in shardings["layers"]]})
  grouped = regroup(qkv)["layers"]
  return dict(placed, layers=[dict(p, qkv=g["qkv"]) for p, g in zip(placed["layers"], grouped)])


def unshard_params(params: opt.Params, config: OPTConfig, mesh: Mesh) -> opt.Params:
  """The `init_params` layout (numpy arrays on the host) of `shard_params`' output."""
  return regroup_qkv(jax.device_get(params), config, opt.qkv_groups(mesh), inverse=True)


def init_sharded_params(config: OPTConfig, key, mesh: Mesh, dtype=jnp.float32,
                        std: float = 0.02) -> opt.Params:
  """`opt.init_params(config, key, dtype, std)` (the same values) with every leaf placed by
  its logical axes on `mesh` as it is drawn (no device holds the whole model: a large
  random-weight engine); still the `init_params` layout, for `shard_params` or
  `Engine(..., mesh=mesh)`."""
  return opt.init_params(config, key, dtype, std, shardings=param_shardings(config, mesh))


def shard_cache(cache: opt.KVCache, mesh: Mesh) -> opt.KVCache:
  """The cache placed by `opt.CACHE_AXES` (split over its heads on the 'model' axis)."""
  sharding = cache_sharding(mesh)
  return opt.KVCache(k=jax.device_put(cache.k, sharding), v=jax.device_put(cache.v, sharding))


def device_bytes(config: OPTConfig, mesh: Mesh, bytes_per_value: int = 2) -> int:
  """Parameter bytes on one device of `mesh` (the largest shard), from shapes alone."""
  shardings = param_shardings(config, mesh)
  shapes = opt.param_shapes(config)
  total = 0
  for shape, sharding in zip(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)),
                             jax.tree.leaves(shardings)):
    total += int(np.prod(sharding.shard_shape(shape)))
  return total * bytes_per_value
