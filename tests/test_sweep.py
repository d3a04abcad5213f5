"""bes/sweep.py (grids, names, aggregation) and launch/sweep.py end to end (subprocess)."""
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from bes import sweep as hyper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sweep.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


# --- grids and names ------------------------------------------------------------------------

def test_sweep_product_zipit():
  assert hyper.sweep("config.seed", [0, 1]) == [{"config.seed": 0}, {"config.seed": 1}]
  grid = hyper.product([hyper.sweep("config.workload.rate", [1.0, 2.0]),
                        hyper.sweep("config.seed", [0, 1, 2])])
  assert len(grid) == 6
  assert grid[0] == {"config.workload.rate": 1.0, "config.seed": 0}
  assert grid[3] == {"config.workload.rate": 2.0, "config.seed": 0}   # first varies slowest
  zipped = hyper.zipit([hyper.sweep("config.a", [1, 2]), hyper.sweep("config.b", ["x", "y"])])
  assert zipped == [{"config.a": 1, "config.b": "x"}, {"config.a": 2, "config.b": "y"}]
  nested = hyper.product([zipped, hyper.sweep("config.c", [True, False])])
  assert len(nested) == 4 and nested[1] == {"config.a": 1, "config.b": "x", "config.c": False}
  with pytest.raises(ValueError, match="equal lengths"):
    hyper.zipit([hyper.sweep("config.a", [1, 2]), hyper.sweep("config.b", [1])])
  with pytest.raises(ValueError, match="more than one"):
    hyper.product([hyper.sweep("config.a", [1]), hyper.sweep("config.a", [2])])
  with pytest.raises(ValueError, match="config path"):
    hyper.sweep("workload.rate", [1])
  with pytest.raises(ValueError, match="at least one value"):
    hyper.sweep("config.a", [])
  with pytest.raises(ValueError, match="bool, int, float or str"):
    hyper.sweep("config.a", [[1, 2]])


def test_point_names_and_flags():
  point = {"config.workload.rate": 8.0, "config.seed": 0}
  assert hyper.point_name(point) == "seed-0_workload.rate-8"
  assert hyper.point_name(dict(reversed(point.items()))) == "seed-0_workload.rate-8"
  assert hyper.point_name({"config.a": 0.25, "config.b": "x/y z", "config.c": True}) == (
      "a-0.25_b-x_y_z_c-true")
  assert hyper.point_name({}) == "all"
  long_name = hyper.point_name({f"config.key{i}": "v" * 20 for i in range(10)})
  assert len(long_name) <= 120
  assert long_name != hyper.point_name({f"config.key{i}": "v" * 20 + "w" for i in range(10)})
  assert hyper.override_flags(point) == ["--config.workload.rate=8.0", "--config.seed=0"]
  assert hyper.override_flags(point, ["config.seed"]) == ["--config.seed=0"]
  assert hyper.override_flags({"config.c": False}) == ["--config.c=false"]
  with pytest.raises(ValueError, match="same name"):
    hyper.check_grid([{"config.a": 1}, {"config.a": 1.0}], "grid")
  with pytest.raises(ValueError, match=r"grid\[1\]"):
    hyper.check_grid([{"config.a": 1}, {"a": 2}], "grid")
  with pytest.raises(ValueError, match="non-empty list"):
    hyper.check_grid([], "grid")


# --- aggregation ----------------------------------------------------------------------------

def _rows():
  rows = []
  for rate, seed, avail, p99 in [(1.0, 0, 0.5, 1.0), (1.0, 1, 0.7, 2.0), (1.0, 2, 0.9, None),
                                 (2.0, 0, 0.2, 4.0)]:
    point = {"config.workload.rate": rate, "config.seed": seed}
    data = {"peak": 0.8, "policies": {
        "a": {"availability": avail, "p99_latency_s": p99, "seeds": [1, 2]},
        "b": {"availability": 1.0 - avail, "p99_latency_s": 3.0, "extra": {"x": seed}}}}
    rows += hyper.rows_from_metrics(point, data)
  return rows


def test_rows_from_metrics_formats():
  rows = _rows()
  assert len(rows) == 8
  assert rows[0] == {"point": "seed-0_workload.rate-1", "config.workload.rate": 1.0,
                     "config.seed": 0, "policy": "a", "peak": 0.8, "availability": 0.5,
                     "p99_latency_s": 1.0}          # lists such as 'seeds' are dropped
  assert rows[1]["extra.x"] == 0                    # nested objects are flattened
  single = hyper.rows_from_metrics({"config.seed": 3}, {"policy": "static:0", "availability": 1})
  assert single == [{"point": "seed-3", "config.seed": 3, "policy": "static:0",
                     "availability": 1}]
  with pytest.raises(ValueError, match="m.json: expected a 'policies'"):
    hyper.rows_from_metrics({}, {"availability": 1}, where="m.json")


