"""Sweeps over hosts and devices (bes/experiment/sweep_hosts.py, launch/sweep.py): process
slices equal to a one-process run, a lost slice finished later, --parallel, the dry run."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from bes.experiment import sweep_hosts as hosts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fake two-step sweep (no JAX): train once per seed (shared), evaluate per rate; every run
# of a step leaves a trace, and eval records when it ran (to see points overlap).
_TRAIN = """\
import os, sys, time
workdir, seed = sys.argv[1], sys.argv[2].split("=")[1]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "count.txt"), "a") as f:
  f.write("x")
open(os.path.join(workdir, "seed.txt"), "w").write(seed)
"""
_EVAL = """\
import json, os, sys, time
workdir, out, rate = sys.argv[1], sys.argv[2], float(sys.argv[3].split("=")[1])
seed = int(open(os.path.join(workdir, "seed.txt")).read())
start = time.time()
time.sleep(float(os.environ.get("SWEEP_TEST_SLEEP", "0")))
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "runs.txt"), "a") as f:
  f.write("x")
json.dump({"start": start, "end": time.time(), "env": os.environ.get("CUDA_VISIBLE_DEVICES")},
          open(os.path.join(out, "when.json"), "w"))
json.dump({"peak": 1.0, "policies": {"router": {"availability": rate / 10 + seed / 100}}},
          open(os.path.join(out, "metrics.json"), "w"))
