"""bes/parallel/plan.py: per-host plans of the pod configs, checked by hand; OPT serving memory
over a model axis; the launchers' --dry_run (subprocess, no accelerator)."""
import math
import os
import subprocess
import sys

import pytest

from bes import config_cli
from bes.experiment import config as config_lib
from bes.models.opt_config import opt_config
from bes.parallel import plan as plan_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD_CONFIGS = {  # name: (hosts, devices per host, mesh (seed, data, model), batch per device)
    "tpu_v5e_8": (1, 8, (1, 8, 1), 256),
    "tpu_v5p_32": (4, 4, (4, 4, 1), 256),
    "gpu_8x": (1, 8, (2, 4, 1), 256),
}


def _config(name, **overrides):
  config = config_cli.load_config_file(os.path.join(ROOT, "configs", "pod", f"{name}.py"))
  return config_cli.apply_overrides(config, overrides)


@pytest.mark.parametrize("name", sorted(POD_CONFIGS))
def test_pod_config_plans(name):
  hosts, per_host, mesh, batch_per_device = POD_CONFIGS[name]
  config = _config(name)
  p = plan_lib.train_plan(config, memory=False)
  assert p["num_devices"] == hosts * per_host and len(p["hosts"]) == hosts
  assert tuple(p["mesh"].values()) == mesh
  assert p["batch_per_device"] == batch_per_device
  assert p["envs_per_device"] == config.dqn.num_envs // mesh[1] == 64
  assert p["seeds_per_device"] * mesh[0] == config.num_seeds
  # per host: every seed it holds times its share of the environments and of the batch
  assert sum(h["batch"] for h in p["hosts"]) == config.num_seeds * config.dqn.batch_size
  assert sum(h["env_copies"] for h in p["hosts"]) == config.num_seeds * config.dqn.num_envs
  assert "mesh: seed={} x data={} x model={}".format(*mesh) in plan_lib.format_plan(p)


def test_v5p_32_hosts_hold_one_seed_each_and_exact_memory():
  config = _config("tpu_v5p_32")
  p = plan_lib.train_plan(config)
  # devices numbered host by host onto the (4, 4, 1) mesh: host h = seed h, every env shard
  assert [(h["devices"], h["seeds"], h["envs"]) for h in p["hosts"]] == [
      (f"{4 * h}-{4 * h + 3}", str(h), "0-255") for h in range(4)]
  assert [(h["env_copies"], h["batch"]) for h in p["hosts"]] == [(256, 1024)] * 4   # per host
  # The replay buffer by hand: per seed [E, C, D] obs and next_obs float32, action and reward
  # 4 bytes, done and resolved 1 byte, count [E] int32; one seed and 256 / 4 envs per device.
  profile = config_lib.profile_from_config(config)
  t, m = len(profile.tasks), len(profile.models)
  obs_size = {"paper": t + m + 1, "queues": t + 3 * m + 1,
              "predict": t + 5 * m + 1}[config.dqn.features]     # by hand, per feature set
  envs, cap = 256 // 4, config.dqn.replay_capacity
  per_device = envs * cap * (2 * obs_size * 4 + 4 + 4 + 1 + 1) + envs * 4
  replay = p["memory"]["groups"]["replay"]
  assert replay["per_device"] == per_device
  assert replay["total"] == 4 * 4 * per_device                   # 4 seeds x 4 env shards
  # Network: online, target and best copies, replicated on 'data' (one seed per device).
  net = p["memory"]["groups"]["params"]
  assert net["total"] == 4 * net["per_device"]
  assert p["memory"]["per_device_bytes"] == sum(
      g["per_device"] for g in p["memory"]["groups"].values())
  assert not p["warnings"]


def test_plan_errors_are_one_line_and_memory_is_a_warning():
  with pytest.raises(ValueError, match=r"config.mesh: seed x data x model = 3 devices, but 8"):
    plan_lib.train_plan(_config("tpu_v5e_8", **{"mesh.data": 3}), memory=False)
  with pytest.raises(ValueError, match=r"config.dqn.batch_size=1004 is not divisible by the "
                                       r"mesh's 'data' axis \(8 devices\)"):
    plan_lib.train_plan(_config("tpu_v5e_8", **{"dqn.batch_size": 1004}), memory=False)
  with pytest.raises(ValueError, match=r"config.num_seeds=3 is not divisible by the mesh's "
                                       r"'seed' axis \(4"):
    plan_lib.train_plan(_config("tpu_v5p_32", num_seeds=3), memory=False)
  with pytest.raises(ValueError, match=r"config.pod.num_hosts: expected an integer >= 1"):
    plan_lib.train_plan(_config("gpu_8x", **{"pod.num_hosts": 0}), memory=False)
  big = plan_lib.train_plan(_config("tpu_v5e_8", **{"dqn.replay_capacity": 2 ** 21}))
  assert big["memory"]["per_device_gib"] > 16
  assert big["warnings"] and big["warnings"][0].startswith("WARNING: the learner state needs")
  assert "over the 16 GiB of a TPU v5 lite" in plan_lib.format_plan(big)


