"""Per-host plans of a job, computed without touching an accelerator (the launchers' `--dry_run`).

The pod comes from the config's optional `config.pod` section (the configs of `configs/pod/`):

  pod.platform           'tpu' | 'gpu' | 'cpu'
  pod.device_kind        e.g. 'TPU v5p', 'H100 80GB' (printed only)
  pod.num_hosts          hosts (JAX processes, one per host)
  pod.devices_per_host   accelerators per host (JAX devices: TPU chips, GPUs)
  pod.hbm_gib_per_device memory per device in GiB (2^30 bytes); 0 = unknown (no check)

Without it, the plan is for this machine's devices (`jax.devices()`, one host), so a plan
never needs the pod itself. Devices are numbered host by host (host h holds devices
h * devices_per_host ...) and laid onto the (seed, data, model) mesh in row-major order,
as `bes.parallel.mesh.make_mesh` does with `jax.devices()` (process-major).

`train_plan(config)`: the mesh shape (`config.mesh` over every device), what each host holds
(seeds on the 'seed' axis, parallel environments on 'data'), the per-device batch
(`dqn.batch_size / data`) and environments (`dqn.num_envs / data`), and the memory per device
of the learner state from `jax.eval_shape` of the vmapped learner init (exact bytes of every
leaf, nothing compiled or allocated): a leaf's leading seed axis is cut over 'seed', the
environment axis of the replay buffer and environment states over 'data', the network,
target network and optimiser state are replicated over 'data' and 'model'. XLA's temporaries
(the sampled batch, activations) are not counted.

`serve_memory_plan(model, model_axis)`: an OPT's parameter and KV-cache bytes per device
when tensor-parallel over a 'model' axis of that size (`LOGICAL_RULES`: vocabulary, heads and
MLP sharded; position embeddings, layer norms and the biases added after a sharded
contraction replicated), from `bes.models.opt_config` arithmetic.

Plans are JSON-able dicts; `format_plan` prints one. Impossible plans (a mesh that does not
fit the devices, a batch or environment count the data axis does not divide) raise a
one-line ValueError naming the key; memory over a device's HBM is a warning in the plan.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bes.parallel.mesh import MESH_AXES

GIB = 2 ** 30
_PLATFORMS = ("tpu", "gpu", "cpu")


@dataclasses.dataclass(frozen=True)
class Pod:
  """The machines a plan is for (`config.pod`, module docstring); `source` says where from."""
  platform: str
  device_kind: str
  num_hosts: int
  devices_per_host: int
  hbm_gib_per_device: float
  source: str = "config.pod"

  @property
  def num_devices(self) -> int:
    return self.num_hosts * self.devices_per_host


def pod_from_config(config) -> Pod:
  """`config.pod` validated, or this machine's local devices when the config has none."""
  section = config.get("pod") if hasattr(config, "get") else None
  if section is None:
    import jax   # only here: a pod config never needs the local devices
    devices = jax.local_devices()
    stats = getattr(devices[0], "memory_stats", lambda: None)()
    hbm = (stats or {}).get("bytes_limit", 0) / GIB
    return Pod(devices[0].platform, devices[0].device_kind, 1, len(devices), hbm,
               "local devices (no config.pod)")
  section = dict(section)
  unknown = sorted(set(section) - {f.name for f in dataclasses.fields(Pod)} - {"source"})
  if unknown:
    raise ValueError(f"config.pod: unknown key(s) {unknown}; expected platform, device_kind, "
                     "num_hosts, devices_per_host, hbm_gib_per_device")
  platform = section.get("platform")
  if platform not in _PLATFORMS:
    raise ValueError(f"config.pod.platform: expected one of {list(_PLATFORMS)}, got {platform!r}")
  for key in ("num_hosts", "devices_per_host"):
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.pod.{key}: expected an integer >= 1, got {value!r}")
  hbm = section.get("hbm_gib_per_device", 0)
  if isinstance(hbm, bool) or not isinstance(hbm, (int, float)) or not hbm >= 0:
    raise ValueError(f"config.pod.hbm_gib_per_device: expected GiB >= 0, got {hbm!r}")
  return Pod(platform, str(section.get("device_kind", platform)), section["num_hosts"],
             section["devices_per_host"], float(hbm))


