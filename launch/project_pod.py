r"""Projects how long the reproduced experiments would take on a TPU v5e-8 and an 8xH100 node.

For every router training the sweeps in `configs/sweeps/` run (and the default config's), it
compiles one training iteration on this machine, reads XLA's FLOPs, bytes and kernels for it
(`bes/parallel/projection.py`), times it here, and projects the run's `num_iterations`
onto each node (roofline and per-kernel latency bounds, over the node's devices). The
evaluations are projected from the simulator's per-request cost and the request counts in the
committed sweep results (`results/<sweep>/rows.jsonl`), independent rollouts spread one
per device. Writes OUT.md and OUT.json.

  python launch/project_pod.py --out=results/pod_projection
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from bes import cli_errors, config_cli, heuristics, sweep_file
from bes.env import rollout as rollout_lib
from bes.experiment import train as train_lib
from bes.experiment.setup import Setup
from bes.parallel import projection as proj

_OUT = flags.DEFINE_string("out", "results/pod_projection", "Output path prefix (.md, .json).")
_SWEEPS = flags.DEFINE_string("sweeps", "configs/sweeps/*.py", "Sweep files whose runs to project.")
_RESULTS = flags.DEFINE_string("results", "results", "Directory of the committed sweep results.")
_ACCELERATORS = flags.DEFINE_list("accelerators", list(proj.ACCELERATORS),
                                  f"Nodes to project onto, of {sorted(proj.ACCELERATORS)}.")
_CHUNK = flags.DEFINE_integer("chunk", 10, "Iterations per timed chunk on this machine.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed chunks per training config (median).")


def _value(text: str):
  for parse in (int, float):
    try:
      return parse(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


def training_runs(sweep_paths) -> list[tuple[str, list[str]]]:
  """(label, train argv) of every distinct training the sweeps run, and the default's."""
  runs, seen = [("configs/default.py", ["launch/train.py", "--config=configs/default.py"])], set()
  with tempfile.TemporaryDirectory() as tmp:
    for path in sweep_paths:
      spec = sweep_file.load_sweep(path)
      for plan in sweep_file.plan_sweep(spec, tmp):
        for step in plan.steps:
          argv = [a for a in step.argv if not a.startswith(("--workdir", "--eval"))]
          if argv and argv[0].endswith("train.py") and tuple(argv) not in seen:
            seen.add(tuple(argv))
            runs.append((f"{spec.name}: {shlex.join(argv[1:])}", argv))
  return runs


def config_of(argv: list[str]):
  config = config_cli.load_config_file(config_cli.config_path_in(argv, "configs/default.py"))
  overrides = {a[len("--config."):].split("=", 1)[0]: _value(a.split("=", 1)[1])
               for a in argv if a.startswith("--config.") and "=" in a}
  return config_cli.apply_overrides(config, overrides)


def measure_training(config) -> dict:
  """One iteration's compiled cost and measured seconds on this machine, and the run's size."""
  setup = Setup.from_config(config_cli.apply_overrides(
      config, {"train.chunk_iterations": _CHUNK.value, "dqn.learning_starts": 0}))
  full = Setup.from_config(config)
  trainer, _ = train_lib.make_trainer(setup)
  ls = jax.block_until_ready(jax.jit(jax.vmap(trainer.init))(setup.seed_keys()))
  compiled = jax.jit(jax.vmap(trainer.chunk), donate_argnums=0).lower(ls).compile()
  ls, _ = jax.block_until_ready(compiled(ls))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    ls, _ = jax.block_until_ready(compiled(ls))
    times.append((time.perf_counter() - start) / _CHUNK.value)
  grad_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(ls.params))
  d = full.dqn
  return dict(cost=proj.compiled_cost(compiled), cpu_s_per_iteration=float(np.median(times)),
              iterations=d.num_iterations, seeds=full.num_seeds, envs=d.num_envs,
              updates=(d.num_iterations - d.learning_starts) * d.updates_per_iteration,
              grad_bytes=grad_bytes)


def measure_evaluation() -> dict:
  """One routing decision of a recorded evaluation (default setup, deadline-aware greedy)."""
  setup = Setup.from_config(config_cli.load_config_file("configs/default.py"))
  env, params = setup.env(episode_len=1024)
  out_len, prompt_len = heuristics.mean_lengths(setup.workload, jax.random.PRNGKey(1))
  policy = heuristics.deadline_greedy(params, out_len, prompt_len)
  run = jax.jit(lambda k: rollout_lib.rollouts(env, params, policy, k, 1024))
  keys = jax.random.split(jax.random.PRNGKey(0), 1)
  compiled = run.lower(keys).compile()
  jax.block_until_ready(compiled(keys))
  start = time.perf_counter()
  jax.block_until_ready(compiled(keys))
  return dict(cost=proj.compiled_cost(compiled), cpu_s_per_step=(time.perf_counter() - start) / 1024)


