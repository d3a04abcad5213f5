r"""Runs fixed routing policies over a workload or trace through the jitted environment.

For each policy, every request of the workload goes through the same jitted code path the
router trains in (`bes.env.serving_env`), with per-request outcomes recorded
(`bes.experiment.evaluate.simulate`, written by `bes.experiment.report`). Writes, per
policy, `outcomes.csv` (id,arrival,task,model,instance,latency,on_time,rejected,utility; one
row per request in arrival order; latency `inf` when rejected) and `metrics.json`; with one
policy they go straight into --out, with several into --out/<policy>/, plus a comparison
`--out/metrics.json` and a table on stdout.

  python launch/simulate.py --out=runs/simulate
  python launch/simulate.py --trace=bes/data/traces/azure_llm_2023_code.csv \
      --policy=static:opt-6.7b --out=runs/code_static_6.7b
  python launch/simulate.py --config.workload.kind=poisson --config.workload.rate=40 \
      --policy='task_map:0,1,2,2' --reward=soft --out=runs/x
"""
from __future__ import annotations

import sys

from absl import app, flags

from bes import cli_errors, config_cli, io_util, progress
from bes.experiment import Setup, evaluate, report

_CONFIG = config_cli.define_config_flag("Config file.")
_PROFILE = flags.DEFINE_string("profile", None, "Profile JSON (default: config.profile).")
_TRACE, _TRACE_RATE = config_cli.define_trace_flags()
_POLICY = flags.DEFINE_multi_string(
    "policy", None, "static:M | round_robin | random | task_map:M0,M1,... (M an index or a "
    "model name); repeat the flag for several. Default: config.simulate.policies.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", None, "Requests for generated workloads.")
_DEADLINE_S = flags.DEFINE_string("deadline_s", None, "Deadline in s, one or one per task.")
_DEADLINE_PER_TOKEN_S = flags.DEFINE_float("deadline_per_token_s", None, "Deadline s/token.")
_REWARD = flags.DEFINE_enum("reward", None, ["hard", "soft"], "Deadline kind.")
_SOFT_WINDOW_S = flags.DEFINE_float("soft_window_s", None, "Soft-deadline window in s.")
_MISS_PENALTY = flags.DEFINE_float("miss_penalty", None, "Utility lost by a miss/rejection.")
_QUEUE_CAPACITY = flags.DEFINE_integer("queue_capacity", None, "Waiting slots per instance.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed (workload draws, random policy).")
_OUT = flags.DEFINE_string("out", "runs/simulate", "Output directory.")

def flag_overrides() -> dict:
  """The config keys set by this launcher's own flags given on the command line."""
  given = {"profile": _PROFILE.value, "env.deadline_s": _DEADLINE_S.value,  # a string, parsed
           "env.deadline_per_token_s": _DEADLINE_PER_TOKEN_S.value,      # by serving_config_from
           "env.reward": _REWARD.value, "env.soft_window_s": _SOFT_WINDOW_S.value,
           "env.miss_penalty": _MISS_PENALTY.value, "env.queue_capacity": _QUEUE_CAPACITY.value,
           "simulate.num_requests": _NUM_REQUESTS.value, "seed": _SEED.value}
  out = {key: value for key, value in given.items() if value is not None}
  out.update(config_cli.trace_overrides(_TRACE.value, _TRACE_RATE.value))
  return out


def main(argv):
  del argv
  try:
    config = config_cli.apply_overrides(_CONFIG.value, flag_overrides())
    io_util.check_writable_dir(_OUT.value, "--out")   # before simulating, not after
    setup = Setup.from_config(config)
    with progress.heartbeat(print) as log:   # a line at least every 10 s while compiling
      result, outcomes = evaluate.simulate(setup, _POLICY.value or (), log=log)
    text, written = report.write(_OUT.value, result, f"python {' '.join(sys.argv)}", outcomes)
  except ValueError as e:
    sys.exit(f"simulate.py: error: {e}")
  print("\n" + text)
  print(f"\nwrote {written}")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
