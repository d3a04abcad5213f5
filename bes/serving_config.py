"""Deadlines, reward mode and queue capacity: the knobs of the serving model.

Shared by the jitted environment (`bes.env`) and the plain-Python reference
(`bes.reference`) so both read the same configuration.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from bes import clock

REWARD_MODES = ("hard", "soft")


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """How requests are judged.

  Attributes:
    deadline_s: end-to-end latency budget in seconds, one per task (a sequence in the
      profile's task order) or one float for every task.
    deadline_per_token_s: extra budget in seconds per output token (default 0).
    reward: 'hard' (a late request earns -miss_penalty) or 'soft' (a late request earns
      q * max(0, 1 - lateness / soft_window_s)).
    soft_window_s: seconds after the deadline at which soft utility reaches zero.
    miss_penalty: utility lost by a rejected request (and a late one under 'hard').
    queue_capacity: waiting-queue slots per instance; an arrival finding the queue of
      its instance full is rejected.
  """
  deadline_s: float | Sequence[float] = 5.0
  deadline_per_token_s: float = 0.0
  reward: str = "hard"
  soft_window_s: float = 5.0
  miss_penalty: float = 0.0
  queue_capacity: int = 64

  def validate(self, num_tasks: int, where: str = "serving config") -> "ServingConfig":
    """Raises ValueError naming the field when a value is out of range."""
    deadlines = np.atleast_1d(np.asarray(self.deadline_s, dtype=np.float64))
    if deadlines.ndim != 1 or deadlines.size not in (1, num_tasks):
      raise ValueError(
          f"{where}: field 'deadline_s' must be one number or {num_tasks} numbers "
          f"(one per task), got {self.deadline_s!r}")
    if not np.all(np.isfinite(deadlines)) or np.any(deadlines <= 0):
      raise ValueError(f"{where}: field 'deadline_s' must be > 0 seconds, got {self.deadline_s!r}")
    if not np.isfinite(self.deadline_per_token_s) or self.deadline_per_token_s < 0:
      raise ValueError(f"{where}: field 'deadline_per_token_s' must be >= 0, "
                       f"got {self.deadline_per_token_s!r}")
    if self.reward not in REWARD_MODES:
      raise ValueError(f"{where}: field 'reward' must be one of {REWARD_MODES}, got {self.reward!r}")
    if not self.soft_window_s > 0:
      raise ValueError(f"{where}: field 'soft_window_s' must be > 0 seconds, got {self.soft_window_s!r}")
    if not np.isfinite(self.miss_penalty) or self.miss_penalty < 0:
      raise ValueError(f"{where}: field 'miss_penalty' must be >= 0, got {self.miss_penalty!r}")
    if int(self.queue_capacity) != self.queue_capacity or self.queue_capacity < 1:
      raise ValueError(f"{where}: field 'queue_capacity' must be an integer >= 1, "
                       f"got {self.queue_capacity!r}")
    return self

  def deadline_us(self, num_tasks: int) -> np.ndarray:
    """Per-task latency budget in integer microseconds, shape [num_tasks] (int64)."""
    deadlines = np.broadcast_to(np.atleast_1d(np.asarray(self.deadline_s, np.float64)), (num_tasks,))
    return clock.seconds_to_us(deadlines)

  @property
  def deadline_per_token_us(self) -> int:
    return int(clock.seconds_to_us(self.deadline_per_token_s))

  @property
  def soft_window_us(self) -> int:
    return int(clock.seconds_to_us(self.soft_window_s))
