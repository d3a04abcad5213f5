r"""Serves a deployment over HTTP: the router in front of one engine worker per instance.

An OpenAI-compatible API (bes/serving/server.py: /v1/completions, /v1/models, /health,
/metrics, /bes/deployment) on uvicorn, in front of the router front end
(bes/serving/frontend.py) and its engine workers (bes/serving/worker.py: one process per
instance, pinned to its core or accelerator). The config is a serving config: an experiment
config plus `config.serve` (configs/serve/cpu.py), so the router a config trains is the one it
serves (`--config.serve.policy=learned --config.serve.workdir=runs/router_cpu`).

  python launch/serve.py --config=configs/serve/cpu.py --port=8000
  python launch/serve.py --config=configs/serve/cpu.py --policy=static:cpu-small

SIGTERM or Ctrl-C drains: new requests get 503, every accepted one finishes, the workers stop,
and `config.serve.out/outcomes.csv` holds one row per request.
"""
from __future__ import annotations

import logging
import signal
import socket
import sys

from absl import app, flags

from bes import cli_errors, config_cli, io_util
from bes.serving import app_builder

_CONFIG = config_cli.define_config_flag("Serving config file (configs/serve/*.py).",
                                        default_file="serve/cpu.py")
_PORT = flags.DEFINE_integer("port", None, "Port (default config.serve.port).")
_HOST = flags.DEFINE_string("host", None, "Address to listen on (default config.serve.host).")
_POLICY = flags.DEFINE_string("policy", None, "Router policy (default config.serve.policy).")
_OUT = flags.DEFINE_string("out", None, "Directory of the server's outcomes.csv "
                           "(default config.serve.out).")


def main(argv):
  del argv
  import uvicorn  # pylint: disable=g-import-not-at-top
  overrides = {k: v for k, v in {"serve.port": _PORT.value, "serve.host": _HOST.value,
                                 "serve.policy": _POLICY.value, "serve.out": _OUT.value}.items()
               if v is not None}
  try:
    config = config_cli.apply_overrides(_CONFIG.value, overrides)
    built = app_builder.build(config)
    io_util.check_writable_dir(built.serve.out, "config.serve.out")
    with socket.socket() as s:     # a taken port fails now, not after the engines warm up
      try:
        s.bind((built.serve.host, built.serve.port))
      except OSError as e:
        raise ValueError(f"--port {built.serve.port} on {built.serve.host}: cannot listen "
                         f"({e.strerror})") from None
  except ValueError as e:
    sys.exit(f"serve.py: error: {e}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  print(f"serving {[m.name for m in built.setup.profile.models]} with policy "
        f"{built.serve.policy} on http://{built.serve.host}:{built.serve.port}", flush=True)
  # uvicorn drains on SIGTERM, then re-raises it: exit 0 after a clean drain, not -15.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  uvicorn.run(built.app, host=built.serve.host, port=built.serve.port, log_level="warning",
              timeout_graceful_shutdown=None)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
