"""Routes (a) + (b): the predicted-latency features (`configs/routes/predict.py`) and 80%
of the exploratory actions from the deadline-aware greedy (`configs/routes/queues_demo.py`).

  python launch/train.py --config=configs/routes/predict_demo.py --workdir=runs/route_predict_demo
  python launch/heldout.py --workdir=runs/route_predict_demo --out=results/heldout/predict_demo
"""
from configs.routes import predict


def get_config():
  config = predict.get_config()
  config.dqn.demo = "deadline_greedy"
  config.dqn.demo_frac = 0.8
  return config
