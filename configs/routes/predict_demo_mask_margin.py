"""`configs/routes/predict_demo_mask_any.py` with a margin in the mask: a model is allowed
when its predicted latency is within the deadline (`dqn.mask_slack=1.0`), not within the
deadline over the reference greedy's slack 1.25, so the router may also take the models the
greedy deems too tight (where the unmasked router won, on the code trace).

  python launch/train.py --config=configs/routes/predict_demo_mask_margin.py \
      --workdir=runs/predict_demo_mask_margin_3seeds --config.num_seeds=3
  python launch/heldout.py --workdir=runs/predict_demo_mask_margin_3seeds \
      --out=results/heldout/predict_demo_mask_margin_3seeds
"""
from configs.routes import predict_demo_mask_any


def get_config():
  config = predict_demo_mask_any.get_config()
  config.dqn.mask_slack = 1.0
  return config
