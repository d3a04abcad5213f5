"""The one trace both sides of a sim-to-real study replay, and simulating it.

`prepare_trace` (a recorded trace: truncated, rescaled, tasks assigned, lengths capped and
clipped to the model's context) and `bursty_trace` (the project's bursty generator) write ONE
trace CSV `arrived_at,num_prefill_tokens,num_decode_tokens,task` that the simulator
(`launch/simulate.py --trace=T.csv`, its own timing) and the load generator
(`launch/loadgen.py`) both replay; `simulate_trace` runs it through the simulator in process.
Arrival times are written as exact whole microseconds (the simulator's clock resolution,
`bes.clock.seconds_to_us`), so both sides replay identical times. `bes/serving/compare.py`
compares the two sides' outcomes.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from bes import clock, io_util, metrics
from bes.profile import Profile
from bes.workloads import trace as trace_lib

TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens", "task")


# ----------------------------------------------------------------------- trace files
def _format_us(us: int) -> str:
  """Whole microseconds as exact decimal seconds ('12.000345')."""
  return f"{us // clock.US_PER_S}.{us % clock.US_PER_S:06d}"


def _write_trace(out_csv: str, arrival_us, prompt_len, output_len, task, tasks) -> str:
  lines = [",".join(TRACE_COLUMNS) + "\n"]
  names = list(tasks)
  for a, p, o, t in zip(arrival_us.tolist(), prompt_len.tolist(), output_len.tolist(),
                        task.tolist()):
    lines.append(f"{_format_us(a)},{p},{o},{names[t]}\n")
  path = os.path.abspath(os.fspath(out_csv))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  io_util.atomic_write_text(path, "".join(lines))
  return path


def _summary(path: str, arrival_us, prompt_len, output_len, task, tasks) -> dict[str, Any]:
  span = float(arrival_us[-1] - arrival_us[0]) / clock.US_PER_S
  return {
      "path": path, "rows": int(arrival_us.size), "span_s": span,
      "mean_rate": float(arrival_us.size / span) if span > 0 else None,
      "first_arrival_s": float(arrival_us[0]) / clock.US_PER_S,
      "last_arrival_s": float(arrival_us[-1]) / clock.US_PER_S,
      "task_counts": {name: int(np.sum(task == i)) for i, name in enumerate(tasks)},
      "prompt_len_mean": float(np.mean(prompt_len)), "prompt_len_max": int(np.max(prompt_len)),
      "output_len_mean": float(np.mean(output_len)), "output_len_max": int(np.max(output_len)),
  }


def clip_lengths(prompt_len, output_len, max_context: int) -> tuple[np.ndarray, np.ndarray]:
  """Lengths that fit a context of `max_context` tokens: prompt >= 1, output >= 1 and
  prompt + output <= max_context. A prompt of 0 becomes 1; an over-long request loses prompt
  tokens first (down to 1), then output tokens. Returns int64 (prompt [N], output [N])."""
  if int(max_context) != max_context or max_context < 2:
    raise ValueError(f"max_context: expected an integer >= 2 tokens, got {max_context!r}")
  p = np.maximum(np.asarray(prompt_len, np.int64), 1)
  o = np.maximum(np.asarray(output_len, np.int64), 1)
  p = np.where(p + o > max_context, np.maximum(max_context - o, 1), p)
  o = np.minimum(o, max_context - p)
  return p, o


def prepare_trace(trace_csv: str, tasks: Sequence[str], *, max_context: int,
                  num_requests: int | None = None, time_scale: float | None = None,
                  rate: float | None = None, seed: int = 0,
                  max_prompt_len: int | None = None, max_output_len: int | None = None,
                  out_csv: str) -> dict[str, Any]:
  """Writes the exact requests both sides replay (module docstring) and returns a summary.

  Args:
    trace_csv: a trace (`bes.workloads.trace.load_trace_csv`; task names or indices in
      `tasks` if it has a task column).
    tasks: the profile's task names (written by name).
    max_context: the serving model's context in tokens (`clip_lengths`).
    num_requests: keep only the first N rows (None: all).
    time_scale: multiply arrival times by this (> 0); or
    rate: rescale time to this mean rate len / span in requests/s (`scale_to_rate`, applied
      after truncation). At most one of the two.
    seed: draws each request's task uniformly over `tasks` when the trace has no task column.
    max_prompt_len, max_output_len: optional caps (tokens) applied to each length first,
      e.g. the bounds the router was trained on (config.workload.max_prompt/output_len).
    out_csv: the CSV written (`arrived_at,num_prefill_tokens,num_decode_tokens,task`).

  Times are shifted so that the first request arrives at 0 s, then rounded to whole
  microseconds. Returns {'path', 'rows', 'span_s', 'mean_rate', 'first_arrival_s',
  'last_arrival_s', 'task_counts', 'tasks_from' ('trace' | 'uniform'), 'prompt_clipped',
  'prompt_raised' (0 -> 1), 'output_clipped', 'prompt_len_mean/max', 'output_len_mean/max'}.
  """
  tasks = list(tasks)
  if not tasks:
    raise ValueError("prepare_trace: tasks expected at least one task name")
  if time_scale is not None and rate is not None:
    raise ValueError("prepare_trace: expected at most one of time_scale and rate")
  trace = trace_lib.load_trace_csv(trace_csv, tasks)
  n = len(trace)
  if num_requests is not None:
    if int(num_requests) != num_requests or num_requests < 2:
      raise ValueError(f"prepare_trace: num_requests expected an integer >= 2, "
                       f"got {num_requests!r}")
    n = min(n, int(num_requests))
  arrival = trace.arrival_s[:n] - trace.arrival_s[0]
  if not arrival[-1] > 0:
    raise ValueError(f"{trace_csv}: the first {n} requests all arrive at one time; "
                     "expected a positive span")
  if time_scale is not None:
    if not (np.isfinite(time_scale) and time_scale > 0):
      raise ValueError(f"prepare_trace: time_scale expected > 0, got {time_scale!r}")
    arrival = arrival * float(time_scale)
  elif rate is not None:
    arrival = trace_lib.scale_to_rate(arrival, rate)
  arrival_us = clock.seconds_to_us(arrival)
  if trace.task is not None:
    task, tasks_from = trace.task[:n], "trace"
  else:
    task = np.random.default_rng(seed).integers(0, len(tasks), size=n)
    tasks_from = "uniform"
  prompt0, output0 = trace.prompt_len[:n], trace.output_len[:n]
  capped_p = prompt0 if max_prompt_len is None else np.minimum(prompt0, int(max_prompt_len))
  capped_o = output0 if max_output_len is None else np.minimum(output0, int(max_output_len))
  prompt, output = clip_lengths(capped_p, capped_o, max_context)
  path = _write_trace(out_csv, arrival_us, prompt, output, task, tasks)
  summary = _summary(path, arrival_us, prompt, output, task, tasks)
  summary.update(source=os.fspath(trace_csv), tasks_from=tasks_from, max_context=int(max_context),
                 prompt_clipped=int(np.sum(prompt < prompt0)),
                 prompt_raised=int(np.sum(prompt > prompt0)),
                 output_clipped=int(np.sum(output < output0)))
  return summary


_BURSTY_CHUNK = 4096
_BURSTY_RUN = []   # the jitted chunk, built on first use (jax is imported lazily)


def _bursty_chunk(workload, state, key):
  """`_BURSTY_CHUNK` more requests of `workload` from `state` (jitted once per process)."""
  if not _BURSTY_RUN:
    import jax  # pylint: disable=g-import-not-at-top

    def run(workload, state, key):
      def body(s, k):
        request, s = workload.next(k, s)
        return s, request
      return jax.lax.scan(body, state, jax.random.split(key, _BURSTY_CHUNK))
    _BURSTY_RUN.append(jax.jit(run))
  return _BURSTY_RUN[0](workload, state, key)


def bursty_trace(rate: float, duration_s: float, tasks: Sequence[str], *,
                 window_s: float | None = None, rate_sigma: float | None = None,
                 cv_median: float | None = None, cv_sigma: float | None = None,
                 task_mix=None, prompt: tuple[float, float] | None = None,
                 output: tuple[float, float] | None = None,
                 max_prompt_len: int | None = None, max_output_len: int | None = None,
                 seed: int = 0, out_csv: str) -> dict[str, Any]:
  """Writes a bursty trace CSV drawn by the project's generator and returns its summary.

  The requests are those of `bes.workloads.bursty.BurstyWorkload` (MAF-style: every window
  draws its rate and inter-arrival CV) arriving before `duration_s`.

  Args:
    rate: mean requests per second (> 0). duration_s: keep arrivals in [0, duration_s).
    tasks: the profile's task names. task_mix: weights in `tasks` order (a list or a comma
      string; None: uniform).
    window_s, rate_sigma, cv_median, cv_sigma: the burstiness knobs (None: the defaults
      `bursty.DEFAULT_BURSTY`, fitted to the Azure code trace; rate_sigma=0, cv_median=1,
      cv_sigma=0 is Poisson).
    prompt, output: (mu, sigma) of log tokens (None: the Azure conv fit,
      `bes.workloads.lengths`; sigma 0 gives the fixed length rint(exp(mu))).
    max_prompt_len, max_output_len: clip bounds in tokens (None: 1536 and 512).
    seed: the generator's seed. The draws for a seed do not depend on `duration_s`: a longer
      duration extends the same trace.
    out_csv: the CSV written (`arrived_at,num_prefill_tokens,num_decode_tokens,task`).

  Returns {'path', 'rows', 'span_s', 'mean_rate' (rows / span), 'duration_s', 'rate'
  (rows / duration_s), 'first_arrival_s', 'last_arrival_s', 'task_counts', 'bursty' (the
  knobs used), 'prompt_len_mean/max', 'output_len_mean/max'}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from bes.workloads import bursty as bursty_lib  # pylint: disable=g-import-not-at-top
  from bes.workloads import lengths as lengths_lib  # pylint: disable=g-import-not-at-top
  from bes.workloads.mix import mix_from_strings  # pylint: disable=g-import-not-at-top

  tasks = list(tasks)
  if not tasks:
    raise ValueError("bursty_trace: tasks expected at least one task name")
  if not (np.isfinite(duration_s) and duration_s > 0):
    raise ValueError(f"bursty_trace: duration_s expected > 0 seconds, got {duration_s!r}")
  knobs = {name: value for name, value in (("window_s", window_s), ("rate_sigma", rate_sigma),
                                           ("cv_median", cv_median), ("cv_sigma", cv_sigma))
           if value is not None}
  mix = mix_from_strings("" if task_mix is None else task_mix, "", len(tasks), "bursty_trace")
  lengths = lengths_lib.LengthModel.create(
      len(tasks), prompt or lengths_lib.AZURE_CONV_PROMPT,
      output or lengths_lib.AZURE_CONV_OUTPUT,
      max_prompt_len or lengths_lib.DEFAULT_MAX_PROMPT_LEN,
      max_output_len or lengths_lib.DEFAULT_MAX_OUTPUT_LEN, where="bursty_trace")
  workload = bursty_lib.BurstyWorkload.create(rate, mix, lengths, "bursty_trace", **knobs)
  duration_us = int(clock.seconds_to_us(duration_s))
  key = jax.random.key(seed)
  state = workload.init(jax.random.fold_in(key, 0))
  parts, last_us, c = [], 0, 0
  while last_us < duration_us:
    c += 1
    state, requests = _bursty_chunk(workload, state, jax.random.fold_in(key, c))
    requests = requests.to_numpy()
    parts.append(requests)
    last_us += int(np.sum(requests.gap_us, dtype=np.int64))
  gap = np.concatenate([np.asarray(r.gap_us, np.int64) for r in parts])
  arrival_us = np.cumsum(gap)
  keep = arrival_us < duration_us
  if np.sum(keep) < 2:
    raise ValueError(f"bursty_trace: only {int(np.sum(keep))} arrival(s) in {duration_s} s "
                     f"at {rate} requests/s; expected at least 2 (longer duration or rate)")
  cat = lambda f: np.concatenate([np.asarray(getattr(r, f), np.int64) for r in parts])[keep]
  task, prompt_len, output_len = cat("task"), cat("prompt_len"), cat("output_len")
  arrival_us = arrival_us[keep]
  path = _write_trace(out_csv, arrival_us, prompt_len, output_len, task, tasks)
  summary = _summary(path, arrival_us, prompt_len, output_len, task, tasks)
  summary.update(duration_s=float(duration_s), rate=float(arrival_us.size / duration_s),
                 target_rate=float(rate),
                 bursty={**bursty_lib.DEFAULT_BURSTY, **{k: float(v) for k, v in knobs.items()}})
  return summary