def _divide(total: int, parts: int, key: str, axis: str) -> int:
  if total % parts:
    raise ValueError(f"{key}={total} is not divisible by the mesh's {axis!r} axis ({parts} "
                     f"devices); choose a multiple or change config.mesh")
  return total // parts


def _ranges(values) -> str:
  """'0-3,6' for [0, 1, 2, 3, 6]."""
  values, out, start = sorted(set(values)), [], None
  for i, v in enumerate(values):
    if start is None:
      start = v
    if i + 1 == len(values) or values[i + 1] != v + 1:
      out.append(f"{start}" if start == v else f"{start}-{v}")
      start = None
  return ",".join(out)


def host_layout(pod: Pod, shape: tuple[int, int, int]) -> list[dict[str, Any]]:
  """Per host: its devices and the mesh coordinates (seed, data, model indices) they hold."""
  coords = np.stack(np.unravel_index(np.arange(pod.num_devices), shape), axis=1)
  hosts = []
  for h in range(pod.num_hosts):
    own = coords[h * pod.devices_per_host:(h + 1) * pod.devices_per_host]
    hosts.append(dict(host=h, devices=_ranges(range(h * pod.devices_per_host,
                                                     (h + 1) * pod.devices_per_host)),
                      seed_data_shards=len({(int(a), int(b)) for a, b, _ in own}),
                      **{axis: sorted({int(c) for c in own[:, i]})
                         for i, axis in enumerate(MESH_AXES)}))
  return hosts


def learner_state_shapes(config):
  """`jax.eval_shape` of the vmapped learner init (`[num_seeds, ...]` leaves; no compile)."""
  import jax
  from bes.experiment.setup import Setup
  from bes.router import dqn
  setup = Setup.from_config(config)
  envs = setup.train_envs()
  trainer = dqn.make_train(setup.dqn, setup.train, envs.env, envs.params, envs.eval_env,
                           envs.eval_params, params_batched=envs.batched)
  return jax.eval_shape(jax.vmap(trainer.init), setup.seed_keys())


