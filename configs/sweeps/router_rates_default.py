"""Availability vs arrival rate (router_rates.py) for the default router: the same points,
baselines and requests, the router of configs/experiments_default.py, and three rates
above them (160, 192 and 256 req/s: 10x, 12x and 16x what static OPT-6.7B sustains on 4 GPUs,
so that the paper's "> 10x" is measured rather than capped by the top of the sweep).

  python launch/sweep.py --sweep=configs/sweeps/router_rates_default.py \
      --out=results/router_rates_default
"""
import ml_collections

from bes.sweep import sweep
from configs.sweeps import router_rates

WORKDIR = "runs/experiments_default"
RATES = router_rates.RATES + (160.0, 192.0, 256.0)   # requests per second


def with_router(s: ml_collections.ConfigDict, base: str, workdir: str,
                old_workdir: str) -> ml_collections.ConfigDict:
  """`s` with its train step on `base` and every step's router workdir `workdir`."""
  s.base = base
  s.steps = [dict(step, cmd=step["cmd"].replace(f"--workdir={old_workdir}",
                                                 f"--workdir={workdir}"))
             for step in s.steps]
  return s


def get_sweep() -> ml_collections.ConfigDict:
  s = with_router(router_rates.get_sweep(), "configs/experiments_default.py", WORKDIR,
                  router_rates.WORKDIR)
  s.grid = sweep("config.workload.rate", RATES)
  return s
