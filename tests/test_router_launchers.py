"""launch/train.py and launch/evaluate.py end to end (subprocesses: absl flags cannot be
defined twice in one process) on the tiny training run of `tests/test_dqn.py`
(`tests/tiny_router.py`).

The subprocesses share a JAX persistent compilation cache with `tests/test_dqn.py`
(conftest.py's `jax_cache_dir`): the same config gives the same programs, so a session
that ran those tests first compiles little here. Heuristic tuning (`config.train.
tune_heuristics`, `heuristics.json`) is off: its grid searches take about 12 s of CPU even on
this tiny config, more than half of what these tests take.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bes.experiment import train as train_lib
from tests import tiny_router
from tests.tiny_router import SERVING, TINY_PROFILE

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("availability", "mean_utility", "frac_windows_ge_96", "frac_windows_ge_98",
           "perf_per_gpu", "p50_latency_s", "p99_latency_s")
POLICIES = {"learned", "round_robin", "random"} | {f"static:{m['name']}"
                                                   for m in TINY_PROFILE["models"]}


def _run(script: str, *args, cache: str | None = None):
  env = dict(os.environ)
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_profile_path, jax_cache_dir):
  """(workdir, completed process, flags, cache) of one launch/train.py run."""
  workdir = str(tmp_path_factory.mktemp("router") / "run")
  flags = tiny_router.launcher_flags(tiny_profile_path)
  run = _run("train.py", f"--workdir={workdir}", *flags, cache=jax_cache_dir)
  return workdir, run, flags, jax_cache_dir


def _check_policies(result: dict, num_seeds: int = 2) -> None:
  """The issue's format: {"peak", "policies": {name: {metric: value}}}."""
  assert 0 < result["peak"] <= 1
  assert set(result["policies"]) == POLICIES
  for name, m in result["policies"].items():
    for key in METRICS:
      assert np.isfinite(m[key]), (name, key)
    for key in ("availability", "frac_windows_ge_96", "frac_windows_ge_98"):
      assert 0 <= m[key] <= 1, (name, key)
    assert m["p50_latency_s"] <= m["p99_latency_s"] and m["mean_utility"] <= result["peak"]
  learned = result["policies"]["learned"]
  assert len(learned["seeds"]) == num_seeds
  for key in METRICS:
    assert learned[key] == pytest.approx(np.mean([s[key] for s in learned["seeds"]]))
    assert f"{key}_std" in learned


def test_train_writes_checkpoints_metrics_and_evaluation(trained):
  workdir, r, _, _ = trained
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  with open(os.path.join(workdir, "metrics.csv")) as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == train_lib.CSV_COLUMNS
  assert [(row["chunk"], row["seed"], row["iteration"]) for row in rows] == [
      ("1", "0", "40"), ("1", "1", "40"), ("2", "0", "80"), ("2", "1", "80")]
  for row in rows:
    assert 0 <= float(row["eval_availability"]) <= 1 and float(row["epsilon"]) == 1.0
    assert int(row["decisions"]) > 0 and np.isfinite(float(row["loss"]))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["dqn"]["num_iterations"] == SERVING["dqn.num_iterations"]
  assert not os.path.exists(os.path.join(workdir, "heuristics.json"))   # tuning off
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    result = json.load(f)
  _check_policies(result)
  assert result["num_requests"] == SERVING["simulate.num_requests"]
  assert result["workload"]["rate"] == SERVING["workload.rate"] and result["overrides"] == {}
  table = open(os.path.join(workdir, "eval", "table.txt")).read()
  assert table.startswith("$ python ") and "learned" in table and "static:big" in table
  assert "learned" in r.stdout and "trained in" in r.stdout