def test_aggregate_mean_std_over_seeds():
  agg = hyper.aggregate(_rows())
  assert [(r["config.workload.rate"], r["policy"], r["n"]) for r in agg] == [
      (1.0, "a", 3), (1.0, "b", 3), (2.0, "a", 1), (2.0, "b", 1)]
  a1, b1, a2 = agg[0], agg[1], agg[2]
  assert "config.seed" not in a1 and a1["seeds"] == "0,1,2"
  assert a1["availability_mean"] == pytest.approx(0.7)
  assert a1["availability_std"] == pytest.approx(0.2)      # sqrt((0.04 + 0 + 0.04) / 2)
  assert b1["availability_mean"] == pytest.approx(0.3)
  assert a1["p99_latency_s_mean"] == pytest.approx(1.5)    # the None seed is left out
  assert a1["p99_latency_s_std"] == pytest.approx(math.sqrt(0.5))
  assert b1["extra.x_mean"] == pytest.approx(1.0) and b1["extra.x_std"] == pytest.approx(1.0)
  assert a2["availability_mean"] == pytest.approx(0.2) and a2["availability_std"] is None
  table = hyper.to_csv(agg)
  parsed = list(csv.DictReader(io.StringIO(table)))
  assert parsed[2]["availability_std"] == "" and float(parsed[0]["availability_mean"]) == pytest.approx(0.7)
  md = hyper.to_markdown(agg, ["availability", "missing_metric"])
  assert "| workload.rate | policy | n | availability |" in md
  assert "| 1 | a | 3 | 0.7 ± 0.2 |" in md and "| 2 | a | 1 | 0.2 |" in md
  assert "missing_metric" not in md
  # Rate 1 -> 0.7 (< 0.99): 'a' never sustains; 'b' at 1.0 - 0.2 = 0.8 neither.
  high = [dict(r, availability_mean=1.0) if r["config.workload.rate"] == 1.0 else r
          for r in agg]
  maxes = hyper.max_x_table(high, "config.workload.rate")
  assert "| a | 1 |" in maxes and "| b | 1 |" in maxes
  assert "| a | none |" in hyper.max_x_table(agg, "config.workload.rate")


def test_aggregate_without_seed_axis_keeps_rows():
  rows = hyper.rows_from_metrics({"config.workload.rate": 4.0},
                                 {"policies": {"a": {"availability": 0.5}}})
  assert hyper.aggregate(rows) == [{"config.workload.rate": 4.0, "policy": "a",
                                    "availability": 0.5}]
  assert hyper.mean_std(hyper.aggregate(rows)[0], "availability") == (0.5, None)
  assert "| 4 | a | 0.5 |" in hyper.to_markdown(hyper.aggregate(rows), ["availability"])


# --- the launcher ---------------------------------------------------------------------------

def _write_sweep(path, body):
  path.write_text("import ml_collections\nfrom bes.sweep import product, sweep, zipit\n\n"
                  "def get_sweep():\n  s = ml_collections.ConfigDict()\n"
                  + textwrap.indent(textwrap.dedent(body), "  ") + "  return s\n")
  return str(path)


@pytest.mark.slow
def test_launcher_runs_simulate_and_resumes(tmp_path):
  sweep_file = _write_sweep(tmp_path / "tiny.py", """\
      s.base = "configs/default.py"
      s.grid = sweep("config.workload.rate", [4.0, 64.0])
      s.steps = ["launch/simulate.py --config={base} --config.workload.kind=poisson "
                 "--policy=static:0 --policy=static:2 --num_requests=200 "
                 "--out={point_dir} {overrides}"]
      s.metrics_from = "{point_dir}/metrics.json"
      s.plot = dict(x="config.workload.rate", y="availability", log_x=True, series=[])
      """)
  out = tmp_path / "out"
  r = _launch(f"--sweep={sweep_file}", f"--out={out}")
  assert r.returncode == 0, r.stdout + r.stderr
  for name in ("table.md", "table.csv", "rows.jsonl", "plot.png", "COMMAND.txt"):
    assert (out / name).stat().st_size > 0, name
  assert not (out / "failed.txt").exists()
  assert f"--sweep={sweep_file}" in (out / "COMMAND.txt").read_text()
  rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
  assert [(r["config.workload.rate"], r["policy"]) for r in rows] == [
      (4.0, "static:0"), (4.0, "static:2"), (64.0, "static:0"), (64.0, "static:2")]
  for row in rows:   # the rows are the simulator's own metrics
    m = json.loads((out / "points" / row["point"] / "metrics.json").read_text())
    assert row["availability"] == m["policies"][row["policy"]]["availability"]
    assert row["num_requests"] == 200
  assert rows[3]["availability"] < rows[1]["availability"]    # OPT-6.7B overloaded at 64/s
  table = _csv(out / "table.csv")
  assert len(table) == 4 and "availability" in table[0] and "n" not in table[0]
  log = (out / "points" / "workload.rate-4" / "log.txt").read_text()
  assert "--config.workload.rate=4.0" in log and "exit status 0" in log

  r = _launch(f"--sweep={sweep_file}", f"--out={out}")         # resume: all skipped
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("done, skipped") == 2
  assert log == (out / "points" / "workload.rate-4" / "log.txt").read_text()



