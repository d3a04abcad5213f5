"""The cost of a shift, measured the other way: routers trained ON two shifted workloads
(configs/paper.py, 3 seeds each), evaluated on the workload they were trained on. Compare
with the experiments' router (trained on the uniform-mix bursty workload) on the same
workloads in `router_workloads/`: the difference is the utility lost to the shift.

  python launch/sweep.py --sweep=configs/sweeps/router_shift.py --out=results/router_shift
"""
import ml_collections

from configs.sweeps import router_workloads

SHIFTED = ("taskmix_lambada", "azure_code")


def get_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.base = "configs/paper.py"
  keys = router_workloads.KEYS
  s.grid = [dict({k: router_workloads.DEFAULTS.get(k) for k in keys},
                 **router_workloads.WORKLOADS[name], **{"config.workload.name": name})
            for name in SHIFTED]
  # A trace's episodes start at random requests of it, so the environments see all of it.
  s.steps = [
      dict(name="train", overrides=keys,
           cmd=("launch/train.py --config={base} --workdir={step_dir} --eval=false "
                "--config.num_seeds=3 --config.workload.trace_random_start=true {overrides}")),
      dict(name="evaluate",
           cmd=("launch/evaluate.py --workdir={steps[train]} --out={point_dir} "
                "--num_requests=20000 --config.workload.trace_random_start=false"))]
  s.metrics_from = "{point_dir}/metrics.json"
  s.plot = dict(x="config.workload.name", y="mean_utility", log_x=False,
                series=["learned", "deadline_greedy", "load_threshold", "static:opt-125m"])
  return s
