"""A profile's times and a serving config's deadlines on the simulator's clock.

`group_params` converts one model's latency (float64 seconds, as written) to the exact
fixed-point clock (`bes/clock.py`) and refuses what the clock cannot hold; `config_us`
checks the serving config's deadlines and soft window; `length_bounds` reads the longest
prompt and output a workload can produce (they bound an iteration's prefill and a
request's budget). Used by `serving_env.make_env`.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bes import clock
from bes.env import instances as inst


def length_bounds(workload) -> tuple[int, int] | None:
  """(longest prompt, longest output) in tokens a workload can produce, from its length
  model or its trace; None when unknown (then nothing is assumed)."""
  lengths = getattr(workload, "lengths", None)
  if lengths is not None:
    return int(lengths.max_prompt_len), int(lengths.max_output_len)
  requests = getattr(workload, "requests", None)
  if requests is None:
    return None
  try:
    return int(np.max(np.asarray(requests.prompt_len))), int(np.max(np.asarray(requests.output_len)))
  except (TypeError, ValueError):  # traced arrays (jax tracer errors are TypeErrors), empty trace
    return None


def group_params(model, max_prompt_len: int | None = None) -> inst.GroupParams:
  """One model's latency (float64 seconds) on the simulator's fixed-point clock, exactly
  rounded (`clock.to_fixed`). Refuses decode steps under 1 us and iterations (decode at the
  full batch plus the prefill of `max_batch` prompts of `max_prompt_len` tokens, when known)
  of `clock.MAX_ITERATION_US` or more, naming the model and field."""
  where = f"profile model {model.name!r}"
  seconds = {"decode_step_s": np.asarray(model.decode_step_s, np.float64),
             "prefill_s_fixed": np.float64(model.prefill_s_fixed),
             "prefill_s_per_token": np.float64(model.prefill_s_per_token)}
  for field, x in seconds.items():
    if not np.all(np.isfinite(x)) or np.any(x < 0):
      raise ValueError(f"{where}: field {field!r} must be finite and >= 0 seconds, got {x}")
  if np.any(seconds["decode_step_s"] < 1e-6):
    raise ValueError(f"{where}: field 'decode_step_s' must be >= 1 microsecond at every batch "
                     f"size, got {seconds['decode_step_s'].min()} s")
  tokens = int(model.max_batch) * int(max_prompt_len or 0)
  longest = (seconds["decode_step_s"].max() + seconds["prefill_s_fixed"]
             + seconds["prefill_s_per_token"] * tokens)
  if longest * clock.US_PER_S >= clock.MAX_ITERATION_US:
    raise ValueError(f"{where}: an iteration may last {longest:.1f} s (decode_step_s at the full "
                     f"batch + prefill of {tokens} prompt tokens); the clock holds iterations "
                     f"below {clock.MAX_ITERATION_US / clock.US_PER_S:.0f} s")
  decode = clock.to_fixed(np.concatenate([[seconds["decode_step_s"][0]], seconds["decode_step_s"]]))
  as_fixed = lambda parts: clock.Fixed(jnp.asarray(parts[0], jnp.int32), jnp.asarray(parts[1], jnp.int32))
  return inst.GroupParams(decode=as_fixed(decode),
                          prefill_fixed=as_fixed(clock.to_fixed(seconds["prefill_s_fixed"])),
                          prefill_per_token=as_fixed(clock.to_fixed(seconds["prefill_s_per_token"])))


def config_us(us, field: str, limit: int = clock.LATE_CLAMP_US) -> np.ndarray:
  """Whole microseconds of a serving-config field, checked to lie in [0, limit): deadlines
  and soft windows must stay below `clock.LATE_CLAMP_US` (about 9 minutes)."""
  us = np.asarray(us, np.int64)
  if np.any(us < 0) or np.any(us >= limit):
    raise ValueError(f"serving config: field {field!r} must be below {limit / clock.US_PER_S:.0f} s "
                     f"(the clock's range), got {us / clock.US_PER_S} s")
  return us
