r"""Environment throughput: request-steps per second of the jitted, vmapped simulator.

Measures, on the default profile and config workload with a uniformly random router:
  * environments run `vmap`ped in chunks of each `--env_chunk` size (a `lax.map` over
    chunks, so each chunk's state stays in cache), chunks spread over the JAX devices with
    `shard_map`;
  * `step` (every environment runs to its next arrival, in lockstep under vmap) and
    `step_async` (at most `--max_passes` event passes per model group per call; each
    environment on its own clock) for 1, 64, 1024 and 4096 parallel environments;
  * compile time (first call) and steady-state throughput (best of `--repeats`);
  * the same requests and actions through the plain-Python reference (`bes.reference`),
    reported as the ratio of the two throughputs;
  * the router's training loop (`bes.experiment.throughput`: env calls, replay, Double-DQN
    updates) for `--train_envs` environments: decisions/s, since it bounds how much
    experience the router learns from.
With several JAX devices (e.g. `XLA_FLAGS=--xla_force_host_platform_device_count=2` on a
2-core CPU), environments are sharded over a 1-D device mesh ('envs' axis).

  python launch/benchmark_env.py --out=results/env_benchmark
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bes import policies, reference
from bes.env import rollout as rollout_lib
from bes.experiment import Setup
from bes.experiment.throughput import training_throughput
from bes.workloads import sample
from configs import default as default_config

flags.DEFINE_list("num_envs", ["1", "64", "1024", "4096"], "Parallel environments.")
flags.DEFINE_integer("steps", 256, "Calls per measured run (per environment).")
flags.DEFINE_integer("repeats", 3, "Measured runs; the best is reported.")
flags.DEFINE_list("max_passes", ["none", "1", "2"], "'none' = step (lockstep), k = step_async.")
flags.DEFINE_list("env_chunk", ["64", "256"], "Environments vmapped together; larger counts "
                  "run as a lax.map over chunks of this size (each size is a row).")
flags.DEFINE_integer("reference_requests", 3000, "Requests through the Python reference.")
flags.DEFINE_list("train_envs", ["256"], "Parallel environments of the router's training loop "
                  "(one seed, the default config's DQN); empty: skip it.")
flags.DEFINE_string("out", "results/env_benchmark", "Writes OUT.json and OUT.md.")
FLAGS = flags.FLAGS


def _config():
  return default_config.get_config()


def make_runner(env, params, policy, steps, max_passes, num_envs, chunk):
  """jit(lax.map over chunks of vmap(rollout)), sharded over devices with shard_map;
  returns decisions and summed reward per environment."""
  def run(key):
    _, traj = rollout_lib.rollout(env, params, policy, key, steps, max_passes)
    return traj["decided"].sum(dtype=jnp.int32), traj["reward"].sum()

  chunk = min(chunk, num_envs) if chunk > 0 else num_envs
  batched = lambda keys: jax.lax.map(run, keys, batch_size=chunk)
  devices = jax.devices()
  if len(devices) > 1 and num_envs % len(devices) == 0:
    mesh = Mesh(np.array(devices), ("envs",))
    shard = NamedSharding(mesh, P("envs"))
    per_device = jax.shard_map(batched, mesh=mesh, in_specs=P("envs"), out_specs=P("envs"),
                               check_vma=False)
    return jax.jit(per_device), shard
  return jax.jit(batched), None


def bench_env(env, params, policy, num_envs, max_passes, chunk):
  runner, shard = make_runner(env, params, policy, FLAGS.steps, max_passes, num_envs, chunk)
  keys = jax.random.split(jax.random.PRNGKey(0), num_envs)
  if shard is not None:
    keys = jax.device_put(keys, shard)
  start = time.perf_counter()
  jax.block_until_ready(runner(keys))
  compile_s = time.perf_counter() - start
  best = float("inf")
  for r in range(FLAGS.repeats):
    keys = jax.random.split(jax.random.PRNGKey(r + 1), num_envs)
    if shard is not None:
      keys = jax.device_put(keys, shard)
    start = time.perf_counter()
    decided, _ = jax.block_until_ready(runner(keys))
    elapsed = time.perf_counter() - start
    best = min(best, elapsed)
    decisions = int(np.asarray(decided).sum())
  return dict(num_envs=num_envs, max_passes=max_passes, env_chunk=min(chunk, num_envs),
              compile_plus_first_run_s=compile_s,
              run_s=best, decisions=decisions, calls=num_envs * FLAGS.steps,
              request_steps_per_s=decisions / best)


def bench_reference(profile, serving, workload, n):
  """The plain-Python reference on `n` requests of the same workload, random actions."""
  requests = jax.device_get(sample(workload, jax.random.PRNGKey(0), n))
  actions = np.random.default_rng(0).integers(0, len(profile.models), n)
  start = time.perf_counter()
  reference.simulate(profile, requests, actions, serving)
  elapsed = time.perf_counter() - start
  return dict(requests=n, run_s=elapsed, request_steps_per_s=n / elapsed)


def main(argv):
  del argv
  config = _config()
  setup = Setup.from_config(config)
  env, params = setup.env()
  profile, serving = setup.profile, setup.serving
  policy = policies.uniform_random(len(profile.tasks), len(profile.models))
  rows = []
  for n in map(int, FLAGS.num_envs):
    for chunk in sorted({min(int(c), n) for c in FLAGS.env_chunk}):
      for mp in FLAGS.max_passes:
        max_passes = None if mp == "none" else int(mp)
        row = bench_env(env, params, policy, n, max_passes, chunk)
        rows.append(row)
        print(f"envs={n:5d} chunk={chunk:4d} passes={mp:>4}: {row['request_steps_per_s']:12,.0f} "
              f"request-steps/s (compile+first {row['compile_plus_first_run_s']:.1f} s)", flush=True)
  ref = bench_reference(profile, serving, params.workload, FLAGS.reference_requests)
  print(f"python reference: {ref['request_steps_per_s']:,.0f} request-steps/s")
  training = []
  for n in map(int, FLAGS.train_envs):
    # The router's training loop (env calls, replay, gradient updates), as the router
    # benchmark measures it: it bounds how much experience the router learns from.
    row = training_throughput(config, n, 1, 500, FLAGS.repeats, profile)
    training.append(row)
    print(f"training loop, {n} envs: {row['decisions_per_s']:,.0f} decisions/s, "
          f"{row['updates_per_s']:,.0f} updates/s", flush=True)
  best = max(rows, key=lambda r: r["request_steps_per_s"])
  result = dict(
      command="python " + " ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      jax=jax.__version__, devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count(),
      machine=platform.machine(), profile=profile.name, workload=config.workload.to_dict(),
      episode_len=env.episode_len, steps=FLAGS.steps, rows=rows, reference=ref, training=training,
      best_ratio_vs_reference=best["request_steps_per_s"] / ref["request_steps_per_s"])
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump(result, f, indent=2)
  with open(FLAGS.out + ".md", "w") as f:
    f.write(f"# Environment throughput\n\nCommand: `{result['command']}`"
            f"{' with XLA_FLAGS=' + os.environ['XLA_FLAGS'] if os.environ.get('XLA_FLAGS') else ''}"
            f"\n\nDate {result['date']}, jax {jax.__version__}, devices {result['devices']}, "
            f"{os.cpu_count()} CPU cores. Profile `{profile.name}`, workload "
            f"{config.workload.kind} at {config.workload.rate} req/s, uniformly random router, "
            f"{FLAGS.steps} calls per environment, best of {FLAGS.repeats}.\n\n"
            "| envs | chunk | mode | request-steps/s | compile + first run (s) |\n"
            "|---:|---:|---|---:|---:|\n")
    for r in rows:
      mode = "step (lockstep)" if r["max_passes"] is None else f"step_async, {r['max_passes']} pass(es)"
      f.write(f"| {r['num_envs']} | {r['env_chunk']} | {mode} | {r['request_steps_per_s']:,.0f} | "
              f"{r['compile_plus_first_run_s']:.1f} |\n")
    f.write(f"\nPlain-Python reference, same workload, {ref['requests']} requests: "
            f"{ref['request_steps_per_s']:,.0f} request-steps/s. Best jitted / reference: "
            f"{result['best_ratio_vs_reference']:.0f}x.\n")
    for r in training:
      f.write(f"\nRouter training loop (`dqn.make_train`'s chunk: epsilon-greedy env calls with "
              f"`step_async`, replay, Double-DQN updates), {r['num_envs']} environments, 1 seed: "
              f"**{r['decisions_per_s']:,.0f} decisions/s**, {r['updates_per_s']:,.0f} "
              f"updates/s, {r['env_calls_per_s']:,.0f} env calls/s (median of {FLAGS.repeats}).\n")
  print(f"wrote {FLAGS.out}.json and .md")


if __name__ == "__main__":
  app.run(main)
