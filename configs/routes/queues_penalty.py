"""Reward for availability (issue 11, item 4) on top of route (a): a late or rejected request
costs 0.25 utility in training (`env.miss_penalty`), so the router stops trading misses for
quality. The held-out protocol scores every router without the penalty.

  python launch/train.py --config=configs/routes/queues_penalty.py --workdir=runs/route_queues_penalty
  python launch/heldout.py --workdir=runs/route_queues_penalty --out=results/heldout/queues_penalty
"""
from configs.routes import queues


def get_config():
  config = queues.get_config()
  config.env.miss_penalty = 0.25
  return config
