r"""Scaling with the device count: environment throughput and training updates/s on 1, 2, 4,
8 devices (`--devices`), each count in its own child process with that many forced CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, fixed when JAX starts).

Per device count the child measures, on the mesh of `config.mesh` (default: every device on
the 'data' axis):
  env      `bes.experiment.throughput.env_throughput`: `--num_envs` rollouts of `--steps`
           calls under a uniformly random router, keys sharded over 'data'; request-steps/s
  train    `bes.experiment.throughput.training_throughput`: the router's training chunk
           (`bes.experiment.train.programs`, environments and replay batches sharded over
           'data') for `--train_envs` environments x `--num_seeds`; decisions/s, updates/s
and the parent writes OUT.json and OUT.md (a table with the speedup over 1 device).

Forced CPU devices are not extra hardware: XLA splits the machine's cores among them, so on a
CPU host the speedup is bounded by the physical core count (the report states it). On an
accelerator host, pass `--platform=gpu` (or tpu) to use its real devices instead: the child
then keeps the first N devices visible (`--devices` no larger than the host has).

  python launch/benchmark_scaling.py --out=results/scaling_benchmark
  python launch/benchmark_scaling.py --devices=1,2 --num_envs=16 --train_envs=8 --steps=16 \
      --chunk_iterations=20 --repeats=1 --config.dqn.learning_starts=10 \
      --config.dqn.batch_size=16 --out=/tmp/scaling_smoke      # a smoke test (~3 min on 2 cores)
"""
from __future__ import annotations

import json
import os
import platform as platform_lib
import subprocess
import sys
import time

import jax
from absl import app, flags

from bes import cli_errors, config_cli
from bes.experiment import Setup, throughput
from bes.experiment.throughput import physical_cores, scaling_table

_CONFIG = config_cli.define_config_flag("Config file (its config.mesh shapes each child's mesh).")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts, one child each.")
_NUM_ENVS = flags.DEFINE_integer("num_envs", 1024, "Env throughput: parallel environments.")
_STEPS = flags.DEFINE_integer("steps", 256, "Env throughput: calls per environment per run.")
_MAX_PASSES = flags.DEFINE_string("max_passes", "1", "Env throughput: 'none' = step, "
                                  "k = step_async with k passes.")
_TRAIN_ENVS = flags.DEFINE_integer("train_envs", 256, "Training: environments per seed "
                                   "(0: skip the training part).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 1, "Training: seeds vmapped together.")
_CHUNK = flags.DEFINE_integer("chunk_iterations", 500, "Training: iterations per timed chunk "
                              "(a divisor of config.dqn.num_iterations).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (env: best; training: median).")
_PLATFORM = flags.DEFINE_enum("platform", "cpu", ["cpu", "gpu", "tpu"], "cpu: forced host "
                              "devices; gpu / tpu: the first N real devices.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 3600, "Seconds allowed per child.")
_OUT = flags.DEFINE_string("out", "results/scaling_benchmark", "Writes OUT.json and OUT.md.")
_CHILD = flags.DEFINE_integer("child_devices", 0, "Internal: run as the child of N devices.")


def child_env(devices: int, platform: str) -> dict:
  """The environment of the child measuring `devices` devices."""
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  if platform == "cpu":
    kept = [f for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
  else:
    visible = ",".join(str(i) for i in range(devices))
    env["CUDA_VISIBLE_DEVICES" if platform == "gpu" else "TPU_VISIBLE_CHIPS"] = visible
  return env


def run_child(devices: int) -> dict:
  """Measures `devices` devices in a child process (this file with --child_devices)."""
  args = [a for a in sys.argv[1:] if not a.startswith(("--devices", "--child_devices"))]
  cmd = [sys.executable, os.path.abspath(__file__), *args, f"--child_devices={devices}"]
  proc = subprocess.run(cmd, env=child_env(devices, _PLATFORM.value), capture_output=True,
                        text=True, timeout=_TIMEOUT.value)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    raise ValueError(f"the child of {devices} device(s) failed (exit {proc.returncode}): "
                     f"{proc.stderr.strip().splitlines()[-1:] or proc.stdout[-300:]}")
  return json.loads(lines[-1])


def child_main(devices: int) -> None:
  """Measures this process's devices and prints the row as JSON (last stdout line)."""
  if jax.device_count() != devices:
    raise ValueError(f"expected {devices} devices, JAX sees {jax.device_count()} "
                     f"({jax.devices()})")
  config = _CONFIG.value
  setup = Setup.from_config(config)
  passes = None if _MAX_PASSES.value == "none" else int(_MAX_PASSES.value)
  row = dict(devices=devices, device_kind=jax.devices()[0].device_kind,
             env=throughput.env_throughput(setup, _NUM_ENVS.value, _STEPS.value,
                                           _REPEATS.value, passes))
  print(f"{devices} device(s): env {row['env']['request_steps_per_s']:,.0f} request-steps/s",
        file=sys.stderr, flush=True)
  if _TRAIN_ENVS.value > 0:
    row["train"] = throughput.training_throughput(config, _TRAIN_ENVS.value, _NUM_SEEDS.value,
                                                  _CHUNK.value, _REPEATS.value, setup.profile)
  print(json.dumps(row))


def main(argv):
  del argv
  if _CHILD.value:
    return child_main(_CHILD.value)
  counts = [int(d) for d in _DEVICES.value]
  if not counts or min(counts) < 1:
    raise ValueError(f"--devices: expected integers >= 1, got {','.join(_DEVICES.value)}")
  cores, logical = physical_cores(), os.cpu_count()
  rows = []
  for d in counts:
    rows.append(run_child(d))
    r = rows[-1]
    print(f"{d} device(s): env {r['env']['request_steps_per_s']:,.0f} request-steps/s"
          + (f", training {r['train']['decisions_per_s']:,.0f} decisions/s "
             f"{r['train']['updates_per_s']:,.0f} updates/s" if "train" in r else ""),
          flush=True)
  command = "python " + " ".join(sys.argv)
  result = dict(command=command, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                platform=_PLATFORM.value, physical_cores=cores, logical_cpus=logical,
                machine=platform_lib.machine(), rows=rows)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(result, f, indent=2)
  note = (f"Forced CPU devices on a machine with **{cores} physical cores** ({logical} logical "
          f"CPUs): the devices share those cores, so the speedup cannot exceed {cores}x and "
          f"counts above {cores} only add partitioning overhead." if _PLATFORM.value == "cpu"
          else f"Real {_PLATFORM.value} devices ({rows[0]['device_kind']}).")
  with open(_OUT.value + ".md", "w") as f:
    f.write(f"# Scaling with the device count\n\nCommand: `{command}`\n\nDate {result['date']}. "
            f"{note}\n\nEnvironment: {_NUM_ENVS.value} environments x {_STEPS.value} calls, "
            f"random router, max_passes={_MAX_PASSES.value}, best of {_REPEATS.value}. "
            f"Training: {_TRAIN_ENVS.value} environments x {_NUM_SEEDS.value} seed(s), chunks "
            f"of {_CHUNK.value} iterations, median of {_REPEATS.value}.\n\n{scaling_table(rows)}\n")
  print(f"wrote {_OUT.value}.json and .md")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
