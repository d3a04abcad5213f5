"""Pod job recipes: experiment configs with a `config.pod` section (the machines, for
`--dry_run` plans: `bes/parallel/plan.py`) and a `config.mesh` laid out for them.

  tpu_v5e_8.py   Cloud TPU v5litepod-8: 1 host x 8 v5e chips (16 GiB HBM each)
  tpu_v5p_32.py  Cloud TPU v5p-32: 4 hosts x 4 v5p chips (16 chips = 32 TensorCores, 95 GiB each)
  gpu_8x.py      one node of 8 x H100 80GB

Each file's docstring holds its one command per job (the same command on every worker;
`jax.distributed` reads the coordinates from the environment). Plan any of them here:

  python launch/train.py --config=configs/pod/tpu_v5p_32.py --dry_run
"""
