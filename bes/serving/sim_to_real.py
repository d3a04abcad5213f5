"""The sim-to-real study, end to end: one trace, each policy simulated and served for real.

`run(options)` (launch/sim_to_real.py is its CLI) does, into `out`:

  1. profile      (with `reprofile`, or when `config.profile` does not exist) every model of
                  `config.serve` measured by its own pinned engine worker
                  (`bes.serving.profiling`) -> profile.json (+ profile_raw.json); else
                  `config.profile` copied to profile.json. Everything below uses profile.json.
  2. trace        `traces.prepare_trace` (max context `config.serve.max_len`, the profile's
                  tasks) -> trace.csv, trace.json (its summary).
  3. router       only when a policy is `learned`: `bes.experiment.train.train` on the config
                  (with profile.json) in the training workdir (resumes / reuses one).
  4. per policy P, in out/<slug(P)>/:
       simulated/  the prepared trace through the jitted environment (`simulate_policy`: the
                   policy built by `routing.load_policy` exactly as the server builds it, one
                   recorded episode by `evaluate.run_policy`, key PRNGKey(config.seed) as
                   `traces.simulate_trace`) -> outcomes.csv, metrics.json, table.txt;
       server.log, server/   `launch/serve.py` as a subprocess in its own process group
                   (same config and overrides, --config.profile=profile.json, --policy=P, a
                   free port), polled on GET /health until 200;
       measured/   `launch/loadgen.py` replaying trace.csv at its own timing against it; then
                   SIGTERM (the server drains) and wait;
       comparison.json / .md / latency_scatter.png   `compare.compare` + `write_comparison`.
  5. comparison.json {P: {simulated, measured, delta, targets_met}} and comparison.md (one
     table across policies, links to each policy's comparison.md).

Every step is skipped when its output exists, so re-running the same command after an
interruption continues; run.json records the options and a re-run with a different trace,
trace options or config is refused (name a new `out`); policies may be added or dropped
(comparison.json holds the policies of the latest run). A server is never left running (its process group is killed in a
`finally`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from bes import config_cli, io_util
from bes import profile as profile_lib
from bes.experiment import report
from bes.serving import compare, local, profiling, traces

POLICY_KINDS = ("static", "round_robin", "random", "task_map", "deadline_greedy",
                "load_threshold", "learned")
RESUME_KEYS = ("trace", "num_requests", "time_scale", "rate", "config_args")  # policies may be added


@dataclasses.dataclass(frozen=True)
class Options:
  """What `run` does (launch/sim_to_real.py flags)."""
  config: ml_collections.ConfigDict
  config_args: tuple[str, ...]        # --config=PATH and --config.K=V, forwarded to serve.py
  trace: str
  out: str
  policies: tuple[str, ...] = ()      # () = default_policies(config)
  num_requests: int | None = None
  time_scale: float | None = None
  rate: float | None = None
  reprofile: bool = False
  train_workdir: str | None = None
  profile_repeats: int = 20
  profile_warmup: int = 2
  server_timeout_s: float = 600.0
  drain_timeout_s: float = 300.0
  request_timeout_s: float = 600.0


# ------------------------------------------------------------------------- small pieces
def smallest_model(config: ml_collections.ConfigDict) -> str:
  """The served model with the fewest parameters."""
  return min(profiling.model_entries(config), key=lambda m: m.config.num_params()).name


def default_policies(config: ml_collections.ConfigDict) -> list[str]:
  """The learned router (trained for the config's deployment) and the tuned heuristic."""
  del config
  return ["learned", "deadline_greedy"]


def check_policy(spec: str, model_names: Sequence[str]) -> str:
  """`spec` if it is a policy `config.serve.policy` accepts; ValueError naming --policy."""
  spec = spec.strip()
  kind, _, arg = spec.partition(":")
  if kind not in POLICY_KINDS:
    raise ValueError(f"--policy={spec}: unknown policy; expected static:M, round_robin, random, "
                     f"task_map:M0,M1,..., deadline_greedy, load_threshold or learned")
  if kind == "static" and arg not in model_names and not arg.isdigit():
    raise ValueError(f"--policy={spec}: unknown model {arg!r}; expected one of "
                     f"{list(model_names)}")
  if kind in ("round_robin", "random", "deadline_greedy", "load_threshold", "learned") and arg:
    raise ValueError(f"--policy={spec}: {kind} takes no argument")
  return spec


def policy_dir(out: str, spec: str) -> str:
  """out/<the policy name as a directory name> ('static:cpu-small' -> 'static_cpu-small')."""
  return os.path.join(out, report.slug(spec))


def done(*paths: str) -> bool:
  """A step is done when every output it writes last exists."""
  return all(os.path.isfile(p) for p in paths)


def check_resume(out: str, record: Mapping[str, Any]) -> None:
  """Writes out/run.json, or refuses an out holding a run with other options."""
  path = os.path.join(out, "run.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    differ = [k for k in RESUME_KEYS if saved.get(k) != record.get(k)]
    if differ:
      raise ValueError(f"--out={out}: holds a run with other options ({', '.join(differ)}: "
                       f"{ {k: saved.get(k) for k in differ} }); re-run with the same ones to "
                       f"resume, or choose a new --out")
  io_util.write_text(out, "run.json", json.dumps(dict(record), indent=2) + "\n")


# ------------------------------------------------------------------------- steps
def step_profile(opts: Options, out: str, log) -> str:
  """Step 1 (module docstring); returns the path of out/profile.json."""
  path = os.path.join(out, "profile.json")
  if os.path.isfile(path):
    log(f"[1/5] profile: reusing {path}")
    return path
  base = profiling.existing_profile(opts.config)
  if base is not None and not opts.reprofile:
    log(f"[1/5] profile: using config.profile={opts.config.profile} (--reprofile to measure)")
    profile_lib.save_profile(base, path)
    return path
  log("[1/5] profile: measuring every served model under its serving pinning")
  profile, raw = profiling.measure_serving_profile(
      opts.config, repeats=opts.profile_repeats, warmup=opts.profile_warmup,
      name=f"sim-to-real-{os.path.basename(os.path.abspath(out))}", log=log)
  io_util.write_text(out, "profile_raw.json", json.dumps(compare._jsonable(raw), indent=2))
  profile_lib.save_profile(profile, path)
  log(f"  wrote {path}")
  return path


def with_profile(config: ml_collections.ConfigDict, profile_path: str,
                 workdir: str = "") -> ml_collections.ConfigDict:
  over = {"profile": profile_path}
  if workdir:
    over["serve.workdir"] = workdir
  return config_cli.apply_overrides(config, over)


def step_trace(opts: Options, out: str, profile: profile_lib.Profile, log) -> str:
  path = os.path.join(out, "trace.csv")
  if done(path, os.path.join(out, "trace.json")):
    log(f"[2/5] trace: reusing {path}")
    return path
  summary = traces.prepare_trace(
      opts.trace, profile.tasks, max_context=int(opts.config.serve.max_len),
      num_requests=opts.num_requests, time_scale=opts.time_scale, rate=opts.rate,
      seed=int(opts.config.get("seed", 0)),
      max_prompt_len=int(opts.config.workload.max_prompt_len),   # the router's training bounds
      max_output_len=int(opts.config.workload.max_output_len), out_csv=path)
  io_util.write_text(out, "trace.json", json.dumps(summary, indent=2) + "\n")
  log(f"[2/5] trace: {summary['rows']} requests over {summary['span_s']:.1f} s "
      f"(mean {summary['mean_rate'] or 0:.2f} req/s) -> {path}")
  return path


def step_router(config: ml_collections.ConfigDict, workdir: str, log) -> None:
  """Trains (or resumes, or reuses) the learned router in `workdir` and tunes the heuristics
  on the same training workload, as launch/train.py does, so that `deadline_greedy` and
  `load_threshold` run with knobs tuned on what the router trained on."""
  from bes.experiment import Setup, train, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  setup = Setup.from_config(config)
  log(f"[3/5] router: training (or resuming) the learned router in {workdir}")
  train.train(setup, workdir, log=log)
  if setup.train.tune_heuristics and not os.path.exists(
      os.path.join(workdir, workdir_lib.HEURISTICS_FILE)):
    workdir_lib.tune_heuristics(setup, workdir, log=log)


def simulate_policy(config: ml_collections.ConfigDict, trace_csv: str, spec: str,
                    workdir: str, out_dir: str, command: str, log) -> dict:
  """The simulated side of `spec` on the prepared trace (module docstring); writes
  out_dir/outcomes.csv, metrics.json, table.txt; returns the outcomes."""
  import jax  # pylint: disable=g-import-not-at-top
  from bes.experiment import Setup, evaluate  # pylint: disable=g-import-not-at-top
  from bes.serving import routing  # pylint: disable=g-import-not-at-top
  serve_setup = Setup.from_config(config)                    # the policy as the server builds it
  policy = routing.load_policy(spec, serve_setup, workdir)
  setup = Setup.from_config(config_cli.apply_overrides(
      config, config_cli.trace_overrides(os.path.abspath(trace_csv), 0.0)))
  n = evaluate.num_requests(setup)
  summary, outcomes = evaluate.run_policy(setup, policy, n, jax.random.PRNGKey(setup.seed),
                                          log=log, name=spec)
  result = {"profile": setup.profile.name, "workload": setup.config.workload.to_dict(),
            "env": setup.config.env.to_dict(), "num_requests": n, "peak": summary["peak"],
            "policies": {spec: summary}}
  report.write(out_dir, result, command, {spec: outcomes})
  return outcomes


def serve_command(opts: Options, profile_path: str, spec: str, port: int, server_out: str,
                  workdir: str) -> list[str]:
  cmd = [sys.executable, str(local.REPO / "launch" / "serve.py"), *opts.config_args,
         f"--config.profile={profile_path}", f"--policy={spec}", "--host=127.0.0.1",
         f"--port={port}", f"--out={server_out}"]
  if workdir:
    cmd.append(f"--config.serve.workdir={workdir}")
  return cmd


_SUBPROCESS_ENV = {}   # set by `run`: what the server and load generator processes add


def _env() -> dict:
  return local.child_env({k: v for k, v in _SUBPROCESS_ENV.items() if k not in os.environ})


def serve_and_measure(opts: Options, profile_path: str, trace_csv: str, spec: str,
                      workdir: str, pdir: str, log) -> dict:
  """The measured side of `spec`: server up, load generator, drain. Returns a record of the
  server run (port, ready_s, exit code)."""
  port = local.free_port()
  log_path = os.path.join(pdir, "server.log")
  measured = os.path.join(pdir, "measured")
  shutil.rmtree(measured, ignore_errors=True)     # a partial run's files
  cmd = serve_command(opts, profile_path, spec, port, os.path.join(pdir, "server"), workdir)
  io_util.write_text(pdir, "server_command.txt", " ".join(cmd) + "\n")
  server = local.ServerProcess(cmd[2:], log_path, port=port, env=_env(),
                               timeout_s=opts.server_timeout_s, what=f"--policy={spec}: the server",
                               log=log)
  record = {"port": port}
  try:
    server.start()
    record.update(pid=server.pid, ready_s=server.ready_s)
    log(f"  server pid {server.pid} ready on {server.url} after {server.ready_s:.1f} s; "
        f"replaying {trace_csv}")
    lg = [sys.executable, str(local.REPO / "launch" / "loadgen.py"), f"--url={server.url}",
          f"--trace={trace_csv}", f"--out={measured}", "--noprogress",
          f"--timeout_s={opts.request_timeout_s}"]
    with open(os.path.join(pdir, "loadgen.log"), "w", encoding="utf-8") as lf:
      rc = subprocess.run(lg, stdout=lf, stderr=subprocess.STDOUT, cwd=str(local.REPO),
                          env=_env(), check=False).returncode
    if rc != 0 or not done(os.path.join(measured, "outcomes.csv"),
                           os.path.join(measured, "metrics.json")):
      lp = os.path.join(pdir, "loadgen.log")
      raise ValueError(f"--policy={spec}: the load generator failed (exit {rc}); {lp}: "
                       f"{local.log_tail(lp)}")
  finally:
    record["exit_code"] = server.stop(opts.drain_timeout_s)
  record["clean_exit"] = record["exit_code"] == 0       # launch/serve.py exits 0 after a drain
  if not record["clean_exit"]:
    log(f"  warning: the server did not exit cleanly (code {record['exit_code']}); "
        f"{log_path}: {local.log_tail(log_path, 3)}")
  else:
    log("  server drained and exited")
  io_util.write_text(pdir, "server.json", json.dumps(record, indent=2) + "\n")
  return record


def compare_policy(pdir: str, profile: profile_lib.Profile, command: str) -> dict:
  """compare.compare of pdir/simulated and pdir/measured, written into pdir."""
  sim = compare.read_outcomes_csv(os.path.join(pdir, "simulated", "outcomes.csv"), profile)
  real = compare.read_outcomes_csv(os.path.join(pdir, "measured", "outcomes.csv"), profile)
  result = compare.compare(sim, real, profile)
  compare.write_comparison(pdir, result, command)
  return result


# ------------------------------------------------------------------------- across policies
def policy_entry(comparison: Mapping[str, Any]) -> dict:
  """One policy's entry of out/comparison.json (JSON-ready, non-finite as null)."""
  return compare._jsonable({  # pylint: disable=protected-access
      "simulated": comparison["simulated"], "measured": comparison["measured"],
      "delta": comparison["delta"], "targets_met": compare.targets_met(comparison["delta"])})


SUMMARY_ROWS = (("availability", "availability"), ("mean utility", "mean_utility"),
                ("rejected", "rejected_frac"), ("p50 s", "p50_latency_s"),
                ("p95 s", "p95_latency_s"), ("p99 s", "p99_latency_s"))


def _f(v) -> str:
  return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def format_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
  """The side-by-side table: a row per policy and metric, simulated | measured."""
  width = max([len(p) for p in summary] + [6]) + 2
  lines = ["policy".ljust(width) + "metric".ljust(15) + "simulated".rjust(11)
           + "measured".rjust(11) + "  targets"]
  for spec, e in summary.items():
    met = e["targets_met"]
    for i, (label, key) in enumerate(SUMMARY_ROWS):
      note = ""
      if i == 0:
        note = "all met" if met.get("all") else "missed: " + ", ".join(
            k for k, ok in met.items() if k != "all" and not ok)
      lines.append((spec if i == 0 else "").ljust(width) + label.ljust(15)
                   + _f(e["simulated"].get(key)).rjust(11) + _f(e["measured"].get(key)).rjust(11)
                   + (f"  {note}" if note else ""))
  return "\n".join(lines)


def format_markdown(summary: Mapping[str, Mapping[str, Any]], command: str,
                    trace: Mapping[str, Any] | None = None) -> str:
  """out/comparison.md: one table across policies and links to each policy's report."""
  lines = ["# Sim-to-real: simulated vs measured, per policy", "", "```", f"$ {command}", "```",
           ""]
  if trace:
    lines += [f"Trace: {trace.get('rows')} requests over {trace.get('span_s', 0):.1f} s "
              f"(mean {trace.get('mean_rate') or 0:.2f} req/s), the same on both sides.", ""]
  head = "| policy | " + " | ".join(f"{label} sim | {label} real" for label, _ in SUMMARY_ROWS)
  lines += [head + " | targets met | details |",
            "|---|" + "---:|---:|" * len(SUMMARY_ROWS) + "---|---|"]
  for spec, e in summary.items():
    cells = " | ".join(f"{_f(e['simulated'].get(k))} | {_f(e['measured'].get(k))}"
                       for _, k in SUMMARY_ROWS)
    met = "all" if e["targets_met"].get("all") else ", ".join(
        k for k, ok in e["targets_met"].items() if ok and k != "all") or "none"
    link = f"{report.slug(spec)}/comparison.md"
    lines.append(f"| {spec} | {cells} | {met} | [{link}]({link}) |")
  lines += ["", "Targets: availability within 1 pp, p50 and p95 latency within 5 %, every "
            "model's request count within 2 % (bes/serving/compare.py)."]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- the study
def run(opts: Options, command: str, log: Callable[[str], None] = print) -> dict:
  """The whole study (module docstring); returns out/comparison.json's dict."""
  if not os.path.isfile(opts.trace):
    raise ValueError(f"--trace={opts.trace}: no such file")
  out = io_util.check_writable_dir(opts.out, "--out")
  names = [m.name for m in profiling.model_entries(opts.config)]
  specs = [check_policy(p, names) for p in (opts.policies or default_policies(opts.config))]
  if len(set(map(report.slug, specs))) != len(specs):
    raise ValueError(f"--policy: given twice: {specs}")
  learned = any(s == "learned" for s in specs)
  workdir = (os.path.abspath(opts.train_workdir or os.path.join(out, "router")) if learned
             or opts.train_workdir else str(opts.config.serve.get("workdir", "") or ""))
  check_resume(out, {"trace": os.path.abspath(opts.trace), "num_requests": opts.num_requests,
                     "time_scale": opts.time_scale, "rate": opts.rate, "policies": specs,
                     "config_args": list(opts.config_args)})
  # The servers' workers compile the same shapes every time: one persistent cache per study.
  _SUBPROCESS_ENV.update(JAX_COMPILATION_CACHE_DIR=os.path.join(out, "jax_cache"),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  profile_path = step_profile(opts, out, log)
  config = with_profile(opts.config, profile_path, workdir)
  profile = profile_lib.load_profile(profile_path)
  trace_csv = step_trace(opts, out, profile, log)
  if learned:
    step_router(config, workdir, log)
  else:
    log("[3/5] router: no learned policy, nothing to train")
  summary = {}
  for i, spec in enumerate(specs):
    pdir = policy_dir(out, spec)
    tag = f"[4/5] {spec} ({i + 1}/{len(specs)})"
    sim_dir = os.path.join(pdir, "simulated")
    if done(os.path.join(sim_dir, "outcomes.csv"), os.path.join(sim_dir, "table.txt")):
      log(f"{tag}: simulated: reusing {sim_dir}")
    else:
      log(f"{tag}: simulating {trace_csv}")
      simulate_policy(config, trace_csv, spec, workdir, sim_dir, command, log)
    measured = os.path.join(pdir, "measured")
    if done(os.path.join(measured, "outcomes.csv"), os.path.join(measured, "metrics.json")):
      log(f"{tag}: measured: reusing {measured}")
    else:
      log(f"{tag}: serving for real")
      serve_and_measure(opts, profile_path, trace_csv, spec, workdir, pdir, log)
    summary[spec] = policy_entry(compare_policy(pdir, profile, command))
  with open(os.path.join(out, "trace.json"), encoding="utf-8") as f:
    trace_summary = json.load(f)
  io_util.write_text(out, "comparison.json", json.dumps(summary, indent=2) + "\n")
  io_util.write_text(out, "comparison.md", format_markdown(summary, command, trace_summary))
  log(f"[5/5] wrote {out}/comparison.json and comparison.md")
  return summary
