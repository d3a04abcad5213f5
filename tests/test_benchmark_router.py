"""launch/benchmark_router.py end to end (subprocess) on tiny sizes: files, counts, timings,
the 95% rule, and clear errors for bad flags."""
import json
import os
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.dqn.num_iterations=8", "--config.train.chunk_iterations=2",
        "--config.dqn.learning_starts=3", "--config.dqn.batch_size=8",
        "--config.dqn.replay_capacity=16", "--config.env.episode_len=16",
        "--config.train.eval_episode_len=16", "--config.train.eval_episodes=1",
        "--config.dqn.hidden=8", "--config.train.keep_checkpoints=1", "--config.dqn.num_envs=3"]


def _run(*args, cache_dir=None):
  """Runs the launcher on TINY; `cache_dir`: a JAX persistent compilation cache, so that the
  convergence part reuses the throughput part's compiled init and chunk (same shapes)."""
  env = dict(os.environ, **({"JAX_COMPILATION_CACHE_DIR": str(cache_dir)} if cache_dir else {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "benchmark_router.py"),
                         *TINY, *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env=env)


def test_all_parts_on_tiny_sizes(tmp_path):
  out = tmp_path / "bench"
  r = _run(f"--out={out}", "--num_envs=3", "--num_seeds=2", "--chunk_iterations=2",
           "--repeats=2", "--convergence_seeds=2", "--latency_calls=30", "--latency_batch=5",
           cache_dir=tmp_path / "jax_cache")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out.parent / "bench.json").read_text())
  assert res["parts"] == ["throughput", "convergence", "latency"]
  assert len(res["load_avg_start"]) == 3 and res["config"]["dqn"]["hidden"] == "8"

  (row,) = res["throughput"]
  assert (row["num_envs"], row["num_seeds"], row["chunk_iterations"]) == (3, 2, 2)
  assert row["warmup_chunks"] == 2                # ceil(learning_starts 3 / 2 iterations)
  assert row["env_calls_per_chunk"] == 3 * 2 * 2
  assert row["updates_per_chunk"] == [2 * 2, 2 * 2]   # past learning_starts: 1 per iteration
  assert all(0 <= d <= 12 for d in row["decisions_per_chunk"])
  assert row["compile_s"] > 0 and len(row["chunk_s"]) == 2
  assert row["env_calls_per_s"] == pytest.approx(statistics.median(12 / s for s in row["chunk_s"]))
  assert row["updates_per_s"] == pytest.approx(statistics.median(4 / s for s in row["chunk_s"]))
  assert row["decisions_per_s"] <= row["env_calls_per_s"]

  (conv,) = res["convergence"]
  assert conv["num_seeds"] == 2 and conv["chunks"] == [1, 2, 3, 4] and conv["iterations"] == 8
  assert len(conv["final_utility_per_seed"]) == 2
  assert conv["final_utility"] == pytest.approx(conv["eval_mean_utility"][-1])
  assert conv["final_utility"] == pytest.approx(sum(conv["final_utility_per_seed"]) / 2)
  assert conv["last3_mean_utility"] == pytest.approx(statistics.mean(conv["eval_mean_utility"][1:]))
  assert conv["target_final"] == pytest.approx(
      conv["final_utility"] - 0.05 * abs(conv["final_utility"]))
  hosts = conv["host_seconds"]
  assert len(hosts) == 4 and 0 < hosts[0] and hosts == sorted(hosts) and hosts[-1] <= conv["total_s"]
  # The first chunk whose seed-mean utility reaches the target; the last chunk always does.
  first = next(i for i, u in enumerate(conv["eval_mean_utility"]) if u >= conv["target_final"])
  assert conv["host_s_to_95_final"] == hosts[first]
  assert conv["csv_s_to_95_final"] == conv["csv_seconds"][first]

  cases = {(x["case"], x["dispatch"], x["observations"]) for x in res["latency"]}
  for dispatch in ("async", "sync"):             # sync: from a child process
    assert ("jit(LearnedPolicy), params as argument", dispatch, "one") in cases
    assert ("jit(LearnedPolicy), params as argument", dispatch, "batch 5") in cases
  # The default router observes features: one more row per dispatch, the decision from a
  # ServingView with the features computed in the call.
  for dispatch in ("async", "sync"):
    assert ("jit(LearnedPolicy) from a ServingView, 'predict' features computed in the call",
            dispatch, "one") in cases
  assert len(cases) == len(res["latency"]) == 10
  for x in res["latency"]:
    assert x["calls"] == 30 and 0 < x["min_us"] <= x["median_us"] <= x["p99_us"]

  md = (out.parent / "bench.md").read_text()
  assert "benchmark_router.py" in md and "| 3 | 2 |" in md and "load average" in md


@pytest.mark.parametrize("args,message", [
    (["--chunk_iterations=3"], "--chunk_iterations: expected a divisor of config.dqn.num_iterations=8"),
    (["--parts=throughput,speed"], "--parts: expected some of"),
    (["--num_envs=0"], "--num_envs: expected integers >= 1"),
    (["--convergence_seeds=x"], "--convergence_seeds: expected integers >= 1"),
    (["--repeats=0"], "--repeats: expected an integer >= 1"),
    (["--config.dqn.credit=bogus"], "config.dqn.credit"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
  r = _run("--chunk_iterations=2", *args, f"--out={tmp_path / 'x'}")
  assert r.returncode != 0
  assert message in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "x.json").exists()
