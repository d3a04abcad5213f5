"""Typed configs from an ml_collections config (`configs/default.py`): the edge where the
ConfigDict ends. Every section is read here once, into a frozen dataclass validated with
errors that name the key (`config.dqn.huber_delta: expected > 0, got 0`):

  config.env       -> bes.serving_config.ServingConfig (+ episode_len, rate_ema_alpha)
  config.dqn       -> bes.router.config.DQNConfig
  config.train     -> bes.router.config.TrainConfig
  config.simulate  -> SimulateConfig (evaluation runs: requests, policies, windows, chunks)
  config.mesh      -> bes.parallel.mesh.MeshConfig (device mesh axis sizes)

Code below `bes.experiment` takes these typed configs and never reads a ConfigDict.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import ml_collections

from bes.parallel.mesh import MeshConfig
from bes.profile import Profile, default_profile, load_profile
from bes.router.config import DQNConfig, TrainConfig
from bes.config_cli import flatten
from bes.serving_config import ServingConfig


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
  """Recorded evaluation runs (`config.simulate`): `num_requests` requests of a generated
  workload (a trace replays all of it), the fixed `policies` of launch/simulate.py,
  `window_s` seconds per window of the window metrics, `chunk` steps per jitted chunk."""
  num_requests: int
  policies: tuple[str, ...]
  window_s: float
  chunk: int

  def validate(self, where: str = "config.simulate") -> "SimulateConfig":
    if self.num_requests < 1:
      raise ValueError(f"{where}.num_requests: expected an integer >= 1, got {self.num_requests}")
    if not (math.isfinite(self.window_s) and self.window_s > 0):
      raise ValueError(f"{where}.window_s: expected > 0 seconds, got {self.window_s!r}")
    if self.chunk < 1:
      raise ValueError(f"{where}.chunk: expected an integer >= 1, got {self.chunk}")
    return self


# ------------------------------------------------------------------------- section parsing
def _integer(value: Any, key: str) -> int:
  if isinstance(value, bool):
    raise ValueError(f"{key}: expected an integer, got {value!r}")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{key}: expected an integer, got {value!r}") from None
  if not number.is_integer():
    raise ValueError(f"{key}: expected an integer, got {value!r}")
  return int(number)


def _float(value: Any, key: str) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{key}: expected a number, got {value!r}") from None


def _bool(value: Any, key: str) -> bool:
  if isinstance(value, str) and value.lower() in ("true", "false"):
    return value.lower() == "true"
  if isinstance(value, bool) or value in (0, 1):
    return bool(value)
  raise ValueError(f"{key}: expected true or false, got {value!r}")


def _items(value: Any, key: str, separator: str = ",") -> list:
  """A list from a 'a,b,c' string (empty items dropped) or a sequence."""
  if isinstance(value, str):
    return [x.strip() for x in value.split(separator) if x.strip()]
  try:
    return list(value)
  except TypeError:
    raise ValueError(f"{key}: expected a list like 'a{separator}b', got {value!r}") from None


def _numbers(value: Any, key: str, parse, what: str) -> tuple:
  items = _items(value, key)
  try:
    return tuple(parse(x, key) for x in items)
  except ValueError:
    raise ValueError(f"{key}: expected {what}, got {value!r}") from None


_PARSERS = {
    "int": _integer, "float": _float, "bool": _bool, "str": lambda v, k: str(v),
    "tuple[int, ...]": lambda v, k: _numbers(v, k, _integer, "widths like '64,64'"),
    "tuple[float, ...]": lambda v, k: _numbers(v, k, _float, "numbers like '0.5,1,2'"),
    "tuple[str, ...]": lambda v, k: tuple(_items(v, k, ";")),
}


def typed_section(cls, section: Mapping[str, Any], where: str):
  """The frozen dataclass `cls` from a config section: each field parsed by its annotated
  type (errors name `<where>.<field>`); a missing field takes its default or is an error.
  Keys of the section that are not fields are left to the config's own key checks."""
  values = {}
  for field in dataclasses.fields(cls):
    key = f"{where}.{field.name}"
    if field.type not in _PARSERS:
      raise TypeError(f"{cls.__name__}.{field.name}: no parser for type {field.type!r}; "
                      f"expected one of {sorted(_PARSERS)}")
    if field.name in section:
      values[field.name] = _PARSERS[field.type](section[field.name], key)
    elif field.default is dataclasses.MISSING:
      raise ValueError(f"{key}: missing from the config")
  return cls(**values)


