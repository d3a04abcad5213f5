"""Availability vs arrival rate for a router trained to value availability: the rate sweep
of `router_rates.py` with a miss penalty in the reward (reward design, as the paper's hard
deadlines): a late or rejected request costs 0.25 instead of 0, for the router and for the
heuristics' tuning alike (`mean_utility` here includes the penalties).

  python launch/sweep.py --sweep=configs/sweeps/router_rates_penalty.py \
      --out=results/router_rates_penalty
"""
import ml_collections

from configs.sweeps import router_rates

WORKDIR = "runs/experiments_penalty"
PENALTY = 0.25


def get_sweep() -> ml_collections.ConfigDict:
  s = router_rates.get_sweep()
  s.steps = [
      dict(name="train",
           cmd=(f"launch/train.py --config={{base}} --workdir={WORKDIR} --eval=false "
                f"--config.env.miss_penalty={PENALTY}")),
      dict(name="evaluate", overrides=["config.workload.rate"],
           cmd=(f"launch/evaluate.py --workdir={WORKDIR} --out={{point_dir}} "
                "--config.workload.kind=poisson --num_requests=10000 "
                "--deployments=opt-6.7b:4,opt-6.7b:8 {overrides}"))]
  return s
