r"""Measures the slot engine's latency on the local JAX backend and writes a serving profile.

For every model (named OPT sizes or tiny custom configs, random weights: latency does not
depend on the weights' values) it measures with `bes.models.latency` (see there exactly what
is timed) the decode iteration time decode_step_s[b-1] of an engine with exactly b slots,
all active, caches filled to --context_len, for b = 1..--max_batch (median of --repeats
after --warmup), and the admission cost (prefill + insert) at each of --prefill_lengths, fitted
by least squares to prefill_s_fixed + prefill_s_per_token * length. It writes the profile
JSON of the serving-model design page (`bes.profile`), with quality from a CSV table
(`bes.quality`), e.g. (results/cpu_profile_tiny.md):

  python launch/profile_latency.py --config_json=results/cpu_profile_tiny_configs.json \
    --models=tiny-s:1,tiny-m:1 --max_batch=8 --quality_default=0.5 \
    --out=results/cpu_profile_tiny.json

--config_json is a JSON object {model name: {OPTConfig fields}}; a name in --models is looked
up there first, then among the named OPT sizes (opt-125m ... opt-66b).

--model_parallel=N measures sharded engines: the first N devices form the mesh's 'model' axis
(tensor parallelism, `Engine(mesh=...)`; random weights drawn already sharded) and
gpus_per_instance defaults to N. On a CPU it can be tried on forced host devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python launch/profile_latency.py \
    --config_json=results/cpu_profile_tiny_configs.json --models=tiny-s:1 --max_batch=2 \
    --model_parallel=4 --quality_default=0.5 --out=/tmp/tp4_profile.json

With --serve_config=FILE (a serving config, configs/serve/*.py) it instead profiles that
config's served models exactly as they serve (`bes.serving.profiling`: the serving EngineLoop
in a process pinned like the model's first instance; instances, max batch, tasks and quality
from the config) and writes the profile its `config.profile` names:

  python launch/profile_latency.py --serve_config=configs/serve/cpu.py \
    --out=bes/data/profiles/cpu_serving.json
Only --out, --repeats, --warmup and --name apply then.
"""
from __future__ import annotations

import datetime

from absl import app
from absl import flags

import jax
import jax.numpy as jnp

from bes import cli_errors, io_util, profile as profile_lib, quality as quality_lib
from bes.models import latency
from bes.models import opt
from bes.models import opt_sharding
from bes.parallel import mesh as mesh_lib

