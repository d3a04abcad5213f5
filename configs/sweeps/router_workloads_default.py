"""The default router on unpredictable and shifted workloads (router_workloads.py): the same
workloads, baselines and requests, the router of configs/experiments_default.py.

  python launch/sweep.py --sweep=configs/sweeps/router_workloads_default.py \
      --out=results/router_workloads_default
"""
import ml_collections

from configs.sweeps import router_rates_default, router_workloads


def get_sweep() -> ml_collections.ConfigDict:
  return router_rates_default.with_router(
      router_workloads.get_sweep(), "configs/experiments_default.py",
      router_rates_default.WORKDIR, router_workloads.WORKDIR)
