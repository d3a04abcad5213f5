"""results/ stays lean: under 15 MB, and the routers it keeps are parameters, not learner states.

results/ holds what a reader needs (tables, metrics, plots, commands) and the parameters and
config of the routers its tables report (enough for `launch/evaluate.py` to re-evaluate
them). Learner states (replay buffers, environment states), older checkpoints and bulky
per-request outcomes belong in the ignored runs/ (`launch/sweep.py` trims the routers its
shared steps train; `bes.router.checkpoint.trim_to_policy`).
"""
import os

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
LIMIT_BYTES = 15_000_000


def _files(root):
  for directory, _, names in os.walk(root):
    for name in names:
      yield os.path.join(directory, name)


def _router_workdirs(root):
  """Every directory under `root` that holds an orbax `checkpoints/` directory."""
  return sorted(d for d, subdirs, _ in os.walk(root) if "checkpoints" in subdirs)


def test_results_under_15_mb():
  sizes = {path: os.path.getsize(path) for path in _files(RESULTS)}
  total = sum(sizes.values())
  largest = sorted(sizes, key=sizes.get, reverse=True)[:5]
  assert total <= LIMIT_BYTES, (
      f"results/ holds {total / 1e6:.1f} MB (limit 15 MB); largest files: "
      + ", ".join(f"{os.path.relpath(p, RESULTS)} ({sizes[p] / 1e6:.1f} MB)" for p in largest))


def test_committed_routers_keep_only_the_latest_policy():
  workdirs = _router_workdirs(RESULTS)
  assert workdirs, "expected the trained routers of the router sweeps under results/"
  for workdir in workdirs:
    steps = os.listdir(os.path.join(workdir, "checkpoints"))
    assert len(steps) == 1 and steps[0].isdigit(), (workdir, steps)
    items = set(os.listdir(os.path.join(workdir, "checkpoints", steps[0])))
    assert {"params", "config"} <= items and "state" not in items, (workdir, items)


def test_a_committed_router_loads():
  """A trimmed workdir still loads (the queue-features router: the richest observation)."""
  from bes.experiment import workdir as workdir_lib
  workdir = [d for d in _router_workdirs(RESULTS) if "features-queues" in d]
  assert len(workdir) == 1, workdir
  config, seeds = workdir_lib.saved_config(workdir[0]), workdir_lib.load_policies(workdir[0])
  assert config.dqn.features == "queues" and len(seeds) == int(config.num_seeds) == 3
