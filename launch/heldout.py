r"""The held-out protocol: a trained router, the heuristics tuned on its training workload and
the clairvoyant bounds, on workload families it never trained on (issue 11's headroom).

Families, seeds, requests per stream and lookahead horizons come from --protocol
(`configs/heldout.py`); every policy runs on the same requests per seed
(`bes.experiment.heldout`). Writes `OUT/families/<name>.json` per family as it finishes (a
rerun skips finished ones), `OUT/metrics.json` (every family's per-seed values and
statistics) and `OUT/table.md` (this command, mean utility ± 95% interval per policy, the
learned router's paired difference to the best heuristic, availability).

  python launch/train.py --workdir=runs/router
  python launch/heldout.py --workdir=runs/router --out=results/heldout
  python launch/heldout.py --workdir=runs/router --out=runs/h --families=poisson20,azure_code
  python launch/heldout.py --routes=results/heldout/default,results/heldout/queues \
      --out=results/heldout        # one table of several runs: OUT/routes.md
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from bes import cli_errors, io_util, progress
from bes.experiment import heldout

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (launch/train.py), with its "
                               "tuned heuristics (required unless --routes).")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_PROTOCOL = flags.DEFINE_string("protocol", "configs/heldout.py", "Protocol file "
                                "(get_protocol(): families, seeds, num_requests, horizons).")
_FAMILIES = flags.DEFINE_list("families", None, "Only these families (default: all).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Evaluation seeds (default: the protocol's; >= 2).")
_ROUTES = flags.DEFINE_list("routes", None, "Instead of evaluating: held-out output directories "
                            "(of this launcher) to compare in one table, OUT/routes.md.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", None, "Requests per stream (default: "
                                     "the protocol's).")


def compare_routes(dirs, out: str) -> None:
  """OUT/routes.md from the metrics.json of earlier runs of this launcher."""
  results = {}
  for d in dirs:
    path = os.path.join(d, "metrics.json")
    try:
      with open(path) as f:
        results[os.path.basename(os.path.normpath(d))] = json.load(f)["families"]
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"--routes: {path}: expected this launcher's metrics.json ({e})") from None
  text = heldout.format_routes(results, f"python {' '.join(sys.argv)}")
  io_util.atomic_write_text(os.path.join(out, "routes.md"), text)
  print(text)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  io_util.check_writable_dir(_OUT.value, "--out")
  if _ROUTES.value:
    compare_routes(_ROUTES.value, _OUT.value)
    return
  if not _WORKDIR.value:
    raise ValueError("--workdir: required (a training workdir), unless --routes is given")
  protocol = heldout.load_protocol(_PROTOCOL.value)
  for field, flag in (("seeds", _SEEDS), ("num_requests", _NUM_REQUESTS)):
    if flag.value is not None:
      if flag.value < heldout.MINIMUMS[field]:
        raise ValueError(f"--{field}: expected >= {heldout.MINIMUMS[field]}, got {flag.value}")
      protocol[field] = flag.value
  if not os.path.isdir(_WORKDIR.value):
    raise ValueError(f"--workdir: no such directory {_WORKDIR.value!r}")
  command = f"python {' '.join(sys.argv)}"
  with progress.heartbeat(print) as log:
    summaries = heldout.run(_WORKDIR.value, protocol, _OUT.value, _FAMILIES.value, log)
  text = heldout.format_markdown(summaries, command)
  io_util.atomic_write_text(os.path.join(_OUT.value, "table.md"), text)
  io_util.atomic_write_text(os.path.join(_OUT.value, "metrics.json"),
                            json.dumps(dict(command=command, families=summaries), indent=1))
  print("\n" + text)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
