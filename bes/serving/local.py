"""Running `launch/serve.py` locally as a child process: the one helper the sim-to-real study,
the soak, the serving benchmark and the serving tests start their servers with.

  path = write_serving_config(dir, profile, {"tiny-a": shape, ...}, max_len=64)
  with ServerProcess(["--config=" + path, "--port=8123"], "server.log") as server:
    ...  # server.url is ready (GET /health said 200)
  server.exit_code   # after the drain (SIGTERM): 0 when it drained cleanly

The server runs in its own session (process group), so its engine workers are stopped with
it whatever happens: `stop` sends SIGTERM (the server drains), waits, then kills whatever is
left of the group.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port free on `host` now."""
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def log_tail(path: str, lines: int = 8) -> str:
  """The last `lines` non-empty lines of a log file, joined by ' | ' (for one-line errors)."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = [line.strip() for line in f.read().splitlines() if line.strip()]
  except OSError:
    return "(no log)"
  return " | ".join(text[-lines:]) or "(empty log)"


def child_env(extra: Mapping[str, str] | None = None) -> dict:
  """This process's environment with the repository on PYTHONPATH, plus `extra`."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
  env.update(extra or {})
  return env


def write_serving_config(directory: str, profile: dict, shapes: Mapping[str, dict], *,
                         max_len: int, policy: str = "deadline_greedy", placement: str = "auto",
                         port: int | None = None, tokenizer_vocab: int = 512,
                         hang_timeout_s: float = 1.0, env: Mapping | None = None,
                         max_prompt_len: int = 16, max_output_len: int = 16) -> tuple[str, int]:
  """A serving config file in `directory` (configs/serve/cpu.py with these models): the
  `profile` dict written beside it, one model per entry of `shapes` {name: OPTConfig fields}
  (random weights), `env` overriding config.env keys. Returns (path, port)."""
  os.makedirs(directory, exist_ok=True)
  profile_path = os.path.join(directory, "profile.json")
  with open(profile_path, "w", encoding="utf-8") as f:
    json.dump(profile, f)
  port = free_port() if port is None else port
  serve = dict(models=";".join(f"{n}={json.dumps(s)}" for n, s in shapes.items()),
               max_len=max_len, placement=placement, policy=policy, port=port,
               out=os.path.join(directory, "out"), tokenizer_vocab=tokenizer_vocab,
               hang_timeout_s=hang_timeout_s)
  values = {"queue_capacity": 8, "deadline_s": 5.0, "deadline_per_token_s": 0.0, **(env or {})}
  lines = ["from configs.serve import cpu", "", "def get_config():",
           "  config = cpu.get_config()", f"  config.profile = {profile_path!r}",
           f"  config.workload.max_prompt_len = {max_prompt_len}",
           f"  config.workload.max_output_len = {max_output_len}"]
  lines += [f"  config.env.{k} = {v!r}" for k, v in values.items()]
  lines += [f"  config.serve.{k} = {v!r}" for k, v in serve.items()]
  lines += ["  return config", ""]
  path = os.path.join(directory, "serve_config.py")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path, port


class ServerProcess:
  """`python launch/serve.py ARGS` in its own session, logging to `log_path`.

  `start()` (or entering the context) launches it and waits for GET /health to be 200 (a
  ValueError with the log's tail if it exits first or `timeout_s` passes); `stop()` (or
  leaving the context) drains it with SIGTERM and kills what is left of its group;
  `exit_code` is then its exit code (None if it had to be killed).
  """

  def __init__(self, args: Sequence[str], log_path: str, *, env: Mapping | None = None,
               timeout_s: float = 600.0, host: str = "127.0.0.1", port: int | None = None,
               what: str = "the server", log: Callable[[str], None] | None = None):
    self.port = port or _port_in(args) or free_port(host)
    self.args = list(args) + ([] if _port_in(args) else [f"--port={self.port}"])
    self.log_path, self.timeout_s, self.what, self.log = log_path, timeout_s, what, log
    self.env = child_env(env)
    self.url = f"http://{host}:{self.port}"
    self.proc: subprocess.Popen | None = None
    self.ready_s: float | None = None
    self.exit_code: int | None = None

  @property
  def pid(self) -> int | None:
    return None if self.proc is None else self.proc.pid

  def start(self) -> "ServerProcess":
    with open(self.log_path, "w", encoding="utf-8") as logf:
      self.proc = subprocess.Popen([sys.executable, str(REPO / "launch" / "serve.py"),
                                    *self.args], stdout=logf, stderr=subprocess.STDOUT,
                                   cwd=str(REPO), env=self.env, start_new_session=True)
    try:
      self.ready_s = self.wait_ready()
    except BaseException:
      self.stop(10.0)
      raise
    return self

  def wait_ready(self, poll_s: float = 0.25) -> float:
    """Polls /health until 200; returns the seconds waited."""
    start = last_note = time.monotonic()
    while True:
      if self.proc.poll() is not None:
        raise ValueError(f"{self.what} exited with code {self.proc.returncode} before it was "
                         f"ready; {self.log_path}: {log_tail(self.log_path)}")
      try:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5.0) as r:
          if r.status == 200:
            return time.monotonic() - start
      except (urllib.error.URLError, OSError):
        pass
      now = time.monotonic()
      if now - start > self.timeout_s:
        raise ValueError(f"{self.what} was not ready within {self.timeout_s:g} s; "
                         f"{self.log_path}: {log_tail(self.log_path)}")
      if self.log is not None and now - last_note >= 10.0:
        self.log(f"  waiting for the server's engines to warm up ({now - start:.0f} s)")
        last_note = now
      time.sleep(poll_s)

  def stop(self, timeout_s: float = 300.0) -> int | None:
    """SIGTERM (the server drains), wait up to `timeout_s`, then SIGKILL the whole group."""
    self.exit_code = stop_process_group(self.proc, timeout_s)
    return self.exit_code

  def __enter__(self) -> "ServerProcess":
    return self.start()

  def __exit__(self, *exc) -> None:
    if self.proc is not None and self.exit_code is None and self.proc.returncode is None:
      self.stop()


def stop_process_group(proc: subprocess.Popen | None, timeout_s: float) -> int | None:
  """SIGTERM to `proc`, wait up to `timeout_s`; then SIGKILL whatever is left of its process
  group (always: no engine worker outlives its server). Returns its exit code (None if it
  did not exit in time)."""
  if proc is None:
    return None
  code = proc.poll()
  if code is None:
    try:
      proc.send_signal(signal.SIGTERM)
      code = proc.wait(timeout_s)
    except (subprocess.TimeoutExpired, OSError):
      code = None
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.wait(10.0)
  except subprocess.TimeoutExpired:
    pass
  return code


def _port_in(args: Sequence[str]) -> int | None:
  for a in args:
    if a.startswith("--port="):
      return int(a.split("=", 1)[1])
  return None
