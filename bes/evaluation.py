"""Evaluating routers on one request stream: the learned router (every seed), the fixed and
hand-written baselines, and static deployments of one model on their own GPUs.

Every policy sees exactly the same requests: the workload's draws depend only on the
evaluation key (`bes.env.rollout.run_episode` splits the policy's key off separately), so
outcomes differ only by routing. Results are `bes.metrics.summarize` dicts; the learned
router's entry holds the mean over seeds, `<metric>_std` (population std over seeds) and
`seeds` (the per-seed dicts).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from bes import metrics, policies
from bes.env import config as env_config
from bes.env import rollout as rollout_lib
from bes.profile import Profile

TABLE_COLUMNS = (("availability", "avail"), ("mean_utility", "utility"),
                 ("frac_windows_ge_96", "win>=96%"), ("frac_windows_ge_98", "win>=98%"),
                 ("perf_per_gpu", "util/s/GPU"), ("p50_latency_s", "p50 s"),
                 ("p99_latency_s", "p99 s"), ("rejected_frac", "rejected"))
BASELINES = ("static", "round_robin", "random")


def format_table(rows: Mapping[str, dict]) -> str:
  """A fixed-width table of the headline metrics, one row per policy (`± std` over seeds
  where a row has one)."""
  def fmt(m, key):
    v = m.get(key)
    if v is None:
      return "-"
    std = m.get(f"{key}_std")
    return f"{v:.4f}" if std is None else f"{v:.3f}±{std:.3f}"
  width = max(len(k) for k in list(rows) + ["policy"]) + 2
  lines = ["policy".ljust(width) + "".join(short.rjust(14) for _, short in TABLE_COLUMNS)]
  for name, m in rows.items():
    lines.append(name.ljust(width) + "".join(fmt(m, key).rjust(14) for key, _ in TABLE_COLUMNS))
  return "\n".join(lines)


def mean_over_seeds(per_seed: Sequence[dict]) -> dict:
  """Mean of each metric over seeds, its population std as `<metric>_std`, and `seeds`."""
  out = {}
  for key in per_seed[0]:
    values = [s[key] for s in per_seed]
    if any(v is None for v in values):
      out[key] = None
      continue
    out[key] = float(np.mean(values))
    if len(per_seed) > 1 and key != "num_requests":
      out[f"{key}_std"] = float(np.std(values))
  out["seeds"] = list(per_seed)
  return out


def baseline_policies(profile: Profile, kinds: Sequence[str] = BASELINES) -> dict:
  """Fixed baselines by spec: `static:<model>` for every model, `round_robin`, `random`."""
  names, n_tasks = list(profile.model_names), len(profile.tasks)
  specs = []
  for kind in kinds:
    if kind == "static":
      specs += [f"static:{m}" for m in names]
    elif kind in ("round_robin", "random"):
      specs.append(kind)
    else:
      raise ValueError(f"baselines: expected some of {BASELINES}, got {kind!r}")
  return {s: policies.parse_policy(s, len(names), n_tasks, names) for s in specs}


def parse_deployments(text: str, profile: Profile) -> list[tuple[str, int]]:
  """'opt-6.7b:4,opt-6.7b:8' -> [(model, gpus)]: that model alone on that many GPUs."""
  out = []
  for item in (t.strip() for t in text.split(",") if t.strip()):
    name, _, gpus = item.rpartition(":")
    if name not in profile.model_names or not gpus.isdigit() or int(gpus) < 1:
      raise ValueError(f"--deployments: expected MODEL:GPUS with MODEL in "
                       f"{list(profile.model_names)} and GPUS >= 1, got {item!r}")
    out.append((name, int(gpus)))
  return out


def deployment_profile(profile: Profile, model: str, gpus: int) -> Profile:
  """`model` alone, with as many instances as fit on `gpus` GPUs."""
  m = profile.models[profile.model_index(model)]
  if gpus % m.gpus_per_instance:
    raise ValueError(f"--deployments: {model} needs {m.gpus_per_instance} GPUs per instance; "
                     f"{gpus} GPUs is not a multiple")
  return profile.subset([model]).with_instances([gpus // m.gpus_per_instance])


def run_policy(config, profile: Profile, workload, policy, num_requests: int, key: jax.Array,
               window_s: float, progress: Callable | None = None) -> tuple[dict, dict]:
  """One recorded episode of `num_requests` requests; returns (summary, outcomes)."""
  env, params, _ = env_config.env_from_config(config, episode_len=num_requests, record=True,
                                              profile=profile, workload=workload)
  chunk = int(config.simulate.chunk) if "simulate" in config else None
  outcomes, _ = rollout_lib.run_episode(env, params, policy, key, chunk=chunk, progress=progress)
  return metrics.summarize(outcomes, profile, window_s=window_s), outcomes


def evaluate(config, profile: Profile, workload, num_requests: int, key: jax.Array,
             window_s: float, named_policies: Mapping[str, object],
             learned_seeds: Sequence[object] = (), deployments: Sequence[tuple[str, int]] = (),
             log: Callable[[str], None] = print) -> dict:
  """Summaries of every policy on the same requests: `{"peak", "policies": {name: summary}}`.

  `learned_seeds`: one learned policy per seed, reported as `learned` (mean, std, seeds).
  `deployments`: (model, gpus) pairs evaluated as `static:<model>@<gpus>gpu` on their own
  profile (that model alone).
  """
  def run(name, policy, deployment=profile):
    summary, _ = run_policy(config, deployment, workload, policy, num_requests, key, window_s)
    log(f"  {name}: utility {summary['mean_utility']:.4f} "
        f"availability {summary['availability']:.4f}")
    return summary

  results = {}
  if learned_seeds:
    results["learned"] = mean_over_seeds([run(f"learned seed {s}", policy)
                                          for s, policy in enumerate(learned_seeds)])
  for name, policy in named_policies.items():
    results[name] = run(name, policy)
  for model, gpus in deployments:
    results[f"static:{model}@{gpus}gpu"] = run(f"static:{model}@{gpus}gpu",
                                               policies.static(0, len(profile.tasks), 1),
                                               deployment_profile(profile, model, gpus))
  peak = next(iter(results.values()))["peak"] if results else None
  return {"peak": peak, "policies": results}
