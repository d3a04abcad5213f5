"""Evaluating policies on one request stream: the one path every kind of policy takes.

Kinds: a learned router (every seed of a workdir, `bes.experiment.workdir`), the tuned
heuristics, the fixed policies of `bes.policies` (`static:M`, `round_robin`, `task_map:...`,
`random`) and static deployments of one model on their own GPUs. Every policy sees exactly
the same requests: the workload's draws depend only on the evaluation key
(`bes.env.rollout.run_episode` splits the policy's key off separately), so outcomes differ
only by routing. Each run is one recorded episode summarised by `bes.metrics.summarize`
(which also reports the peak: the task-mix-weighted best quality, the bound no router
exceeds). The learned router's entry holds the mean over seeds, `<metric>_std` (population
std over seeds) and `seeds` (the per-seed dicts). `bes.experiment.report` writes the result.

Devices: with several devices in this process, the learned router's seeds run as one vmapped
program sharded over them (`bes.env.rollout.run_episodes`; the same outcomes as one by one,
up to the float rounding of a batched matmul); on one device, one by one as before. Each
process of a multi-process run evaluates on its own devices (the primary writes the report).
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from bes import metrics, policies
from bes.env import rollout as rollout_lib
from bes.experiment.setup import Setup
from bes.parallel import mesh as mesh_lib
from bes.profile import Profile

BASELINES = ("static", "round_robin", "random")


def fixed_policies(profile: Profile, specs: Sequence[str]) -> dict:
  """{spec: FixedPolicy} for specs like `static:opt-6.7b` (`bes.policies.parse_policy`)."""
  names = list(profile.model_names)
  return {s: policies.parse_policy(s, len(names), len(profile.tasks), names) for s in specs}


def baseline_specs(profile: Profile, kinds: Sequence[str] = BASELINES) -> list[str]:
  """Fixed baselines by kind: `static:<model>` for every model, `round_robin`, `random`."""
  specs = []
  for kind in kinds:
    if kind == "static":
      specs += [f"static:{m}" for m in profile.model_names]
    elif kind in ("round_robin", "random"):
      specs.append(kind)
    else:
      raise ValueError(f"baselines: expected some of {BASELINES}, got {kind!r}")
  return specs


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


def num_requests(setup: Setup, requested: int | None = None) -> int:
  """Requests of an evaluation run: a trace's whole length (at most `requested`), else
  `requested` or `config.simulate.num_requests`."""
  if setup.is_trace:
    n = int(setup.workload.requests.gap_us.shape[0])
    n = n if requested is None else min(n, int(requested))
  else:
    n = int(setup.simulate.num_requests if requested is None else requested)
  if n < 1:
    raise ValueError(f"--num_requests: expected >= 1, got {n}")
  return n


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


def run_policy(setup: Setup, policy, num_requests: int, key: jax.Array,
               profile: Profile | None = None, log: Callable[[str], None] | None = None,
               name: str = "") -> tuple[dict, dict]:
  """One recorded episode of `num_requests` requests on `profile` (default the setup's);
  returns (summary, outcomes). Logs a progress line per chunk of `config.simulate.chunk`."""
  profile = profile or setup.profile
  env, params = setup.env(episode_len=num_requests, record=True, profile=profile)
  start = time.time()

  def progress(done, total):
    if log is not None and total > setup.simulate.chunk:
      log(f"  {name}: {done}/{total} requests ({time.time() - start:.1f} s)")

  outcomes, _ = rollout_lib.run_episode(env, params, policy, key, chunk=setup.simulate.chunk,
                                        progress=progress)
  return metrics.summarize(outcomes, profile, window_s=setup.simulate.window_s), outcomes


def run_seeds(setup: Setup, seeds: Sequence[object], num_requests: int, key: jax.Array,
              mesh, log: Callable[[str], None] | None = None) -> list[tuple[dict, dict]]:
  """`run_policy` for policies of one structure (a learned router's seeds) at once: one
  vmapped recorded episode sharded over `mesh`'s 'data' axis; [(summary, outcomes)]."""
  env, params = setup.env(episode_len=num_requests, record=True)
  start = time.time()

  def progress(done, total):
    if log is not None and total > setup.simulate.chunk:
      log(f"  learned seeds: {done}/{total} requests ({time.time() - start:.1f} s)")

  runs = rollout_lib.run_episodes(env, params, policies.stack(list(seeds)), key,
                                  chunk=setup.simulate.chunk, progress=progress, mesh=mesh)
  return [(metrics.summarize(outcomes, setup.profile, window_s=setup.simulate.window_s), outcomes)
          for outcomes, _ in runs]


def evaluate(setup: Setup, num_requests: int, key: jax.Array,
             named_policies: Mapping[str, object], learned_seeds: Sequence[object] = (),
             deployments: Sequence[tuple[str, int]] = (), log: Callable[[str], None] = print,
             keep_outcomes: bool = False) -> tuple[dict, dict]:
  """Every policy on the same requests; returns (result, outcomes by policy name).

  result: `{"profile", "workload", "env", "num_requests", "peak", "policies": {name:
  summary}}`. `learned_seeds`: one learned policy per seed, reported as `learned` (mean,
  std, seeds). `deployments`: (model, gpus) pairs evaluated as `static:<model>@<gpus>gpu` on
  their own profile (that model alone). Outcomes (per-request arrays, `run_policy`) are
  kept only with `keep_outcomes` ({} otherwise).
  """
  kept = {}

  def run(name, policy, profile=None):
    summary, outcomes = run_policy(setup, policy, num_requests, key, profile, log, name)
    if keep_outcomes:
      kept[name] = outcomes
    log(f"  {name}: utility {summary['mean_utility']:.4f} "
        f"availability {summary['availability']:.4f}")
    return summary

  results = {}
  mesh = mesh_lib.local_mesh()
  if learned_seeds and len(learned_seeds) > 1 and mesh.size > 1:
    per_seed = run_seeds(setup, learned_seeds, num_requests, key, mesh, log)
    for s, (summary, outcomes) in enumerate(per_seed):
      if keep_outcomes:
        kept[f"learned seed {s}"] = outcomes
      log(f"  learned seed {s}: utility {summary['mean_utility']:.4f} "
          f"availability {summary['availability']:.4f}")
    results["learned"] = mean_over_seeds([summary for summary, _ in per_seed])
  elif learned_seeds:
    results["learned"] = mean_over_seeds([run(f"learned seed {s}", policy)
                                          for s, policy in enumerate(learned_seeds)])
  for name, policy in named_policies.items():
    results[name] = run(name, policy)
  for model, gpus in deployments:
    name = f"static:{model}@{gpus}gpu"
    results[name] = run(name, policies.static(0, len(setup.profile.tasks), 1),
                        deployment_profile(setup.profile, model, gpus))
  peak = next(iter(results.values()))["peak"] if results else None
  result = {"profile": setup.profile.name, "workload": setup.config.workload.to_dict(),
            "env": setup.config.env.to_dict(), "num_requests": num_requests, "peak": peak,
            "policies": results}
  return result, kept


def simulate(setup: Setup, specs: Sequence[str] = (),
             log: Callable[[str], None] = print) -> tuple[dict, dict]:
  """Fixed policies (`specs`, default `config.simulate.policies`) on one request stream (a
  trace whole, else `config.simulate.num_requests` requests) drawn with key `config.seed`;
  returns (result, outcomes by spec) as `evaluate`."""
  specs = list(specs) or list(setup.simulate.policies)
  named = fixed_policies(setup.profile, specs)
  n = num_requests(setup)
  log(f"profile {setup.profile.name} ({setup.profile.num_gpus} GPUs), workload "
      f"{setup.config.workload.kind}, {n} requests, policies {specs}")
  return evaluate(setup, n, jax.random.PRNGKey(setup.seed), named, log=log, keep_outcomes=True)
