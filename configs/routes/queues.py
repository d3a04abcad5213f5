"""Route (a), in part: the router also observes, per model, the fill of the instance a
request would join (its batch and its queue; `dqn.features='queues'`), what the
deadline-aware heuristic reads. Predicted latency and slack per model are not features yet.

  python launch/train.py --config=configs/routes/queues.py --workdir=runs/route_queues
  python launch/heldout.py --workdir=runs/route_queues --out=results/heldout/queues
"""
from configs import default


def get_config():
  config = default.get_config()
  config.dqn.features = "queues"
  return config
