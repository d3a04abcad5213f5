"""Throughput of the router's training loop: env calls, routing decisions and gradient
updates per second (shared by `launch/benchmark_router.py` and `launch/benchmark_env.py`)."""
from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from bes import config_cli
from bes.experiment import train as train_lib
from bes.experiment.setup import Setup


def load_avg() -> list[float]:
  """1-, 5- and 15-minute load averages (runnable processes)."""
  return [round(x, 2) for x in os.getloadavg()]


def training_throughput(config, num_envs: int, num_seeds: int, chunk_iterations: int,
                        repeats: int, profile) -> dict:
  """The router's training loop (`dqn.make_train`'s chunk, as `bes.experiment.train` runs it) for
  `num_envs` environments per seed x `num_seeds`: compile seconds and the median over
  `repeats` chunks of `chunk_iterations` (timed past `learning_starts`) of env calls/s,
  routing decisions/s and gradient updates/s, all seeds together."""
  cfg = config_cli.apply_overrides(config, {"dqn.num_envs": num_envs, "num_seeds": num_seeds,
                                            "train.chunk_iterations": chunk_iterations})
  setup = Setup.from_config(cfg, profile)
  trainer, _ = train_lib.make_trainer(setup)
  ls = jax.block_until_ready(jax.jit(jax.vmap(trainer.init))(setup.seed_keys()))
  start = time.perf_counter()
  chunk = jax.jit(jax.vmap(trainer.chunk), donate_argnums=0).lower(ls).compile()
  compile_s = time.perf_counter() - start
  warmup = max(1, math.ceil(setup.dqn.learning_starts / chunk_iterations))
  for _ in range(warmup):                        # past learning_starts: every iteration learns
    ls, _ = jax.block_until_ready(chunk(ls))
  seconds, decisions, updates = [], [], []
  for _ in range(repeats):
    before = int(np.asarray(ls.updates).sum())
    start = time.perf_counter()
    ls, stats = jax.block_until_ready(chunk(ls))
    seconds.append(time.perf_counter() - start)
    decisions.append(int(np.asarray(stats.decisions).sum()))
    updates.append(int(np.asarray(ls.updates).sum()) - before)
  calls = num_envs * num_seeds * chunk_iterations
  rate = lambda counts: float(np.median(np.asarray(counts) / np.asarray(seconds)))
  return dict(num_envs=num_envs, num_seeds=num_seeds, chunk_iterations=chunk_iterations,
              warmup_chunks=warmup, compile_s=compile_s, chunk_s=seconds,
              median_chunk_s=float(np.median(seconds)), env_calls_per_chunk=calls,
              decisions_per_chunk=decisions, updates_per_chunk=updates,
              env_calls_per_s=rate([calls] * repeats), decisions_per_s=rate(decisions),
              updates_per_s=rate(updates), load_avg=load_avg())
