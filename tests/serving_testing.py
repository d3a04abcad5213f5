"""Shared helpers of the serving tests: a tiny serving config and a real server subprocess.

`write_tiny_config(dir, **serve_overrides)` writes a serving config file (two tiny random OPT
models, one worker process each, a hand-written profile; `bes.serving.local`) and
`ServerProcess` runs `launch/serve.py` on it over loopback, waiting for `/health` to say
ready.
"""
from __future__ import annotations

from bes.serving import local

TASKS = ["arc_easy", "piqa"]
SHAPE = {"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 128}
MAX_LEN = 64
PROFILE = {
    "name": "tiny-serving-test",
    "provenance": "hand-written for the serving tests (latencies are not measured)",
    "tasks": TASKS,
    "models": [
        {"name": "tiny-a", "instances": 1, "gpus_per_instance": 1, "max_batch": 4,
         "decode_step_s": [0.002, 0.002, 0.002, 0.002], "prefill_s_fixed": 0.002,
         "prefill_s_per_token": 1e-5, "quality": {"arc_easy": 0.4, "piqa": 0.6}},
        {"name": "tiny-b", "instances": 1, "gpus_per_instance": 1, "max_batch": 2,
         "decode_step_s": [0.003, 0.003], "prefill_s_fixed": 0.003,
         "prefill_s_per_token": 2e-5, "quality": {"arc_easy": 0.5, "piqa": 0.7}},
    ],
}


def write_tiny_config(directory: str, **serve) -> str:
  """A serving config file in `directory` (returns its path; its port is `port_of(path)`);
  `serve` overrides serve keys, `env_<key>` keys override config.env."""
  env = {k[4:]: v for k, v in serve.items() if k.startswith("env_")}
  serve = {k: v for k, v in serve.items() if not k.startswith("env_")}
  path, _ = local.write_serving_config(directory, PROFILE, {"tiny-a": SHAPE, "tiny-b": SHAPE},
                                       max_len=MAX_LEN, env=env, **serve)
  return path


def port_of(path: str) -> int:
  """The port a config file written by `write_tiny_config` serves on."""
  with open(path) as f:
    return int(f.read().split("config.serve.port = ")[1].split("\n")[0])


class ServerProcess(local.ServerProcess):
  """`launch/serve.py --config=PATH` (bes.serving.local), ready on enter, sharing the
  session's JAX compilation cache with its workers (the second server compiles nothing)."""

  def __init__(self, config_path: str, log_path: str, jax_cache_dir: str | None = None,
               timeout_s: float = 240.0):
    env = ({"JAX_COMPILATION_CACHE_DIR": jax_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"} if jax_cache_dir else None)
    super().__init__([f"--config={config_path}"], log_path, port=port_of(config_path), env=env,
                     timeout_s=timeout_s)

  def terminate(self, timeout_s: float = 120.0) -> int | None:
    return self.stop(timeout_s)

  def log_tail(self) -> str:
    return local.log_tail(self.log_path, 40)
