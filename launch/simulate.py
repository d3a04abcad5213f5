r"""Runs fixed routing policies over a workload or trace through the jitted environment.

For each policy, every request of the workload goes through the same jitted code path the
router trains in (`bes.env.serving_env`), with per-request outcomes recorded. Writes, per
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

import json
import os
import re
import sys
import time

from absl import app, flags, logging

import jax

from bes import cli_errors, config_cli, io_util, metrics, policies
from bes.evaluation import format_table
from bes.env import config as env_config
from bes.env import rollout as rollout_lib
from bes.workloads import workload_from_config

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

OUTCOME_COLUMNS = ("id", "arrival", "task", "model", "instance", "latency", "on_time",
                   "rejected", "utility")


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


def num_requests(config, workload) -> int:
  """A trace is replayed whole; generated workloads draw config.simulate.num_requests."""
  if config.workload.kind == "trace":
    return int(workload.requests.gap_us.shape[0])
  n = int(config.simulate.num_requests)
  if n < 1:
    raise ValueError(f"--num_requests / config.simulate.num_requests must be >= 1, got {n}")
  return n


def outcomes_csv(outcomes: dict) -> str:
  """One row per request in arrival order; latency in seconds (`inf` when rejected)."""
  o = outcomes
  rows = [",".join(OUTCOME_COLUMNS) + "\n"]
  for i in range(len(o["arrival"])):
    rows.append(f"{i},{o['arrival'][i]:.6f},{o['task'][i]},{o['model'][i]},{o['instance'][i]},"
                f"{o['latency'][i]:.6f},{int(o['on_time'][i])},{int(o['rejected'][i])},"
                f"{o['utility'][i]:.6f}\n")
  return "".join(rows)


def slug(spec: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", spec)


def main(argv):
  del argv
  try:
    run(config_cli.apply_overrides(_CONFIG.value, flag_overrides()))
  except ValueError as e:
    sys.exit(f"simulate.py: error: {e}")


def run(config):
  io_util.check_writable_dir(_OUT.value, "--out")   # before simulating, not after
  specs = _POLICY.value or [s for s in config.simulate.policies.split(";") if s]
  profile = env_config.profile_from_config(config)
  names = [m.name for m in profile.models]
  built = {spec: policies.parse_policy(spec, len(names), len(profile.tasks), names)
           for spec in specs}
  workload = workload_from_config(config.workload, profile.tasks)
  n = num_requests(config, workload)
  env, params, _ = env_config.env_from_config(config, episode_len=n, record=True,
                                              profile=profile, workload=workload)
  logging.info("profile %s (%d GPUs), workload %s, %d requests, policies %s", profile.name,
               profile.num_gpus, config.workload.kind, n, specs)
  results = {}
  for spec, policy in built.items():
    start = time.time()

    def progress(done, total, spec=spec, start=start):
      print(f"  {spec}: {done}/{total} requests ({time.time() - start:.1f} s)", flush=True)

    outcomes, _ = rollout_lib.run_episode(env, params, policy, jax.random.PRNGKey(config.seed),
                                          chunk=int(config.simulate.chunk), progress=progress)
    summary = metrics.summarize(outcomes, profile, window_s=float(config.simulate.window_s))
    sub = "" if len(specs) == 1 else slug(spec)   # never lost: io_util.write_text
    io_util.write_text(_OUT.value, os.path.join(sub, "outcomes.csv"), outcomes_csv(outcomes))
    io_util.write_text(_OUT.value, os.path.join(sub, "metrics.json"),
                       json.dumps(dict(summary, policy=spec), indent=2))
    results[spec] = summary
  if len(specs) > 1:
    io_util.write_text(_OUT.value, "metrics.json", json.dumps(
        {"profile": profile.name, "workload": config.workload.to_dict(),
         "env": config.env.to_dict(), "num_requests": n,
         "peak": next(iter(results.values()))["peak"], "policies": results}, indent=2))
  report = (f"{n} requests, peak (best model per task) = "
            f"{next(iter(results.values()))['peak']:.4f}\n{format_table(results)}\n")
  table = io_util.write_text(_OUT.value, "table.txt", f"$ python {' '.join(sys.argv)}\n\n{report}")
  print("\n" + report)
  print(f"\nwrote {os.path.dirname(table)}")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
