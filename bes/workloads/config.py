"""Workloads from `ml_collections` configs (`--config.workload.<key>=...` in launchers).

Keys (`default_workload_config`):
  kind: 'poisson' | 'bursty' | 'trace'.
  rate: mean requests per second (> 0; default 5.0). For 'trace': the mean rate
    (len / span) after rescaling time; set 0 to keep the trace's own timing.
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
  max_prompt_len, max_output_len: clip bounds in tokens of generated lengths (defaults 1536
    and 512: prompt + output fit OPT's 2048 positions). A trace's own lengths
    (lengths 'trace') are replayed unclipped.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from bes.workloads import bursty as bursty_lib
from bes.workloads import lengths as lengths_lib
from bes.workloads.base import positive_float
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


def _number(cfg, name: str, where: str, strict: bool) -> float:
  return positive_float(cfg[name], f"{where}.{name}", strict)


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
  max_len = {}
  for name in ("max_prompt_len", "max_output_len"):
    value = cfg[name]
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
        or value != int(value) or value < 1):
      raise ValueError(f"{where}.{name}: expected an integer >= 1 tokens, got {value!r}")
    max_len[name] = int(value)
  max_prompt, max_output = max_len["max_prompt_len"], max_len["max_output_len"]
  mix = mix_from_strings(cfg.get("task_mix", ""), cfg.get("shifts", ""), len(tasks), where)
  model = lengths_lib.LengthModel.azure_conv(len(tasks), max_prompt, max_output)

  if kind == "poisson":
    return PoissonWorkload.create(_number(cfg, "rate", where, strict=True), mix, model, where)
  if kind == "bursty":
    knobs = {name: cfg.bursty[name] for name in cfg.bursty}
    return bursty_lib.BurstyWorkload.create(
        _number(cfg, "rate", where, strict=True), mix, model, f"{where}.bursty", **knobs)

  path = cfg.get("trace", "")
  if not path:
    raise ValueError(f"{where}.trace: kind 'trace' needs a CSV path")
  if not os.path.isfile(path):
    raise ValueError(f"{where}.trace: no such file {path!r}")
  rate = _number(cfg, "rate", where, strict=False)
  trace = load_trace_csv(path, tasks)
  # Tasks drawn here are placeholders when the trace has none: the workload redraws them.
  requests = trace_requests(trace, mix, jax.random.key(0), target_rate=rate or None)
  return TraceWorkload.create(requests, mix, draw_tasks=trace.task is None,
                              random_start=bool(cfg.get("trace_random_start", False)),
                              lengths=model if lengths_kind == "azure_conv" else None)