_TRAIN = """\
import os, sys
workdir, flags = sys.argv[1], sys.argv[2:]
with open(os.path.join(workdir, "count.txt"), "a") as f:
  f.write("x")
seed = [a.split("=")[1] for a in flags if a.startswith("--config.seed=")][0]
open(os.path.join(workdir, "seed.txt"), "w").write(seed)
for step in ("1", "2"):        # an orbax checkpoint's layout (bes/router/checkpoint.py)
  for item in ("state", "params", "config"):
    os.makedirs(os.path.join(workdir, "checkpoints", step, item), exist_ok=True)
"""
_EVAL = """\
import json, os, sys
workdir, out, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
assert not any(a.startswith("--config.seed") for a in flags), flags
rate = float(flags[0].split("=")[1])
seed = int(open(os.path.join(workdir, "seed.txt")).read())
if rate == 3 and seed == 1 and os.path.exists(os.environ["SWEEP_TEST_FAIL"]):
  sys.exit("evaluate: simulated crash at rate 3")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "runs.txt"), "a") as f:
  f.write("x")
json.dump({"peak": 1.0, "policies": {"router": {"availability": rate / 10 + seed / 100}}},
          open(os.path.join(out, "metrics.json"), "w"))
"""


@pytest.mark.slow
def test_launcher_shares_steps_records_failures_and_reruns_deleted_points(tmp_path):
  (tmp_path / "train.py").write_text(_TRAIN)
  (tmp_path / "evaluate.py").write_text(_EVAL)
  fail = tmp_path / "fail"
  fail.write_text("")
  sweep_file = _write_sweep(tmp_path / "two_step.py", f"""\
      s.base = "configs/default.py"
      s.grid = product([sweep("config.seed", [0, 1]), sweep("config.workload.rate", [1, 2, 3])])
      s.steps = [
          dict(name="train", overrides=["config.seed"],
               cmd="{tmp_path}/train.py {{step_dir}} {{overrides}}"),
          dict(name="eval", overrides=["config.workload.rate"],
               cmd="{tmp_path}/evaluate.py {{steps[train]}} {{point_dir}} {{overrides}}")]
      s.metrics_from = "{{point_dir}}/metrics.json"
      s.plot = dict(x="config.workload.rate", y="availability")
      """)
  out = tmp_path / "out"
  env = dict(os.environ, SWEEP_TEST_FAIL=str(fail))

  def launch(*extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sweep.py"),
                           f"--sweep={sweep_file}", f"--out={out}", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)

  r = launch("--dry_run")
  assert r.returncode == 0 and not out.exists()
  assert r.stdout.count("[train: run]") == 2 and r.stdout.count("shared, already planned") == 4

  r = launch()
  assert r.returncode == 1 and "1 point(s) failed: seed-1_workload.rate-3" in r.stdout
  failed = (out / "failed.txt").read_text()
  assert "=== seed-1_workload.rate-3" in failed and "simulated crash at rate 3" in failed
  for seed in (0, 1):     # trained once per seed, shared by three rates
    assert (out / "shared" / "train" / f"seed-{seed}" / "count.txt").read_text() == "x"
    checkpoints = out / "shared" / "train" / f"seed-{seed}" / "checkpoints"
    assert os.listdir(checkpoints) == ["2"]           # trimmed: the latest policy only
    assert sorted(os.listdir(checkpoints / "2")) == ["config", "params"]
  table = _csv(out / "table.csv")
  by_rate = {row["config.workload.rate"]: row for row in table}
  assert by_rate["1"]["n"] == "2" and by_rate["3"]["n"] == "1"
  assert float(by_rate["1"]["availability_mean"]) == pytest.approx(0.105)
  assert float(by_rate["1"]["availability_std"]) == pytest.approx(0.01 / math.sqrt(2))
  assert "5 of 6 points finished (1 missing or failed)" in (out / "table.md").read_text()

  fail.unlink()                   # the failing point now succeeds; nothing else re-runs
  r = launch()
  assert r.returncode == 0, r.stdout + r.stderr
  assert r.stdout.count("done, skipped") == 6       # 5 points + the shared train step
  assert not (out / "failed.txt").exists()
  for point in ("seed-0_workload.rate-1", "seed-1_workload.rate-3"):
    assert (out / "points" / point / "runs.txt").read_text() == "x"
  assert (out / "shared" / "train" / "seed-1" / "count.txt").read_text() == "x"
  assert _csv(out / "table.csv")[2]["n"] == "2"

  shutil.rmtree(out / "points" / "seed-0_workload.rate-2")     # a deleted point re-runs
  r = launch("--only=rate-2")
  assert r.returncode == 0, r.stdout + r.stderr
  assert "[1/2] seed-0_workload.rate-2\n    train: done, skipped\n    eval: exit 0" in r.stdout
  assert "[2/2] seed-1_workload.rate-2: done, skipped" in r.stdout
  assert (out / "points" / "seed-0_workload.rate-2" / "runs.txt").read_text() == "x"
  assert len((out / "rows.jsonl").read_text().splitlines()) == 6   # all points aggregated

  (out / "points" / "seed-1_workload.rate-1" / "metrics.json").unlink()   # outputs lost:
  r = launch("--only=seed-1_workload.rate-1")                  # its own steps run again
  assert r.returncode == 0, r.stdout + r.stderr
  assert (out / "points" / "seed-1_workload.rate-1" / "runs.txt").read_text() == "xx"
  assert (out / "shared" / "train" / "seed-1" / "count.txt").read_text() == "x"

  r = launch("--only=rate-9")
  assert r.returncode != 0 and "matches none" in r.stderr