_MODELS = flags.DEFINE_string("models", "opt-125m:1", "Comma-separated NAME:INSTANCES pairs.")
_CONFIG_JSON = flags.DEFINE_string(
    "config_json", None, "JSON file {name: {OPTConfig fields}} of custom (e.g. tiny) configs.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "Largest running batch B_m profiled (>= 1).")
_CONTEXT_LEN = flags.DEFINE_integer("context_len", 128, "Tokens in every slot's cache (>= 1).")
_MAX_LEN = flags.DEFINE_integer("max_len", None, "Engine cache length (default context_len + 1).")
_PREFILL_LENGTHS = flags.DEFINE_list("prefill_lengths", ["16", "32", "64", "128"],
                                     "Prompt lengths (tokens) at which prefill is timed (>= 2).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per measurement (median taken; "
                                "with --serve_config: iterations, mean taken).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls first (>= 1: the first compiles).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Parameter and KV-cache dtype.")
_GPUS_PER_INSTANCE = flags.DEFINE_integer("gpus_per_instance", 1, "GPUs one instance uses "
                                          "(default: --model_parallel).")
_MODEL_PARALLEL = flags.DEFINE_integer(
    "model_parallel", 1, "Devices of the 'model' mesh axis (tensor parallelism): the first N "
    "devices; 1 = one device, unsharded.")
_QUALITY = flags.DEFINE_string("quality", None, "Quality CSV (model,task,acc[,...]); default: "
                               "the shipped bes/data/quality/opt_zero_shot_accuracy.csv.")
_TASKS = flags.DEFINE_list("tasks", ["arc_easy", "piqa", "winogrande", "lambada_openai"],
                           "Tasks of the profile.")
_QUALITY_DEFAULT = flags.DEFINE_float(
    "quality_default", None, "Accuracy for a model the quality table lacks (else an error).")
_NAME = flags.DEFINE_string("name", None, "Profile name (default: <platform>-measured).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and tokens.")
_OUT = flags.DEFINE_string("out", None, "Output profile JSON path.")
_SERVE_CONFIG = flags.DEFINE_string(
    "serve_config", None, "A serving config file (configs/serve/*.py): profile its served models "
    "under their serving pinning (module docstring).")


def serve_config_main() -> None:
  """--serve_config: the serving config's models measured by bes.serving.profiling."""
  from bes import config_cli  # pylint: disable=g-import-not-at-top
  from bes.serving import profiling  # pylint: disable=g-import-not-at-top
  io_util.check_writable_file(_OUT.value, "--out")
  try:
    config = config_cli.load_config_file(_SERVE_CONFIG.value)
  except ValueError as e:
    raise ValueError(f"--serve_config: {str(e).removeprefix('--config: ')}") from None
  profile, _ = profiling.measure_serving_profile(
      config, repeats=_REPEATS.value, warmup=_WARMUP.value, name=_NAME.value)
  profile_lib.save_profile(profile, _OUT.value)
  print(f"wrote {_OUT.value}")


def model_mesh(n: int):
  """The ('seed', 'data', 'model') mesh of the first n devices on 'model' (None for n = 1)."""
  devices = jax.devices()
  if not 1 <= n <= len(devices):
    raise app.UsageError(f"--model_parallel: expected 1..{len(devices)} (the {devices[0].platform} "
                         f"devices here), got {n}")
  if n == 1:
    return None
  return mesh_lib.make_mesh(mesh_lib.MeshConfig(seed=1, data=1, model=n), devices[:n])


def main(argv):
  del argv
  if _OUT.value is None:
    raise app.UsageError("--out is required")
  if _MAX_BATCH.value < 1 or _CONTEXT_LEN.value < 1 or _REPEATS.value < 1 or _WARMUP.value < 1:
    raise app.UsageError("--max_batch, --context_len, --repeats and --warmup must be >= 1")
  if _SERVE_CONFIG.value:
    serve_config_main()
    return
  max_len = _MAX_LEN.value or _CONTEXT_LEN.value + 1
  if max_len <= _CONTEXT_LEN.value:
    raise app.UsageError(f"--max_len must exceed --context_len, got {max_len}")
  try:
    lengths = sorted(int(x) for x in _PREFILL_LENGTHS.value)
  except ValueError as e:
    raise app.UsageError(
        f"--prefill_lengths: expected integers, got {_PREFILL_LENGTHS.value}") from e
  if not lengths or lengths[0] < 2:
    raise app.UsageError(f"--prefill_lengths: expected lengths >= 2, got {lengths}")
  io_util.check_writable_file(_OUT.value, "--out")   # before measuring, not after
  models = latency.parse_models(_MODELS.value)
  custom = latency.load_custom_configs(_CONFIG_JSON.value)
  table = quality_lib.load_quality_table(_QUALITY.value or quality_lib.DEFAULT_QUALITY_PATH)
  qualities = [latency.model_quality(name, _TASKS.value, table, _QUALITY_DEFAULT.value)
               for name, _ in models]  # fail on a missing quality before measuring anything
  dtype = jnp.dtype(_DTYPE.value)
  device = jax.devices()[0]
  mesh = model_mesh(_MODEL_PARALLEL.value)
  gpus = _GPUS_PER_INSTANCE.value if _GPUS_PER_INSTANCE.present else _MODEL_PARALLEL.value
  entries, notes = [], []
  for i, (name, instances) in enumerate(models):
    config = latency.resolve_config(name, custom)
    for length in (max_len, max(lengths) + 1):
      if length > config.max_position_embeddings:
        raise app.UsageError(f"model {name}: a cache of {length} tokens exceeds "
                             f"max_position_embeddings={config.max_position_embeddings}")
    key = jax.random.key(_SEED.value + i)
    params = (opt.init_params(config, key, dtype) if mesh is None
              else opt_sharding.init_sharded_params(config, key, mesh, dtype))
    decode = latency.time_decode(params, config, _MAX_BATCH.value, _CONTEXT_LEN.value,
                                 max_len, dtype, _REPEATS.value, _WARMUP.value, _SEED.value,
                                 mesh=mesh)
    prefill = latency.time_prefill(params, config, lengths, dtype, _REPEATS.value,
                                   _WARMUP.value, _SEED.value, mesh=mesh)
    fixed, per_token = latency.fit_prefill(lengths, prefill)
    quality, defaulted = qualities[i]
    entries.append({"name": name, "instances": instances,
                    "gpus_per_instance": gpus, "max_batch": _MAX_BATCH.value,
                    "decode_step_s": decode, "prefill_s_fixed": fixed,
                    "prefill_s_per_token": per_token, "quality": quality})
    notes.append(f"{name}: {config.num_params()} params, prefill s at lengths {lengths}: "
                 f"{[round(t, 6) for t in prefill]}"
                 + (f"; quality = --quality_default {_QUALITY_DEFAULT.value} (not in table)"
                    if defaulted else ""))
    print(f"{name}: decode_step_s b=1 {decode[0]:.6f} b={_MAX_BATCH.value} {decode[-1]:.6f}; "
          f"prefill {fixed:.6f} s + {per_token:.3e} s/token")
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  provenance = (
      f"Measured by launch/profile_latency.py on {device.platform} device '{device.device_kind}' "
      + ("" if mesh is None else f"x{_MODEL_PARALLEL.value} (tensor-parallel engine, "
         f"{mesh_lib.describe(mesh)}) ") +
      f"(jax {jax.__version__}, {_DTYPE.value}, random weights, {date}). decode_step_s[b-1]: "
      f"median of {_REPEATS.value} Engine.generate_step calls (after {_WARMUP.value} warm-up, "
      f"batch sizes round-robin) of an engine with exactly b slots, all active, caches filled "
      f"to {_CONTEXT_LEN.value} tokens (max_len {max_len}), block_until_ready on the state. "
      f"prefill: median prefill+insert time at each length, least-squares line (clipped at "
      f"0). Quality: "
      f"{_QUALITY.value or 'bes/data/quality/opt_zero_shot_accuracy.csv'}. " + "; ".join(notes))
  d = {"name": _NAME.value or f"{device.platform}-measured", "provenance": provenance,
       "tasks": list(_TASKS.value), "models": entries}
  profile = profile_lib.profile_from_dict(d, source=_OUT.value)
  profile_lib.save_profile(profile, _OUT.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
