"""`Setup`: everything an experiment needs, built once from an ml_collections config.

  setup = Setup.from_config(config)       # profile, ServingConfig, workload, typed configs
  env, params = setup.env()               # training episodes (config.env.episode_len)
  env, params = setup.env(episode_len=n, record=True)   # one recorded evaluation run
  envs = setup.train_envs()               # the learner's environments (rate multipliers)
  mesh = setup.mesh()                     # the device mesh of config.mesh (built when asked)

The ConfigDict itself is kept only to be saved (config.json, checkpoints) and compared when
a run resumes; everything else reads the typed fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from bes import policies
from bes.env.serving_env import EnvParams, ServingEnv, make_env
from bes.experiment import config as config_lib
from bes.parallel import mesh as mesh_lib
from bes.profile import Profile
from bes.router.config import DQNConfig, TrainConfig
from bes.serving_config import ServingConfig
from bes.workloads import workload_from_config


class TrainEnvs(NamedTuple):
  """The learner's environments: `params` one EnvParams, or (`batched`) a stack of one per
  parallel environment; `eval_env` / `eval_params` for the greedy evaluations."""
  env: ServingEnv
  params: EnvParams
  batched: bool
  eval_env: ServingEnv
  eval_params: EnvParams


@dataclasses.dataclass(frozen=True)
class Setup:
  """An experiment's typed configuration (module docstring).

  Attributes:
    config: the whole ml_collections config (saved and compared on resume only).
    profile: the deployment; serving: the serving knobs (validated for its tasks).
    workload: the request stream (a workload pytree, `bes/workloads`).
    episode_len: requests per training episode; rate_ema_alpha: weight of the newest gap in
      the observed arrival rate.
    dqn, train, simulate: the typed sections (`bes.experiment.config`).
    seed: the base seed; num_seeds: seeds trained together.
    mesh_config: the device mesh's axis sizes (`config.mesh`); the mesh itself is built by
      `mesh()` when the devices are known (after `jax.distributed` starts).
  """
  config: ml_collections.ConfigDict
  profile: Profile
  serving: ServingConfig
  workload: Any
  episode_len: int
  rate_ema_alpha: float
  dqn: DQNConfig
  train: TrainConfig
  simulate: config_lib.SimulateConfig
  seed: int
  num_seeds: int
  mesh_config: mesh_lib.MeshConfig = mesh_lib.MeshConfig()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  profile: Profile | None = None) -> "Setup":
    """Builds and validates every section once (`profile` replaces the config's)."""
    profile = profile or config_lib.profile_from_config(config)
    serving = config_lib.serving_config_from(config.env, len(profile.tasks))
    dqn = config_lib.dqn_config(config)
    seed, num_seeds = config_lib.seeds(config)
    return cls(config=config, profile=profile, serving=serving,
               workload=workload_from_config(config.workload, profile.tasks),
               episode_len=int(config.env.episode_len),
               rate_ema_alpha=float(config.env.rate_ema_alpha), dqn=dqn,
               train=config_lib.train_config(config, dqn),
               simulate=config_lib.simulate_config(config), seed=seed, num_seeds=num_seeds,
               mesh_config=config_lib.mesh_config(config))

  @property
  def is_trace(self) -> bool:
    return self.config.workload.kind == "trace"

  def env(self, episode_len: int | None = None, record: bool = False, credit: bool = False,
          profile: Profile | None = None, workload=None) -> tuple[ServingEnv, EnvParams]:
    """The environment of this setup (episodes of `episode_len` requests, default the
    training length); `profile` / `workload` replace the setup's."""
    return make_env(profile or self.profile, self.serving,
                    self.workload if workload is None else workload,
                    episode_len=episode_len or self.episode_len, record=record,
                    rate_ema_alpha=self.rate_ema_alpha, credit=credit)

  def train_envs(self) -> TrainEnvs:
    """The learner's environments. With a randomised training distribution
    (`config.train`'s rate_multipliers, task_mixes, burstiness; `TrainConfig`), training
    environment i runs its own variant of the workload (EnvParams stacked over
    environments); evaluation uses the workload exactly as configured."""
    env, params = self.env(credit=self.dqn.credit == "request")
    eval_env, eval_params = self.env(episode_len=self.train.eval_episode_len)
    if not self.train.randomised:
      return TrainEnvs(env, params, False, eval_env, eval_params)
    workloads = [workload_from_config(self._train_workload(i), self.profile.tasks,
                                      f"config.workload (training environment {i})")
                 for i in range(self.dqn.num_envs)]
    stacked = policies.stack(workloads)
    params = jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(x, (len(workloads),) + jnp.shape(x)),
        params.replace(workload=None))
    return TrainEnvs(env, params.replace(workload=stacked), True, eval_env, eval_params)

  def _train_workload(self, i: int) -> ml_collections.ConfigDict:
    """The workload config of training environment i (`train_envs`)."""
    t = self.train
    cfg = ml_collections.ConfigDict(self.config.workload.to_dict(), type_safe=False)
    if t.rate_multipliers:
      if self.is_trace and not float(cfg.rate):
        raise ValueError("config.train.rate_multipliers: a trace at its own timing "
                         "(config.workload.rate=0) cannot be rescaled; set a rate")
      cfg.rate = float(cfg.rate) * t.rate_multipliers[i % len(t.rate_multipliers)]
    if t.task_mixes:
      mix = t.task_mixes[i % len(t.task_mixes)]
      cfg.task_mix = "" if mix == "uniform" else mix
    if t.burstiness:
      if cfg.kind != "bursty":
        raise ValueError(f"config.train.burstiness: needs config.workload.kind='bursty', "
                         f"got {cfg.kind!r}")
      b = t.burstiness[i % len(t.burstiness)]
      cfg.bursty.rate_sigma = float(cfg.bursty.rate_sigma) * b
      cfg.bursty.cv_sigma = float(cfg.bursty.cv_sigma) * b
      cfg.bursty.cv_median = float(cfg.bursty.cv_median) ** b
    return cfg

  def mesh(self, devices=None) -> jax.sharding.Mesh:
    """The ('seed', 'data', 'model') mesh of `config.mesh` over `devices` (default: every
    device of every process), refusing seeds or environments its axes do not divide."""
    mesh = mesh_lib.make_mesh(self.mesh_config, devices)
    mesh_lib.check_divides(mesh, "seeds", self.num_seeds, "config.num_seeds")
    mesh_lib.check_divides(mesh, "envs", self.dqn.num_envs, "config.dqn.num_envs")
    return mesh

  def seed_keys(self) -> jax.Array:
    """One key per trained seed: split from PRNGKey(seed), [num_seeds, 2]."""
    return jax.random.split(jax.random.PRNGKey(self.seed), self.num_seeds)
