"""Route (a), whole: on top of the queue fills, the router observes per model what the
deadline-aware greedy computes at arrival: the request's predicted latency over its deadline
and the greedy's pick (`dqn.features='predict'`, `bes/router/features.py`).

  python launch/train.py --config=configs/routes/predict.py --workdir=runs/route_predict
  python launch/heldout.py --workdir=runs/route_predict --out=results/heldout/predict
"""
from configs.routes import queues


def get_config():
  config = queues.get_config()
  config.dqn.features = "predict"
  return config