def test_evaluate_applies_config_overrides(trained, tmp_path):
  workdir, r, _, cache = trained
  assert r.returncode == 0, r.stderr[-3000:]
  out = tmp_path / "eval_rate80"
  r = _run("evaluate.py", f"--workdir={workdir}", f"--out={out}", "--config.workload.rate=80",
           cache=cache)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads((out / "metrics.json").read_text())
  _check_policies(result)
  assert result["overrides"] == {"workload.rate": 80.0}
  assert result["workload"]["rate"] == 80.0 and result["workload"]["kind"] == "poisson"
  assert result["num_requests"] == SERVING["simulate.num_requests"]
  # Twice the load on the same deployment: the trained run's evaluation at rate 40 differs.
  base = json.loads(open(os.path.join(workdir, "eval", "metrics.json")).read())
  assert result["policies"]["static:big"] != base["policies"]["static:big"]
  assert (out / "table.txt").read_text().startswith("$ python ")


def test_evaluate_without_checkpoint_fails_clearly(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  r = _run("evaluate.py", f"--workdir={empty}", f"--out={tmp_path / 'out'}")
  assert r.returncode != 0
  assert "evaluate.py: error: --workdir" in r.stderr and "no checkpoint" in r.stderr
  assert "Traceback" not in r.stderr


def test_resuming_with_another_config_fails_clearly(trained):
  workdir, r, flags, cache = trained
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run("train.py", f"--workdir={workdir}", *flags, "--config.dqn.gamma=0.5", cache=cache)
  assert r.returncode != 0
  assert "train.py: error:" in r.stderr and "dqn.gamma" in r.stderr
  assert "Traceback" not in r.stderr


def test_heldout_protocol_end_to_end_and_resume(trained, tmp_path):
  """launch/heldout.py on a copy of the tiny workdir, with hand-set heuristic knobs (tuning
  is off in the tiny run) and a two-family protocol; a rerun skips both families."""
  import shutil
  workdir, r, _, cache = trained
  assert r.returncode == 0, r.stderr[-3000:]
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  knobs = dict(deadline_greedy=dict(name="deadline_greedy", mean_output_len=20.0,
                                    mean_prompt_len=50.0, slack=1.0, turnover=1.0, dump=0.0),
               load_threshold=dict(name="load_threshold", thresholds=[1.0, 2.0]))
  with open(os.path.join(copy, "heuristics.json"), "w") as f:
    json.dump(knobs, f)
  protocol = tmp_path / "protocol.py"
  protocol.write_text(
      "def get_protocol():\n"
      "  return dict(seeds=2, num_requests=30, horizons=(0, 3), families={\n"
      "      'base': dict(held_out=False, about='training', overrides={}),\n"
      "      'fast': dict(held_out=True, about='2x', overrides={'workload.rate': 80.0})})\n")
  out = tmp_path / "heldout"
  args = ["heldout.py", f"--workdir={copy}", f"--out={out}", f"--protocol={protocol}"]
  r = _run(*args, cache=cache)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads((out / "metrics.json").read_text())
  fams = {f["name"]: f for f in result["families"]}
  assert set(fams) == {"base", "fast"} and fams["fast"]["overrides"] == {"workload.rate": 80.0}
  for fam in fams.values():
    assert set(fam["values"]) == {"learned", "deadline_greedy", "load_threshold",
                                  "clairvoyant_greedy", "clairvoyant_lookahead0",
                                  "clairvoyant_lookahead3"}
    for v in fam["values"].values():
      assert len(v["utility"]) == 2 and all(0 <= a <= 1 for a in v["availability"])
      assert all(u <= fam["peak"] + 1e-6 for u in v["utility"])
  table = (out / "table.md").read_text()
  assert table.startswith("`python ") and "| fast | yes |" in table
  again = _run(*args, cache=cache)
  assert again.returncode == 0 and again.stdout.count("done before") == 2, again.stdout[-2000:]
  assert json.loads((out / "metrics.json").read_text())["families"] == result["families"]
  bad = _run("heldout.py", f"--workdir={copy}", f"--out={out}", "--seeds=1")
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].endswith(
      "--seeds: expected >= 2, got 1"), bad.stderr[-500:]
