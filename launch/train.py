r"""Trains the learned router (Double DQN) and evaluates it against the baselines.

Trains `config.num_seeds` seeds together (vmapped) in scanned chunks; after each chunk it
evaluates the greedy policy, appends to `WORKDIR/metrics.csv`, logs a line and writes an
orbax checkpoint (learner state + full config). Run the same command again to resume an
interrupted run: it continues from the last checkpoint and ends with the same result.
Then it tunes the hand-written heuristics on the same workload (`WORKDIR/heuristics.json`),
evaluates everything on one request stream (`WORKDIR/eval/metrics.json`) and prints the table
(its columns: README.md, "Reading the table"). A rerun reuses the tuned heuristics.json.
The work is done by `bes.experiment` (train, workdir, report).

  python launch/train.py --workdir=runs/router
  python launch/train.py --config=configs/default.py --workdir=runs/r --config.num_seeds=3 \
      --config.workload.kind=poisson --config.workload.rate=40 --config.env.reward=soft
  python launch/train.py --workdir=runs/r --config_help     # every config key and its meaning
  python launch/train.py --config=configs/pod/tpu_v5p_32.py --dry_run   # the per-host plan
  python launch/train.py --workdir=runs/r --config.mesh.seed=2   # seeds over 2 of the devices

Many processes (hosts): run the same command in each, with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
$JAX_PROCESS_ID; on Cloud TPU, SLURM or Open MPI nothing: jax.distributed finds them) and one
shared --workdir. Every process trains and checkpoints; process 0 alone writes metrics.csv,
config.json, heuristics.json and the evaluation, and prints.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from bes import cli_errors, config_cli, progress
from bes.experiment import Setup, report, train, workdir as workdir_lib
from bes.parallel import distributed

_DISTRIBUTED = distributed.define_flags()

_CONFIG = config_cli.define_config_flag("Config file to train with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics "
                               "(required unless --dry_run).")
_EVAL = flags.DEFINE_bool("eval", True, "Evaluate against the baselines after training.")
_DEPLOYMENTS = flags.DEFINE_string(
    "deployments", "", "Also evaluate static single-model deployments, e.g. 'opt-6.7b:4,opt-6.7b:8'.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the per-host plan (devices, mesh, shards, "
                             "per-device batch, memory; bes/parallel/plan.py) and exit.")


def main(argv):
  del argv
  if _DRY_RUN.value:     # no accelerator needed: the pod comes from config.pod
    from bes.parallel import plan
    print(plan.format_plan(plan.train_plan(_CONFIG.value)))
    return
  if not _WORKDIR.value:
    sys.exit("train.py: error: --workdir is required")
  logging.set_verbosity(logging.WARNING)   # orbax logs every save and restore at INFO
  workdir = _WORKDIR.value
  try:
    distributed.initialize(flag_values=_DISTRIBUTED)   # no-op for a single process
    primary = distributed.is_primary()
    setup = Setup.from_config(_CONFIG.value)
    with progress.heartbeat(print if primary else lambda m: None) as log:
      start = time.time()
      if train.train(setup, workdir, log=log):
        log(f"trained in {time.time() - start:.1f} s; checkpoints in {workdir}/checkpoints")
      tuned = os.path.join(workdir, workdir_lib.HEURISTICS_FILE)
      if setup.train.tune_heuristics and os.path.exists(tuned):
        log(f"reusing the tuned heuristics of {tuned} (delete it to tune again)")
      elif setup.train.tune_heuristics:
        workdir_lib.tune_heuristics(setup, workdir, log=log)
      if not _EVAL.value:
        return
      result = workdir_lib.evaluate_workdir(workdir, deployments=_DEPLOYMENTS.value, log=log)
    if not primary:
      return
    text, _ = report.write(os.path.join(workdir, "eval"), result, f"python {' '.join(sys.argv)}")
  except ValueError as e:
    sys.exit(f"train.py: error: {e}")
  print("\n" + text)


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
