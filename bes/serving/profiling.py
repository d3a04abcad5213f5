"""A serving config's latency profile, measured from its own engine workers.

`measure_serving_profile(config, ...)` profiles every model of `config.serve` at once with
`profile_workers` (the serving `EngineLoop`, timed in a process pinned exactly as the
server pins that model's first instance, each busy while the others are measured; see
bes/serving/worker_profile.py), and assembles a profile
(`bes.profile`) whose instances, max batch, tasks and quality come from `profile_template`:

  * `config.profile` when that file exists (and names the same models): its tasks, and per
    model its instances, gpus_per_instance, max_batch and quality (only latencies change);
  * else: the default profile's tasks, one instance per model, max batch
    `config.serve.max_batch` (8 when absent), gpus_per_instance = the cores (or the
    accelerators of the slice) of the model's first placement, and quality from the quality table
    (`config.serve.quality`, default the shipped OPT table) under the stand-in mapping
    `config.serve.quality_as` ('cpu-small=opt-125m;...': a random-weight model carries the
    measured accuracies of the released model it stands in for; a model not mapped is looked
    up under its own name).

Used by launch/sim_to_real.py (step 1) and launch/profile_latency.py --serve_config.
"""
from __future__ import annotations

import datetime
import os
import platform
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from bes import profile as profile_lib
from bes import quality as quality_lib
from bes.serving import config as serve_config_lib

DEFAULT_MAX_BATCH = 8


def model_entries(config: ml_collections.ConfigDict) -> list[serve_config_lib.ModelSpec]:
  """The models of `config.serve.models` in file order (no profile needed)."""
  if "serve" not in config:
    raise ValueError("config: no 'serve' section; a serving config adds one to an experiment "
                     "config (see configs/serve/cpu.py)")
  out = []
  for item in filter(None, (s.strip() for s in str(config.serve.models).split(";"))):
    name, sep, rest = item.partition("=")
    if not sep or not name.strip():
      raise ValueError(f"config.serve.models: expected NAME=SHAPE[@CHECKPOINT] entries "
                       f"separated by ';', got {item!r}")
    shape, _, checkpoint = rest.partition("@")
    name = name.strip()
    out.append(serve_config_lib.ModelSpec(
        name, serve_config_lib.parse_shape(shape, f"models ({name})"),
        checkpoint.strip() or None))
  if not out:
    raise ValueError("config.serve.models: expected at least one NAME=SHAPE entry, got none")
  return out


def parse_quality_as(text: str) -> dict[str, str]:
  """'cpu-small=opt-125m;cpu-large=opt-1.3b' -> {served name: quality-table model}."""
  out = {}
  for item in filter(None, (s.strip() for s in str(text or "").split(";"))):
    name, sep, stand_in = item.partition("=")
    if not sep or not name.strip() or not stand_in.strip():
      raise ValueError(f"config.serve.quality_as: expected NAME=TABLE_MODEL entries separated "
                       f"by ';', got {item!r}")
    out[name.strip()] = stand_in.strip()
  return out


def existing_profile(config: ml_collections.ConfigDict) -> profile_lib.Profile | None:
  """`config.profile` when it names an existing file ('' or a missing path: None)."""
  path = str(config.get("profile") or "")
  return profile_lib.load_profile(path) if path and os.path.isfile(path) else None


