"""The paper's deployment on 4 GPUs: OPT-125M, OPT-1.3B and 2x OPT-6.7B, one GPU per instance.

For users with GPUs (and, for real text, the released checkpoints):

  python launch/profile_latency.py --serve_config=configs/serve/gpu.py \\
      --out=runs/gpu_profile.json                 # measure these workers on your GPUs
  python launch/train.py --config=configs/serve/gpu.py --config.profile=runs/gpu_profile.json \\
      --workdir=runs/router_gpu
  python launch/serve.py --config=configs/serve/gpu.py --config.profile=runs/gpu_profile.json \\
      --config.serve.policy=learned --config.serve.workdir=runs/router_gpu

Checkpoints: set `--config.serve.models='opt-125m=opt-125m@/ckpt/opt-125m;...'` with
HF-format directories (`bes/models/checkpoint.py`; their tokenizer is used for text prompts);
without them the models have the released architectures and random weights (latency is that
of the real models, the text is not). Until profiled, the profile is the shipped A100 roofline
(bes/data/profiles/opt_a100_roofline.json: same models, instances and quality).

A placement may also be a slice of several GPUs ('gpu:0-3' or 'gpu:0,1,2,3'): that instance's
engine runs tensor-parallel over them (configs/serve/gpu_large.py: OPT-13B on 2 GPUs, OPT-30B
on 4); its profile entry's gpus_per_instance is then the slice's size.
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()   # profile '' = the A100 roofline profile of these 4 instances
  config.serve = ml_collections.ConfigDict()
  config.serve.models = "opt-125m=opt-125m;opt-1.3b=opt-1.3b;opt-6.7b=opt-6.7b"
  config.serve.max_len = 1024              # cache tokens per slot: prompt + output (the
                                           # profile's context: its max batch fits 80 GB)
  config.serve.dtype = "bfloat16"
  config.serve.placement = "gpu:0;gpu:1;gpu:2;gpu:3"   # opt-125m, opt-1.3b, opt-6.7b x2
  config.serve.policy = "deadline_greedy"
  config.serve.workdir = ""
  config.serve.host = "0.0.0.0"
  config.serve.port = 8000
  config.serve.hang_timeout_s = 5.0
  config.serve.tokenizer_vocab = 8192
  # The machine, for `launch/serve.py --dry_run` (memory per device against its HBM).
  config.pod = ml_collections.ConfigDict()
  config.pod.platform = "gpu"
  config.pod.device_kind = "A100-80GB-SXM"
  config.pod.num_hosts = 1
  config.pod.devices_per_host = 4
  config.pod.hbm_gib_per_device = 74.5     # 80 GB
  config.serve.out = "runs/serve_gpu"
  return config
