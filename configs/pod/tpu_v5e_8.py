r"""The reproduced experiments' router (configs/experiments.py) on a Cloud TPU v5litepod-8:
1 host with 8 v5e chips (one JAX device each, 16 GiB HBM).

Mesh seed=1 x data=8 x model=1: the 3 seeds are vmapped on every chip, each chip runs 64 of
the 512 parallel environments per seed and samples 256 of the 2048-transition batch (the
default's per-environment and per-sample work, 8x the throughput).

One command per job (create the TPU VM with `--accelerator-type=v5litepod-8`):

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd bes && \
      python launch/train.py --config=configs/pod/tpu_v5e_8.py --workdir=runs/v5e8"

Sweep on it (8 points at a time, one chip each):

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd bes && \
      python launch/sweep.py --sweep=configs/sweeps/router_rates.py --out=runs/rates --parallel=8"

Plan here (no TPU needed): python launch/train.py --config=configs/pod/tpu_v5e_8.py --dry_run
"""
import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
  config = experiments.get_config()
  config.num_seeds = 3
  config.dqn.num_envs = 512            # 64 per chip
  config.dqn.batch_size = 2048         # 256 per chip
  config.mesh.seed, config.mesh.data, config.mesh.model = 1, 8, 1
  config.pod = ml_collections.ConfigDict(dict(
      platform="tpu", device_kind="TPU v5 lite", num_hosts=1, devices_per_host=8,
      hbm_gib_per_device=16.0))
  return config
