"""Scale-out: device meshes, logical-axis sharding rules and multi-process runs (JAX's own
machinery: `jax.sharding`, `shard_map`, `jax.distributed`)."""
