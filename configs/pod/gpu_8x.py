r"""The reproduced experiments' router on one node of 8 x H100 80GB.

Mesh seed=2 x data=4 x model=1: 2 seeds side by side (GPUs 0-3 and 4-7), each seed's 256
environments split 64 per GPU and its 1024-transition batch 256 per GPU.

One command per job (one process sees all 8 GPUs):

  python launch/train.py --config=configs/pod/gpu_8x.py --workdir=runs/gpu8

Several such nodes (then set config.pod.num_hosts and the mesh accordingly): the same command
on every node, under SLURM (`jax.distributed` reads SLURM's variables)

  srun --nodes=N --ntasks-per-node=1 python launch/train.py --config=... --workdir=/shared/run

or with the coordinates in the environment of each node i:

  JAX_COORDINATOR_ADDRESS=node0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i \
      python launch/train.py --config=... --workdir=/shared/run

A sweep, 8 points at a time (one GPU each, CUDA_VISIBLE_DEVICES per point):

  python launch/sweep.py --sweep=configs/sweeps/router_rates.py --out=runs/rates --parallel=8

Plan here (no GPU needed): python launch/train.py --config=configs/pod/gpu_8x.py --dry_run
"""
import ml_collections

from configs import experiments


def get_config() -> ml_collections.ConfigDict:
  config = experiments.get_config()
  config.num_seeds = 2
  config.dqn.num_envs = 256            # 64 per GPU
  config.dqn.batch_size = 1024         # 256 per GPU
  config.mesh.seed, config.mesh.data, config.mesh.model = 2, 4, 1
  config.pod = ml_collections.ConfigDict(dict(
      platform="gpu", device_kind="NVIDIA H100 80GB HBM3", num_hosts=1, devices_per_host=8,
      hbm_gib_per_device=80.0))
  return config
