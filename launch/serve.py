r"""Serves a deployment over HTTP: the router in front of one engine worker per instance.

An OpenAI-compatible API (bes/serving/server.py: /v1/completions, /v1/models, /health,
/metrics, /bes/deployment) on uvicorn, in front of the router front end
(bes/serving/frontend.py) and its engine workers (bes/serving/worker.py: one process per
instance, pinned to its core or accelerator). The config is a serving config: an experiment
config plus `config.serve` (configs/serve/cpu.py), so the router a config trains is the one it
serves (`--config.serve.policy=learned --config.serve.workdir=runs/router_cpu`).

  python launch/serve.py --config=configs/serve/cpu.py --port=8000
  python launch/serve.py --config=configs/serve/cpu.py --policy=static:cpu-small
  python launch/serve.py --config=configs/serve/gpu_large.py --dry_run   # devices, memory

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
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the per-instance plan (device slice, "
                             "parameter and KV-cache memory per device; bes/parallel/plan.py) "
                             "and exit: no engine starts, no accelerator is needed.")


def serve_dry_run(config) -> str:
  """The serving plan of `config`: one row per instance (profile order) with its device
  slice as the 'model' axis and its profile's max batch as KV-cache slots."""
  from bes.experiment import config as config_lib     # pylint: disable=g-import-not-at-top
  from bes.parallel import plan                        # pylint: disable=g-import-not-at-top
  from bes.serving import config as serve_lib          # pylint: disable=g-import-not-at-top
  profile = config_lib.profile_from_config(config)
  serve = serve_lib.serve_config(config, profile)
  shapes = {m.name: m.config for m in serve.models}
  instances, i = [], 0
  for m in profile.models:
    for _ in range(m.instances):
      place = serve.placements[i]
      devices = len(place[1]) if serve_lib.is_accelerator(place) else 1
      instances.append((m.name, shapes[m.name], devices, m.max_batch))
      i += 1
  pod = plan.pod_from_config(config) if config.get("pod") else None
  return plan.format_plan(plan.serve_plan(instances, serve.max_len, serve.dtype, pod))


def main(argv):
  del argv
  import uvicorn  # pylint: disable=g-import-not-at-top
  overrides = {k: v for k, v in {"serve.port": _PORT.value, "serve.host": _HOST.value,
                                 "serve.policy": _POLICY.value, "serve.out": _OUT.value}.items()
               if v is not None}
  try:
    config = config_cli.apply_overrides(_CONFIG.value, overrides)
    if _DRY_RUN.value:
      print(serve_dry_run(config))
      return
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
