"""Orbax checkpoints of a training run: the whole learner state, the policy parameters and
the full config, so that a run resumes exactly and a trained router loads on its own.

Layout: `<workdir>/checkpoints/<chunk>/{state,params,config,progress}` (an orbax
CheckpointManager; the step is the number of chunks done). `params` holds the policy's
network parameters (stacked over seeds: the latest online ones, or with
`config.train.select_best` the best-evaluated ones) so that evaluation restores them
without building the training environments; `progress` holds the wall-clock seconds spent so far.

`trim_to_policy(workdir)` keeps only what evaluation reads (the latest step's params, config
and progress): what `results/` commits of a trained router. A trimmed workdir loads with
`load_policies` but cannot resume training.
"""
from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
      max_to_keep=max(1, int(keep)), create=True))


def save(mngr: ocp.CheckpointManager, step: int, state, config: ml_collections.ConfigDict,
         progress: dict, params) -> None:
  """Saves the learner state (any pytree), the policy's `params`, the config and
  `progress` (JSON)."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(params),
      config=ocp.args.JsonSave(config.to_dict()), progress=ocp.args.JsonSave(progress)))
  mngr.wait_until_finished()


def _abstract(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def restore_state(mngr: ocp.CheckpointManager, step: int, like):
  """The learner state of `step`, shaped like `like` (a state or its eval_shape), and the
  saved progress dict."""
  step_dir = os.path.join(str(mngr.directory), str(step))
  if not os.path.isdir(os.path.join(step_dir, "state")):
    raise ValueError(f"{step_dir}: holds only the trained policy (no learner state, it was "
                     f"trimmed for results/), so training cannot resume from it; train in a "
                     f"new --workdir")
  got = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(like)), progress=ocp.args.JsonRestore()))
  return got.state, got.progress


def read_config(workdir: str) -> tuple[ml_collections.ConfigDict, int]:
  """The config saved with the latest checkpoint of `workdir`, and that checkpoint's step."""
  mngr = manager(workdir)
  step = mngr.latest_step()
  if step is None:
    raise ValueError(f"--workdir={workdir}: no checkpoint under {workdir}/checkpoints "
                     f"(train first with launch/train.py --workdir={workdir})")
  got = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(got.config, type_safe=False), step


def restore_params(workdir: str, step: int, like):
  """The online network parameters (stacked over seeds) of checkpoint `step`."""
  got = manager(workdir).restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(_abstract(like))))
  return got.params


def trim_to_policy(workdir: str) -> int:
  """Deletes `workdir`'s learner states (replay buffers, environment states, optimiser) and
  every checkpoint but the latest, keeping that one's params, config and progress (what
  `load_policies` reads). Returns the number of bytes freed; 0 when there is no checkpoint."""
  root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
  doomed = [os.path.join(root, str(s)) for s in steps[:-1]]
  doomed += [os.path.join(root, str(s), "state") for s in steps[-1:]]
  freed = 0
  for path in filter(os.path.isdir, doomed):
    freed += _tree_bytes(path)
    shutil.rmtree(path)
  return freed


def _tree_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def load_policies(workdir: str):
  """The trained router of `workdir`'s latest checkpoint: (config, [LearnedPolicy per seed])."""
  import jax.numpy as jnp
  from bes.env import config as env_config
  from bes.router import features as features_lib
  from bes.router.policy import LearnedPolicy
  from bes.router.qnetwork import make_qnetwork

  config, step = read_config(workdir)
  profile = env_config.profile_from_config(config)
  layout = features_lib.layout(len(profile.tasks), len(profile.models),
                               str(config.dqn.get("features", "paper")))
  network = make_qnetwork(layout, config.dqn)
  obs = jnp.zeros((1, layout.size), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), int(config.num_seeds))
  like = jax.eval_shape(jax.vmap(lambda k: network.init(k, obs)), keys)
  params = restore_params(workdir, step, like)
  seeds = [LearnedPolicy(params=jax.tree_util.tree_map(lambda x, s=s: x[s], params),
                         network=network)
           for s in range(int(config.num_seeds))]
  return config, seeds
