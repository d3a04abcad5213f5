"""The paper's router, as bes shipped it as its default until issue 11: the Double DQN on
the paper's observation (task, per-model load, arrival rate), no demonstrations, no action
mask, one training workload. The reproduced experiments (results/: the sweeps, the paper's
claims, the router benchmarks) were trained with it; commands recorded there without
`--config` ran what is this file now (`configs/default.py` was this config then).

  python launch/train.py --config=configs/paper.py --workdir=runs/paper
"""
from configs import default


def get_config():
  config = default.get_config()
  config.dqn.features = "paper"
  config.dqn.demo = ""
  config.dqn.demo_frac = 0.0
  config.dqn.action_mask = "none"
  config.train.task_mixes = ""
  config.train.burstiness = ""
  config.train.rate_multipliers = ""
  return config
