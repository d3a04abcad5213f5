"""Training a router of a `Setup` into a workdir: chunks, evaluation between them, CSV
metrics, orbax checkpoints and exact resumption. `launch/train.py` is its CLI.

Seeds: `setup.num_seeds` learners train together under `jit(vmap(...))`; seed s starts
from `jax.random.split(PRNGKey(setup.seed), num_seeds)[s]` (`Setup.seed_keys`), so every
seed has its own network initialisation, environment streams and exploration.

Outputs in the workdir:
  checkpoints/     orbax (bes/router/checkpoint.py), one per chunk (the latest `keep`)
  metrics.csv      one row per chunk and seed: chunk, iteration, decisions, seconds (wall
                   clock since the start, resumptions included), epsilon, loss, q_mean,
                   train_reward_per_decision, train_on_time_per_decision, train_rejected_frac,
                   eval_mean_utility, eval_availability, eval_rejected_frac
  config.json      the full config (also inside every checkpoint)

Devices (`config.mesh`, `bes/parallel/mesh.py`): the learner state [seeds, ...] lives on the
('seed', 'data', 'model') mesh: seeds over 'seed', the per-environment leaves (`envs`,
`replay`: [seeds, E, ...]) over ('seed', 'data'), the rest (networks, optimiser, keys) over
'seed' (replicated over 'data'). Each sampled replay batch is constrained to 'data', so the
forward / backward pass is data-parallel and XLA all-reduces the gradients (the jit / GSPMD
pattern). Random draws do not depend on the sharding (JAX's threefry values are the same for
any sharding; `jax_threefry_partitionable`, JAX's default, also draws them shard by shard
without communication), so a sharded run equals the 1-device run up to the order of float
sums (the tiny test run: params within 3e-8).
Several processes (`bes/parallel/distributed.py`) run the same program on one global mesh:
every process takes part in the checkpoints, the primary alone writes metrics.csv and
config.json and logs. The mesh keys are not compared on resume: a run resumes on another
mesh or number of hosts, its checkpoint restored into the new shardings.
"""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from bes.parallel import distributed
from bes.parallel import mesh as mesh_lib

from bes.experiment import config as config_lib
from bes.experiment.setup import Setup, TrainEnvs
from bes.router import checkpoint, dqn

CSV_COLUMNS = ("chunk", "seed", "iteration", "decisions", "seconds", "epsilon", "loss", "q_mean",
               "train_reward_per_decision", "train_on_time_per_decision", "train_rejected_frac",
               "eval_mean_utility", "eval_availability", "eval_rejected_frac")


# Keys that may change between a run and its resumption (where it runs, not what it computes).
RESUMABLE_PREFIXES = ("mesh.",)


