r"""The reproduced experiments' router on a Cloud TPU v5p-32 slice: 32 TensorCores = 16 chips
(2 TensorCores per chip, one JAX device per chip), 4 hosts x 4 chips, 95 GiB HBM per chip.

Mesh seed=4 x data=4 x model=1: devices are numbered host by host, so host h holds seed h
whole and its 4 chips split that seed's 256 environments (64 each) and 1024-transition batch
(256 each): the gradient all-reduce stays on a host's chips, hosts never talk during training.

One command per job, the same on every worker (`jax.distributed.initialize()` finds the
coordinator and process ids of a TPU slice itself); the workdir must be one directory every
worker sees (e.g. a Filestore/NFS mount or gcsfuse), since checkpoints are written collectively:

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd bes && \
      python launch/train.py --config=configs/pod/tpu_v5p_32.py --workdir=/mnt/shared/runs/v5p32"

A sweep over the 4 hosts (host i runs the grid points i, i+4, ...; 4 at a time, one chip each;
the worker number from the TPU VM metadata):

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd bes && \
      python launch/sweep.py --sweep=configs/sweeps/router_rates.py --out=/mnt/shared/rates \
      --process_count=4 --parallel=4 --process_index=\$(curl -s -H Metadata-Flavor:Google \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)"

Plan here (no TPU needed): python launch/train.py --config=configs/pod/tpu_v5p_32.py --dry_run
"""
import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
  config = experiments.get_config()
  config.num_seeds = 4                 # one per host
  config.dqn.num_envs = 256            # 64 per chip
  config.dqn.batch_size = 1024         # 256 per chip
  config.mesh.seed, config.mesh.data, config.mesh.model = 4, 4, 1
  config.pod = ml_collections.ConfigDict(dict(
      platform="tpu", device_kind="TPU v5p", num_hosts=4, devices_per_host=4,
      hbm_gib_per_device=95.0))
  return config
