"""Routes (a) + (b) on a randomised training distribution (issue 11's protocol, item 2):
the predicted-latency features and demonstrations (`configs/routes/predict_demo.py`), with
each of the 64 training environments running its own variant of the bursty workload
(`config.train`, cycled independently, 60 distinct combinations):
  rate x 0.5, 1, 1.5             (10-30 req/s; held out: 40 req/s and the traces' rates),
  task mix uniform or one task at 55% (held out: 70% lambada, the mid-stream shift),
  burstiness x 0.25, 0.5, 1, 1.5 (near-Poisson to 1.5x as bursty; held out: Poisson
                                  itself and bursty_wild's 2x).
The heuristics (and the clairvoyant greedy of the held-out protocol) are tuned on the same
distribution (`bes.experiment.workdir.tuning_distribution`).

  python launch/train.py --config=configs/routes/predict_demo_mixed.py \
      --workdir=runs/route_predict_demo_mixed
  python launch/heldout.py --workdir=runs/route_predict_demo_mixed \
      --out=results/heldout/predict_demo_mixed
"""
from configs.routes import predict_demo


def get_config():
  config = predict_demo.get_config()
  config.train.rate_multipliers = "0.5,1,1.5"
  config.train.task_mixes = ("uniform;0.55,0.15,0.15,0.15;0.15,0.55,0.15,0.15;"
                             "0.15,0.15,0.55,0.15;0.15,0.15,0.15,0.55")
  config.train.burstiness = "0.25,0.5,1,1.5"
  return config
