"""The CPU serving deployment: two OPT-architecture models on this 2-core machine.

One file ties training and serving together (bes/serving/config.py): `launch/train.py`
trains the router on `config.profile` (the latency profile measured from these very engine
workers, one per core, by `launch/profile_latency.py --serve_config=configs/serve/cpu.py`),
and `launch/serve.py` deploys the same models behind it:

  python launch/serve.py --config=configs/serve/cpu.py --port=8000
  python launch/sim_to_real.py --config=configs/serve/cpu.py --out=runs/sim_to_real

Models (random weights: latency does not depend on the weights' values, and no checkpoint can
be downloaded here). Both are the OPT architecture scaled down so one request finishes in a
few seconds on one CPU core, with an 8192-token vocabulary (the locally trained byte-level BPE
of bes/data/tokenizer):
  cpu-small  4 layers, hidden 256, 4 heads, ffn 1024   (~5M parameters)
  cpu-large  6 layers, hidden 512, 8 heads, ffn 2048   (~23M parameters)
Quality: random weights have no accuracy of their own, so each stands in for a released OPT
model and carries its measured zero-shot accuracies (bes/data/quality/
opt_zero_shot_accuracy.csv): cpu-small for OPT-125M, cpu-large for OPT-1.3B. The router then
faces the paper's quality trade-off at CPU-sized latencies.
"""
import ml_collections

from configs import default

SMALL = ('{"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 4, '
         '"num_attention_heads": 4, "ffn_dim": 1024, "max_position_embeddings": 512}')
LARGE = ('{"vocab_size": 8192, "hidden_size": 512, "num_hidden_layers": 6, '
         '"num_attention_heads": 8, "ffn_dim": 2048, "max_position_embeddings": 512}')


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  # The measured profile of the two workers (launch/profile_latency.py --serve_config=...).
  config.profile = "bes/data/profiles/cpu_serving.json"
  config.workload.kind = "bursty"
  config.workload.rate = 3.0                # requests/s: cpu-large alone serves ~1.5
  config.workload.max_prompt_len = 192      # lengths clipped to the 256-token context
  config.workload.max_output_len = 64
  config.env.deadline_s = 2.0               # s, plus per output token:
  config.env.deadline_per_token_s = 0.1
  config.env.queue_capacity = 16
  config.env.episode_len = 256
  config.simulate.policies = "static:cpu-small;static:cpu-large;round_robin"
  config.simulate.num_requests = 2000
  config.dqn.rate_scale = 3.0
  config.dqn.num_iterations = 6000

  config.serve = ml_collections.ConfigDict()
  config.serve.models = f"cpu-small={SMALL};cpu-large={LARGE}"  # NAME=SHAPE[@CHECKPOINT];...
  config.serve.max_len = 256               # cache tokens per slot: prompt + output
  config.serve.dtype = "float32"           # float32 | bfloat16 | float16
  config.serve.placement = "auto"          # 'auto' (instance i on core i) or '0;1'
  config.serve.policy = "deadline_greedy"  # static:M | round_robin | deadline_greedy |
                                           # load_threshold | learned (from workdir)
  config.serve.workdir = ""                # training workdir (learned router, tuned knobs)
  config.serve.host = "127.0.0.1"
  config.serve.port = 8000
  config.serve.hang_timeout_s = 1.0        # work outstanding and no iteration this long: hung
  config.serve.tokenizer_vocab = 8192      # the local BPE's vocabulary (no checkpoint)
  config.serve.out = "runs/serve"          # the server's outcomes.csv
  # Profiling the workers when config.profile does not exist yet (bes/serving/profiling.py):
  config.serve.max_batch = 8               # B_m of each model (one instance per model)
  config.serve.quality_as = "cpu-small=opt-125m;cpu-large=opt-1.3b"  # stand-in quality:
                                           # NAME=MODEL of the quality table (docstring above)
  return config