@pytest.mark.parametrize("body,message", [
    ('s.base = "configs/default.py"\n', "lacks the fields"),
    ('s.base = "nope.py"\ns.grid = sweep("config.a", [1])\ns.steps = ["x.py"]\n'
     's.metrics_from = "{point_dir}/m.json"\ns.plot = dict(x="config.a", y="u")\n', "base"),
    ('s.base = "configs/default.py"\ns.grid = sweep("config.a", [1])\n'
     's.steps = ["x.py --out={pointdir}"]\ns.metrics_from = "{point_dir}/m.json"\n'
     's.plot = dict(x="config.a", y="u")\n', r"steps\[0\].cmd: unknown placeholder \{pointdir\}"),
    ('s.base = "configs/default.py"\ns.grid = sweep("config.a", [1])\n'
     's.steps = [dict(cmd="x.py", overrides=["config.a"])]\n'
     's.metrics_from = "{point_dir}/m.json"\ns.plot = dict(x="config.a", y="u")\n',
     r"steps\[0\].overrides: given but"),
    ('s.base = "configs/default.py"\ns.grid = sweep("config.a", [1])\n'
     's.steps = ["x.py {steps[train]}"]\ns.metrics_from = "{point_dir}/m.json"\n'
     's.plot = dict(x="config.a", y="u")\n', "names no earlier step"),
    ('s.base = "configs/default.py"\ns.grid = sweep("config.a", [1])\ns.steps = ["x.py"]\n'
     's.metrics_from = "{point_dir}/m.json"\ns.plot = dict(x="config.b", y="u")\n', "plot"),
    ('s.base = "configs/default.py"\ns.grid = zipit([sweep("config.a", [1]), '
     'sweep("config.b", [1, 2])])\n', "zipit: the sweeps must have equal lengths"),
])
@pytest.mark.slow
def test_bad_sweep_files_name_file_and_field(tmp_path, body, message):
  sweep_file = _write_sweep(tmp_path / "bad.py", body)
  r = _launch(f"--sweep={sweep_file}", f"--out={tmp_path / 'out'}")
  assert r.returncode != 0
  assert "bad.py" in r.stderr and re.search(message, r.stderr), r.stderr
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_static_rates_sweep_file_plans(tmp_path):
  r = _launch("--sweep=configs/sweeps/static_rates.py", f"--out={tmp_path / 'out'}",
              "--dry_run")
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("launch/simulate.py") == 24
  assert "--config.workload.rate=128.0 --config.seed=2" in r.stdout
