"""Large OPTs tensor-parallel over GPU slices: OPT-13B on 2 GPUs and OPT-30B on 4 (6 GPUs).

An engine worker takes a device slice (`config.serve.placement`, e.g. 'gpu:0-1'): it sees only
those GPUs (CUDA_VISIBLE_DEVICES) and runs `Engine(mesh=...)` with a 'model' mesh axis over
them (heads, MLP and vocabulary split, bes/models/opt_sharding.py). For users with GPUs:

  python launch/profile_latency.py --serve_config=configs/serve/gpu_large.py \\
      --out=runs/gpu_large_profile.json            # measure these sharded workers
  python launch/serve.py --config=configs/serve/gpu_large.py \\
      --config.profile=runs/gpu_large_profile.json

Memory per GPU (bf16, from bes/models/opt_config.py arithmetic; `opt_sharding.device_bytes`):
weights 2 * num_params / GPUs, KV cache max_batch 128 x max_len 1024 tokens x
kv_bytes_per_token / GPUs (the engine's cache is dense: every slot holds max_len entries):
  OPT-13B on 2 GPUs: 12.0 GiB weights + 50.0 GiB KV = 62.0 GiB of an 80 GB A100
  OPT-30B on 4 GPUs: 14.0 GiB weights + 42.0 GiB KV = 56.0 GiB
  OPT-66B on 8 GPUs: 15.3 GiB weights + 36.0 GiB KV = 51.3 GiB: a whole 8-GPU host, e.g.
    models 'opt-66b=opt-66b' with placement 'gpu:0-7' and a profile of that one model
    (launch/build_profile.py --models=opt-66b:1 --gpus_per_instance=8).
Random weights unless checkpoints are given (`NAME=SHAPE@DIR`; a sharded worker reads a
checkpoint into host memory and places it shard by shard, so no GPU holds the whole model,
but the host needs its size in RAM: 60 GB for OPT-30B in bf16). Until profiled, the profile is the shipped A100 roofline of
these two instances (bes/data/profiles/opt_a100_tp_roofline.json, tensor parallelism modelled
as ideal).
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.profile = "bes/data/profiles/opt_a100_tp_roofline.json"
  config.serve = ml_collections.ConfigDict()
  config.serve.models = "opt-13b=opt-13b;opt-30b=opt-30b"
  config.serve.max_len = 1024              # cache tokens per slot (the roofline's context)
  config.serve.dtype = "bfloat16"
  config.serve.placement = "gpu:0-1;gpu:2-5"   # opt-13b on 2 GPUs, opt-30b on 4
  config.serve.policy = "deadline_greedy"
  config.serve.workdir = ""
  config.serve.host = "0.0.0.0"
  config.serve.port = 8000
  config.serve.hang_timeout_s = 10.0
  config.serve.tokenizer_vocab = 8192
  # The machine, for `launch/serve.py --dry_run` (memory per device against its HBM).
  config.pod = ml_collections.ConfigDict()
  config.pod.platform = "gpu"
  config.pod.device_kind = "A100-80GB-SXM"
  config.pod.num_hosts = 1
  config.pod.devices_per_host = 8
  config.pod.hbm_gib_per_device = 74.5     # 80 GB
  config.serve.out = "runs/serve_gpu_large"
  return config
