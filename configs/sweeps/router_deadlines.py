"""Hard vs soft deadlines through the reward: one router trained per reward mode.

`hard`: a late request is worth 0 (miss_penalty 0); `soft`: its utility falls linearly to 0
over `soft_window_s` = 2 s after the deadline. Each router (configs/paper.py, 3 seeds) is
evaluated under its own reward on the default bursty workload (20 req/s), and under hard
deadlines too (`hard_eval/` of each point) to show what softness costs on time.

  python launch/sweep.py --sweep=configs/sweeps/router_deadlines.py --out=results/router_deadlines
"""
import ml_collections

from bes.sweep import product, sweep


def get_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.base = "configs/paper.py"
  s.grid = product([sweep("config.env.reward", ["hard", "soft"]),
                    sweep("config.workload.rate", [20.0])])
  s.steps = [
      dict(name="train", overrides=["config.env.reward"],
           cmd=("launch/train.py --config={base} --workdir={step_dir} --eval=false "
                "--config.num_seeds=3 {overrides}")),
      dict(name="evaluate", overrides=["config.workload.rate"],
           cmd=("launch/evaluate.py --workdir={steps[train]} --out={point_dir} "
                "--num_requests=20000 {overrides}")),
      dict(name="hard_eval", overrides=["config.workload.rate"],
           cmd=("launch/evaluate.py --workdir={steps[train]} --out={point_dir}/hard_eval "
                "--num_requests=20000 --config.env.reward=hard {overrides}"))]
  s.metrics_from = "{point_dir}/metrics.json"
  s.plot = dict(x="config.env.reward", y="mean_utility", log_x=False,
                series=["learned", "deadline_greedy", "load_threshold", "static:opt-125m"])
  return s
