"""The experiments' default router (`configs/experiments_default.py`: rates 1-160 req/s, 3
seeds) with its reference greedy tuned on that rate mixture: the knobs the heuristics' grid
found there (`results/router_experiments_default_training/heuristics.json`: slack 2,
turnover 0, dump 1) for its 'predict' features, demonstrations and mask (on time:
predicted latency x 2 <= the deadline), instead of the base workload's (slack 1.25,
turnover 1, no dump). Against heuristics tuned on the same mixture, the default router fell
to 1 of 8 held-out families, -2.1% (`results/heldout/experiments_default/`).

  python launch/train.py --config=configs/routes/rates_tuned_reference.py \
      --workdir=runs/rates_tuned_reference
  python launch/heldout.py --workdir=runs/rates_tuned_reference \
      --out=results/heldout/rates_tuned_reference
"""
from configs import experiments_default


def get_config():
  config = experiments_default.get_config()
  config.dqn.reference = "2,0,1"
  config.dqn.mask_slack = 2.0
  return config
