"""Evaluating a training workdir: the learned router (every seed) against every baseline on
the same requests; tuning the hand-written heuristics on the training workload. The CLIs are
`launch/evaluate.py` and the end of `launch/train.py`.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import ml_collections

from bes import config_cli, evaluation, io_util
from bes.env import config as env_config
from bes.router import checkpoint
from bes.workloads import workload_from_config

HEURISTICS_FILE = "heuristics.json"


def tune_heuristics(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  """Tunes every heuristic of `bes.heuristics` on the training workload (the config's, at its
  base rate) and saves the knobs to `workdir/heuristics.json`; returns them."""
  from bes import heuristics
  env, params, _ = env_config.env_from_config(config)
  key = jax.random.PRNGKey(int(config.seed) + 2)
  tuned = {}
  for name in heuristics.HEURISTICS:
    log(f"tuning {name} on the training workload (grid search of its knobs; compiles first)")
    policy, report = heuristics.tune(name, env, params, key)
    tuned[name] = heuristics.to_dict(policy)
    log(f"tuned {name}: {heuristics.format_knobs(tuned[name])}")
  io_util.atomic_write_text(os.path.join(workdir, HEURISTICS_FILE), json.dumps(tuned, indent=2))
  return tuned


def heuristic_policies(workdir: str, params) -> dict:
  """The heuristics tuned for `workdir`, rebuilt for an environment's `params` ({} if none)."""
  path = os.path.join(workdir, HEURISTICS_FILE)
  if not os.path.exists(path):
    return {}
  from bes import heuristics
  try:
    with open(path) as f:
      tuned = json.load(f)
  except ValueError as e:   # also UnicodeDecodeError
    raise ValueError(f"{path}: expected the tuned heuristics as JSON ({e}); delete the file "
                     "to tune them again") from None
  if not isinstance(tuned, dict):
    raise ValueError(f"{path}: expected a JSON object {{heuristic: knobs}}, got "
                     f"{type(tuned).__name__}; delete the file to tune them again")
  return {name: heuristics.from_dict(name, d, params) for name, d in tuned.items()}


def evaluation_config(train_config, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The training config with `overrides` ({'workload.rate': 40, ...}) applied."""
  return config_cli.apply_overrides(train_config, overrides or {}, "the workdir's config")


def write_report(result: dict, out: str, command: str) -> str:
  """The readable table of an evaluation; written to `out/table.txt` under `command`."""
  report = (f"{result['num_requests']} requests ({result['workload']['kind']}, rate "
            f"{result['workload']['rate']}), peak = {result['peak']:.4f}\n"
            f"{evaluation.format_table(result['policies'])}\n")
  io_util.write_text(out, "table.txt", f"$ {command}\n\n{report}")   # atomic, never lost
  return report


def evaluate_workdir(workdir: str, out: str, overrides: dict | None = None,
                     num_requests: int | None = None, seed: int | None = None,
                     baselines: Sequence[str] = evaluation.BASELINES,
                     deployments: str = "", window_s: float | None = None,
                     log: Callable[[str], None] = print) -> dict:
  """Evaluates `workdir`'s router and baselines; writes `out/metrics.json`; returns it."""
  train_config, seeds = checkpoint.load_policies(workdir)
  config = evaluation_config(train_config, overrides)
  profile = env_config.profile_from_config(config)
  workload = workload_from_config(config.workload, profile.tasks)
  if config.workload.kind == "trace":                       # the whole trace, at most n
    n = int(workload.requests.gap_us.shape[0])
    n = n if num_requests is None else min(n, int(num_requests))
  else:
    n = int(num_requests or config.simulate.num_requests)
  if n < 1:
    raise ValueError(f"--num_requests: expected >= 1, got {n}")
  _, params, _ = env_config.env_from_config(config, episode_len=n, profile=profile,
                                            workload=workload)
  named = dict(heuristic_policies(workdir, params))
  named.update(evaluation.baseline_policies(profile, baselines))
  key = jax.random.PRNGKey(int(config.seed if seed is None else seed) + 1000)
  window = float(config.simulate.window_s if window_s is None else window_s)
  log(f"evaluating {workdir} ({len(seeds)} seed(s)) on {n} requests of workload "
      f"{config.workload.kind} rate {config.workload.rate}")
  result = evaluation.evaluate(config, profile, workload, n, key, window, named, seeds,
                               evaluation.parse_deployments(deployments, profile), log)
  result.update(workdir=os.path.abspath(workdir), num_requests=n, profile=profile.name,
                workload=config.workload.to_dict(), env=config.env.to_dict(),
                overrides=dict(overrides or {}))
  io_util.write_text(out, "metrics.json", json.dumps(result, indent=2, default=list))
  return result