def dqn_config(config: ml_collections.ConfigDict) -> DQNConfig:
  """`config.dqn` -> a validated DQNConfig."""
  return typed_section(DQNConfig, config.dqn, "config.dqn").validate()


def train_config(config: ml_collections.ConfigDict, dqn: DQNConfig) -> TrainConfig:
  """`config.train` -> a validated TrainConfig (its chunk length checked against `dqn`)."""
  return typed_section(TrainConfig, config.train, "config.train").validate(dqn)


def simulate_config(config: ml_collections.ConfigDict) -> SimulateConfig:
  """`config.simulate` -> a validated SimulateConfig."""
  return typed_section(SimulateConfig, config.simulate, "config.simulate").validate()


def mesh_config(config: ml_collections.ConfigDict) -> MeshConfig:
  """`config.mesh` -> a validated MeshConfig (a config without the section: the defaults)."""
  section = config.get("mesh")
  return MeshConfig.from_mapping(None if section is None else section.to_dict())


def seeds(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(`config.seed`, `config.num_seeds` >= 1)."""
  seed, num_seeds = _integer(config.seed, "config.seed"), _integer(config.num_seeds,
                                                                    "config.num_seeds")
  if num_seeds < 1:
    raise ValueError(f"config.num_seeds: expected >= 1, got {num_seeds}")
  return seed, num_seeds


def profile_from_config(config: ml_collections.ConfigDict) -> Profile:
  """`config.profile`: a JSON path, or '' for the built-in default profile."""
  return load_profile(config.profile) if config.get("profile") else default_profile()


def serving_config_from(env_cfg: ml_collections.ConfigDict, num_tasks: int) -> ServingConfig:
  """`config.env` -> a validated ServingConfig (errors name `config.env.<field>`)."""
  deadline = env_cfg.deadline_s
  try:
    if isinstance(deadline, str):
      parts = tuple(float(x) for x in deadline.split(","))
      deadline = parts if len(parts) > 1 else parts[0]
    return ServingConfig(
        deadline_s=deadline, deadline_per_token_s=float(env_cfg.deadline_per_token_s),
        reward=str(env_cfg.reward), soft_window_s=float(env_cfg.soft_window_s),
        miss_penalty=float(env_cfg.miss_penalty), queue_capacity=int(env_cfg.queue_capacity),
    ).validate(num_tasks, where="config.env")
  except (TypeError, ValueError) as e:
    raise ValueError(str(e) if "config.env" in str(e) else f"config.env: {e}") from None


# ------------------------------------------------------------------------- whole configs
def differing_keys(saved: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """The dotted keys on which a saved config (JSON) and `config` differ, sorted. A key that
  the saved config lacks matches when `config` sets it to its typed default (a field added
  after that run, whose default is what the run meant: the feature off)."""
  saved, given = flatten(saved), flatten(config)
  return sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k)
                and not (k not in saved and _is_field_default(k, given[k])))


_TYPED_SECTIONS = {"dqn": DQNConfig, "train": TrainConfig, "simulate": SimulateConfig}


def _is_field_default(key: str, value: Any) -> bool:
  """Whether dotted `key` ('dqn.mask_slack') is a typed config field and `value` parses to
  its default."""
  section, _, name = key.partition(".")
  cls = _TYPED_SECTIONS.get(section)
  field = {f.name: f for f in dataclasses.fields(cls)}.get(name) if cls else None
  if field is None or field.default is dataclasses.MISSING:
    return False
  try:
    return _PARSERS[field.type](value, f"config.{key}") == field.default
  except (TypeError, ValueError):
    return False
