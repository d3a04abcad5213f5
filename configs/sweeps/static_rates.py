"""Static policies of the default profile over Poisson rates 1..128 requests/s, 3 seeds.

Each point runs `launch/simulate.py` with the three static policies (one model each) on a
Poisson workload; the table and plot show at which rate each model stops being available.

  python launch/sweep.py --sweep=configs/sweeps/static_rates.py --out=results/static_rates
"""
import ml_collections

from bes.sweep import product, sweep

RATES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)   # requests per second
SEEDS = (0, 1, 2)
POLICIES = ("static:opt-125m", "static:opt-1.3b", "static:opt-6.7b")
NUM_REQUESTS = 10000


def get_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.base = "configs/paper.py"
  s.grid = product([sweep("config.workload.rate", RATES), sweep("config.seed", SEEDS)])
  s.steps = [dict(
      name="simulate",
      cmd=("launch/simulate.py --config={base} --config.workload.kind=poisson "
           f"--config.simulate.policies={';'.join(POLICIES)} --num_requests={NUM_REQUESTS} "
           "--out={point_dir} {overrides}"))]
  s.metrics_from = "{point_dir}/metrics.json"
  s.plot = dict(x="config.workload.rate", y="availability", log_x=True, series=list(POLICIES))
  return s