def check_resume(saved: dict, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved config (JSON) differs from `config`; the mesh
  keys (`config.mesh.*`, absent from old workdirs) are not compared."""
  differ = [k for k in config_lib.differing_keys(saved, config)
            if not k.startswith(RESUMABLE_PREFIXES)]
  if differ:
    raise ValueError(f"--workdir holds a run with a different config (keys {differ}); resume "
                     f"with the same config or choose a new --workdir")


def make_trainer(setup: Setup, mesh: Mesh | None = None) -> tuple[dqn.Trainer, TrainEnvs]:
  """The learner of `setup` (one seed's functions) and its environments; with a `mesh`, its
  sampled replay batches and evaluation episodes are constrained to the mesh's 'data' axis."""
  envs = setup.train_envs()
  trainer = dqn.make_train(setup.dqn, setup.train, envs.env, envs.params, envs.eval_env,
                           envs.eval_params, params_batched=envs.batched,
                           constrain=None if mesh is None else mesh_lib.constrainer(mesh))
  return trainer, envs


class Programs(NamedTuple):
  """The jitted, vmapped (over seeds) learner on a mesh, with their shardings.

  init(keys [S, 2]) -> LearnerState [S, ...]; chunk(state) -> (state, ChunkStats [S]) (donates
  its input); evaluate(state, keys [S, 2]) -> EvalStats [S]; keep_best(state, EvalStats) ->
  state (donates). `state` / `seeds`: the shardings of the state's leaves and of [S, ...]
  arrays; `abstract(keys)`: the state's ShapeDtypeStructs with their shardings (what a
  checkpoint is restored into)."""
  mesh: Mesh
  trainer: dqn.Trainer
  init: Callable
  chunk: Callable
  evaluate: Callable
  keep_best: Callable
  state: object
  seeds: NamedSharding
  abstract: Callable


def state_shardings(mesh: Mesh, like: dqn.LearnerState) -> dqn.LearnerState:
  """The NamedSharding of each leaf of a seed-stacked LearnerState (or its eval_shape): the
  environments and replay ([S, E, ...]) over ('seed', 'data'), every other leaf over 'seed'."""
  seeds = mesh_lib.logical_sharding(mesh, ("seeds",))
  per_env = mesh_lib.logical_sharding(mesh, ("seeds", "envs"))
  every = lambda tree, s: jax.tree_util.tree_map(lambda _: s, tree)
  return every(like, seeds)._replace(envs=every(like.envs, per_env),
                                     replay=every(like.replay, per_env))


def programs(setup: Setup, mesh: Mesh | None = None) -> Programs:
  """The learner of `setup` jitted over `mesh` (default: `setup.mesh()`, every device)."""
  mesh = setup.mesh() if mesh is None else mesh
  mesh_lib.check_divides(mesh, "seeds", setup.num_seeds, "config.num_seeds")
  mesh_lib.check_divides(mesh, "envs", setup.dqn.num_envs, "config.dqn.num_envs")
  trainer, _ = make_trainer(setup, mesh)
  seeds = mesh_lib.logical_sharding(mesh, ("seeds",))
  vmap = lambda f: jax.vmap(f, spmd_axis_name="seed")
  like = jax.eval_shape(jax.vmap(trainer.init), setup.seed_keys())
  state = state_shardings(mesh, like)
  episodes = setup.train.eval_episodes
  init = jax.jit(vmap(trainer.init), in_shardings=seeds, out_shardings=state)
  chunk = jax.jit(vmap(trainer.chunk), in_shardings=(state,), out_shardings=(state, seeds),
                  donate_argnums=0)
  evaluate = jax.jit(vmap(lambda ls, k: trainer.evaluate(ls, k, episodes)),
                     in_shardings=(state, seeds), out_shardings=seeds)
  keep_best = jax.jit(vmap(trainer.keep_best), in_shardings=(state, seeds),
                      out_shardings=state, donate_argnums=0)
  abstract = lambda keys: jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(jax.vmap(trainer.init), keys), state)
  return Programs(mesh, trainer, init, chunk, evaluate, keep_best, state, seeds, abstract)


def _rows(chunk_index, seconds, stats: dqn.ChunkStats, ev: dqn.EvalStats, iteration):
  s, e = stats, ev
  rows = []
  for i in range(len(s.decisions)):
    dec = max(int(s.decisions[i]), 1)
    rows.append(dict(
        chunk=chunk_index, seed=i, iteration=int(iteration[i]), decisions=int(s.decisions[i]),
        seconds=round(seconds, 3), epsilon=float(s.epsilon[i]), loss=float(s.loss[i]),
        q_mean=float(s.q_mean[i]), train_reward_per_decision=float(s.reward[i]) / dec,
        train_on_time_per_decision=float(s.on_time[i]) / dec,
        train_rejected_frac=float(s.rejected[i]) / dec,
        eval_mean_utility=float(e.mean_utility[i]), eval_availability=float(e.availability[i]),
        eval_rejected_frac=float(e.rejected_frac[i])))
  return rows


def _write_csv(path: str, rows: list[dict], upto_chunk: int) -> None:
  """Rewrites metrics.csv keeping rows of chunks <= upto_chunk (drops rows written after the
  checkpoint a resumed run restarts from), then appends nothing: callers append rows."""
  kept = []
  if os.path.exists(path):
    with open(path) as f:
      kept = [r for r in csv.DictReader(f) if int(r["chunk"]) <= upto_chunk]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, CSV_COLUMNS)
    w.writeheader()
    w.writerows(kept + rows)


