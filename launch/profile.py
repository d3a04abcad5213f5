r"""Measures the slot engine's latency on the local JAX backend and writes a serving profile.

For every model (named OPT sizes or tiny custom configs, random weights: latency does not
depend on the weights' values) it measures

  * decode_step_s[b-1], b = 1..--max_batch: one `Engine.generate_step` of an engine with
    exactly b slots, all active, every slot's cache filled to --context_len tokens (cache
    length --max_len, default context_len + 1). The engine attends densely over all max_len
    cache entries (masked), so the time is that of a runtime using the same max_len.
    Each call is timed with `jax.block_until_ready` on the whole returned state; the value is
    the median of --repeats calls after --warmup untimed ones (the first compiles). The
    cache length is reset to --context_len before every call, outside the timed region.
  * prefill: the admission of one request, `Engine.prefill` + `Engine.insert`, timed the same
    way at each prompt length of --prefill_lengths (the engine's buckets are set to exactly
    those lengths, so nothing is padded); a least-squares line through (length, seconds)
    gives prefill_s_fixed (intercept) and prefill_s_per_token (slope), each clipped at 0.

and writes the profile JSON of the serving-model design page (`bes.profile`), with quality
from a CSV table (`bes.quality`), e.g. (results/cpu_profile_tiny.md):

  python launch/profile.py --config_json=results/cpu_profile_tiny_configs.json \
    --models=tiny-a:1,tiny-b:1 --max_batch=8 --quality_default=0.5 \
    --out=results/cpu_profile_tiny.json

--config_json is a JSON object {model name: {OPTConfig fields}}; a name in --models is looked
up there first, then among the named OPT sizes (opt-125m ... opt-66b).
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0]) == os.path.join(_ROOT, "launch"):
  sys.path.pop(0)  # this file is `profile.py`: never shadow the standard library's `profile`
sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bes import profile as profile_lib  # noqa: E402
from bes import quality as quality_lib  # noqa: E402
from bes.models import engine as engine_lib  # noqa: E402
from bes.models import opt  # noqa: E402
from bes.models.opt_config import OPTConfig, opt_config  # noqa: E402

_MODELS = flags.DEFINE_string("models", "opt-125m:1", "Comma-separated NAME:INSTANCES pairs.")
_CONFIG_JSON = flags.DEFINE_string(
    "config_json", None, "JSON file {name: {OPTConfig fields}} of custom (e.g. tiny) configs.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "Largest running batch B_m profiled (>= 1).")
_CONTEXT_LEN = flags.DEFINE_integer("context_len", 128, "Tokens in every slot's cache (>= 1).")
_MAX_LEN = flags.DEFINE_integer("max_len", None, "Engine cache length (default context_len + 1).")
_PREFILL_LENGTHS = flags.DEFINE_list("prefill_lengths", ["16", "32", "64", "128"],
                                     "Prompt lengths (tokens) at which prefill is timed (>= 2).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per measurement (median taken).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls first (>= 1: the first compiles).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Parameter and KV-cache dtype.")
_GPUS_PER_INSTANCE = flags.DEFINE_integer("gpus_per_instance", 1, "GPUs one instance uses.")
_QUALITY = flags.DEFINE_string("quality", None, "Quality CSV (model,task,acc[,...]); default: "
                               "the shipped bes/data/quality/opt_zero_shot_accuracy.csv.")
_TASKS = flags.DEFINE_list("tasks", ["arc_easy", "piqa", "winogrande", "lambada_openai"],
                           "Tasks of the profile.")
_QUALITY_DEFAULT = flags.DEFINE_float(
    "quality_default", None, "Accuracy for a model the quality table lacks (else an error).")
_NAME = flags.DEFINE_string("name", None, "Profile name (default: <platform>-measured).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and tokens.")
_OUT = flags.DEFINE_string("out", None, "Output profile JSON path.")


def _timed(fn, repeats: int, warmup: int) -> float:
  """Median wall-clock seconds of `fn()` (which must block until its work is done)."""
  times = []
  for i in range(warmup + repeats):
    t0 = time.perf_counter()
    fn()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return statistics.median(times)


def time_decode(params, config: OPTConfig, batch: int, context_len: int, max_len: int,
                dtype, repeats: int, warmup: int, seed: int = 0) -> float:
  """Seconds of one decode iteration at running batch `batch` (see the module docstring)."""
  eng = engine_lib.Engine(params, config, num_slots=batch, max_len=max_len, dtype=dtype)
  rng = np.random.default_rng(seed)
  box = [eng.init_decode_state()]

  def fill(state):
    n = jnp.full((batch,), context_len, jnp.int32)
    return state.replace(
        next_token=jnp.asarray(rng.integers(3, config.vocab_size, batch), jnp.int32),
        position=n, cache_len=jnp.array(n), active=jnp.ones((batch,), bool),
        generated=jnp.ones((batch,), jnp.int32))

  def step():
    state = jax.block_until_ready(fill(box[0]))
    t0 = time.perf_counter()
    state, tokens, _ = eng.generate_step(state)
    jax.block_until_ready((state, tokens))
    box[0] = state
    return time.perf_counter() - t0

  times = [step() for _ in range(warmup + repeats)][warmup:]
  return statistics.median(times)


def time_prefill(params, config: OPTConfig, lengths: list[int], dtype, repeats: int,
                 warmup: int, seed: int = 0) -> list[float]:
  """Seconds of `prefill` + `insert` of one prompt of each length in `lengths` (tokens)."""
  max_len = max(lengths) + 1
  eng = engine_lib.Engine(params, config, num_slots=1, max_len=max_len, dtype=dtype,
                          buckets=sorted(set(lengths)) + [max_len])
  rng = np.random.default_rng(seed)
  box = [eng.init_decode_state()]
  out = []
  for n in lengths:
    prompt = rng.integers(3, config.vocab_size, n).astype(np.int32)

    def admit():
      box[0] = eng.insert(eng.prefill(prompt), box[0], 0)
      jax.block_until_ready(box[0])

    out.append(_timed(admit, repeats, warmup))
  return out


def fit_prefill(lengths, seconds) -> tuple[float, float]:
  """Least-squares line seconds = fixed + per_token * length: (fixed s, per-token s), >= 0."""
  lengths, seconds = np.asarray(lengths, float), np.asarray(seconds, float)
  if len(np.unique(lengths)) < 2:
    raise ValueError(f"--prefill_lengths: need at least two distinct lengths, got {lengths}")
  per_token, fixed = np.polyfit(lengths, seconds, 1)
  return max(float(fixed), 0.0), max(float(per_token), 0.0)


def parse_models(spec: str) -> list[tuple[str, int]]:
  """'opt-125m:1,tiny:2' -> [('opt-125m', 1), ('tiny', 2)] (instances >= 1)."""
  out = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, _, count = item.partition(":")
    try:
      instances = int(count) if count else 1
    except ValueError:
      instances = 0
    if not name or instances < 1:
      raise ValueError(f"--models: expected NAME:INSTANCES with INSTANCES >= 1, got {item!r}")
    out.append((name, instances))
  if not out:
    raise ValueError("--models: expected at least one NAME:INSTANCES pair, got none")
  return out


def load_custom_configs(path: str | None) -> dict[str, OPTConfig]:
  """{name: OPTConfig} from a JSON object of OPTConfig fields per name (None -> {})."""
  if path is None:
    return {}
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"--config_json {path!r}: cannot read a JSON object: {e}") from e
  if not isinstance(d, dict):
    raise ValueError(f"--config_json {path!r}: expected an object {{name: {{OPTConfig fields}}}}")
  known = set(OPTConfig.__dataclass_fields__)
  out = {}
  for name, fields in d.items():
    if not isinstance(fields, dict):
      raise ValueError(f"--config_json {path!r}: field {name!r}: expected an object of "
                       f"OPTConfig fields, got {fields!r}")
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"--config_json {path!r}: field {name!r}: unknown OPTConfig field(s) "
                       f"{unknown}; known: {sorted(known)}")
    out[name] = OPTConfig(**fields)
  return out


def resolve_config(name: str, custom: dict[str, OPTConfig]) -> OPTConfig:
  """A custom config by name, else the named OPT size."""
  return custom[name] if name in custom else opt_config(name)


def model_quality(name: str, tasks, table, default: float | None) -> tuple[dict[str, float], bool]:
  """({task: accuracy}, whether `default` was used because the table lacks the model/task)."""
  try:
    return quality_lib.quality_for(name, tasks, table), False
  except ValueError:
    if default is None:
      raise
    return {t: float(default) for t in tasks}, True


def main(argv):
  del argv
  if _OUT.value is None:
    raise app.UsageError("--out is required")
  if _MAX_BATCH.value < 1 or _CONTEXT_LEN.value < 1 or _REPEATS.value < 1 or _WARMUP.value < 1:
    raise app.UsageError("--max_batch, --context_len, --repeats and --warmup must be >= 1")
  max_len = _MAX_LEN.value or _CONTEXT_LEN.value + 1
  if max_len <= _CONTEXT_LEN.value:
    raise app.UsageError(f"--max_len must exceed --context_len, got {max_len}")
  try:
    lengths = sorted(int(x) for x in _PREFILL_LENGTHS.value)
  except ValueError as e:
    raise app.UsageError(f"--prefill_lengths: expected integers, got {_PREFILL_LENGTHS.value}") from e
  if not lengths or lengths[0] < 2:
    raise app.UsageError(f"--prefill_lengths: expected lengths >= 2, got {lengths}")
  models = parse_models(_MODELS.value)
  custom = load_custom_configs(_CONFIG_JSON.value)
  table = quality_lib.load_quality_table(_QUALITY.value or quality_lib.DEFAULT_QUALITY_PATH)
  dtype = jnp.dtype(_DTYPE.value)
  device = jax.devices()[0]
  entries, notes = [], []
  for i, (name, instances) in enumerate(models):
    config = resolve_config(name, custom)
    for length in (max_len, max(lengths) + 1):
      if length > config.max_position_embeddings:
        raise app.UsageError(f"model {name}: a cache of {length} tokens exceeds "
                             f"max_position_embeddings={config.max_position_embeddings}")
    params = opt.init_params(config, jax.random.key(_SEED.value + i), dtype)
    decode = [time_decode(params, config, b, _CONTEXT_LEN.value, max_len, dtype,
                          _REPEATS.value, _WARMUP.value, _SEED.value)
              for b in range(1, _MAX_BATCH.value + 1)]
    prefill = time_prefill(params, config, lengths, dtype, _REPEATS.value, _WARMUP.value,
                           _SEED.value)
    fixed, per_token = fit_prefill(lengths, prefill)
    quality, defaulted = model_quality(name, _TASKS.value, table, _QUALITY_DEFAULT.value)
    entries.append({"name": name, "instances": instances,
                    "gpus_per_instance": _GPUS_PER_INSTANCE.value, "max_batch": _MAX_BATCH.value,
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
      f"Measured by launch/profile.py on {device.platform} device '{device.device_kind}' "
      f"(jax {jax.__version__}, {_DTYPE.value}, random weights, {date}). decode_step_s[b-1]: "
      f"median of {_REPEATS.value} Engine.generate_step calls (after {_WARMUP.value} warm-up) "
      f"of an engine with exactly b slots, all active, caches filled to {_CONTEXT_LEN.value} "
      f"tokens (max_len {max_len}), block_until_ready on the state. prefill: median "
      f"prefill+insert time at each length, least-squares line (clipped at 0). Quality: "
      f"{_QUALITY.value or 'bes/data/quality/opt_zero_shot_accuracy.csv'}. " + "; ".join(notes))
  d = {"name": _NAME.value or f"{device.platform}-measured", "provenance": provenance,
       "tasks": list(_TASKS.value), "models": entries}
  profile = profile_lib.profile_from_dict(d, source=_OUT.value)
  profile_lib.save_profile(profile, _OUT.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
