r"""Evaluates a trained router and every baseline on the same requests.

Loads the latest checkpoint of --workdir (its config and every seed's network), rebuilds the
workload from that config with the `--config.*` overrides given on the command line (or a
trace with --trace), and runs: the learned router (each seed; mean ± std), the tuned
heuristics saved with the run, `static:<model>` for every model, `round_robin`, `random`,
and the static deployments of --deployments. Writes `OUT/metrics.json`:
`{"peak": x, "policies": {"learned": {...}, "static:opt-6.7b": {...}, ...}, ...}` and
`OUT/table.txt` (with this command), and prints the table.

  python launch/evaluate.py --workdir=runs/router --out=runs/router/eval_rate40 \
      --config.workload.kind=poisson --config.workload.rate=40
  python launch/evaluate.py --workdir=runs/router --out=runs/router/eval_code \
      --trace=bes/data/traces/azure_llm_2023_code.csv --deployments=opt-6.7b:4,opt-6.7b:8
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

from bes import cli_errors, config_cli, io_util, progress
from bes.experiment import evaluate, report, workdir
from bes.parallel import distributed

_CONFIG = config_cli.define_config_flag(
    "Only its --config.KEY=VALUE overrides are used: they replace keys of the workdir's saved "
    "config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (launch/train.py).",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_TRACE, _TRACE_RATE = config_cli.define_trace_flags()
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", None, "Requests (default: "
                                     "config.simulate.num_requests; a trace: all of it, or "
                                     "its first N).")
_SEED = flags.DEFINE_integer("seed", None, "Evaluation seed (workload draws).")
_BASELINES = flags.DEFINE_list("baselines", list(evaluate.BASELINES),
                               f"Fixed baselines, some of {list(evaluate.BASELINES)}.")
_DEPLOYMENTS = flags.DEFINE_string("deployments", "", "Static single-model deployments, "
                                   "MODEL:GPUS,... e.g. 'opt-6.7b:4,opt-6.7b:8'.")
_DISTRIBUTED = distributed.define_flags()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  overrides = config_cli.command_line_overrides(sys.argv, _CONFIG.value)
  overrides.update(config_cli.trace_overrides(_TRACE.value, _TRACE_RATE.value))
  try:
    distributed.initialize(flag_values=_DISTRIBUTED)   # no-op for a single process
    primary = distributed.is_primary()
    if primary:
      io_util.check_writable_dir(_OUT.value, "--out")   # before evaluating, not after
    # a line at least every 10 s while compiling (the primary alone prints)
    with progress.heartbeat(print if primary else lambda m: None) as log:
      result = workdir.evaluate_workdir(
          _WORKDIR.value, overrides, num_requests=_NUM_REQUESTS.value, seed=_SEED.value,
          baselines=_BASELINES.value, deployments=_DEPLOYMENTS.value, log=log)
    if not primary:
      return
    text, _ = report.write(_OUT.value, result, f"python {' '.join(sys.argv)}")
  except ValueError as e:
    sys.exit(f"evaluate.py: error: {e}")
  print("\n" + text)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