def _append_csv(path: str, rows: list[dict]) -> None:
  with open(path, "a", newline="") as f:
    csv.DictWriter(f, CSV_COLUMNS).writerows(rows)


def train(setup: Setup, workdir: str, log: Callable[[str], None] = print,
          stop_after_chunks: int | None = None, mesh: Mesh | None = None) -> dict:
  """Trains (or resumes) the run of `setup` in `workdir` on `mesh` (default `setup.mesh()`:
  every device of every process); returns the last evaluation as a dict of per-seed lists.
  `stop_after_chunks` stops early (to test interruption). In a multi-process run every
  process calls this; only the primary writes files other than checkpoints, or logs."""
  primary = distributed.is_primary()
  if not primary:
    log = lambda message: None
  os.makedirs(workdir, exist_ok=True)
  config = setup.config
  prog = programs(setup, mesh)
  trainer = prog.trainer
  keys = setup.seed_keys()
  mngr = checkpoint.manager(workdir, setup.train.keep_checkpoints)
  csv_path = os.path.join(workdir, "metrics.csv")
  start_chunk, spent = 0, 0.0
  resumed = checkpoint.restore_latest_intact(    # skips damaged newer steps with a warning
      mngr, prog.abstract(keys), lambda saved: check_resume(saved, config),
      warn=lambda m: log(f"warning: {m}"))
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=2, default=list)
  if resumed is not None:
    ls, start_chunk, spent = resumed.state, resumed.step, float(resumed.progress["seconds"])
    log(f"resumed from the checkpoint of chunk {start_chunk}/{trainer.num_chunks} in "
        f"{workdir}/checkpoints" + (": every chunk is trained, nothing to train"
                                    if start_chunk >= trainer.num_chunks else
                                    "; compiling the training step first"))
  else:
    log(f"training {len(keys)} seed(s) x {setup.dqn.num_envs} environments, "
        f"{trainer.num_chunks} chunks of {setup.train.chunk_iterations} iterations on the "
        f"{mesh_lib.describe(prog.mesh)}; compiling the training step first")
    ls = prog.init(distributed.to_global(keys, prog.seeds))
  if primary:
    _write_csv(csv_path, [], start_chunk)
  eval_keys = distributed.to_global(
      jax.random.split(jax.random.PRNGKey(setup.seed + 1), len(keys)), prog.seeds)
  t0 = time.time() - spent
  last = None
  for c in range(start_chunk, trainer.num_chunks):
    if stop_after_chunks is not None and c - start_chunk >= stop_after_chunks:
      break
    ls, stats = prog.chunk(ls)
    ev = jax.block_until_ready(prog.evaluate(ls, eval_keys))   # so `seconds` is when it ended
    ls = prog.keep_best(ls, ev)
    stats, ev_host, iteration = distributed.fetch((stats, ev, ls.iteration))
    rows = _rows(c + 1, time.time() - t0, stats, ev_host, iteration)
    if primary:
      _append_csv(csv_path, rows)
    checkpoint.save(mngr, c + 1, ls, config.to_dict(), {"seconds": time.time() - t0},
                    ls.best_params if setup.train.select_best else ls.params)
    last = {k: [r[k] for r in rows] for k in ("eval_mean_utility", "eval_availability",
                                                "eval_rejected_frac", "seconds")}
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    log(f"chunk {c + 1}/{trainer.num_chunks} iter {rows[0]['iteration']} "
        f"eps {rows[0]['epsilon']:.3f} train reward/decision {mean('train_reward_per_decision'):.4f} "
        f"loss {mean('loss'):.4f} | eval utility {mean('eval_mean_utility'):.4f} "
        f"availability {mean('eval_availability'):.4f} | {time.time() - t0:.1f} s")
  return last or {}
