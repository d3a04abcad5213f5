"""Routes (a) + (b) inside the heuristic's constraint (Fugu-style: a learned choice within a
classical controller): `configs/routes/predict_demo.py` with `dqn.action_mask='on_time'`,
so the router's greedy choice (acting, evaluating, and the Double-DQN target's argmax)
ranges only over the models the reference greedy predicts on time, plus the greedy's own
pick; Q-learning decides which of the feasible models to use (e.g. a smaller one, to keep
the large ones free for the requests only they can serve well).

  python launch/train.py --config=configs/routes/predict_demo_mask.py \
      --workdir=runs/route_predict_demo_mask
  python launch/heldout.py --workdir=runs/route_predict_demo_mask \
      --out=results/heldout/predict_demo_mask
"""
from configs.routes import predict_demo


def get_config():
  config = predict_demo.get_config()
  config.dqn.action_mask = "on_time"
  return config
