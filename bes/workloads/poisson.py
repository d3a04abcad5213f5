"""Poisson arrivals: exponential inter-arrival gaps at a fixed mean rate."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes import clock
from bes.requests import Requests
from bes.workloads.base import Elapsed, open_uniforms, positive_float, to_gap_us
from bes.workloads.lengths import LengthModel
from bes.workloads.mix import TaskMix


@struct.dataclass
class PoissonWorkload:
  """A homogeneous Poisson stream.

  Attributes:
    rate_per_s: mean arrival rate in requests per second (float32 scalar, > 0; a pytree leaf,
      so a sweep can vmap over it).
    mix: the task mix (tasks drawn at each arrival's time).
    lengths: prompt/output length model.

  State: `Elapsed`, the exact time of the latest arrival since the workload start.
  """
  rate_per_s: jnp.ndarray
  mix: TaskMix
  lengths: LengthModel

  @classmethod
  def create(cls, rate_per_s: float, mix: TaskMix, lengths: LengthModel,
             where: str = "poisson workload") -> "PoissonWorkload":
    """Validated workload (rate > 0 requests/s); errors name `where.rate_per_s`."""
    rate = positive_float(rate_per_s, f"{where}.rate_per_s", strict=True)
    return cls(rate_per_s=np.float32(rate), mix=mix, lengths=lengths)

  def init(self, key: jax.Array) -> Elapsed:
    del key
    return Elapsed.zero()

  def next(self, key: jax.Array, state: Elapsed) -> tuple[Requests, Elapsed]:
    """One arrival: gap ~ Exponential(mean 1/rate s), rounded to whole microseconds."""
    u = open_uniforms(key, 4)  # gap, task, prompt, output.
    mean_gap_us = clock.US_PER_S / jnp.asarray(self.rate_per_s, jnp.float32)
    gap_us = to_gap_us(-jnp.log(u[0]) * mean_gap_us)
    t = state.advance(gap_us)
    task = self.mix.task_from_uniform(u[1], t)
    prompt_len, output_len = self.lengths.from_uniforms(u[2:], task)
    return Requests(gap_us=gap_us, task=task, prompt_len=prompt_len, output_len=output_len), t
