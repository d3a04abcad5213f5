"""The tiny router training run shared by tests/test_dqn.py (in process) and
tests/test_router_launchers.py (the same keys as launcher flags); fixtures in conftest.py
(`tiny_profile_path`, `tiny_router_config`) build on it."""
from __future__ import annotations

import ml_collections

from configs import paper as paper_config

# A small serving deployment: two models of one instance each (batches of 2); quality[m][t].
TINY_PROFILE = dict(name="tiny", provenance="tests/tiny_router.py", tasks=["t0", "t1"], models=[
    dict(name="small", instances=1, gpus_per_instance=1, max_batch=2, decode_step_s=[2e-3] * 2,
         prefill_s_fixed=0.0, prefill_s_per_token=1e-6, quality=dict(t0=0.3, t1=0.9)),
    dict(name="big", instances=1, gpus_per_instance=1, max_batch=2, decode_step_s=[5e-3] * 2,
         prefill_s_fixed=1e-3, prefill_s_per_token=1e-6, quality=dict(t0=0.9, t1=0.95))])

# The tiny training run on it (`configs/paper.py` keys: the paper's router): 4 environments
# of 12-request episodes, 2 chunks of 40 iterations, 2 seeds; queues of 2 at 40 requests/s (rejections)
# and a miss penalty; epsilon 1 (actions depend on the key only, so both credit modes see
# the same transitions); episode ends stored as terminal (they mark episodes in the replay).
SERVING = {
    "workload.kind": "poisson", "workload.rate": 40.0, "env.episode_len": 12,
    "env.queue_capacity": 2, "env.miss_penalty": 0.5, "dqn.num_envs": 4,
    "dqn.num_iterations": 80, "dqn.replay_capacity": 80, "dqn.batch_size": 16, "dqn.hidden": "8",
    "dqn.learning_starts": 10, "dqn.target_period": 20, "dqn.eps_start": 1.0, "dqn.eps_end": 1.0,
    "dqn.terminal_episode_end": True, "train.chunk_iterations": 40,
    "train.eval_episode_len": 16, "train.eval_episodes": 1, "train.tune_heuristics": False,
    "simulate.num_requests": 60, "num_seeds": 2}


def config(profile_path: str, credit: str = "request") -> ml_collections.ConfigDict:
  """The paper's router config (`configs/paper.py`) with `SERVING` applied, the profile JSON at `profile_path` and
  `dqn.credit=credit`."""
  cfg = paper_config.get_config()
  cfg.profile = profile_path
  for path, value in SERVING.items():
    *parents, key = path.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    node[key] = value
  cfg.dqn.credit = credit
  return cfg


def launcher_flags(profile_path: str) -> list[str]:
  """`SERVING` and the profile as `--config.KEY=VALUE` flags of launch/train.py."""
  values = dict(SERVING, profile=profile_path)
  return [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
          for k, v in values.items()]
