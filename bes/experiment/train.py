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
"""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from bes.experiment import config as config_lib
from bes.experiment.setup import Setup, TrainEnvs
from bes.router import checkpoint, dqn

CSV_COLUMNS = ("chunk", "seed", "iteration", "decisions", "seconds", "epsilon", "loss", "q_mean",
               "train_reward_per_decision", "train_on_time_per_decision", "train_rejected_frac",
               "eval_mean_utility", "eval_availability", "eval_rejected_frac")


def check_resume(saved: dict, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved config (JSON) differs from `config`."""
  differ = config_lib.differing_keys(saved, config)
  if differ:
    raise ValueError(f"--workdir holds a run with a different config (keys {differ}); resume "
                     f"with the same config or choose a new --workdir")


def make_trainer(setup: Setup) -> tuple[dqn.Trainer, TrainEnvs]:
  """The learner of `setup` (one seed's functions) and its environments."""
  envs = setup.train_envs()
  trainer = dqn.make_train(setup.dqn, setup.train, envs.env, envs.params, envs.eval_env,
                           envs.eval_params, params_batched=envs.batched)
  return trainer, envs


def _rows(chunk_index, seconds, stats: dqn.ChunkStats, ev: dqn.EvalStats, iteration):
  s = jax.device_get(stats)
  e = jax.device_get(ev)
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
          stop_after_chunks: int | None = None) -> dict:
  """Trains (or resumes) the run of `setup` in `workdir`; returns the last evaluation as a
  dict of per-seed lists. `stop_after_chunks` stops early (to test interruption)."""
  os.makedirs(workdir, exist_ok=True)
  config = setup.config
  trainer, _ = make_trainer(setup)
  keys = setup.seed_keys()
  init = jax.jit(jax.vmap(trainer.init))
  chunk = jax.jit(jax.vmap(trainer.chunk), donate_argnums=0)
  evaluate = jax.jit(jax.vmap(lambda ls, k: trainer.evaluate(ls, k, setup.train.eval_episodes)))
  keep_best = jax.jit(jax.vmap(trainer.keep_best), donate_argnums=0)
  mngr = checkpoint.manager(workdir, setup.train.keep_checkpoints)
  csv_path = os.path.join(workdir, "metrics.csv")
  start_chunk, spent = 0, 0.0
  resumed = checkpoint.restore_latest_intact(    # skips damaged newer steps with a warning
      mngr, jax.eval_shape(init, keys), lambda saved: check_resume(saved, config),
      warn=lambda m: log(f"warning: {m}"))
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
        f"{trainer.num_chunks} chunks of {setup.train.chunk_iterations} iterations; "
        f"compiling the training step first")
    ls = init(keys)
  _write_csv(csv_path, [], start_chunk)
  eval_keys = jax.random.split(jax.random.PRNGKey(setup.seed + 1), len(keys))
  t0 = time.time() - spent
  last = None
  for c in range(start_chunk, trainer.num_chunks):
    if stop_after_chunks is not None and c - start_chunk >= stop_after_chunks:
      break
    ls, stats = chunk(ls)
    ev = jax.block_until_ready(evaluate(ls, eval_keys))   # so `seconds` is when it ended
    ls = keep_best(ls, ev)
    rows = _rows(c + 1, time.time() - t0, stats, ev, np.asarray(ls.iteration))
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
