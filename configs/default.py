"""The default configuration: the built-in 4-GPU OPT profile under a bursty workload.

Use with any launcher: `--config=configs/default.py`, and override any key from the
command line, e.g. `--config.workload.rate=40 --config.env.reward=soft`.
"""
import ml_collections

from bes.workloads import default_workload_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Profile JSON path; '' = the built-in default (bes/data/profiles/opt_a100_roofline.json:
  # OPT-125M x1, OPT-1.3B x1, OPT-6.7B x2 on A100-80GB, roofline latencies, measured quality).
  config.profile = ""

  # Request stream (keys: bes/workloads/config.py). Default: MAF-style bursty arrivals at a
  # mean of 20 requests/s, uniform task mix, lengths fitted to the Azure conversation trace.
  config.workload = default_workload_config()
  config.workload.kind = "bursty"
  config.workload.rate = 20.0

  # Serving model (bes/serving_config.py). Deadline of a request: deadline_s +
  # deadline_per_token_s * output tokens, i.e. 2 s to first token plus a 30 ms per-token SLO.
  # Not type-safe: deadline_s may be one number or one per task ('2,2,3,3' or a tuple).
  config.env = ml_collections.ConfigDict(type_safe=False)
  config.env.deadline_s = 2.0
  config.env.deadline_per_token_s = 0.03
  config.env.reward = "hard"          # 'hard' | 'soft'
  config.env.soft_window_s = 2.0      # soft: utility falls to 0 this long after the deadline
  config.env.miss_penalty = 0.0
  config.env.queue_capacity = 64      # waiting requests per instance before rejection
  config.env.episode_len = 1024       # requests per episode (training)
  config.env.rate_ema_alpha = 0.1     # weight of the newest gap in the arrival-rate estimate

  # launch/simulate.py
  config.simulate = ml_collections.ConfigDict()
  config.simulate.num_requests = 20000     # generated workloads (a trace replays all of it)
  config.simulate.policies = "static:opt-125m;static:opt-1.3b;static:opt-6.7b;round_robin"
  config.simulate.window_s = 10.0          # window length for the window metrics
  config.simulate.chunk = 2000             # steps per jitted chunk (progress granularity)

  config.seed = 0
  return config
