r"""Learned-router benchmarks: training throughput, time to a trained router, decision latency.

Parts (`--parts`), timed after compilation with `jax.block_until_ready`:
  throughput   `jit(vmap(trainer.chunk))` as `bes.experiment.train` runs it, per `--num_envs` x
               `--num_seeds`: env calls/s, routing decisions/s and gradient updates/s (all seeds
               together), median of `--repeats` chunks timed past `learning_starts`; compile s.
  convergence  `train_lib.train(config, tmpdir)` per `--convergence_seeds`: the first second at
               which the seed-mean evaluation utility reaches 95% of the final one (and of the
               last three chunks' mean: the evaluation is noisy), and the total seconds.
  latency      the greedy `LearnedPolicy` jitted, one observation and a batch: median and p99
               microseconds over `--latency_calls` blocking calls, async and sync CPU dispatch;
               with observation features (`dqn.features`), one more row: the decision from a
               `ServingView` as a serving runtime makes it, the features computed in the call.

  python launch/benchmark_router.py --config=configs/default.py --out=results/router_benchmark
"""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_flags

import jax  # noqa: E402

# JAX's --jax_* flags (e.g. --jax_cpu_enable_async_dispatch=false) are applied now: JAX reads
# some when it creates its CPU client, which importing bes does.
jax.config.parse_flags_with_absl()

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bes import cli_errors, config_cli
from bes.experiment import Setup, train as train_lib  # noqa: E402
from bes.env import observation  # noqa: E402
from bes.router import features as features_lib  # noqa: E402
from bes.router.policy import LearnedPolicy  # noqa: E402
from bes.experiment.throughput import load_avg as _load  # noqa: E402
from bes.experiment.throughput import training_throughput as _throughput  # noqa: E402

PARTS = ("throughput", "convergence", "latency")
_CONFIG = config_cli.define_config_flag("Config file.")
_OUT = flags.DEFINE_string("out", "results/router_benchmark", "Writes OUT.json and OUT.md.")
_PARTS = flags.DEFINE_list("parts", list(PARTS), f"Parts to run, of {PARTS}.")
_NUM_ENVS = flags.DEFINE_list("num_envs", ["16", "64", "256"], "Throughput: envs per seed.")
_NUM_SEEDS = flags.DEFINE_list("num_seeds", ["1", "3"], "Throughput: seeds vmapped together.")
_CHUNK = flags.DEFINE_integer("chunk_iterations", 500, "Throughput: iterations per timed chunk "
                              "(a divisor of config.dqn.num_iterations).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Throughput: timed chunks; the median is reported.")
_CONV_SEEDS = flags.DEFINE_list("convergence_seeds", ["1", "3"], "Convergence: num_seeds runs.")
_CALLS = flags.DEFINE_integer("latency_calls", 2000, "Latency: timed calls per case.")
_BATCH = flags.DEFINE_integer("latency_batch", 1024, "Latency: observations in the batched case.")
FRACTION = 0.95


def _positive_ints(values, flag: str) -> list[int]:
  """A list flag's integers, each >= 1 (ValueError naming `--flag` otherwise)."""
  out = [int(v) if v.strip().isdigit() else 0 for v in values]
  if not out or min(out) < 1:
    raise ValueError(f"--{flag}: expected integers >= 1, got {','.join(values)!r}")
  return out


def _with(config, updates: dict):
  """A copy of `config` with dotted keys replaced, e.g. `{'dqn.num_envs': 16}`."""
  return config_cli.apply_overrides(config, updates)