def simulate_trace(trace_csv: str, policy: str, overrides: Mapping[str, Any] | None = None,
                   config=None) -> tuple[dict[str, np.ndarray], Profile]:
  """The simulated side in-process: `launch/simulate.py --trace=trace_csv --policy=policy`
  (the trace at its own timing, its own lengths and task column) without the subprocess.

  Args:
    trace_csv: a trace written by `prepare_trace` / `bursty_trace`.
    policy: one fixed policy spec (`static:M`, `round_robin`, `task_map:...`, `random`).
    overrides: more dotted config keys ({'profile': path, 'env.deadline_s': 3.0, ...}).
    config: the base ConfigDict (default `configs/default.py`).

  Returns (outcomes with an `id` column as `read_outcomes_csv` gives, the profile).
  """
  from bes import config_cli  # pylint: disable=g-import-not-at-top
  from bes.experiment import Setup, evaluate  # pylint: disable=g-import-not-at-top
  if config is None:
    from configs import default  # pylint: disable=g-import-not-at-top
    config = default.get_config()
  given = dict(config_cli.trace_overrides(os.fspath(trace_csv), 0.0))
  given.update(overrides or {})
  setup = Setup.from_config(config_cli.apply_overrides(config, given))
  _, outcomes = evaluate.simulate(setup, [policy], log=lambda *_: None)
  o = outcomes[policy]
  out = {k: np.asarray(o[k]) for k in metrics.OUTCOME_KEYS}
  out["id"] = np.arange(out["arrival"].size, dtype=np.int64)
  return out, setup.profile


