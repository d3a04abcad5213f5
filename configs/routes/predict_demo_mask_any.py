"""`configs/routes/predict_demo_mask.py` with the mask lifted in overload
(`dqn.action_mask='on_time_else_any'`): when the reference greedy predicts no model on
time, the router may choose any model (with 'on_time' it then takes the greedy's fallback,
the model of lowest predicted latency).

  python launch/train.py --config=configs/routes/predict_demo_mask_any.py \
      --workdir=runs/route_predict_demo_mask_any
  python launch/heldout.py --workdir=runs/route_predict_demo_mask_any \
      --out=results/heldout/predict_demo_mask_any
"""
from configs.routes import predict_demo_mask


def get_config():
  config = predict_demo_mask.get_config()
  config.dqn.action_mask = "on_time_else_any"
  return config
