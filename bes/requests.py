"""A batch of requests: the one format workloads produce and the simulators consume."""
from __future__ import annotations

import numpy as np
from flax import struct
import jax.numpy as jnp

from bes import clock


@struct.dataclass
class Requests:
  """Requests in arrival order, as int32 arrays of shape [N] (or [..., N] when batched).

  Attributes:
    gap_us: microseconds from the previous request's arrival to this one's (request 0:
      from the start of the workload). >= 0. Arrival of request i is sum(gap_us[:i+1]).
    task: index into the profile's task list.
    prompt_len: prompt tokens (>= 0).
    output_len: output tokens to generate (>= 1). The router never sees it.
  """
  gap_us: jnp.ndarray
  task: jnp.ndarray
  prompt_len: jnp.ndarray
  output_len: jnp.ndarray

  def __len__(self) -> int:
    return int(np.shape(self.gap_us)[-1])

  def arrival_s(self) -> np.ndarray:
    """Absolute arrival times in seconds (float64, exact to the microsecond), host-side."""
    return np.cumsum(np.asarray(self.gap_us, dtype=np.int64), axis=-1) / clock.US_PER_S

  def to_numpy(self) -> "Requests":
    return Requests(*(np.asarray(x) for x in (self.gap_us, self.task, self.prompt_len, self.output_len)))

  def slice(self, start: int, stop: int) -> "Requests":
    """Requests [start, stop); the first keeps its gap (relative to the previous request)."""
    return Requests(*(x[..., start:stop] for x in (self.gap_us, self.task, self.prompt_len, self.output_len)))


def from_arrivals(arrival_s, task, prompt_len, output_len) -> Requests:
  """Builds Requests from absolute arrival times in seconds (host-side, exact)."""
  arrival_us = clock.seconds_to_us(arrival_s)
  gap = np.diff(arrival_us, prepend=0)
  if np.any(gap < 0):
    raise ValueError("arrival times must be non-decreasing")
  if np.any(gap > np.iinfo(np.int32).max):
    raise ValueError("a gap between two arrivals exceeds int32 microseconds (~35 minutes)")
  return Requests(
      gap_us=gap.astype(np.int32),
      task=np.asarray(task, np.int32),
      prompt_len=np.asarray(prompt_len, np.int32),
      output_len=np.asarray(output_len, np.int32),
  )
