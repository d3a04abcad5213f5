"""The router behind the reproduced experiments, second edition: the default router
(configs/default.py: 'predict' features, the greedy's demonstrations, the on-time action
mask) trained over a range of arrival rates, 3 seeds, exactly as configs/experiments.py
trains the paper's router (same rates, same iterations), so the two sets of tables compare
routers and nothing else.

  python launch/train.py --config=configs/experiments_default.py \
      --workdir=runs/experiments_default
"""
from configs import default, experiments


def get_config():
  config = default.get_config()
  paper_router = experiments.get_config()
  config.train.rate_multipliers = paper_router.train.rate_multipliers
  config.dqn.num_iterations = paper_router.dqn.num_iterations
  config.num_seeds = paper_router.num_seeds
  return config
