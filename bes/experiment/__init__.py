"""The experiment layer: configs in, trained routers and evaluation reports out.

Everything above the library (`launch/`) goes through here; everything below takes the
typed configs built here and never reads an ml_collections ConfigDict.

  config.py    ConfigDict sections -> typed, validated configs (ServingConfig, DQNConfig,
               TrainConfig, SimulateConfig); flatten / compare saved configs
  setup.py     Setup: profile, serving config, workload, typed configs, built once; the
               environments of a run (training, evaluation, recorded)
  train.py     train(setup, workdir): chunks, evaluation, metrics.csv, checkpoints, resume
  evaluate.py  every kind of policy on one request stream (learned seeds, heuristics, fixed
               policies, static deployments) -> one result; simulate(setup, specs)
  workdir.py   a training workdir: its router, its tuned heuristics, evaluate_workdir
  report.py    the one report writer: metrics.json, table.txt, outcomes.csv
  sweep.py     runs a planned sweep (steps as subprocesses), resumably; writes its tables
  throughput.py  the training loop's env calls / decisions / updates per second (benchmarks)
"""
from bes.experiment.setup import Setup, TrainEnvs

__all__ = ["Setup", "TrainEnvs"]
