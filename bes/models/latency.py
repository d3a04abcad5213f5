"""Latency measurement of the slot engine (`bes.models.engine`), for measured profiles.

What is timed (seconds, wall clock, `jax.block_until_ready` on the results):
  * `time_decode`: one `Engine.generate_step` at each running batch b = 1..max_batch, by an
    engine with exactly b slots, all active, every slot's cache filled to `context_len`
    tokens (cache contents are zeros: the time does not depend on them). The engine attends
    densely over all `max_len` cache entries (masked), so the time is that of a runtime
    using the same max_len. Each call starts from a fresh state built outside the timed
    region. Median of `repeats` calls after `warmup` untimed ones (the first compiles), the
    batch sizes taken round-robin (every round times b = 1..max_batch once), so a busy
    period of a shared machine does not skew a few entries.
  * `time_prefill`: the admission of one request, `Engine.prefill` + `Engine.insert`, at each
    prompt length (the engine's buckets are exactly those lengths: nothing is padded), the
    lengths round-robin like the batch sizes.
  * `fit_prefill`: least-squares line seconds = fixed + per_token * length, each clipped at 0.
With `mesh` the engines run tensor-parallel on it (`Engine(mesh=...)`: a sharded engine's
times, collectives included).

Also the small parsers of the profiler's command line (`launch/profile_latency.py`).
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bes import io_util
from bes import quality as quality_lib
from bes.models import engine as engine_lib
from bes.models.opt_config import OPTConfig, opt_config


def _interleaved(calls, repeats: int, warmup: int) -> list[float]:
  """Median seconds of each of `calls` (each returns the seconds it timed), run round-robin.

  `warmup` untimed rounds first (the first compiles), then `repeats` timed rounds: a slow
  period of a shared machine hits every call alike instead of a few table entries.
  """
  for _ in range(warmup):
    for call in calls:
      call()
  times = [[] for _ in calls]
  for _ in range(repeats):
    for i, call in enumerate(calls):
      times[i].append(call())
  return [statistics.median(t) for t in times]


def _decode_call(eng: engine_lib.Engine, context_len: int, rng: np.random.Generator):
  """A timed `generate_step` of a fresh state: every slot active, cache_len = context_len."""
  b, vocab = eng.num_slots, eng.config.vocab_size

  def call() -> float:
    n = jnp.full((b,), context_len, jnp.int32)
    state = eng.init_decode_state().replace(
        next_token=jnp.asarray(rng.integers(3, vocab, b), jnp.int32), position=n,
        cache_len=jnp.array(n), active=jnp.ones((b,), bool), generated=jnp.ones((b,), jnp.int32))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state, tokens, _ = eng.generate_step(state)
    jax.block_until_ready((state, tokens))
    return time.perf_counter() - t0

  return call


def time_decode(params, config: OPTConfig, max_batch: int, context_len: int, max_len: int,
                dtype, repeats: int, warmup: int, seed: int = 0, mesh=None) -> list[float]:
  """Seconds of one decode iteration at each running batch 1..max_batch (module docstring).

  One engine per batch size (exactly b slots); only one decode state is alive at a time.
  """
  rng = np.random.default_rng(seed)
  calls = [_decode_call(engine_lib.Engine(params, config, num_slots=b, max_len=max_len,
                                          dtype=dtype, mesh=mesh), context_len, rng)
           for b in range(1, max_batch + 1)]
  return _interleaved(calls, repeats, warmup)


def time_prefill(params, config: OPTConfig, lengths: list[int], dtype, repeats: int,
                 warmup: int, seed: int = 0, mesh=None) -> list[float]:
  """Seconds of `prefill` + `insert` of one prompt of each length in `lengths` (tokens)."""
  max_len = max(lengths) + 1
  eng = engine_lib.Engine(params, config, num_slots=1, max_len=max_len, dtype=dtype,
                          buckets=sorted(set(lengths)) + [max_len], mesh=mesh)
  rng = np.random.default_rng(seed)
  box = [eng.init_decode_state()]

  def admit(prompt):
    def call() -> float:
      t0 = time.perf_counter()
      box[0] = eng.insert(eng.prefill(prompt), box[0], 0)
      jax.block_until_ready(box[0])
      return time.perf_counter() - t0
    return call

  prompts = [rng.integers(3, config.vocab_size, n).astype(np.int32) for n in lengths]
  return _interleaved([admit(p) for p in prompts], repeats, warmup)


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
    with open(path, encoding="utf-8-sig") as f:
      d = json.load(f)
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(path, "--config_json ")) from None
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
    try:
      out[name] = OPTConfig(**fields)
    except (TypeError, ValueError) as e:
      raise ValueError(f"--config_json {path!r}: field {name!r}: {e}") from e
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
