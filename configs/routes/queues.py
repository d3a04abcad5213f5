"""Route (a), in part, on the paper's router (configs/paper.py): the router also observes,
per model, the fill of the instance a request would join (its batch and its queue;
`dqn.features='queues'`), what the deadline-aware heuristic reads (predicted latency and the greedy's pick: `predict.py`).

  python launch/train.py --config=configs/routes/queues.py --workdir=runs/route_queues
  python launch/heldout.py --workdir=runs/route_queues --out=results/heldout/queues
"""
from configs import paper


def get_config():
  config = paper.get_config()
  config.dqn.features = "queues"
  return config
