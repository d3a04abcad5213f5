"""Device meshes and logical-axis sharding rules (in the style of MaxText).

One mesh with three named axes serves every job:

  seed   independent learners trained together (vmapped seeds): no communication
  data   data parallelism: parallel environments, the sampled batch, sweep points, request
         batches; gradients are all-reduced over it
  model  tensor parallelism: a served OPT's heads, MLP and vocabulary

`config.mesh` (`configs/default.py`) gives each axis's size; -1 takes the devices left over,
so the default (`data=-1`) puts every device on the data axis and a 1-device machine runs
unsharded. Arrays name their axes logically ('envs', 'heads', 'mlp', ...) and `LOGICAL_RULES`
maps each logical name onto a mesh axis (or None: replicated), so a layout change is one rule,
not an edit of every array.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("seed", "data", "model")

# logical axis name -> mesh axis (None = replicated). Training state: 'seeds', 'envs', 'batch'.
# Served OPT (bes/models): 'vocab', 'embed', 'heads', 'kv' (head_dim), 'mlp', 'layers',
# 'cache_batch', 'length'.
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("seeds", "seed"),
    ("envs", "data"),
    ("batch", "data"),
    ("points", "data"),
    ("cache_batch", None),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("kv", None),
    ("layers", None),
    ("length", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes (`config.mesh.seed / data / model`); -1 on at most one axis
  takes all remaining devices."""
  seed: int = 1
  data: int = -1
  model: int = 1

  def validate(self, where: str = "config.mesh") -> "MeshConfig":
    sizes = dataclasses.asdict(self)
    for name, size in sizes.items():
      if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
        raise ValueError(f"{where}.{name}: expected an integer >= 1 or -1 (the remaining "
                         f"devices), got {size!r}")
    if sum(size == -1 for size in sizes.values()) > 1:
      raise ValueError(f"{where}: at most one axis may be -1, got {sizes}")
    return self

  @classmethod
  def from_mapping(cls, section: Mapping[str, Any] | None,
                   where: str = "config.mesh") -> "MeshConfig":
    """From a config section (None or missing keys: the defaults); unknown keys are refused."""
    section = dict(section or {})
    unknown = sorted(set(section) - set(MESH_AXES))
    if unknown:
      raise ValueError(f"{where}: unknown key(s) {unknown}; expected {list(MESH_AXES)}")
    values = {}
    for name in MESH_AXES:
      if name in section:
        value = section[name]
        if isinstance(value, float) and value.is_integer():
          value = int(value)
        values[name] = value
    return cls(**values).validate(where)

  def shape(self, num_devices: int, where: str = "config.mesh") -> tuple[int, int, int]:
    """(seed, data, model) sizes for `num_devices` devices, -1 resolved."""
    sizes = [self.seed, self.data, self.model]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % fixed:
        raise ValueError(f"{where}: the fixed axes ({fixed} devices) do not divide the "
                         f"{num_devices} devices")
      sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
      raise ValueError(f"{where}: seed x data x model = {math.prod(sizes)} devices, but "
                       f"{num_devices} are available (use -1 on one axis to take them all)")
    return tuple(sizes)


# Sharding by annotation (GSPMD / Shardy propagation), not in the types ('Explicit' mode).
_AUTO = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None,
              where: str = "config.mesh") -> Mesh:
  """The ('seed', 'data', 'model') mesh over `devices` (default: all devices, of every
  process). Devices are laid out with `jax.make_mesh` when they are all of this run, so
  neighbouring axes get neighbouring (fast-interconnect) devices on TPU/GPU."""
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.shape(len(devices), where)
  if len(devices) == jax.device_count():
    try:
      return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=_AUTO)
    except (TypeError, ValueError):
      pass
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, axis_types=_AUTO)


def logical_spec(names: Sequence[str | None],
                 rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> PartitionSpec:
  """The PartitionSpec of an array whose axes have these logical `names` (None: replicated).
  A mesh axis is used at most once: a later logical axis mapped to an axis already used is
  replicated instead."""
  table = dict(rules)
  used, spec = set(), []
  for name in names:
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    axis = table.get(name) if name is not None else None
    if axis is not None and axis in used:
      axis = None
    if axis is not None:
      used.add(axis)
    spec.append(axis)
  return PartitionSpec(*spec)


def logical_sharding(mesh: Mesh, names: Sequence[str | None],
                     rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> NamedSharding:
  """`NamedSharding` of an array with logical axis `names` on `mesh`."""
  return NamedSharding(mesh, logical_spec(names, rules))


def axis_size(mesh: Mesh, logical: str,
              rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> int:
  """How many shards an array's `logical` axis is cut into on `mesh`."""
  axis = dict(rules).get(logical)
  return 1 if axis is None else mesh.shape[axis]


def check_divides(mesh: Mesh, logical: str, size: int, key: str) -> None:
  """Refuses a config whose `key` (of `size`) is not divisible by its mesh axis."""
  shards = axis_size(mesh, logical)
  if size % shards:
    raise ValueError(f"{key}={size} is not divisible by the mesh's {dict(LOGICAL_RULES)[logical]!r} "
                     f"axis ({shards} devices); choose a multiple or change config.mesh")


def describe(mesh: Mesh) -> str:
  """One line: the mesh's axis sizes and its devices' platform and processes."""
  devices = mesh.devices.ravel()
  processes = sorted({d.process_index for d in devices})
  return (f"mesh {dict(mesh.shape)} over {len(devices)} {devices[0].platform} device(s) in "
          f"{len(processes)} process(es)")


def constrainer(mesh: Mesh | None):
  """`constrain(tree, logical)`: every array of `tree` with its leading axis constrained
  (`jax.lax.with_sharding_constraint`, inside jit) to the mesh axis of logical axis `logical`
  ('batch', 'envs', 'points', ...), the other axes replicated. Arrays whose leading axis the
  mesh axis does not divide are left to the compiler, and with no mesh (or a 1-device axis)
  it changes nothing. Under `vmap(..., spmd_axis_name='seed')` the vmapped axis is sharded
  over 'seed' as well."""
  def constrain(tree, logical: str):
    shards = 1 if mesh is None else axis_size(mesh, logical)
    if shards == 1:
      return tree
    sharding = logical_sharding(mesh, (logical,))

    def one(x):
      if getattr(x, "ndim", 0) < 1 or x.shape[0] % shards:
        return x
      return jax.lax.with_sharding_constraint(x, sharding)
    return jax.tree_util.tree_map(one, tree)
  return constrain


def pad_leading(tree, multiple: int):
  """`tree` with the leading axis of every array padded to a multiple of `multiple` with
  copies of its last entry (so that a mesh axis divides it), and the original length."""
  count = jax.tree_util.tree_leaves(tree)[0].shape[0]
  pad = -count % max(1, multiple)
  if pad:
    tree = jax.tree_util.tree_map(
        lambda x: jax.numpy.concatenate([x, jax.numpy.repeat(x[-1:], pad, axis=0)]), tree)
  return tree, count


def local_mesh() -> Mesh:
  """Every device of this process on the 'data' axis: for work each process repeats on its
  own (evaluations and tuning in a multi-process run, where inputs are host values)."""
  return make_mesh(MeshConfig(seed=1, data=-1, model=1), jax.local_devices())
