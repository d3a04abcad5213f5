r"""Soak: the serving runtime over loopback above capacity for minutes (bes/serving/soak.py).

Generates a bursty trace at --rate for --duration_s, serves it with launch/serve.py on the
config, replays it open-loop with launch/loadgen.py while sampling the memory of the server
and its engine workers, drains the server, and checks that every request was answered (200,
429 or a recorded error, in the client's and the server's outcomes) and memory stayed flat.
Writes --out/soak.json and --out/soak.md (results/serving_soak.md is one such run).

  python launch/soak.py --config=configs/serve/cpu.py --rate=6 --duration_s=300 \
      --out=runs/soak
"""
from __future__ import annotations

import sys

from absl import app, flags

from bes import cli_errors, config_cli, io_util
from bes.serving import soak

_CONFIG = config_cli.define_config_flag("Serving config file (configs/serve/*.py).",
                                        default_file="serve/cpu.py")
_RATE = flags.DEFINE_float("rate", 6.0, "Mean arrival rate, requests/s (above capacity).")
_DURATION_S = flags.DEFINE_float("duration_s", 300.0, "Seconds of trace.")
_POLICY = flags.DEFINE_string("policy", "deadline_greedy", "Router policy.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the trace.")
_OUT = flags.DEFINE_string("out", "runs/soak", "Output directory.")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags are --name=value")
  if not _RATE.value > 0 or not _DURATION_S.value > 0:
    raise ValueError("--rate and --duration_s: expected numbers > 0")
  io_util.check_writable_dir(_OUT.value, "--out")
  path = config_cli.config_path_in(sys.argv, config_cli.default_config_path("serve/cpu.py"))
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  result = soak.run_soak([f"--config={path}", *overrides], _CONFIG.value, rate=_RATE.value,
                         duration_s=_DURATION_S.value, out=_OUT.value, policy=_POLICY.value,
                         seed=_SEED.value, command=f"python {' '.join(sys.argv)}")
  print(soak.format_markdown(result))


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
