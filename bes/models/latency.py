"""Latency measurement of the slot engine (`bes.models.engine`), for measured profiles.

What is timed (seconds, wall clock, `jax.block_until_ready` on the results):
  * `time_decode`: one `Engine.generate_step` of an engine with exactly `batch` slots, all
    active, every slot's cache filled to `context_len` tokens (cache contents are zeros: the
    time does not depend on them). The engine attends densely over all `max_len` cache
    entries (masked), so the time is that of a runtime using the same max_len. Median of
    `repeats` calls after `warmup` untimed ones (the first compiles); the cache length is
    reset to `context_len` before every call, outside the timed region.
  * `time_prefill`: the admission of one request, `Engine.prefill` + `Engine.insert`, at each
    prompt length (the engine's buckets are exactly those lengths: nothing is padded).
  * `fit_prefill`: least-squares line seconds = fixed + per_token * length, each clipped at 0.

Also the small parsers of the profiler's command line (`launch/profile.py`).
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bes import quality as quality_lib
from bes.models import engine as engine_lib
from bes.models.opt_config import OPTConfig, opt_config


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
