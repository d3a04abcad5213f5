"""Trace files and trace replay.

A trace CSV has the columns `arrived_at,num_prefill_tokens,num_decode_tokens[,task]`:
arrival time in seconds from the trace start (non-decreasing, >= 0), prompt tokens (integer
>= 0), output tokens (integer >= 1) and optionally the task (an index into the profile's task
list, or a task name). `load_trace_csv` reads it on the host with errors that name the file,
the line and the column; `trace_requests` turns it into exact `Requests`; `TraceWorkload`
replays those inside jit, one request per `next`.

Span and rate: the span of a trace is `arrival_s[-1] - arrival_s[0]` (first to last arrival)
and its mean rate is `len(trace) / span` requests per second. A trace file must have a
positive span (at least two distinct arrival times): with zero span (one row, or every
arrival at the same time) its rate, the replay's wrap gap and utility per second are all
undefined, so `load_trace_csv` refuses it up front, naming the file.

Files are UTF-8 text, with or without a byte-order mark.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes import clock
from bes import io_util
from bes import requests as requests_lib
from bes.requests import Requests
from bes.workloads.base import Elapsed, open_uniforms
from bes.workloads.lengths import LengthModel
from bes.workloads.mix import TaskMix

COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class TraceData:
  """A loaded trace (host-side numpy arrays of shape [L]).

  Attributes:
    arrival_s: float64 arrival times in seconds, non-decreasing.
    prompt_len: int64 prompt tokens (>= 0).
    output_len: int64 output tokens (>= 1).
    task: int64 task indices, or None when the file has no task column.
    path: where it was read from ('' if built in memory).
  """
  arrival_s: np.ndarray
  prompt_len: np.ndarray
  output_len: np.ndarray
  task: np.ndarray | None = None
  path: str = ""

  def __len__(self) -> int:
    return int(self.arrival_s.shape[0])

  def span_s(self) -> float:
    """First to last arrival, seconds."""
    return float(self.arrival_s[-1] - self.arrival_s[0])

  def mean_rate(self) -> float:
    """Requests per second: len / span."""
    return len(self) / self.span_s()


def _parse_int(text: str, where: str, minimum: int) -> int:
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"{where}: expected an integer, got {text!r}") from None
  if not np.isfinite(value) or value != int(value):
    raise ValueError(f"{where}: expected an integer, got {text!r}")
  if value < minimum:
    raise ValueError(f"{where}: expected an integer >= {minimum}, got {text!r}")
  if value > _INT32_MAX:
    raise ValueError(f"{where}: {text!r} does not fit int32")
  return int(value)


def _parse_task(text: str, where: str, tasks: Sequence[str] | None) -> int:
  text = text.strip()
  if tasks is not None and text in tasks:
    return list(tasks).index(text)
  try:
    index = int(text)
  except ValueError:
    known = f"one of {list(tasks)}" if tasks is not None else "an index (pass tasks= for names)"
    raise ValueError(f"{where}: unknown task {text!r}; expected {known}") from None
  if index < 0 or (tasks is not None and index >= len(tasks)):
    bound = f"0..{len(tasks) - 1}" if tasks is not None else ">= 0"
    raise ValueError(f"{where}: task index {index} out of range (expected {bound})")
  return index


def load_trace_csv(path: str, tasks: Sequence[str] | None = None) -> TraceData:
  """Reads a trace CSV (module docstring) into `TraceData`.

  Args:
    path: the CSV file (header line required; extra columns are ignored).
    tasks: the profile's task names, to resolve and check the `task` column.

  Raises:
    ValueError naming the file, the line (1 = header) and the column for a missing column,
    an empty file, a non-numeric, negative or decreasing time, a non-integer or negative
    length, an output length < 1, or an unknown task; naming the file for one that cannot
    be read, is not UTF-8 text, or has zero span (module docstring).
  """
  path = os.fspath(path)
  try:
    trace = _read_trace_csv(path, tasks)
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(path)) from None
  except OSError as e:
    raise ValueError(f"{path}: cannot read the trace file ({e.strerror or e})") from None
  if not trace.span_s() > 0:
    raise ValueError(f"{path}: zero time span (all {len(trace)} arrival(s) at "
                     f"{trace.arrival_s[0]} s); expected at least two distinct arrival times")
  return trace


def _read_trace_csv(path: str, tasks: Sequence[str] | None) -> TraceData:
  """`load_trace_csv` without the decoding and span checks."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
      raise ValueError(f"{path}: empty file; expected a header line {','.join(COLUMNS)}[,task]")
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise ValueError(f"{path}:1: missing column(s) {missing}; header is {header}, "
                       f"expected {','.join(COLUMNS)}[,task]")
    col = {name: header.index(name) for name in COLUMNS}
    task_col = header.index("task") if "task" in header else None
    arrival, prompt, output, task = [], [], [], []
    for line_no, row in enumerate(reader, start=2):
      if not row or all(not v.strip() for v in row):
        continue
      if len(row) != len(header):
        raise ValueError(f"{path}:{line_no}: expected {len(header)} fields, got {len(row)}")
      where = f"{path}:{line_no}: column"
      text = row[col["arrived_at"]].strip()
      try:
        t = float(text)
      except ValueError:
        raise ValueError(f"{where} 'arrived_at': expected a number of seconds, "
                         f"got {text!r}") from None
      if not np.isfinite(t) or t < 0:
        raise ValueError(f"{where} 'arrived_at': expected a finite time >= 0 s, got {text!r}")
      if arrival and t < arrival[-1]:
        raise ValueError(f"{where} 'arrived_at': time {t} is before the previous line's "
                         f"{arrival[-1]}; arrivals must be sorted")
      arrival.append(t)
      prompt.append(_parse_int(row[col["num_prefill_tokens"]], f"{where} 'num_prefill_tokens'", 0))
      output.append(_parse_int(row[col["num_decode_tokens"]], f"{where} 'num_decode_tokens'", 1))
      if task_col is not None:
        task.append(_parse_task(row[task_col], f"{where} 'task'", tasks))
  if not arrival:
    raise ValueError(f"{path}: empty file; no requests after the header")
  return TraceData(arrival_s=np.asarray(arrival, np.float64),
                   prompt_len=np.asarray(prompt, np.int64), output_len=np.asarray(output, np.int64),
                   task=np.asarray(task, np.int64) if task_col is not None else None, path=path)


