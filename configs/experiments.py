"""The router behind the reproduced experiments (results/): the paper's router
(configs/paper.py) trained over a range of arrival rates, 3 seeds.

Training environment i runs the default bursty workload at 20 req/s times
`rate_multipliers[i % 8]` (1 to 160 req/s), so one router (conditioned on the observed
arrival rate, as in the paper) serves every rate the sweeps evaluate; twice the default
iterations, since the rates share the environments.

  python launch/train.py --config=configs/experiments.py --workdir=runs/experiments
"""
from configs import paper


def get_config():
  config = paper.get_config()
  config.train.rate_multipliers = "0.05,0.1,0.2,0.4,0.8,1.6,3.2,8"
  config.dqn.num_iterations = 40000   # 8 rates share the environments: twice the default
  config.num_seeds = 3
  return config