def test_plan_without_pod_uses_local_devices():
  import jax
  config = config_cli.load_config_file(os.path.join(ROOT, "configs", "default.py"))
  p = plan_lib.train_plan(config, memory=False)
  assert p["pod"]["source"].startswith("local devices")
  assert p["num_devices"] == len(jax.local_devices())
  assert p["mesh"]["data"] == len(jax.local_devices())


@pytest.mark.parametrize("model", ["opt-13b", "opt-30b", "opt-66b"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_serve_memory_by_hand(model, n):
  cfg = opt_config(model)
  h, f, v, layers = cfg.hidden_size, cfg.ffn_dim, cfg.vocab_size, cfg.num_hidden_layers
  # Sharded over the model axis: token embedding (vocab), fused qkv (heads, with bias),
  # out_proj weight (heads), fc1 (mlp, with bias), fc2 weight (mlp). Replicated: position
  # embeddings (2048 + 2 rows), out_proj / fc2 biases, two layer norms per layer, final LN.
  sharded = v * h + layers * (3 * h * h + 3 * h + h * h + h * f + f + f * h)
  replicated = 2050 * h + layers * (2 * h + 4 * h) + 2 * h
  assert sharded + replicated == cfg.num_params()
  p = plan_lib.serve_memory_plan(model, n, batch=16, max_len=2048)
  assert p["params_bytes_per_device"] == 2 * (math.ceil(sharded / n) + replicated)
  kv = 16 * 2048 * 2 * layers * h * 2                            # K and V, bf16
  assert p["kv_bytes_total"] == kv and p["kv_bytes_per_device"] == kv // n
  assert p["per_device_bytes"] == p["params_bytes_per_device"] + kv // n


def test_serve_memory_numbers_and_warnings():
  p = plan_lib.serve_memory_plan("opt-66b", 1, batch=16, max_len=2048)
  assert p["params_bytes_total"] == 2 * opt_config("opt-66b").num_params()
  assert 122 < p["params_bytes_per_device"] / 2 ** 30 < 123      # 65.7 B params in bf16
  hbm = plan_lib.serve_memory_plan("opt-66b", 8, batch=16, max_len=2048, hbm_gib_per_device=16,
                                   device_kind="TPU v5 lite")
  assert hbm["warnings"] and "over the 16 GiB of a TPU v5 lite" in hbm["warnings"][0]
  with pytest.raises(ValueError, match="opt-30b: 56 attention heads are not divisible"):
    plan_lib.serve_memory_plan("opt-30b", 16)
  pod = plan_lib.Pod("gpu", "H100", 1, 8, 80.0)
  both = plan_lib.serve_plan([("big", "opt-66b", 8, 32), ("small", "opt-13b", 1, 8)], 2048,
                             "bfloat16", pod)
  assert both["devices"] == 9 and "the pod has 8" in both["warnings"][-1]
  text = plan_lib.format_plan(both)
  assert "serve big (65.72 B params) over a model axis of 8" in text
  with pytest.raises(ValueError, match="config.serve.dtype"):
    plan_lib.serve_plan([], 2048, "int4")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(POD_CONFIGS))
def test_train_dry_run_exits_0_without_accelerators(name):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "launch/train.py", f"--config=configs/pod/{name}.py",
                      "--dry_run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=env)
  assert r.returncode == 0, r.stderr
  assert "mesh: seed={} x data={} x model={}".format(*POD_CONFIGS[name][2]) in r.stdout
  assert "memory per device (learner state)" in r.stdout
  r = subprocess.run([sys.executable, "launch/train.py", f"--config=configs/pod/{name}.py",
                      "--dry_run", "--config.mesh.model=3"], cwd=ROOT, capture_output=True,
                     text=True, timeout=120, env=env)
  assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
  assert "config.mesh" in r.stderr


def test_model_axis_devices_hold_copies_not_more_batch():
  p = plan_lib.train_plan(_config("tpu_v5e_8", **{"mesh.data": 4, "mesh.model": 2}),
                          memory=False)
  assert p["mesh"] == {"seed": 1, "data": 4, "model": 2} and p["batch_per_device"] == 512
  assert p["hosts"][0]["batch"] == 3 * 2048 and p["hosts"][0]["env_copies"] == 3 * 512


@pytest.mark.slow
def test_serve_dry_run_prints_each_instance_and_warns_over_memory():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *extra: subprocess.run(
      [sys.executable, "launch/serve.py", "--config=configs/serve/gpu_large.py", "--dry_run",
       *extra], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  r = run()
  assert r.returncode == 0, r.stderr
  assert "serve opt-13b (12.85 B params) over a model axis of 2" in r.stdout
  assert "serve opt-30b (29.97 B params) over a model axis of 4" in r.stdout
  assert "WARNING" not in r.stdout
  r = run("--config.serve.max_len=2048")     # the dense cache doubles: 13B on 2 GPUs no longer fits
  assert r.returncode == 0 and "WARNING: opt-13b over 2 device(s) needs" in r.stdout
  r = run("--config.serve.placement=gpu:0-2;gpu:3-6")     # 40 heads over 3 devices
  assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
  assert "not divisible" in r.stderr