def scale_to_rate(arrival_s, target_rate: float) -> np.ndarray:
  """Rescales arrival times (seconds, about t = 0) so that len / span equals `target_rate`.

  span = arrival_s[-1] - arrival_s[0].
  Returns float64 [L]: arrival_s * (len / span) / target_rate.
  """
  a = np.asarray(arrival_s, np.float64)
  if a.ndim != 1 or a.size < 2:
    raise ValueError(f"scale_to_rate: need >= 2 arrival times, got shape {a.shape}")
  span = a[-1] - a[0]
  if not span > 0:
    raise ValueError("scale_to_rate: all arrivals at the same time; the rate is undefined")
  if not (np.isfinite(target_rate) and target_rate > 0):
    raise ValueError(f"scale_to_rate: target_rate must be > 0 requests/s, got {target_rate!r}")
  return a * ((a.size / span) / target_rate)


def trace_requests(trace: TraceData, mix: TaskMix, key: jax.Array,
                   target_rate: float | None = None) -> Requests:
  """The trace as `Requests` [L] with exact microsecond gaps (host-side numpy).

  Args:
    trace: a loaded trace.
    mix: draws tasks at each arrival time when the trace has no task column.
    key: randomness for those task draws.
    target_rate: if given (> 0), time is rescaled first (`scale_to_rate`).
  """
  name = trace.path or "trace"
  arrival_s = trace.arrival_s if not target_rate else scale_to_rate(trace.arrival_s, target_rate)
  try:
    requests = requests_lib.from_arrivals(arrival_s, np.zeros(len(trace)), trace.prompt_len,
                                          trace.output_len)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
  if trace.task is None:
    arrival_us = np.cumsum(np.asarray(requests.gap_us, np.int64))
    task = _draw_tasks(mix, key, jnp.asarray(arrival_us // clock.US_PER_S, jnp.int32),
                       jnp.asarray(arrival_us % clock.US_PER_S, jnp.int32))
  else:
    task = trace.task
    if np.any(task >= mix.num_tasks):
      raise ValueError(f"{name}: column 'task': index {task.max()} >= the number of tasks "
                       f"{mix.num_tasks}")
  return requests.replace(task=np.asarray(task, np.int32))


@jax.jit
def _draw_tasks(mix: TaskMix, key: jax.Array, s: jnp.ndarray, us: jnp.ndarray) -> jnp.ndarray:
  """Tasks [L] for arrivals at exact times s + us * 1e-6 seconds (int32 [L] each)."""
  keys = jax.random.split(key, s.shape[0])
  return jax.vmap(lambda k, s, us: mix.draw(k, Elapsed(s=s, us=us)))(keys, s, us)


@struct.dataclass
class TraceState:
  """Replay position.

  Attributes:
    index: int32 in [0, L), the next request to replay.
    first: bool, True before the first request (request 0 then keeps its own gap).
    t: exact time of the latest arrival.
  """
  index: jnp.ndarray
  first: jnp.ndarray
  t: Elapsed


@struct.dataclass
class TraceWorkload:
  """Replays `requests` [L] in order, wrapping around at the end.

  Attributes:
    requests: Requests [L] (int32 arrays), e.g. from `trace_requests`.
    mix: draws each arrival's task when `draw_tasks`.
    wrap_gap_us: int32 gap from the last request to request 0 of the next pass (default
      chosen by `create`: the trace's mean gap, span / (L - 1)).
    lengths: if not None, redraws prompt/output lengths from this model instead of the trace's.
    draw_tasks: static; True when the trace has no task column (tasks come from `mix`).
    random_start: static; `init` starts at a uniformly random request (its own gap first)
      instead of request 0.
  """
  requests: Requests
  mix: TaskMix
  wrap_gap_us: jnp.ndarray
  lengths: LengthModel | None = None
  draw_tasks: bool = struct.field(pytree_node=False, default=False)
  random_start: bool = struct.field(pytree_node=False, default=False)

  @classmethod
  def create(cls, requests: Requests, mix: TaskMix, *, draw_tasks: bool,
             random_start: bool = False, lengths: LengthModel | None = None) -> "TraceWorkload":
    """Host-side constructor; the wrap gap is the mean gap of requests 1..L-1 (rounded), or
    request 0's own gap when L = 1."""
    gaps = np.asarray(requests.gap_us, np.int64)
    if gaps.ndim != 1 or gaps.size < 1:
      raise ValueError(f"TraceWorkload: need >= 1 request, got gaps of shape {gaps.shape}")
    wrap = int(np.rint(gaps[1:].mean())) if gaps.size > 1 else int(gaps[0])
    return cls(requests=Requests(*(jnp.asarray(x, jnp.int32) for x in (
        requests.gap_us, requests.task, requests.prompt_len, requests.output_len))),
               mix=mix, wrap_gap_us=jnp.asarray(wrap, jnp.int32), lengths=lengths,
               draw_tasks=draw_tasks, random_start=random_start)

  def init(self, key: jax.Array) -> TraceState:
    size = self.requests.gap_us.shape[-1]
    index = jax.random.randint(key, (), 0, size) if self.random_start else 0
    return TraceState(index=jnp.asarray(index, jnp.int32), first=jnp.ones((), bool),
                      t=Elapsed.zero())

  def next(self, key: jax.Array, state: TraceState) -> tuple[Requests, TraceState]:
    """The request at `state.index`; request 0 of a second or later pass gets `wrap_gap_us`."""
    size = self.requests.gap_us.shape[-1]
    i = state.index
    gap_us = jnp.where((i == 0) & ~state.first, self.wrap_gap_us, self.requests.gap_us[i])
    t = state.t.advance(gap_us)
    u = open_uniforms(key, 3)  # task, prompt, output.
    task = self.mix.task_from_uniform(u[0], t) if self.draw_tasks else self.requests.task[i]
    if self.lengths is None:
      prompt_len, output_len = self.requests.prompt_len[i], self.requests.output_len[i]
    else:
      prompt_len, output_len = self.lengths.from_uniforms(u[1:], task)
    index = jnp.where(i + 1 == size, 0, i + 1).astype(jnp.int32)
    request = Requests(gap_us=gap_us, task=task, prompt_len=prompt_len, output_len=output_len)
    return request, TraceState(index=index, first=jnp.zeros((), bool), t=t)
