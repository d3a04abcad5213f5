"""Flax linen building blocks whose parameters carry logical axis names (MaxText style).

`param_init(kind, names, dtype)` wraps an initializer in `nn.with_logical_partitioning`, so
a module's `init` returns `nn.LogicallyPartitioned` boxes (read with `nn.get_partition_spec`;
`nn.unbox` for plain arrays) and `apply` takes plain arrays. `constrain` pins an activation
to its logical sharding on a mesh (bes.parallel.mesh.LOGICAL_RULES). Used by bes/models/opt.py.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bes.parallel import mesh as mesh_lib

LAYER_NORM_EPS = 1e-5


def constrain(x, names, mesh: Mesh | None):
  """`with_sharding_constraint` of x to its logical axis `names` on `mesh` (no-op without
  one); an axis whose size its mesh axis does not divide is left replicated."""
  if mesh is None:
    return x
  spec = mesh_lib.logical_spec(names)
  spec = PartitionSpec(*(a if a is None or dim % mesh.shape[a] == 0 else None
                         for a, dim in zip(spec, x.shape)))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_init(kind: str, names: tuple, dtype, std: float = 0.02):
  """An initializer (HF's OPT init: normal(0, std) drawn in float32, zeros, ones) carrying
  the logical axis `names`."""
  def fn(key, shape):
    if kind == "ones":
      return jnp.ones(shape, dtype)
    if kind == "zeros":
      return jnp.zeros(shape, dtype)
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return nn.with_logical_partitioning(fn, names)


class LayerNorm(nn.Module):
  """LayerNorm over the last ('embed') axis with float32 statistics; returns x's dtype.
  Params: scale, bias [features]."""
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.shape[-1]
    scale = self.param("scale", param_init("ones", ("embed",), self.param_dtype), (h,))
    bias = self.param("bias", param_init("zeros", ("embed",), self.param_dtype), (h,))
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Dense(nn.Module):
  """x [..., in] @ kernel [in, features] + bias [features] in the param dtype; `axes` are the
  kernel's logical names (the bias takes the second)."""
  features: int
  axes: tuple[str, str]
  param_dtype: Any = jnp.float32
  std: float = 0.02

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", param_init("normal", self.axes, self.param_dtype, self.std),
                        (x.shape[-1], self.features))
    bias = self.param("bias", param_init("zeros", self.axes[1:], self.param_dtype),
                      (self.features,))
    return jnp.einsum("...i,io->...o", x, kernel) + bias
