"""Building the serving config, environment and workload from an ml_collections config."""
from __future__ import annotations

import ml_collections

from bes.env.serving_env import EnvParams, ServingEnv, make_env
from bes.profile import Profile, default_profile, load_profile
from bes.serving_config import ServingConfig
from bes.workloads import workload_from_config


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


def env_from_config(config: ml_collections.ConfigDict, episode_len: int | None = None,
                    record: bool = False, profile: Profile | None = None, workload=None,
                    credit: bool = False) -> tuple[ServingEnv, EnvParams, Profile]:
  """The environment a config describes (episode length from `config.env.episode_len`);
  `profile` and `workload`, when given, replace the ones the config describes."""
  profile = profile or profile_from_config(config)
  serving = serving_config_from(config.env, len(profile.tasks))
  if workload is None:
    workload = workload_from_config(config.workload, profile.tasks)
  env, params = make_env(profile, serving, workload,
                         episode_len=episode_len or int(config.env.episode_len), record=record,
                         rate_ema_alpha=float(config.env.rate_ema_alpha), credit=credit)
  return env, params, profile
