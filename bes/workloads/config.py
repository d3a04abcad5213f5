"""Workloads from `ml_collections` configs (`--config.workload.<key>=...` in launchers).

Keys (`default_workload_config`):
  kind: 'poisson' | 'bursty' | 'trace'.
  rate: mean requests per second (> 0). For 'trace': the mean rate (len / span) after
    rescaling time; 0 keeps the trace's own timing.
  task_mix: weights in the profile's task order, a comma string ('0.7,0.1,0.1,0.1') or a
    list; '' = uniform. Normalised.
  shifts: piecewise mixes over time, 'T1:w,...;T2:w,...' (seconds since the workload start,
    strictly increasing): from T1 on use the first mix, etc. '' = no shifts.
  trace: CSV path (kind 'trace'), see `bes.workloads.trace`.
  trace_random_start: each episode (`init`) starts at a uniformly random trace request.
  bursty.window_s: seconds per window (default 10).
  bursty.rate_sigma: sigma of the per-window lognormal rate multiplier, E = 1 (default 1.14).
  bursty.cv_median: median per-window inter-arrival CV (default 1.32).
  bursty.cv_sigma: sigma of log CV across windows (default 0.49).
    (bursty defaults: `fit_bursty_params` on the Azure code trace, see `bes.workloads.bursty`.)
  lengths: 'auto' (default: 'trace' for kind 'trace', else 'azure_conv'), 'azure_conv'
    (lognormals fitted to the Azure conv trace, shared by all tasks, see
    `bes.workloads.lengths`) or 'trace' (the trace's own lengths; kind 'trace' only).
  max_prompt_len, max_output_len: clip bounds in tokens for every workload, trace lengths
    included (defaults 1536 and 512: prompt + output fit OPT's 2048 positions).
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from bes.workloads import bursty as bursty_lib
from bes.workloads import lengths as lengths_lib
from bes.workloads.mix import mix_from_strings
from bes.workloads.poisson import PoissonWorkload
from bes.workloads.trace import TraceWorkload, load_trace_csv, trace_requests

KINDS = ("poisson", "bursty", "trace")
LENGTHS = ("auto", "azure_conv", "trace")


def default_workload_config() -> ml_collections.ConfigDict:
  """The workload keys with their defaults (module docstring). Not type-safe, so that
  `task_mix` may be set to a string or a list."""
  return ml_collections.ConfigDict({
      "kind": "poisson",
      "rate": 5.0,
      "task_mix": "",
      "shifts": "",
      "trace": "",
      "trace_random_start": False,
      "bursty": dict(bursty_lib.DEFAULT_BURSTY),
      "lengths": "auto",
      "max_prompt_len": lengths_lib.DEFAULT_MAX_PROMPT_LEN,
      "max_output_len": lengths_lib.DEFAULT_MAX_OUTPUT_LEN,
  }, type_safe=False)


def _number(cfg, name: str, where: str, minimum: float, strict: bool) -> float:
  value = cfg[name]
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}.{name}: expected a number, got {value!r}") from None
  if not np.isfinite(value) or value < minimum or (strict and value == minimum):
    op = ">" if strict else ">="
    raise ValueError(f"{where}.{name}: expected a number {op} {minimum}, got {cfg[name]!r}")
  return value


def workload_from_config(cfg: ml_collections.ConfigDict, tasks: Sequence[str],
                         where: str = "config.workload"):
  """Builds the workload a config describes, for a profile with task names `tasks`.

  Trace files are read here (host-side); a trace without a task column draws tasks from the
  mix at each arrival. Raises ValueError naming the flag (`where.key`) on bad values.
  """
  tasks = list(tasks)
  if not tasks:
    raise ValueError(f"{where}: the profile has no tasks")
  kind = cfg.get("kind")
  if kind not in KINDS:
    raise ValueError(f"{where}.kind: expected one of {KINDS}, got {kind!r}")
  lengths_kind = cfg.get("lengths", "auto")
  if lengths_kind not in LENGTHS:
    raise ValueError(f"{where}.lengths: expected one of {LENGTHS}, got {lengths_kind!r}")
  if lengths_kind == "trace" and kind != "trace":
    raise ValueError(f"{where}.lengths: 'trace' needs kind 'trace', got kind {kind!r}")
  max_prompt = int(_number(cfg, "max_prompt_len", where, 1, strict=False))
  max_output = int(_number(cfg, "max_output_len", where, 1, strict=False))
  mix = mix_from_strings(cfg.get("task_mix", ""), cfg.get("shifts", ""), len(tasks), where)
  model = lengths_lib.LengthModel.azure_conv(len(tasks), max_prompt, max_output)

  if kind == "poisson":
    return PoissonWorkload(rate_per_s=np.float32(_number(cfg, "rate", where, 0, True)), mix=mix,
                           lengths=model)
  if kind == "bursty":
    b = cfg.bursty
    knobs = {"window_s": _number(b, "window_s", f"{where}.bursty", 0, True),
             "rate_sigma": _number(b, "rate_sigma", f"{where}.bursty", 0, False),
             "cv_median": _number(b, "cv_median", f"{where}.bursty", 0, True),
             "cv_sigma": _number(b, "cv_sigma", f"{where}.bursty", 0, False)}
    if knobs["window_s"] > 2000:
      raise ValueError(f"{where}.bursty.window_s: expected at most 2000 s, got {b.window_s!r}")
    return bursty_lib.BurstyWorkload(
        rate_per_s=np.float32(_number(cfg, "rate", where, 0, True)), mix=mix, lengths=model,
        **{k: np.float32(v) for k, v in knobs.items()})

  path = cfg.get("trace", "")
  if not path:
    raise ValueError(f"{where}.trace: kind 'trace' needs a CSV path")
  if not os.path.isfile(path):
    raise ValueError(f"{where}.trace: no such file {path!r}")
  rate = _number(cfg, "rate", where, 0, False)
  trace = load_trace_csv(path, tasks).clip_lengths(max_prompt, max_output)
  # Tasks drawn here are placeholders when the trace has none: the workload redraws them.
  requests = trace_requests(trace, mix, jax.random.key(0), target_rate=rate or None)
  return TraceWorkload.create(requests, mix, draw_tasks=trace.task is None,
                              random_start=bool(cfg.get("trace_random_start", False)),
                              lengths=model if lengths_kind == "azure_conv" else None)
