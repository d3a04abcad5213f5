"""Availability vs arrival rate: the learned router on the mixed 4-GPU deployment against
static OPT-6.7B on 4 and on 8 GPUs, the static smaller models and the tuned heuristics.

One router (configs/experiments.py: trained over 1..160 req/s, 3 seeds) is trained once
and evaluated on Poisson streams of 10,000 requests at each rate; the learned entry is the
mean over its 3 seeds (spread in table.md as std).

  python launch/sweep.py --sweep=configs/sweeps/router_rates.py --out=results/router_rates
"""
import ml_collections

from bes.sweep import sweep

RATES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)   # requests per second
WORKDIR = "runs/experiments"                             # shared by the router sweeps


def get_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.base = "configs/experiments.py"
  s.grid = sweep("config.workload.rate", RATES)
  s.steps = [
      dict(name="train",
           cmd=f"launch/train.py --config={{base}} --workdir={WORKDIR} --eval=false"),
      dict(name="evaluate", overrides=["config.workload.rate"],
           cmd=(f"launch/evaluate.py --workdir={WORKDIR} --out={{point_dir}} "
                "--config.workload.kind=poisson --num_requests=10000 "
                "--deployments=opt-6.7b:4,opt-6.7b:8 {overrides}"))]
  s.metrics_from = "{point_dir}/metrics.json"
  s.plot = dict(x="config.workload.rate", y="availability", log_x=True,
                series=["learned", "deadline_greedy", "load_threshold", "static:opt-125m",
                        "static:opt-1.3b", "static:opt-6.7b", "static:opt-6.7b@4gpu",
                        "static:opt-6.7b@8gpu"])
  return s
