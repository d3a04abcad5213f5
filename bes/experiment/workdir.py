"""A training workdir as evaluation sees it: the trained router of its latest checkpoint,
the hand-written heuristics tuned for it (`heuristics.json`), and the evaluation of both
against every baseline on one request stream (`launch/evaluate.py`, the end of
`launch/train.py`).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bes import config_cli, heuristics, io_util
from bes.experiment import evaluate as evaluate_lib
from bes.experiment.setup import Setup
from bes.parallel import distributed
from bes.parallel import mesh as mesh_lib
from bes.router import checkpoint
from bes.router import features as features_lib
from bes.router.policy import LearnedPolicy
from bes.router.qnetwork import make_qnetwork

HEURISTICS_FILE = "heuristics.json"


TUNE_VARIANTS = 16  # training environments a randomised distribution's tuning scores on


def tuning_distribution(setup: Setup) -> tuple[object, str]:
  """(score_params, description) the heuristics are tuned on (`heuristics.tune`): None and
  'the training workload' for one configured workload; for a randomised training
  distribution, the EnvParams of TUNE_VARIANTS training environments spread evenly over
  its stack (one rollout each)."""
  if not setup.train.randomised:
    return None, "the training workload"
  stack = setup.train_envs().params
  pick = np.unique(np.linspace(0, setup.dqn.num_envs - 1, TUNE_VARIANTS).astype(int))
  return (jax.tree_util.tree_map(lambda x: x[pick], stack),
          f"{len(pick)} environments of the randomised training distribution")


def tune_heuristics(setup: Setup, workdir: str, log: Callable[[str], None] = print) -> dict:
  """Tunes every heuristic of `bes.heuristics` on the training workload (training episodes)
  and saves the knobs to `workdir/heuristics.json`; returns them. A randomised training
  distribution (`config.train`: rate_multipliers, task_mixes, burstiness) is the tuning
  distribution too: one rollout on each of TUNE_VARIANTS training environments spread over
  the stack; otherwise 4 rollouts of the configured workload. The candidates are scored in
  parallel over this process's devices (every process of a multi-process run tunes the same
  knobs; the primary writes them)."""
  env, params = setup.env()
  key = jax.random.PRNGKey(setup.seed + 2)
  mesh = mesh_lib.local_mesh()
  score_params, where = tuning_distribution(setup)
  tuned = {}
  for name in heuristics.HEURISTICS:
    log(f"tuning {name} on {where} (grid search of its knobs; compiles first)")
    policy, _ = heuristics.tune(name, env, params, key, mesh=mesh, score_params=score_params)
    tuned[name] = heuristics.to_dict(policy)
    log(f"tuned {name}: {heuristics.format_knobs(tuned[name])}")
  if distributed.is_primary():     # every process tunes (the same knobs); one writes
    io_util.atomic_write_text(os.path.join(workdir, HEURISTICS_FILE),
                              json.dumps(tuned, indent=2))
  return tuned


def heuristic_policies(workdir: str, params) -> dict:
  """The heuristics tuned for `workdir`, rebuilt for an environment's `params` ({} if none)."""
  path = os.path.join(workdir, HEURISTICS_FILE)
  if not os.path.exists(path):
    return {}
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


def evaluation_config(saved, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """A workdir's saved config (a dict or ConfigDict) with `overrides` ({'workload.rate': 40,
  ...}) applied; an unknown key is refused naming the closest ones (`bes.config_cli`)."""
  return config_cli.apply_overrides(saved, overrides or {}, "the workdir's config")


def saved_config(workdir: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The config saved with `workdir`'s newest intact checkpoint, with `overrides` applied."""
  saved, _ = checkpoint.read_config(workdir)
  return evaluation_config(saved, overrides)


def load_policies(workdir: str) -> list[LearnedPolicy]:
  """The trained router of `workdir`'s newest intact checkpoint (`checkpoint.read_config`; a
  damaged newer one is skipped with a warning), one greedy policy per seed (shaped by the
  workdir's own config, whatever an evaluation overrides)."""
  saved, step = checkpoint.read_config(workdir)
  setup = Setup.from_config(ml_collections.ConfigDict(saved, type_safe=False))
  profile = setup.profile
  layout = features_lib.layout(len(profile.tasks), len(profile.models), setup.dqn.features)
  network = make_qnetwork(layout, setup.dqn)
  obs = jnp.zeros((1, layout.size), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), setup.num_seeds)
  like = jax.eval_shape(jax.vmap(lambda k: network.init(k, obs)), keys)
  # Host copies: in a multi-process run the restored arrays span every process's devices,
  # while evaluation runs on each process's own devices.
  params = jax.tree_util.tree_map(jnp.asarray, distributed.fetch(
      checkpoint.restore_params(workdir, step, like)))
  predictor = (features_lib.predictor(layout, setup.env()[1], knobs=setup.dqn.reference)
               if layout.needs_predictor else None)
  return [LearnedPolicy(params=jax.tree_util.tree_map(lambda x, s=s: x[s], params),
                        network=network, predictor=predictor)
          for s in range(setup.num_seeds)]


def evaluate_workdir(workdir: str, overrides: dict | None = None,
                     num_requests: int | None = None, seed: int | None = None,
                     baselines: Sequence[str] = evaluate_lib.BASELINES,
                     deployments: str = "", log: Callable[[str], None] = print) -> dict:
  """`workdir`'s router (every seed), its tuned heuristics and the baselines on one request
  stream of the workdir's config with `overrides`; returns the result
  (`bes.experiment.evaluate.evaluate`, plus `workdir` and `overrides`)."""
  setup = Setup.from_config(saved_config(workdir, overrides))
  seeds = load_policies(workdir)
  n = evaluate_lib.num_requests(setup, num_requests)
  _, params = setup.env(episode_len=n)
  named = dict(heuristic_policies(workdir, params))
  named.update(evaluate_lib.fixed_policies(setup.profile,
                                           evaluate_lib.baseline_specs(setup.profile, baselines)))
  key = jax.random.PRNGKey((setup.seed if seed is None else seed) + 1000)
  log(f"evaluating {workdir} ({len(seeds)} seed(s)) on {n} requests of workload "
      f"{setup.config.workload.kind} rate {setup.config.workload.rate}")
  result, _ = evaluate_lib.evaluate(setup, n, key, named, seeds,
                                    evaluate_lib.parse_deployments(deployments, setup.profile),
                                    log)
  result.update(workdir=os.path.abspath(workdir), overrides=dict(overrides or {}))
  return result