def _git() -> dict:
  """The commit and the uncommitted changes under bes/, configs/ and launch/ (the code timed)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=root).stdout
  return dict(commit=git("rev-parse", "HEAD").strip(),
              uncommitted=git("status", "--porcelain", "bes", "configs", "launch").split("\n")[:-1])


# ------------------------------------------------------------------------------ convergence
def _first_reaching(seconds, values, target: float):
  """The first `seconds[i]` with `values[i] >= target` (None if never)."""
  return next((s for s, v in zip(seconds, values) if v >= target), None)


def _target(reference: float) -> float:
  """95% of `reference` (for a negative reference: within 5% of its magnitude)."""
  return reference - (1.0 - FRACTION) * abs(reference)


def _convergence(config, num_seeds: int) -> dict:
  """Trains `config` with `num_seeds` seeds in a temporary workdir; time to 95% of the final
  seed-mean evaluation utility.

  Two clocks, in seconds, compilation included: `csv_seconds` is the `seconds` column of
  metrics.csv (its clock starts after `init`; taken before the chunk's results are ready);
  `host_seconds` counts from the call of `train_lib.train` and is taken when `train` logs a
  chunk, after its statistics are on the host (and its checkpoint saved).
  """
  cfg = _with(config, {"num_seeds": num_seeds})
  host_seconds = []
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()

    def log(message: str) -> None:
      if message.startswith("chunk "):
        host_seconds.append(time.perf_counter() - start)
      print(f"  [seeds={num_seeds}] {message}", flush=True)

    train_lib.train(Setup.from_config(cfg), workdir, log=log)
    total_s = time.perf_counter() - start
    with open(os.path.join(workdir, "metrics.csv")) as f:
      rows = list(csv.DictReader(f))
  chunks = sorted({int(r["chunk"]) for r in rows})
  by_chunk = [[r for r in rows if int(r["chunk"]) == c] for c in chunks]
  per_seed = [[float(r["eval_mean_utility"]) for r in rs] for rs in by_chunk]
  utility = [float(np.mean(u)) for u in per_seed]
  csv_seconds = [float(rs[0]["seconds"]) for rs in by_chunk]
  final, last3 = utility[-1], float(np.mean(utility[-3:]))
  result = dict(num_seeds=num_seeds, chunks=chunks, iterations=int(by_chunk[-1][0]["iteration"]),
                eval_mean_utility=utility, csv_seconds=csv_seconds, host_seconds=host_seconds,
                final_utility=final, last3_mean_utility=last3, total_s=total_s,
                final_utility_per_seed=per_seed[-1], load_avg=_load())
  for name, reference in (("final", final), ("last3", last3)):
    target = _target(reference)
    result[f"target_{name}"] = target
    result[f"csv_s_to_95_{name}"] = _first_reaching(csv_seconds, utility, target)
    result[f"host_s_to_95_{name}"] = _first_reaching(host_seconds, utility, target)
  return result


# ------------------------------------------------------------------------------ latency
def _observations(layout, rate_scale: float, n: int, key) -> jnp.ndarray:
  """float32 [n, layout.size] observations of the environment's layout (`bes.env.observation`):
  a task one-hot, loads uniform in [0, 2) and an arrival rate uniform in [0, 2 * rate_scale)
  requests/s."""
  k_task, k_load, k_rate = jax.random.split(key, 3)
  task = jax.nn.one_hot(jax.random.randint(k_task, (n,), 0, layout.num_tasks), layout.num_tasks)
  loads = jax.random.uniform(k_load, (n, layout.num_models), maxval=2.0)
  rate = jax.random.uniform(k_rate, (n, 1), maxval=2.0 * rate_scale)
  return layout.concat(dict(task=task, load=loads, rate=rate)).astype(jnp.float32)


def _time_calls(fn, arg, calls: int) -> dict:
  """Median, p99 and mean microseconds per blocking call of `fn(arg)` over `calls` calls
  (after 20 warm-up calls)."""
  for _ in range(20):
    jax.block_until_ready(fn(arg))
  us = np.empty(calls)
  for i in range(calls):
    start = time.perf_counter_ns()
    jax.block_until_ready(fn(arg))
    us[i] = (time.perf_counter_ns() - start) / 1e3
  return dict(calls=calls, median_us=float(np.median(us)), p99_us=float(np.percentile(us, 99)),
              mean_us=float(us.mean()), min_us=float(us.min()))


def _latency(config, calls: int, batch: int, profile) -> list[dict]:
  """Latency rows: the jitted LearnedPolicy with its params as an argument (as a server
  holding a trained policy would call it) and closed over (constants folded into the
  program), for one observation [D] and for a batch [batch, D], under this process's CPU
  dispatch mode (`jax_cpu_enable_async_dispatch`)."""
  trainer, envs = train_lib.make_trainer(Setup.from_config(config, profile))
  # The network over the environment's own observation, unmasked: the extra features (and
  # the action mask, which reads them) come from the serving state, which synthetic
  # observations do not have; `_latency_with_features` times the whole decision.
  network = trainer.network.clone(layout=envs.env.layout, action_mask="none")
  obs = _observations(network.layout, float(config.dqn.rate_scale), batch, jax.random.PRNGKey(1))
  net_params = network.init(jax.random.PRNGKey(0), obs[:1])
  policy = LearnedPolicy(params=net_params, network=network)
  as_argument = jax.jit(lambda pol, o: pol(None, o, None))
  closed_over = jax.jit(lambda o: policy(None, o, None))
  dispatch = "async" if jax.config.read("jax_cpu_enable_async_dispatch") else "sync"
  rows = []
  for shape_name, o in (("one", obs[0]), (f"batch {batch}", obs)):
    cases = [("jit(LearnedPolicy), params as argument", lambda x: as_argument(policy, x), o),
             ("jit(LearnedPolicy), params closed over", closed_over, o)]
    for name, fn, arg in cases:
      start = time.perf_counter()
      jax.block_until_ready(fn(arg))
      first_s = time.perf_counter() - start
      rows.append(dict(case=name, observations=shape_name, dispatch=dispatch,
                       first_call_s=first_s, **_time_calls(fn, arg, calls), load_avg=_load()))
  layout = trainer.network.layout
  if layout.features != layout.base.features:
    rows.append(_latency_with_features(trainer.network, envs, calls, dispatch))
  return rows


def _latency_with_features(network, envs, calls: int, dispatch: str) -> dict:
  """The row of a decision as a serving runtime makes it: the jitted LearnedPolicy called
  with the environment's observation and a `ServingView`, its extra features (and, for
  'predict', the latency predictor it carries) and its action mask computed inside the
  call."""
  obs, state = envs.eval_env.reset(jax.random.PRNGKey(2), envs.eval_params)
  view = observation.serving_view(state)
  predictor = features_lib.predictor(network.layout, envs.params, envs.batched)
  params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, network.layout.size)))
  policy = LearnedPolicy(params=params, network=network, predictor=predictor)
  decide = jax.jit(lambda pol, o, v: pol(None, o, v))
  fn = lambda arg: decide(policy, *arg)
  start = time.perf_counter()
  jax.block_until_ready(fn((obs, view)))
  first_s = time.perf_counter() - start
  return dict(case=f"jit(LearnedPolicy) from a ServingView, '{network.layout.features}' "
              "features computed in the call", observations="one", dispatch=dispatch,
              first_call_s=first_s, **_time_calls(fn, (obs, view), calls), load_avg=_load())


def _latency_sync_dispatch() -> list[dict]:
  """The latency rows with synchronous CPU dispatch, from a child process of this launcher
  (same flags, `--parts=latency --jax_cpu_enable_async_dispatch=false`): JAX reads the
  setting when it creates its CPU client, so it cannot change in this process."""
  drop, args, skip = ("--parts", "-parts", "--out", "-out"), [], False
  for a in sys.argv[1:]:                  # without --parts/--out (as '--out=x' or '--out x')
    if not skip and a.split("=")[0] not in drop:
      args.append(a)
    skip = a in drop
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "latency")
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args, "--parts=latency", f"--out={out}",
         "--jax_cpu_enable_async_dispatch=false"], capture_output=True, text=True)
    if child.returncode:
      raise RuntimeError(f"latency child process failed:\n{child.stderr[-3000:]}")
    with open(out + ".json") as f:
      return json.load(f)["latency"]


# ------------------------------------------------------------------------------ report
def _fmt(x, spec=".1f", none="not reached"):
  return none if x is None else format(x, spec)


def _table(header: str, rows) -> list[str]:
  """Markdown table lines: columns named by `header` ('a|b'), one row per tuple of cells."""
  names = header.split("|")
  return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names),
          *("| " + " | ".join(map(str, row)) + " |" for row in rows), ""]


def _markdown(result: dict) -> str:
  """The report: machine and config, then one section and table per part run."""
  c, git = result["config"], result["git"]
  lines = [
      "# Learned-router benchmarks", "",
      f"Command: `{result['command']}`", "",
      f"Date {result['date']}, jax {result['jax']}, devices {result['devices']}, "
      f"{result['cpu_count']} CPU cores ({result['machine']}). Machine note: a shared 2-core CPU "
      f"with other processes possibly running; load average (1/5/15 min) at the start "
      f"{result['load_avg_start']}, at the end {result['load_avg_end']} (each row's load is in the "
      f"JSON). Config `{result['config_file']}`: workload {c['workload']['kind']} at "
      f"{c['workload']['rate']} req/s, hidden {c['dqn']['hidden']}, batch "
      f"{c['dqn']['batch_size']}, {c['dqn']['updates_per_iteration']} update(s) per iteration, "
      f"max_passes {c['dqn']['max_passes']}, credit '{c['dqn']['credit']}'. Code: commit "
      f"{git['commit'][:10]}" + (f", with uncommitted changes to "
                                 f"{', '.join(x[3:] for x in git['uncommitted'])}"
                                 if git["uncommitted"] else "") + "."
      + (f" JAX persistent compilation cache `{result['compilation_cache_dir']}`: compile "
         "times may be cache hits." if result.get("compilation_cache_dir") else ""), ""]
  if result.get("throughput"):
    r0 = result["throughput"][0]
    lines += [
        "## Training throughput: `jit(vmap(trainer.chunk))`", "",
        f"Chunks of {r0['chunk_iterations']} iterations, timed after compilation and after "
        f"{r0['warmup_chunks']} warm-up chunk(s) (past `learning_starts`, so each iteration does "
        f"its gradient update(s)); median over {len(r0['chunk_s'])} chunks. All rates count all "
        "seeds together; an env call is one `step_async` of one environment, a decision a "
        "decided transition (a request routed), an update one gradient step of one seed.", ""]
    lines += _table("envs/seed|seeds|env calls/s|decisions/s|updates/s|chunk (s)|compile (s)", [
        (r["num_envs"], r["num_seeds"], f"{r['env_calls_per_s']:,.0f}",
         f"{r['decisions_per_s']:,.0f}", f"{r['updates_per_s']:,.0f}",
         f"{r['median_chunk_s']:.2f}", f"{r['compile_s']:.1f}") for r in result["throughput"]])
  if result.get("convergence"):
    lines += [
        "## Time to 95% of the final evaluation utility (default config, target < 2 min)", "",
        "`train_lib.train(config, tmpdir)` as `launch/train.py` runs it (evaluation and checkpoint "
        "after every chunk), wall clock from its start, compilation included. Utility: the "
        "seed-mean greedy evaluation utility per request after each chunk. 'csv' seconds are "
        "metrics.csv's `seconds` column; 'host' seconds are taken when the chunk's results reach "
        "the host (see the note below).", ""]
    lines += _table(
        "seeds|chunks|final utility|last-3 mean|95% final: csv / host (s)|"
        "95% last-3: csv / host (s)|total (s)",
        [(r["num_seeds"], len(r["chunks"]), f"{r['final_utility']:.4f}",
          f"{r['last3_mean_utility']:.4f}",
          f"{_fmt(r['csv_s_to_95_final'])} / {_fmt(r['host_s_to_95_final'])}",
          f"{_fmt(r['csv_s_to_95_last3'])} / {_fmt(r['host_s_to_95_last3'])}",
          f"{r['total_s']:.1f}") for r in result["convergence"]])
    lines += ["Per chunk (seed-mean evaluation utility @ host seconds):", ""]
    for r in result["convergence"]:
      points = ", ".join(f"{u:.3f} @ {s:.0f}" for u, s in zip(r["eval_mean_utility"],
                                                                r["host_seconds"]))
      lines.append(f"* {r['num_seeds']} seed(s): {points}")
    lines += [
        "", "Note on the two clocks: `train_lib.train` takes a row's `seconds` right after "
        "dispatching the chunk and its evaluation, which JAX runs asynchronously, so (once "
        "compiled) a row's csv `seconds` is about when the previous chunk ended, and its clock "
        "starts after the environments are built and `init` is compiled and run. 'host' seconds "
        "count from the call of `train` and are taken when it logs the chunk, after the chunk's "
        "statistics reached the host and its checkpoint was written: they are the ones to "
        "trust.", ""]
  if result.get("latency"):
    lines += [
        "## Router decision latency (target: one decision < 50 us)", "",
        "Greedy decision = argmax of the Q-network, per call, blocking on each "
        "(`jax.block_until_ready`), after 20 warm-up calls; untrained weights (the cost does not "
        "depend on their values), synthetic observations of the environment's layout. "
        "Dispatch 'async' is JAX's default on CPU (the program runs on a worker thread; the "
        "caller waits for it), 'sync' runs it on the calling thread "
        "(`--jax_cpu_enable_async_dispatch=false`, or `jax.config.update` before JAX creates its "
        "CPU client; these rows come from a child process).", ""]
    lines += _table("case|dispatch|observations|calls|median (us)|p99 (us)|mean (us)", [
        (r["case"], r["dispatch"], r["observations"], r["calls"], f"{r['median_us']:.1f}",
         f"{r['p99_us']:.1f}", f"{r['mean_us']:.1f}") for r in result["latency"]])
  return "\n".join(lines)


def run(config, parts) -> dict:
  """Runs the chosen parts; returns the JSON-ready result."""
  num_envs = _positive_ints(_NUM_ENVS.value, "num_envs")
  num_seeds = _positive_ints(_NUM_SEEDS.value, "num_seeds")
  conv_seeds = _positive_ints(_CONV_SEEDS.value, "convergence_seeds")
  chunk, repeats = _CHUNK.value, _REPEATS.value
  if chunk < 1 or int(config.dqn.num_iterations) % chunk:
    raise ValueError(f"--chunk_iterations: expected a divisor of config.dqn.num_iterations="
                     f"{config.dqn.num_iterations}, got {chunk}")
  for flag, value in (("repeats", repeats), ("latency_calls", _CALLS.value),
                      ("latency_batch", _BATCH.value)):
    if value < 1:
      raise ValueError(f"--{flag}: expected an integer >= 1, got {value}")
  setup = Setup.from_config(config)                 # validates the config
  profile = setup.profile
  result = dict(command="python " + " ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                jax=jax.__version__, devices=[str(d) for d in jax.devices()],
                cpu_count=os.cpu_count(), machine=platform.machine(), load_avg_start=_load(),
                config_file=config_flags.get_config_filename(flags.FLAGS["config"]),
                compilation_cache_dir=jax.config.jax_compilation_cache_dir or None,
                git=_git(), config=config.to_dict(), parts=list(parts))
  if "throughput" in parts:
    result["throughput"] = []
    for n in num_envs:
      for s in num_seeds:
        row = _throughput(config, n, s, chunk, repeats, profile)
        result["throughput"].append(row)
        print(f"envs={n:4d} seeds={s}: {row['env_calls_per_s']:10,.0f} env calls/s "
              f"{row['decisions_per_s']:10,.0f} decisions/s {row['updates_per_s']:8,.0f} "
              f"updates/s (compile {row['compile_s']:.1f} s)", flush=True)
  if "latency" in parts:
    result["latency"] = _latency(config, _CALLS.value, _BATCH.value, profile)
    if jax.config.read("jax_cpu_enable_async_dispatch"):
      result["latency"] += _latency_sync_dispatch()
    for r in result["latency"]:
      print(f"{r['case']:40s} {r['dispatch']:>5s} {r['observations']:>10s}: median "
            f"{r['median_us']:8.1f} us p99 {r['p99_us']:8.1f} us", flush=True)
  if "convergence" in parts:
    result["convergence"] = []
    for s in conv_seeds:
      row = _convergence(config, s)
      result["convergence"].append(row)
      print(f"seeds={s}: final utility {row['final_utility']:.4f}, 95% at "
            f"{_fmt(row['host_s_to_95_final'])} s (host) / {_fmt(row['csv_s_to_95_final'])} s "
            f"(csv), total {row['total_s']:.1f} s", flush=True)
  result["load_avg_end"] = _load()
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # orbax logs every save and restore at INFO
  parts = [p.strip() for p in _PARTS.value if p.strip()]
  try:
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
      raise ValueError(f"--parts: expected some of {PARTS}, got {','.join(_PARTS.value)!r}")
    result = run(_CONFIG.value, parts)
  except ValueError as e:
    sys.exit(f"benchmark_router.py: error: {e}")
  out = _OUT.value
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=2, default=list)
  with open(out + ".md", "w") as f:
    f.write(_markdown(result))
  print(f"wrote {out}.json and .md")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
