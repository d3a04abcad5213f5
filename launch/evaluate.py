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

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bes import evaluation  # noqa: E402
from bes.router import eval_lib  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Only its `--config.key=value` overrides are used: they replace "
    "keys of the workdir's saved config (e.g. --config.workload.rate=40).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (launch/train.py).",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_TRACE = flags.DEFINE_string("trace", None, "Replay this trace CSV whole (sets workload.kind="
                             "trace, its own lengths and, unless --trace_rate, its own timing).")
_TRACE_RATE = flags.DEFINE_float("trace_rate", 0.0, "With --trace: rescale to this mean rate "
                                 "(requests/s; 0 = the trace's own timing).")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", None, "Requests (default: "
                                     "config.simulate.num_requests; a trace: all of it, or "
                                     "its first N).")
_SEED = flags.DEFINE_integer("seed", None, "Evaluation seed (workload draws).")
_BASELINES = flags.DEFINE_list("baselines", list(evaluation.BASELINES),
                               f"Fixed baselines, some of {list(evaluation.BASELINES)}.")
_DEPLOYMENTS = flags.DEFINE_string("deployments", "", "Static single-model deployments, "
                                   "MODEL:GPUS,... e.g. 'opt-6.7b:4,opt-6.7b:8'.")


def config_overrides(argv, config) -> dict:
  """The `--config.a.b=v` / `--config.a.b v` keys given in argv, with their parsed values."""
  out = {}
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node = config
    for part in path.split("."):
      node = node[part]
    out[path] = node.to_dict() if hasattr(node, "to_dict") else node
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  overrides = config_overrides(sys.argv, _CONFIG.value)
  if _TRACE.value:
    overrides.update({"workload.kind": "trace", "workload.trace": _TRACE.value,
                      "workload.lengths": "trace", "workload.rate": _TRACE_RATE.value})
  try:
    result = eval_lib.evaluate_workdir(
        _WORKDIR.value, _OUT.value, overrides, num_requests=_NUM_REQUESTS.value,
        seed=_SEED.value, baselines=_BASELINES.value, deployments=_DEPLOYMENTS.value)
  except ValueError as e:
    sys.exit(f"evaluate.py: error: {e}")
  print("\n" + eval_lib.write_report(result, _OUT.value, f"python {' '.join(sys.argv)}"))


if __name__ == "__main__":
  app.run(main)