def learner_memory(shapes, num_seeds: int, num_envs: int, seed_shards: int,
                   data_shards: int) -> dict[str, dict[str, int]]:
  """Bytes of each learner-state group ('params' = online + target + best networks,
  'opt_state', 'replay', 'envs', 'other'): `total` over all seeds and `per_device` on one
  device (layout: module docstring)."""
  import jax
  out = {}
  for group in shapes._fields:
    name = {"target_params": "params", "best_params": "params"}.get(group, group)
    name = name if name in ("params", "opt_state", "replay", "envs") else "other"
    for leaf in jax.tree_util.tree_leaves(getattr(shapes, group)):
      nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
      shards = seed_shards if leaf.shape and leaf.shape[0] == num_seeds else 1
      if name in ("replay", "envs") and len(leaf.shape) > 1 and leaf.shape[1] == num_envs:
        shards *= data_shards
      entry = out.setdefault(name, {"total": 0, "per_device": 0})
      entry["total"] += nbytes
      entry["per_device"] += -(-nbytes // shards)
  return out


def train_plan(config, pod: Pod | None = None, memory: bool = True) -> dict[str, Any]:
  """The per-host plan of training `config` (module docstring); JSON-able."""
  from bes.experiment import config as config_lib
  pod = pod or pod_from_config(config)
  mesh = config_lib.mesh_config(config)
  shape = mesh.shape(pod.num_devices)
  seed_ax, data_ax, model_ax = shape
  _, num_seeds = config_lib.seeds(config)
  num_envs, batch = int(config.dqn.num_envs), int(config.dqn.batch_size)
  seeds_per = _divide(num_seeds, seed_ax, "config.num_seeds", "seed")
  envs_per = _divide(num_envs, data_ax, "config.dqn.num_envs", "data")
  batch_per = _divide(batch, data_ax, "config.dqn.batch_size", "data")
  hosts = host_layout(pod, shape)
  for h in hosts:
    h["seeds"] = _ranges(s * seeds_per + i for s in h.pop("seed") for i in range(seeds_per))
    h["envs"] = _ranges(d * envs_per + i for d in h.pop("data") for i in range(envs_per))
    h.pop("model")
    shards = h.pop("seed_data_shards")      # devices differing in 'model' only hold copies
    h["batch"] = shards * seeds_per * batch_per   # transitions sampled per gradient step
    h["env_copies"] = shards * seeds_per * envs_per   # environments stepped per iteration
  plan = dict(kind="train", pod=dataclasses.asdict(pod), num_devices=pod.num_devices,
              mesh=dict(zip(MESH_AXES, shape)), num_seeds=num_seeds, seeds_per_device=seeds_per,
              num_envs=num_envs, envs_per_device=envs_per, batch_size=batch,
              batch_per_device=batch_per, hosts=hosts, warnings=[])
  if memory:
    mem = learner_memory(learner_state_shapes(config), num_seeds, num_envs, seed_ax, data_ax)
    per_device = sum(v["per_device"] for v in mem.values())
    plan["memory"] = dict(groups=mem, per_device_bytes=per_device,
                          per_device_gib=per_device / GIB)
    _check_hbm(plan, pod, per_device, "the learner state")
  return plan


def _check_hbm(plan: dict, pod: Pod, per_device: int, what: str) -> None:
  if pod.hbm_gib_per_device and per_device > pod.hbm_gib_per_device * GIB:
    plan["warnings"].append(
        f"WARNING: {what} needs {per_device / GIB:.2f} GiB per device, over the "
        f"{pod.hbm_gib_per_device:g} GiB of a {pod.device_kind}")


def opt_param_bytes(cfg, model_axis: int = 1, bytes_per_param: int = 2) -> dict[str, int]:
  """An OPT's parameter bytes: `sharded` (vocabulary, heads, MLP: cut over `model_axis`),
  `replicated` (position embeddings, layer norms, output biases, embedding projections) and
  `per_device` = sharded / model_axis + replicated."""
  h, f, v, e, n = (cfg.hidden_size, cfg.ffn_dim, cfg.vocab_size, cfg.word_embed_proj_dim,
                   cfg.num_hidden_layers)
  sharded = v * e + n * (h * 3 * h + 3 * h + h * h + h * f + f + f * h)
  replicated = (cfg.max_position_embeddings + 2) * h + n * (h + h + 2 * 2 * h)
  if cfg.projects_embeddings:
    replicated += 2 * e * h
  if cfg.do_layer_norm_before:
    replicated += 2 * h
  assert sharded + replicated == cfg.num_params()
  return dict(sharded=sharded * bytes_per_param, replicated=replicated * bytes_per_param,
              per_device=-(-sharded // model_axis) * bytes_per_param + replicated * bytes_per_param)


def serve_memory_plan(model, model_axis: int, batch: int = 32, max_len: int = 2048,
                      bytes_per_value: int = 2, hbm_gib_per_device: float = 0.0,
                      device_kind: str = "device", name: str | None = None) -> dict[str, Any]:
  """Bytes per device of an OPT (`model`: a name of `bes.models.opt_config` or an OPTConfig)
  served tensor-parallel over `model_axis` devices: parameters (`opt_param_bytes`) plus a
  KV cache of `batch` rows x `max_len` tokens (heads sharded); values of `bytes_per_value`
  bytes (2: bf16)."""
  from bes.models import opt_config
  cfg = opt_config.opt_config(model) if isinstance(model, str) else model
  name = name or (model if isinstance(model, str) else "opt")
  if isinstance(model_axis, bool) or not isinstance(model_axis, int) or model_axis < 1:
    raise ValueError(f"model axis: expected an integer >= 1, got {model_axis!r}")
  if cfg.num_attention_heads % model_axis:
    raise ValueError(f"{name}: {cfg.num_attention_heads} attention heads are not divisible by "
                     f"the model axis ({model_axis} devices)")
  params = opt_param_bytes(cfg, model_axis, bytes_per_value)
  kv_total = batch * max_len * cfg.kv_bytes_per_token(bytes_per_value)
  kv = kv_total // model_axis
  per_device = params["per_device"] + kv
  plan = dict(kind="serve", model=name, model_axis=model_axis, num_params=cfg.num_params(),
              bytes_per_value=bytes_per_value, batch=batch, max_len=max_len,
              params_bytes_total=params["sharded"] + params["replicated"],
              params_bytes_per_device=params["per_device"], kv_bytes_total=kv_total,
              kv_bytes_per_device=kv, per_device_bytes=per_device,
              per_device_gib=per_device / GIB, warnings=[])
  _check_hbm(plan, Pod("", device_kind, 1, model_axis, hbm_gib_per_device), per_device,
             f"{name} over {model_axis} device(s)")
  return plan


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def serve_plan(instances, max_len: int, dtype: str = "bfloat16", pod: Pod | None = None
               ) -> dict[str, Any]:
  """The serving dry run's plan: `instances` is a list of (name, model (OPT name or
  OPTConfig), model_axis (devices of the instance), batch (KV-cache slots, the profile's max
  batch)); each gets `serve_memory_plan` with `max_len` tokens per slot in `dtype`, checked
  against `pod`'s HBM (warnings). JSON-able; `format_plan` prints it."""
  if dtype not in DTYPE_BYTES:
    raise ValueError(f"config.serve.dtype: expected one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
  rows, warnings = [], []
  for name, model, model_axis, batch in instances:
    row = serve_memory_plan(model, model_axis, batch=batch, max_len=max_len,
                            bytes_per_value=DTYPE_BYTES[dtype],
                            hbm_gib_per_device=pod.hbm_gib_per_device if pod else 0.0,
                            device_kind=pod.device_kind if pod else "device", name=name)
    warnings += row["warnings"]
    rows.append(row)
  devices = sum(r["model_axis"] for r in rows)
  if pod and devices > pod.num_devices:
    warnings.append(f"WARNING: the instances take {devices} devices, the pod has "
                    f"{pod.num_devices}")
  return dict(kind="serve_instances", pod=dataclasses.asdict(pod) if pod else None,
              dtype=dtype, max_len=max_len, devices=devices, instances=rows, warnings=warnings)


def _pod_line(pod: dict) -> str:
  memory = (f"{pod['hbm_gib_per_device']:g} GiB each" if pod["hbm_gib_per_device"]
            else "memory unknown")
  return (f"pod: {pod['num_hosts']} host(s) x {pod['devices_per_host']} {pod['platform']} "
          f"device(s) ({pod['device_kind']}, {memory}; from {pod['source']})")


def format_plan(plan: dict[str, Any]) -> str:
  """A plan as readable text (train / serve plans; a sweep plan's 'hosts' rows likewise)."""
  lines = []
  if plan["kind"] == "serve_instances":
    if plan["pod"]:
      lines.append(_pod_line(plan["pod"]))
    lines.append(f"{len(plan['instances'])} instance(s) on {plan['devices']} device(s), "
                 f"{plan['dtype']}, {plan['max_len']} tokens per KV-cache slot:")
    lines += ["  " + format_plan(dict(r, warnings=[])) for r in plan["instances"]]
    return "\n".join(lines + plan["warnings"])
  if plan["kind"] == "serve":
    lines.append(f"serve {plan['model']} ({plan['num_params'] / 1e9:.2f} B params) over a model "
                 f"axis of {plan['model_axis']}: params {plan['params_bytes_per_device'] / GIB:.2f}"
                 f" GiB + KV cache ({plan['batch']} x {plan['max_len']} tokens) "
                 f"{plan['kv_bytes_per_device'] / GIB:.2f} GiB = {plan['per_device_gib']:.2f} GiB "
                 "per device")
    return "\n".join(lines + plan["warnings"])
  pod = plan["pod"]
  lines.append(_pod_line(pod))
  mesh = plan.get("mesh")
  if mesh:
    lines.append("mesh: " + " x ".join(f"{k}={v}" for k, v in mesh.items())
                 + f" = {plan['num_devices']} devices")
  if plan["kind"] == "train":
    lines.append(f"seeds: {plan['num_seeds']} ({plan['seeds_per_device']} per device); "
                 f"environments: {plan['num_envs']} per seed ({plan['envs_per_device']} per "
                 f"device); batch: {plan['batch_size']} per seed ({plan['batch_per_device']} "
                 "per device)")
    for h in plan["hosts"]:
      lines.append(f"  host {h['host']}: devices {h['devices']}, seeds {h['seeds']}, "
                   f"environments {h['envs']} of each seed ({h['env_copies']} in all, batch "
                   f"{h['batch']} per step on this host)")
    if "memory" in plan:
      mem = plan["memory"]
      parts = ", ".join(f"{k} {v['per_device'] / 2**20:.1f} MiB" for k, v in mem["groups"].items())
      lines.append(f"memory per device (learner state): {mem['per_device_gib']:.3f} GiB "
                   f"({parts}); XLA temporaries not counted")
  for h in plan.get("process_rows", []):
    lines.append("  " + h)
  return "\n".join(lines + plan["warnings"])
