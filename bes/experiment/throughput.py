"""Throughput of the router's training loop: env calls, routing decisions and gradient
updates per second (shared by `launch/benchmark_router.py`, `launch/benchmark_env.py` and
`launch/benchmark_scaling.py`), and of the environment alone under a random router, both on
the device mesh of `config.mesh` (every device by default) as `bes.experiment.train` runs."""
from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bes import config_cli, policies
from bes.env import rollout as rollout_lib
from bes.parallel import distributed
from bes.parallel import mesh as mesh_lib, projection
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
  routing decisions/s and gradient updates/s, all seeds together; on `config.mesh` over every
  device (`train_lib.programs`)."""
  cfg = config_cli.apply_overrides(config, {"dqn.num_envs": num_envs, "num_seeds": num_seeds,
                                            "train.chunk_iterations": chunk_iterations})
  setup = Setup.from_config(cfg, profile)
  prog = train_lib.programs(setup)
  ls = jax.block_until_ready(prog.init(distributed.to_global(setup.seed_keys(), prog.seeds)))
  start = time.perf_counter()
  chunk = prog.chunk.lower(ls).compile()
  compile_s = time.perf_counter() - start
  census = projection.collectives(chunk.as_text())   # per iteration (a loop body counts once)
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
              updates_per_s=rate(updates), mesh=dict(prog.mesh.shape), collectives=census,
              load_avg=load_avg())


def env_throughput(setup: Setup, num_envs: int, steps: int, repeats: int,
                   max_passes: int | None = None) -> dict:
  """The environment alone: `num_envs` rollouts of `steps` calls under a uniformly random
  router (`rollout_lib.rollouts`-style, `step` or `step_async` with `max_passes`), their keys
  sharded over the mesh's 'data' axis (every device); compile seconds and the best of
  `repeats` runs' request-steps (decisions) per second."""
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(seed=1, data=-1, model=1))
  mesh_lib.check_divides(mesh, "envs", num_envs, "--num_envs")
  env, params = setup.env()
  policy = policies.uniform_random(len(setup.profile.tasks), len(setup.profile.models))
  shard = mesh_lib.logical_sharding(mesh, ("envs",))

  def one(key):
    _, traj = rollout_lib.rollout(env, params, policy, key, steps, max_passes)
    return traj["decided"].sum(dtype=jnp.int32)
  run = jax.jit(jax.vmap(one), in_shardings=shard, out_shardings=shard)
  keys = lambda seed: distributed.to_global(jax.random.split(jax.random.PRNGKey(seed), num_envs),
                                           shard)
  start = time.perf_counter()
  jax.block_until_ready(run(keys(0)))
  compile_s = time.perf_counter() - start
  best, decisions = float("inf"), 0
  for r in range(repeats):
    k = keys(r + 1)
    start = time.perf_counter()
    decided = jax.block_until_ready(run(k))
    elapsed = time.perf_counter() - start
    if elapsed < best:
      best, decisions = elapsed, int(distributed.fetch(decided).sum())
  return dict(num_envs=num_envs, steps=steps, max_passes=max_passes,
              compile_plus_first_run_s=compile_s, run_s=best, decisions=decisions,
              request_steps_per_s=decisions / best, mesh=dict(mesh.shape), load_avg=load_avg())


def physical_cores() -> int | None:
  """Physical cores of this machine (distinct (package, core) pairs of /proc/cpuinfo)."""
  try:
    with open("/proc/cpuinfo") as f:
      blocks = f.read().strip().split("\n\n")
  except OSError:
    return None
  cores = set()
  for block in blocks:
    fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cores.add((fields.get("physical id", "0"), fields.get("core id", fields.get("processor"))))
  return len(cores) or None


def _census(census) -> str:
  if census is None:
    return "-"
  if not census:
    return "none"
  return ", ".join(f"{v['count']} {k} ({v['bytes'] / 1024:.1f})" for k, v in sorted(census.items()))


def scaling_table(rows: list[dict]) -> str:
  """The markdown table of launch/benchmark_scaling.py: per device count the env and training
  rates and their speedups over the first row."""
  base = rows[0]
  lines = ["| devices | mesh | env request-steps/s | speedup | train decisions/s | "
           "train updates/s | speedup | collectives per iteration (KiB) |",
           "|---:|---|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    env = r["env"]["request_steps_per_s"]
    line = (f"| {r['devices']} | {r['env']['mesh']} | {env:,.0f} | "
            f"{env / base['env']['request_steps_per_s']:.2f}x |")
    if "train" in r:
      t = r["train"]
      line += (f" {t['decisions_per_s']:,.0f} | {t['updates_per_s']:,.0f} | "
               f"{t['updates_per_s'] / max(base['train']['updates_per_s'], 1e-9):.2f}x | "
               f"{_census(t.get('collectives'))} |")
    else:
      line += " - | - | - | - |"
    lines.append(line)
  return "\n".join(lines)
