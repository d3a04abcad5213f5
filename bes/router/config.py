"""Typed configs of the learned router: `DQNConfig` (the learner) and `TrainConfig` (chunks,
evaluation and checkpoints of a training run).

Like `bes.serving_config.ServingConfig`, they are frozen dataclasses validated once
(`validate`, errors name the config key, e.g. `config.dqn.huber_delta: expected > 0, got 0`)
and then read by `make_train` (`bes/router/dqn.py`), the Q-network and the training loop.
`bes.experiment.config` builds them from the `config.dqn` / `config.train` sections of an
ml_collections config (`configs/default.py`, where every key is commented). A field with a
default may be missing from an older saved config; the default is then what that config
meant (the feature off).
"""
from __future__ import annotations

import dataclasses
import math

from bes.router.features import FEATURES, REFERENCE_KNOBS, REFERENCE_SLACK
from bes.router.qnetwork import ACTION_MASKS, ACTIVATIONS, NORMALISATIONS

TARGET_UPDATES = ("periodic", "polyak")
CREDITS = ("request", "step")
DEMONSTRATORS = ("", "deadline_greedy")


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """The Double DQN learner and its Q-network (`config.dqn`; meanings in configs/default.py).

  Counts are per seed: `num_envs` parallel environments, `num_iterations` env calls each,
  `replay_capacity` transitions per environment; `learning_starts` and `eps_decay_frac`
  count iterations, `target_period` gradient steps; `rate_scale` is in requests/s.
  """
  hidden: tuple[int, ...]
  activation: str
  obs_norm: str
  rate_scale: float
  credit: str
  gamma: float
  n_step: int
  reward_center: bool
  terminal_episode_end: bool
  learning_rate: float
  max_grad_norm: float
  huber_delta: float
  reward_scale: float
  batch_size: int
  replay_capacity: int
  num_envs: int
  max_passes: int
  num_iterations: int
  updates_per_iteration: int
  learning_starts: int
  eps_start: float
  eps_end: float
  eps_decay_frac: float
  target_update: str
  target_period: int
  polyak_tau: float
  features: str = "paper"
  dueling: bool = False
  center_rate: float = 0.0
  lr_decay: bool = False
  lr_final_frac: float = 1.0
  demo: str = ""
  demo_frac: float = 0.0
  action_mask: str = "none"
  mask_slack: float = REFERENCE_SLACK
  reference: tuple[float, ...] = REFERENCE_KNOBS

  def validate(self, where: str = "config.dqn") -> "DQNConfig":
    """Raises ValueError naming `<where>.<field>` when a value is out of range."""
    for name in ("num_envs", "batch_size", "replay_capacity", "n_step", "max_passes",
                 "num_iterations", "updates_per_iteration", "target_period"):
      _at_least(getattr(self, name), 1, f"{where}.{name}")
    for name in ("huber_delta", "max_grad_norm", "learning_rate"):
      _positive(getattr(self, name), f"{where}.{name}")
    _positive(self.rate_scale, f"{where}.rate_scale", "requests/s")
    _positive(self.mask_slack, f"{where}.mask_slack")
    if (len(self.reference) != 3 or not self.reference[0] > 0
        or not 0 <= self.reference[1] <= 1 or self.reference[2] not in (0, 1)):
      raise ValueError(f"{where}.reference: expected the reference greedy's 'slack,turnover,"
                       f"dump' (slack > 0, turnover in [0, 1], dump 0 or 1), got "
                       f"{self.reference!r}")
    for name in ("center_rate", "lr_final_frac", "eps_start", "eps_end", "eps_decay_frac",
                 "polyak_tau", "demo_frac"):
      _unit(getattr(self, name), f"{where}.{name}")
    _unit(self.gamma, f"{where}.gamma", "a discount in [0, 1]")
    if self.n_step > self.replay_capacity:
      raise ValueError(f"{where}.n_step={self.n_step} exceeds {where}.replay_capacity="
                       f"{self.replay_capacity}")
    if not self.hidden or min(self.hidden) < 1:
      raise ValueError(f"{where}.hidden: expected one or more widths >= 1, got {self.hidden!r}")
    for name, allowed in (("activation", tuple(sorted(ACTIVATIONS))),
                          ("obs_norm", NORMALISATIONS), ("features", FEATURES),
                          ("target_update", TARGET_UPDATES), ("credit", CREDITS),
                          ("demo", DEMONSTRATORS), ("action_mask", ACTION_MASKS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{where}.{name}: expected one of {allowed}, "
                         f"got {getattr(self, name)!r}")
    if self.action_mask != "none" and self.features != "predict":
      raise ValueError(f"{where}.action_mask={self.action_mask!r} reads "
                       f"the predicted latency: it needs "
                       f"{where}.features='predict', got {self.features!r}")
    return self


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run (`config.train`): `chunk_iterations` iterations per jitted chunk (a
  divisor of `DQNConfig.num_iterations`), a greedy evaluation of `eval_episodes` episodes of
  `eval_episode_len` requests after each, the latest `keep_checkpoints` checkpoints kept.
  A randomised training distribution, each list cycled over the training environments
  independently (empty: none): environment i runs at the workload's rate times
  `rate_multipliers[i % k]`, with task mix `task_mixes[i % k']` ('uniform' or weights like
  '0.55,0.15,0.15,0.15') and bursty arrivals `burstiness[i % k'']` times as bursty (rate_sigma
  and cv_sigma times b, cv_median to the power b: 0 would be Poisson, 1 the workload's own)."""
  chunk_iterations: int
  eval_episode_len: int
  eval_episodes: int
  keep_checkpoints: int
  select_best: bool = False
  rate_multipliers: tuple[float, ...] = ()
  task_mixes: tuple[str, ...] = ()
  burstiness: tuple[float, ...] = ()
  tune_heuristics: bool = False

  def validate(self, dqn: DQNConfig, where: str = "config.train",
               dqn_where: str = "config.dqn") -> "TrainConfig":
    """Raises ValueError naming `<where>.<field>` when a value is out of range (the chunk
    length against `dqn.num_iterations` too)."""
    for name in ("eval_episodes", "eval_episode_len"):
      _at_least(getattr(self, name), 1, f"{where}.{name}")
    if self.chunk_iterations < 1 or dqn.num_iterations % self.chunk_iterations:
      raise ValueError(f"{where}.chunk_iterations: expected a divisor of {dqn_where}."
                       f"num_iterations={dqn.num_iterations}, got {self.chunk_iterations!r}")
    if any(not (math.isfinite(m) and m > 0) for m in self.rate_multipliers):
      raise ValueError(f"{where}.rate_multipliers: expected positive numbers, "
                       f"got {self.rate_multipliers!r}")
    if any(not (math.isfinite(b) and b >= 0) for b in self.burstiness):
      raise ValueError(f"{where}.burstiness: expected numbers >= 0, got {self.burstiness!r}")
    return self

  @property
  def randomised(self) -> bool:
    """Whether the training environments differ (any of the three lists set)."""
    return bool(self.rate_multipliers or self.task_mixes or self.burstiness)


def _at_least(value: int, low: int, key: str) -> None:
  if not value >= low:
    raise ValueError(f"{key}: expected an integer >= {low}, got {value!r}")


def _positive(value: float, key: str, unit: str = "") -> None:
  if not value > 0:
    raise ValueError(f"{key}: expected > 0{' ' + unit if unit else ''}, got {value!r}")


def _unit(value: float, key: str, expected: str = "a value in [0, 1]") -> None:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{key}: expected {expected}, got {value!r}")
