"""Task mixes: which task an arriving request belongs to, possibly shifting over time."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes.workloads.base import Elapsed


@struct.dataclass
class TaskMix:
  """A piecewise-constant task distribution over arrival time.

  Attributes:
    probs: float32 [K, T], K segments over T tasks; rows are normalised.
    breakpoints_s: float32 [K-1], increasing, seconds since the workload start:
      segment k >= 1 applies to arrivals at time >= breakpoints_s[k-1], segment 0 before.
  """
  probs: jnp.ndarray
  breakpoints_s: jnp.ndarray

  @classmethod
  def create(cls, probs, breakpoints_s=(), where: str = "task mix") -> "TaskMix":
    """Validates and normalises host-side values.

    Args:
      probs: [T] (one segment) or [K, T] non-negative weights; each row must sum to > 0.
      breakpoints_s: [K-1] strictly increasing times >= 0 in seconds.
      where: how errors name the source (e.g. a config flag).
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 1:
      probs = probs[None]
    bps = np.asarray(breakpoints_s, np.float64).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] < 1:
      raise ValueError(f"{where}: expected weights of shape [T] or [K, T], got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
      raise ValueError(f"{where}: weights must be finite and >= 0, got {probs.tolist()}")
    if np.any(probs.sum(axis=1) <= 0):
      raise ValueError(f"{where}: every mix must have a positive sum, got {probs.tolist()}")
    if bps.size != probs.shape[0] - 1:
      raise ValueError(f"{where}: {probs.shape[0]} segments need {probs.shape[0] - 1} breakpoints, "
                       f"got {bps.size}")
    if not np.all(np.isfinite(bps)) or np.any(bps < 0) or np.any(np.diff(bps) <= 0):
      raise ValueError(f"{where}: breakpoints must be finite, >= 0 s and strictly increasing, "
                       f"got {bps.tolist()}")
    probs = probs / probs.sum(axis=1, keepdims=True)
    return cls(probs=jnp.asarray(probs, jnp.float32), breakpoints_s=jnp.asarray(bps, jnp.float32))

  @classmethod
  def uniform(cls, num_tasks: int) -> "TaskMix":
    return cls.create(np.ones(num_tasks))

  @property
  def num_tasks(self) -> int:
    return self.probs.shape[-1]

  def segment(self, t: Elapsed) -> jnp.ndarray:
    """Index (int32 scalar) of the segment in force at elapsed time `t` (exact)."""
    return jnp.sum(t.at_or_after(self.breakpoints_s)).astype(jnp.int32)

  def task_from_uniform(self, u, t: Elapsed) -> jnp.ndarray:
    """Task index (int32 scalar) of an arrival at elapsed time `t`, by inverse CDF of u in (0, 1).

    Boundaries are 1 - (mass of tasks j+1..T-1): exactly 0 before leading zero-probability
    tasks and exactly 1 before trailing ones, so a zero-probability task is never drawn.
    """
    p = self.probs[self.segment(t)]
    suffix = jnp.cumsum(p[::-1])[::-1]
    bounds = 1.0 - suffix[1:] / suffix[0]
    return jnp.sum(u >= bounds).astype(jnp.int32)

  def draw(self, key: jax.Array, t: Elapsed) -> jnp.ndarray:
    """Draws one task index (int32 scalar) for an arrival at elapsed time `t`."""
    return self.task_from_uniform(jax.random.uniform(key, (), jnp.float32), t)


def parse_weights(value, num_tasks: int, where: str) -> np.ndarray | None:
  """Parses a mix given as a comma string ('0.7,0.1,0.1,0.1') or a sequence of numbers.

  Returns float64 [num_tasks] weights, or None for '' / empty (meaning uniform).
  """
  if isinstance(value, str):
    text = value.strip()
    if not text:
      return None
    parts = [p.strip() for p in text.split(",")]
    try:
      weights = [float(p) for p in parts]
    except ValueError:
      raise ValueError(f"{where}: expected comma-separated numbers, got {value!r}") from None
  elif isinstance(value, Sequence) or isinstance(value, np.ndarray):
    if len(value) == 0:
      return None
    try:
      weights = [float(v) for v in value]
    except (TypeError, ValueError):
      raise ValueError(f"{where}: expected numbers, got {value!r}") from None
  else:
    raise ValueError(f"{where}: expected a comma string or a list of numbers, got {value!r}")
  if len(weights) != num_tasks:
    raise ValueError(f"{where}: expected {num_tasks} weights (one per task), got {len(weights)} "
                     f"in {value!r}")
  weights = np.asarray(weights)
  if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
    raise ValueError(f"{where}: weights must be finite, >= 0 and not all zero, got {value!r}")
  return weights


def parse_shifts(value: str, num_tasks: int, where: str) -> tuple[list[float], list[np.ndarray]]:
  """Parses '600:0.7,0.1,0.1,0.1;1200:0.1,0.1,0.1,0.7' into (times_s, weights).

  Each ';'-separated item 'T:w1,...,wT' means: from T seconds on, use these weights.
  Returns ([], []) for ''. Times must be >= 0 and strictly increasing.
  """
  if not isinstance(value, str):
    raise ValueError(f"{where}: expected a string like '600:0.7,0.3;1200:0.3,0.7', got {value!r}")
  times, mixes = [], []
  for item in filter(None, (s.strip() for s in value.split(";"))):
    head, sep, tail = item.partition(":")
    if not sep:
      raise ValueError(f"{where}: item {item!r} must look like 'TIME_S:w1,...,wT'")
    try:
      t = float(head)
    except ValueError:
      raise ValueError(f"{where}: item {item!r}: time {head.strip()!r} is not a number") from None
    if not np.isfinite(t) or t < 0 or (times and t <= times[-1]):
      raise ValueError(f"{where}: item {item!r}: times must be >= 0 s and strictly increasing")
    weights = parse_weights(tail, num_tasks, f"{where} (item {item!r})")
    if weights is None:
      raise ValueError(f"{where}: item {item!r} has no weights")
    times.append(t)
    mixes.append(weights)
  return times, mixes


def mix_from_strings(task_mix, shifts: str, num_tasks: int, where: str = "workload") -> TaskMix:
  """Builds a TaskMix from the config's `task_mix` (segment 0) and `shifts` values."""
  base = parse_weights(task_mix, num_tasks, f"{where}.task_mix")
  base = np.ones(num_tasks) if base is None else base
  times, mixes = parse_shifts(shifts, num_tasks, f"{where}.shifts")
  return TaskMix.create(np.stack([base] + mixes), times, where=f"{where}.shifts")