def evaluation_steps(results: str) -> dict[str, int]:
  """Sequential routing decisions each committed sweep's evaluations made (rows.jsonl)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(results, "*", "rows.jsonl"))):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    out[os.path.basename(os.path.dirname(path))] = int(sum(r.get("num_requests", 0) for r in rows))
  return out


def _fmt(seconds: float) -> str:
  return f"{seconds:,.0f} s" if seconds >= 10 else f"{seconds:.2f} s"


def main(argv):
  del argv
  accels = [proj.ACCELERATORS[a] for a in _ACCELERATORS.value if a in proj.ACCELERATORS]
  if len(accels) != len(_ACCELERATORS.value):
    raise ValueError(f"--accelerators: expected names of {sorted(proj.ACCELERATORS)}, got "
                     f"{_ACCELERATORS.value}")
  sweeps = sorted(p for p in glob.glob(_SWEEPS.value) if not p.endswith("__init__.py"))
  if not sweeps:
    raise ValueError(f"--sweeps: no sweep file matches {_SWEEPS.value!r}")
  bandwidth = proj.measure_bandwidth()
  rows, cache = [], {}
  for label, argv in training_runs(sweeps):
    config = config_of(argv)
    key = json.dumps({k: config[k].to_dict() for k in ("dqn", "env", "train")} |
                     {"profile": config.profile, "seeds": config.num_seeds}, sort_keys=True, default=str)
    if key not in cache:
      print(f"measuring {label}", flush=True)
      cache[key] = measure_training(config)
    m = cache[key]
    row = dict(run=label, kind="training", iterations=m["iterations"], seeds=m["seeds"],
               envs=m["envs"], flops_per_iteration=m["cost"].flops,
               bytes_per_iteration=m["cost"].bytes, kernels_per_iteration=m["cost"].kernels,
               cpu_s_per_iteration=m["cpu_s_per_iteration"],
               cpu_roofline_s_per_iteration=m["cost"].bytes / bandwidth,
               cpu_projected_s=m["cpu_s_per_iteration"] * m["iterations"])
    for a in accels:
      row[a.name] = proj.project(m["cost"], m["iterations"], m["updates"], m["grad_bytes"], a)
    rows.append(row)
  print("measuring one evaluation decision", flush=True)
  ev = measure_evaluation()
  for sweep, steps in evaluation_steps(_RESULTS.value).items():
    row = dict(run=f"{sweep}: evaluations", kind="evaluation", iterations=steps,
               kernels_per_iteration=ev["cost"].kernels, bytes_per_iteration=ev["cost"].bytes,
               flops_per_iteration=ev["cost"].flops, cpu_s_per_iteration=ev["cpu_s_per_step"],
               cpu_roofline_s_per_iteration=ev["cost"].bytes / bandwidth,
               cpu_projected_s=ev["cpu_s_per_step"] * steps)
    for a in accels:   # independent rollouts: one chain per device
      row[a.name] = proj.project(ev["cost"], -(-steps // a.devices), 0, 0.0, a, devices=1)
      row[a.name]["devices"] = a.devices
    rows.append(row)
  result = dict(command="python " + " ".join(sys.argv), jax=jax.__version__,
                cpu_bandwidth_gb_s=bandwidth / 1e9, cpus=os.cpu_count(),
                accelerators=[vars(a) for a in accels], rows=rows,
                totals={a.name: sum(r[a.name]["projected_s"] for r in rows) for a in accels}
                | {"cpu": sum(r["cpu_projected_s"] for r in rows)})
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(result, f, indent=1, default=lambda o: vars(o))
  with open(_OUT.value + ".md", "w") as f:
    f.write(markdown(result, accels))
  print(markdown(result, accels))


def markdown(result: dict, accels) -> str:
  head = " | ".join(f"{a.name} roofline / latency / projected" for a in accels)
  lines = [
      "# Projection of the reproduced experiments onto accelerator nodes", "",
      f"Command: `{result['command']}` (jax {result['jax']}, {result['cpus']} CPUs, measured "
      f"read bandwidth {result['cpu_bandwidth_gb_s']:.1f} GB/s).", "",
      "Per run: one iteration (training) or one routing decision (evaluation) compiled here; "
      "XLA's FLOPs, bytes accessed (an upper bound: in-place updates count whole buffers) and "
      "kernels (XLA:CPU's fusion); `cpu` = measured here x iterations.", "",
      f"| run | iterations | kernels/iter | MB/iter | cpu ms/iter (roofline) | cpu | {head} |",
      "|---|---:|---:|---:|---:|---:|" + "---|" * len(accels)]
  for r in result["rows"]:
    cells = " | ".join(f"{_fmt(r[a.name]['roofline_s'])} / {_fmt(r[a.name]['latency_s'])} / "
                       f"**{_fmt(r[a.name]['projected_s'])}**" for a in accels)
    lines.append(f"| {r['run']} | {r['iterations']:,} | {r['kernels_per_iteration']} | "
                 f"{r['bytes_per_iteration'] / 1e6:.1f} | {r['cpu_s_per_iteration'] * 1e3:.2f} "
                 f"({r['cpu_roofline_s_per_iteration'] * 1e3:.2f}) | {_fmt(r['cpu_projected_s'])} | "
                 f"{cells} |")
  totals = result["totals"]
  lines += ["", "Totals: " + ", ".join(f"{k} {_fmt(v)}" for k, v in totals.items()) + ".", "",
            "Assumptions (`bes/parallel/projection.py`):"]
  for a in accels:
    lines.append(f"* {a.name}: {a.source}; assumed {a.kernel_s * 1e6:g} us per kernel and "
                 f"{a.loop_s * 1e6:g} us per loop iteration.")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
