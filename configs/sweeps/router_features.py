"""Does the router do better with the information the deadline-aware heuristic reads?

Two routers of the paper's config (configs/paper.py) (3 seeds each): `features='paper'` (task, per-model load,
arrival rate, as in the paper) and `features='queues'` (plus, per model, the batch and
queue fill of the instance a request would join; bes/router/features.py), evaluated on
the training workload (bursty 20 req/s) and two shifts of it.

  python launch/sweep.py --sweep=configs/sweeps/router_features.py --out=results/router_features
"""
import ml_collections

from bes.sweep import sweep
from configs.sweeps import router_workloads

WORKLOADS = ("bursty20", "poisson20", "taskmix_lambada")


def get_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.base = "configs/paper.py"
  keys = router_workloads.KEYS
  workloads = [dict({k: router_workloads.DEFAULTS.get(k) for k in keys},
                    **router_workloads.WORKLOADS[name], **{"config.workload.name": name})
               for name in WORKLOADS]
  s.grid = [dict(w, **f) for f in sweep("config.dqn.features", ["paper", "queues"])
            for w in workloads]
  s.steps = [
      dict(name="train", overrides=["config.dqn.features"],
           cmd=("launch/train.py --config={base} --workdir={step_dir} --eval=false "
                "--config.num_seeds=3 {overrides}")),
      dict(name="evaluate", overrides=keys,
           cmd=("launch/evaluate.py --workdir={steps[train]} --out={point_dir} "
                "--num_requests=20000 --baselines=static {overrides}"))]
  s.metrics_from = "{point_dir}/metrics.json"
  s.plot = dict(x="config.workload.name", y="mean_utility", log_x=False,
                series=["learned", "deadline_greedy", "load_threshold"])
  return s
