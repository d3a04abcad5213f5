"""Shared helpers of the serving tests: a tiny serving config and a real server subprocess.

`write_tiny_config(dir, **serve_overrides)` writes a serving config file (two tiny random OPT
models, one worker process each, a hand-written profile) and `ServerProcess` runs
`launch/serve.py` on it over loopback, waiting for `/health` to say ready.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

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


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def write_tiny_config(directory: str, **serve) -> str:
  """A serving config file in `directory` (returns its path); `serve` overrides serve keys,
  `env_<key>` keys override config.env."""
  os.makedirs(directory, exist_ok=True)
  profile = os.path.join(directory, "profile.json")
  with open(profile, "w") as f:
    json.dump(PROFILE, f)
  shape = json.dumps(SHAPE)
  values = dict(models=f"tiny-a={shape};tiny-b={shape}", max_len=MAX_LEN, placement="auto",
                policy="deadline_greedy", port=free_port(), out=os.path.join(directory, "out"),
                tokenizer_vocab=512, hang_timeout_s=1.0)
  env = {"queue_capacity": 8, "deadline_s": 5.0, "deadline_per_token_s": 0.0}
  for key, value in serve.items():
    if key.startswith("env_"):
      env[key[4:]] = value
    else:
      values[key] = value
  lines = ["from configs.serve import cpu", "", "def get_config():",
           "  config = cpu.get_config()", f"  config.profile = {profile!r}",
           "  config.workload.max_prompt_len = 16", "  config.workload.max_output_len = 16"]
  lines += [f"  config.env.{k} = {v!r}" for k, v in env.items()]
  lines += [f"  config.serve.{k} = {v!r}" for k, v in values.items()]
  lines += ["  return config", ""]
  path = os.path.join(directory, "tiny_serve.py")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


class ServerProcess:
  """`python launch/serve.py --config=PATH` in its own process group, ready on enter."""

  def __init__(self, config_path: str, port: int, log_path: str, timeout_s: float = 240.0):
    self.config_path, self.port, self.log_path = config_path, port, log_path
    self.timeout_s = timeout_s
    self.url = f"http://127.0.0.1:{port}"
    self.proc = None

  def __enter__(self) -> "ServerProcess":
    self.log = open(self.log_path, "w")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "launch.serve", f"--config={self.config_path}"],
        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
    self.wait_ready()
    return self

  def wait_ready(self) -> dict:
    deadline = time.monotonic() + self.timeout_s
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
      try:
        r = httpx.get(self.url + "/health", timeout=2.0)
        if r.status_code == 200:
          return r.json()
      except httpx.HTTPError:
        pass
      time.sleep(0.2)
    raise RuntimeError(f"server not ready after {self.timeout_s} s: {self.log_tail()}")

  def log_tail(self, n: int = 3000) -> str:
    self.log.flush()
    with open(self.log_path) as f:
      return f.read()[-n:]

  def terminate(self, timeout_s: float = 120.0) -> int:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout_s)
      except subprocess.TimeoutExpired:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
    return self.proc.returncode

  def __exit__(self, *exc):
    try:
      self.terminate()
    finally:
      if self.proc.poll() is None:
        os.killpg(self.proc.pid, signal.SIGKILL)
      self.log.close()
