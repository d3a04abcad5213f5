"""Training a router from a config into a workdir: environments, chunks, evaluation between
them, CSV metrics, orbax checkpoints and exact resumption. `launch/train.py` is its CLI.

Seeds: `config.num_seeds` learners train together under `jit(vmap(...))`; seed s starts
from `jax.random.split(PRNGKey(config.seed), num_seeds)[s]`, so every seed has its own
network initialisation, environment streams and exploration.

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
import jax.numpy as jnp
import ml_collections
import numpy as np

from bes import config_cli
from bes.env import config as env_config
from bes.router import checkpoint, dqn
from bes.workloads import workload_from_config

CSV_COLUMNS = ("chunk", "seed", "iteration", "decisions", "seconds", "epsilon", "loss", "q_mean",
               "train_reward_per_decision", "train_on_time_per_decision", "train_rejected_frac",
               "eval_mean_utility", "eval_availability", "eval_rejected_frac")


def rate_multipliers(config) -> list[float]:
  """`config.train.rate_multipliers`: '' (none) or comma-separated positive numbers."""
  text = str(config.train.get("rate_multipliers", "") or "")
  try:
    values = [float(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"config.train.rate_multipliers: expected numbers like '0.5,1,2', "
                     f"got {text!r}") from None
  if any(v <= 0 for v in values):
    raise ValueError(f"config.train.rate_multipliers: expected positive numbers, got {text!r}")
  return values


def build_envs(config, profile=None):
  """(profile, train env, train params, params_batched, eval env, eval params).

  With rate multipliers, training environment i runs the config's workload at rate
  `rate * m[i % k]` (EnvParams stacked over environments); evaluation uses the workload
  exactly as configured.
  """
  profile = profile or env_config.profile_from_config(config)
  env, params, _ = env_config.env_from_config(config, profile=profile,
                                              credit=config.dqn.credit == "request")
  eval_env, eval_params, _ = env_config.env_from_config(
      config, episode_len=int(config.train.eval_episode_len), profile=profile,
      workload=params.workload)
  multipliers = rate_multipliers(config)
  if not multipliers:
    return profile, env, params, False, eval_env, eval_params
  if config.workload.kind == "trace" and not float(config.workload.rate):
    raise ValueError("config.train.rate_multipliers: a trace at its own timing "
                     "(config.workload.rate=0) cannot be rescaled; set a rate")
  workloads = []
  for i in range(int(config.dqn.num_envs)):
    cfg = ml_collections.ConfigDict(config.workload.to_dict(), type_safe=False)
    cfg.rate = float(config.workload.rate) * multipliers[i % len(multipliers)]
    workloads.append(workload_from_config(cfg, profile.tasks))
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *workloads)
  params = jax.tree_util.tree_map(
      lambda x: jnp.broadcast_to(x, (len(workloads),) + jnp.shape(x)), params.replace(workload=None))
  return profile, env, params.replace(workload=stacked), True, eval_env, eval_params


def seed_keys(config) -> jax.Array:
  n = int(config.num_seeds)
  if n < 1:
    raise ValueError(f"config.num_seeds: expected >= 1, got {n}")
  return jax.random.split(jax.random.PRNGKey(int(config.seed)), n)


def _check_resume(saved: dict, config) -> None:
  saved, given = config_cli.flatten(saved), config_cli.flatten(config)
  differ = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
  if differ:
    raise ValueError(f"--workdir holds a run with a different config (keys {differ}); resume "
                     f"with the same config or choose a new --workdir")


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


def train(config: ml_collections.ConfigDict, workdir: str,
          log: Callable[[str], None] = print, stop_after_chunks: int | None = None) -> dict:
  """Trains (or resumes) the run of `config` in `workdir`; returns the last evaluation as a
  dict of per-seed lists. `stop_after_chunks` stops early (to test interruption)."""
  os.makedirs(workdir, exist_ok=True)
  profile, env, params, batched, eval_env, eval_params = build_envs(config)
  trainer = dqn.make_train(config, env, params, eval_env, eval_params, params_batched=batched)
  keys = seed_keys(config)
  init = jax.jit(jax.vmap(trainer.init))
  chunk = jax.jit(jax.vmap(trainer.chunk), donate_argnums=0)
  evaluate = jax.jit(jax.vmap(lambda ls, k: trainer.evaluate(ls, k, int(config.train.eval_episodes))))
  keep_best = jax.jit(jax.vmap(trainer.keep_best), donate_argnums=0)
  select_best = bool(config.train.get("select_best", False))
  mngr = checkpoint.manager(workdir, int(config.train.keep_checkpoints))
  csv_path = os.path.join(workdir, "metrics.csv")
  start_chunk, spent = 0, 0.0
  resumed = checkpoint.restore_latest_intact(    # skips damaged newer steps with a warning
      mngr, jax.eval_shape(init, keys), lambda saved: _check_resume(saved.to_dict(), config),
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
    log(f"training {len(keys)} seed(s) x {int(config.dqn.num_envs)} environments, "
        f"{trainer.num_chunks} chunks of {int(config.train.chunk_iterations)} iterations; "
        f"compiling the training step first")
    ls = init(keys)
  _write_csv(csv_path, [], start_chunk)
  eval_keys = jax.random.split(jax.random.PRNGKey(int(config.seed) + 1), len(keys))
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
    checkpoint.save(mngr, c + 1, ls, config, {"seconds": time.time() - t0},
                    ls.best_params if select_best else ls.params)
    last = {k: [r[k] for r in rows] for k in ("eval_mean_utility", "eval_availability",
                                                "eval_rejected_frac", "seconds")}
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    log(f"chunk {c + 1}/{trainer.num_chunks} iter {rows[0]['iteration']} "
        f"eps {rows[0]['epsilon']:.3f} train reward/decision {mean('train_reward_per_decision'):.4f} "
        f"loss {mean('loss'):.4f} | eval utility {mean('eval_mean_utility'):.4f} "
        f"availability {mean('eval_availability'):.4f} | {time.time() - t0:.1f} s")
  return last or {}