def profile_template(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a measured profile keeps from the config (module docstring): {'tasks', 'source',
  'models': [{'name', 'instances', 'gpus_per_instance', 'max_batch', 'quality',
  'quality_from'}]} in `config.serve.models` order."""
  models = model_entries(config)
  names = [m.name for m in models]
  base = existing_profile(config)
  if base is not None and sorted(base.model_names) == sorted(names):
    out = []
    for name in names:
      m = base.models[base.model_index(name)]
      out.append(dict(name=name, instances=m.instances, gpus_per_instance=m.gpus_per_instance,
                      max_batch=m.max_batch, quality=dict(m.quality),
                      quality_from=f"the profile {config.profile}"))
    return {"tasks": list(base.tasks), "source": str(config.profile), "models": out}
  tasks = list(profile_lib.default_profile().tasks)
  table_path = str(config.serve.get("quality", "") or quality_lib.DEFAULT_QUALITY_PATH)
  table = quality_lib.load_quality_table(table_path)
  stand_in = parse_quality_as(config.serve.get("quality_as", ""))
  unknown = sorted(set(stand_in) - set(names))
  if unknown:
    raise ValueError(f"config.serve.quality_as: models {unknown} are not in config.serve.models "
                     f"{names}")
  max_batch = int(config.serve.get("max_batch", DEFAULT_MAX_BATCH))
  if max_batch < 1:
    raise ValueError(f"config.serve.max_batch: expected an integer >= 1, got {max_batch}")
  placements = serve_config_lib.parse_placements(config.serve.placement, len(names),
                                                 os.cpu_count() or 1)
  out = []
  for k, name in enumerate(names):
    looked_up = stand_in.get(name, name)
    try:
      quality = quality_lib.quality_for(looked_up, tasks, table)
    except ValueError as e:
      raise ValueError(f"config.serve.quality_as: model {name} (looked up as {looked_up!r}): "
                       f"{e}") from None
    place = placements[k]
    gpus = len(place[1]) if serve_config_lib.is_accelerator(place) else len(place)
    out.append(dict(name=name, instances=1, gpus_per_instance=gpus, max_batch=max_batch,
                    quality=quality, quality_from=f"{looked_up} in {table_path}"))
  return {"tasks": tasks, "source": None, "models": out}


def worker_specs(config: ml_collections.ConfigDict, template: Mapping[str, Any]) -> list:
  """One WorkerSpec per model: its first instance, built exactly as `Frontend.__init__`
  builds it (placement, seed, dtype, max batch, max_len, queue capacity)."""
  from bes.serving.worker import WorkerSpec  # pylint: disable=g-import-not-at-top
  models = model_entries(config)
  instances = [int(m["instances"]) for m in template["models"]]
  placements = serve_config_lib.parse_placements(config.serve.placement, sum(instances),
                                                 os.cpu_count() or 1)
  seed = int(config.get("seed", 0))
  specs, k = [], 0
  for ms, mt, n in zip(models, template["models"], instances):
    specs.append(WorkerSpec(
        instance=k, model=ms.name, config=ms.config, checkpoint=ms.checkpoint, seed=seed + k,
        dtype=str(config.serve.dtype), max_batch=int(mt["max_batch"]),
        max_len=int(config.serve.max_len), queue_capacity=int(config.env.queue_capacity),
        buckets=None, **serve_config_lib.worker_placement(placements[k])))
    k += n
  return specs


def prefill_lengths(max_len: int) -> list[int]:
  """Prompt lengths the admission cost is timed at: max_len/16, /8, /4, /2 (>= 2, distinct)."""
  return sorted({max(2, int(max_len) // d) for d in (16, 8, 4, 2)})


def profile_dict(template: Mapping[str, Any], timings: Sequence[Mapping[str, Any]], *,
                 name: str, provenance: str) -> dict[str, Any]:
  """The profile JSON dict (`bes.profile` format) of the template's models with the measured
  `timings` (one `profile_worker` dict per model, same order)."""
  if len(timings) != len(template["models"]):
    raise ValueError(f"profile_dict: {len(timings)} timings for "
                     f"{len(template['models'])} models")
  models = []
  for mt, t in zip(template["models"], timings):
    decode = [float(x) for x in t["decode_step_s"]]
    models.append({"name": mt["name"], "instances": int(mt["instances"]),
                   "gpus_per_instance": int(mt["gpus_per_instance"]), "max_batch": len(decode),
                   "decode_step_s": decode, "prefill_s_fixed": float(t["prefill_s_fixed"]),
                   "prefill_s_per_token": float(t["prefill_s_per_token"]),
                   "quality": {task: float(mt["quality"][task]) for task in template["tasks"]}})
  return {"name": name, "provenance": provenance, "tasks": list(template["tasks"]),
          "models": models}


def measure_serving_profile(config: ml_collections.ConfigDict, *, repeats: int = 20,
                            warmup: int = 2, name: str | None = None,
                            log: Callable[[str], None] = print,
                            profile_workers: Callable | None = None
                            ) -> tuple[profile_lib.Profile, dict[str, Any]]:
  """Measures every model of `config.serve` (module docstring), all workers at once as they
  serve (`worker_profile.profile_workers`); returns (the profile, the raw measurements
  {model: profile_worker dict})."""
  if profile_workers is None:
    from bes.serving.worker_profile import profile_workers  # pylint: disable=g-import-not-at-top
  template = profile_template(config)
  specs = worker_specs(config, template)
  lengths = prefill_lengths(int(config.serve.max_len))
  where = lambda s: (f"core(s) {list(s.cpus)}" if s.device is None
                     else f"{s.platform}(s) {list(s.device)}")
  log(f"profiling {', '.join(f'{s.model} on {where(s)}' for s in specs)} together (max batch "
      f"{[s.max_batch for s in specs]}, max_len {specs[0].max_len}, prefill lengths {lengths}, "
      f"{repeats} repeats)")
  timings = profile_workers(specs, lengths, repeats=repeats, warmup=warmup)
  raw = {}
  for spec, t in zip(specs, timings):
    log(f"  {spec.model}: decode b=1 {t['decode_step_s'][0] * 1e3:.2f} ms, "
        f"b={len(t['decode_step_s'])} {t['decode_step_s'][-1] * 1e3:.2f} ms; prefill "
        f"{t['prefill_s_fixed'] * 1e3:.2f} ms + {t['prefill_s_per_token'] * 1e6:.1f} us/token")
    raw[spec.model] = t
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  places = ", ".join(f"{s.model}: {where(s)}" for s in specs)
  quality = "; ".join(f"{m['name']}: {m['quality_from']}" for m in template["models"])
  provenance = (
      f"Measured by bes.serving.profiling (profile_workers: the serving EngineLoop of each "
      f"model's first instance timed in a process pinned as the server pins it, all models "
      f"at once, each busy while the others are measured) on host "
      f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores), {date}. Placement: "
      f"{places}; dtype {config.serve.dtype}, max_len {config.serve.max_len}, random weights "
      f"unless a checkpoint is given. decode_step_s[b-1]: mean of {repeats} iterations with "
      f"b requests running (after {warmup} warm-up); prefill: line fitted to the mean "
      f"single-request admission iterations at prompt lengths {lengths}. Instances, "
      f"max batch and tasks: {template['source'] or 'one instance per model, config.serve.max_batch'}. "
      f"Quality: {quality}.")
  d = profile_dict(template, timings, name=name or "serving-measured", provenance=provenance)
  return profile_lib.profile_from_dict(d, source="measured"), raw
