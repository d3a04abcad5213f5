r"""Sim-to-real: each policy simulated on a trace and served for real on the same trace.

Profiles the served models under their serving pinning, all at once (with --noreprofile
only when config.profile does not exist), prepares one trace both sides replay, trains the learned
router if asked for, then per policy simulates the trace through the jitted environment,
starts launch/serve.py, replays the trace with the load generator, drains the server and
compares (bes/serving/sim_to_real.py, step by step). Writes into --out: profile.json,
trace.csv, <policy>/{simulated,measured,server}/, <policy>/comparison.{json,md},
comparison.json ({policy: {simulated, measured, delta, targets_met}}) and comparison.md,
and prints the side-by-side table. Re-run the same command to continue an interrupted run.

  python launch/sim_to_real.py --config=configs/serve/cpu.py \
      --trace=bes/data/traces/azure_llm_2023_conv.csv --num_requests=200 --rate=1.5 \
      --out=runs/sim_to_real
  python launch/sim_to_real.py --config=configs/serve/cpu.py --trace=T.csv --out=runs/s2r \
      --policy=static:cpu-small --policy=deadline_greedy --policy=learned

Config overrides (--config.KEY=VALUE) apply to both sides: they are forwarded to the server.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

import bes
from bes import cli_errors, config_cli, progress
from bes.serving import sim_to_real

DEFAULT_TRACE = os.path.join(os.path.dirname(os.path.abspath(bes.__file__)), "data", "traces",
                             "azure_llm_2023_conv.csv")

_CONFIG = config_cli.define_config_flag("Serving config file (configs/serve/*.py).",
                                        default_file="serve/cpu.py")
_TRACE = flags.DEFINE_string("trace", DEFAULT_TRACE, "Trace CSV (arrived_at,num_prefill_tokens,"
                             "num_decode_tokens[,task]) both sides replay (default: the shipped "
                             "Azure conversation trace).")
_OUT = flags.DEFINE_string("out", "runs/sim_to_real", "Output directory (resumable).")
_POLICY = flags.DEFINE_multi_string(
    "policy", None, "static:M | round_robin | random | task_map:... | deadline_greedy | "
    "load_threshold | learned; repeat for several. Default: learned and deadline_greedy.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 300, "Keep the trace's first N requests "
                                     "(0: all).")
_TIME_SCALE = flags.DEFINE_float("time_scale", None, "Multiply the trace's arrival times by X "
                                 "(instead of --rate).")
_RATE = flags.DEFINE_float("rate", 3.0, "Rescale the trace to this mean rate (requests/s); "
                           "0 keeps the trace's own timing.")
_REPROFILE = flags.DEFINE_bool("reprofile", True, "Measure this machine's profile first "
                               "(--noreprofile: use config.profile as it is, when it exists).")
_TRAIN_WORKDIR = flags.DEFINE_string("train_workdir", None, "Training workdir of the learned "
                                     "router (default --out/router; reused/resumed).")
_PROFILE_REPEATS = flags.DEFINE_integer("profile_repeats", 20, "Timed iterations per entry.")
_PROFILE_WARMUP = flags.DEFINE_integer("profile_warmup", 2, "Untimed iterations per entry.")
_SERVER_TIMEOUT_S = flags.DEFINE_float("server_timeout_s", 600.0, "Seconds to wait for the "
                                       "server's /health.")


def main(argv):
  logging.set_verbosity(logging.WARNING)   # orbax logs every save and restore at INFO
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags are --name=value")
  if not _TRACE.value:
    raise ValueError("--trace: required (a trace CSV)")
  if not _OUT.value:
    raise ValueError("--out: required (an output directory)")
  if _TIME_SCALE.value is not None and flags.FLAGS["rate"].present:
    raise ValueError("--time_scale and --rate: give at most one")
  rate = None if _TIME_SCALE.value is not None or not _RATE.value else _RATE.value
  if rate is not None and rate < 0:
    raise ValueError(f"--rate: expected requests/s > 0 (or 0: the trace's own timing), got {rate}")
  if _NUM_REQUESTS.value < 0:
    raise ValueError(f"--num_requests: expected >= 0 (0: all), got {_NUM_REQUESTS.value}")
  if _PROFILE_REPEATS.value < 1 or _PROFILE_WARMUP.value < 0:
    raise ValueError("--profile_repeats: expected >= 1 (and --profile_warmup >= 0)")
  path = config_cli.config_path_in(sys.argv, config_cli.default_config_path("serve/cpu.py"))
  overrides = [a for a in sys.argv[1:] if config_cli._OVERRIDE.match(a)]  # pylint: disable=protected-access
  for a in overrides:
    if "=" not in a and not a.startswith("--noconfig."):
      raise ValueError(f"{a}: write config overrides as --config.KEY=VALUE (they are "
                       "forwarded to the server)")
  forwarded = tuple([f"--config={path}"] + overrides)
  opts = sim_to_real.Options(
      config=_CONFIG.value, config_args=forwarded, trace=_TRACE.value, out=_OUT.value,
      policies=tuple(_POLICY.value or ()), num_requests=_NUM_REQUESTS.value or None,
      time_scale=_TIME_SCALE.value, rate=rate, reprofile=_REPROFILE.value,
      train_workdir=_TRAIN_WORKDIR.value, profile_repeats=_PROFILE_REPEATS.value,
      profile_warmup=_PROFILE_WARMUP.value, server_timeout_s=_SERVER_TIMEOUT_S.value)
  with progress.heartbeat(print) as log:
    summary = sim_to_real.run(opts, f"python {' '.join(sys.argv)}", log=log)
  print("\n" + sim_to_real.format_table(summary))


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