"""


@pytest.fixture
def sweep_file(tmp_path):
  (tmp_path / "train.py").write_text(_TRAIN)
  (tmp_path / "evaluate.py").write_text(_EVAL)
  path = tmp_path / "two_step.py"
  path.write_text(textwrap.dedent(f"""\
      import ml_collections
      from bes.sweep import product, sweep

      def get_sweep():
        s = ml_collections.ConfigDict()
        s.base = "configs/default.py"
        s.grid = product([sweep("config.seed", [0, 1]), sweep("config.workload.rate", [1, 2, 3])])
        s.steps = [
            dict(name="train", overrides=["config.seed"],
                 cmd="{tmp_path}/train.py {{step_dir}} {{overrides}}"),
            dict(name="eval", overrides=["config.workload.rate"],
                 cmd="{tmp_path}/evaluate.py {{steps[train]}} {{point_dir}} {{overrides}}")]
        s.metrics_from = "{{point_dir}}/metrics.json"
        s.plot = dict(x="config.workload.rate", y="availability")
        return s
      """))
  return str(path)


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES", "SLURM_PROCID", "SLURM_NTASKS",
                      "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "CUDA_VISIBLE_DEVICES")}
  return dict(env, **extra)


def _args(sweep_file, out, *extra):
  return [sys.executable, os.path.join(ROOT, "launch", "sweep.py"), f"--sweep={sweep_file}",
          f"--out={out}", *extra]


def _launch(sweep_file, out, *extra, env=None):
  return subprocess.run(_args(sweep_file, out, *extra), capture_output=True, text=True,
                        cwd=ROOT, timeout=300, env=env or _env())


def _tables(out):
  return (out / "table.csv").read_text(), (out / "rows.jsonl").read_text()


# --- unit -----------------------------------------------------------------------------------

def test_process_from_env_and_ownership():
  assert hosts.process_from_env({}) == (0, 1)
  assert hosts.process_from_env({"JAX_PROCESS_ID": "2", "JAX_NUM_PROCESSES": "4"}) == (2, 4)
  assert hosts.process_from_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "3"}) == (1, 3)
  assert hosts.process_from_env({"TPU_WORKER_ID": "3",
                                 "TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == (3, 4)
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='x'"):
    hosts.process_from_env({"JAX_PROCESS_ID": "x", "JAX_NUM_PROCESSES": "2"})
  with pytest.raises(ValueError, match=r"--process_index: expected 0..1"):
    hosts.check_process(2, 2)
  assert [hosts.owner(i, 3) for i in range(5)] == [0, 1, 2, 0, 1]


def test_device_slots(tmp_path):
  dev = tmp_path / "dev"
  dev.mkdir()
  assert hosts.local_accelerators({}, str(dev)) == ("cpu", [])
  for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"):
    (dev / name).write_text("")
  assert hosts.local_accelerators({}, str(dev)) == ("gpu", ["0", "1", "2", "3"])
  assert hosts.local_accelerators({"CUDA_VISIBLE_DEVICES": "4,5"}, str(dev)) == ("gpu", ["4", "5"])
  assert hosts.slot_envs(2, "gpu", ["0", "1", "2", "3"]) == [
      {"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
  tpu = hosts.slot_envs(4, "tpu", ["0", "1", "2", "3"])
  assert [e["TPU_VISIBLE_CHIPS"] for e in tpu] == ["0", "1", "2", "3"]
  assert len({e["TPU_PROCESS_PORT"] for e in tpu}) == 4
  assert hosts.slot_envs(3, "cpu", []) == [{}, {}, {}]
  with pytest.raises(ValueError, match="--parallel=8: this host has 4 gpu"):
    hosts.slot_envs(8, "gpu", ["0", "1", "2", "3"])
  with pytest.raises(ValueError, match="--parallel: expected >= 1"):
    hosts.slot_envs(0, "cpu", [])


# --- the launcher ---------------------------------------------------------------------------

@pytest.mark.slow
def test_slices_concurrent_and_after_a_lost_host_equal_one_process(sweep_file, tmp_path):
  one = tmp_path / "one"
  r = _launch(sweep_file, one)
  assert r.returncode == 0, r.stdout + r.stderr

  # Two hosts at once (the usual pattern): process 1 trains seed 1 (it owns its first
  # point), process 0 waits for it; process 0 writes the one table.
  both = tmp_path / "both"
  procs = [subprocess.Popen(_args(sweep_file, both), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_env(JAX_PROCESS_ID=str(i), JAX_NUM_PROCESSES="2"))
           for i in (0, 1)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs
  assert "process 0 writes the table" in logs[1] and "wrote" in logs[0]
  assert _tables(both) == _tables(one)
  for seed in (0, 1):   # each shared step ran once, on its owner
    assert (both / "shared" / "train" / f"seed-{seed}" / "count.txt").read_text() == "x"

  # Host 1 lost: host 0's slice cannot finish the point needing seed 1's training; it names
  # what is missing, the table waits; host 1's slice run later (anywhere), then host 0's
  # again, gives the same table.
  lost = tmp_path / "lost"
  slice0 = ["--process_count=2", "--process_index=0", "--wait_s=0", "--aggregate_wait_s=0"]
  r = _launch(sweep_file, lost, *slice0)
  assert r.returncode == 1, r.stdout + r.stderr
  assert "1 point(s) failed: seed-1_workload.rate-2" in r.stdout
  assert "not done after 0 s; run process 1's slice" in (lost / "failed.process-0.txt").read_text()
  assert "not aggregated: 4 of 6 points are not done (process 0: 1 (seed-1_workload.rate-2); " \
         "process 1: 3" in r.stdout
  assert not (lost / "table.csv").exists()
  r = _launch(sweep_file, lost, "--aggregate_only", "--process_count=2")
  assert r.returncode == 1 and "not aggregated: 4 of 6 points" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  r = _launch(sweep_file, lost, "--process_count=2", "--process_index=1")
  assert r.returncode == 0 and "process 0 writes the table" in r.stdout, r.stdout + r.stderr
  r = _launch(sweep_file, lost, *slice0)
  assert r.returncode == 0, r.stdout + r.stderr
  assert r.stdout.count("done, skipped") == 3 and "    train: done, skipped" in r.stdout
  assert _tables(lost) == _tables(one)
  r = _launch(sweep_file, lost, "--aggregate_only")
  assert r.returncode == 0 and _tables(lost) == _tables(one)


@pytest.mark.slow
def test_parallel_points_overlap_and_get_device_slots(sweep_file, tmp_path):
  one = tmp_path / "one"
  assert _launch(sweep_file, one).returncode == 0
  par = tmp_path / "par"
  r = _launch(sweep_file, par, "--parallel=2", env=_env(SWEEP_TEST_SLEEP="1.5"))
  assert r.returncode == 0, r.stdout + r.stderr
  assert _tables(par) == _tables(one)
  for seed in (0, 1):   # a shared step runs once even with points side by side
    assert (par / "shared" / "train" / f"seed-{seed}" / "count.txt").read_text() == "x"
  when = [json.loads((par / "points" / p / "when.json").read_text())
          for p in sorted(os.listdir(par / "points"))]
  spans = sorted((w["start"], w["end"]) for w in when)
  assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans   # two at once
  r = _launch(sweep_file, tmp_path / "gpu", "--parallel=2",
              env=_env(CUDA_VISIBLE_DEVICES="6,7"))
  assert r.returncode == 0, r.stdout + r.stderr
  slots = {json.loads((tmp_path / "gpu" / "points" / p / "when.json").read_text())["env"]
           for p in os.listdir(tmp_path / "gpu" / "points")}
  assert slots == {"6", "7"}
  assert "(slot 1: CUDA_VISIBLE_DEVICES=7)" in r.stdout


@pytest.mark.slow
def test_sweep_dry_run_prints_the_per_host_plan(sweep_file, tmp_path):
  r = _launch(sweep_file, tmp_path / "out", "--dry_run", "--process_count=2",
              "--process_index=1", "--parallel=2", env=_env(CUDA_VISIBLE_DEVICES="0,1,2,3"))
  assert r.returncode == 0, r.stderr
  assert "processes: 2; points: 6; up to 2 point(s) at a time per host" in r.stdout
  assert "this host's devices: gpu 0,1,2,3" in r.stdout
  assert "slot 1: CUDA_VISIBLE_DEVICES=2,3" in r.stdout
  assert ("process 0: seed-0_workload.rate-1, seed-0_workload.rate-3, seed-1_workload.rate-2"
          in r.stdout)
  assert "process 1's points:\nseed-0_workload.rate-2" in r.stdout
  assert r.stdout.count("[train: run]") == 1     # seed 1's training: process 1 owns it
  assert r.stdout.count("[train: waits for process 0]") == 1   # seed 0's: process 0 does
  assert not (tmp_path / "out").exists()
  r = _launch("configs/sweeps/router_rates.py", tmp_path / "out", "--dry_run")
  assert r.returncode == 0, r.stderr
  assert "processes: 1; points: 8" in r.stdout
