"""A soak of the serving runtime over loopback: a bursty trace above capacity for minutes.

`run_soak` generates a bursty trace (`traces.bursty_trace`) at `rate` for `duration_s`,
starts `launch/serve.py` (its own process group), replays the trace open-loop with
`launch/loadgen.py`, samples the resident memory of the server and of every engine worker
(psutil, every `sample_s`) while it runs, drains the server with SIGTERM and checks:
  * every request was answered: the load generator has one outcome per trace row, each a
    200, a 429 or a recorded error, and the server's own outcomes.csv has one row per request;
  * memory is flat: per process, the median RSS of the last third of the run against the
    median of the first third (after warm-up), in MiB and percent;
  * the server drained and exited cleanly.
Writes `out/soak.json` and `out/soak.md`; the per-sample `memory.csv` and the load
generator's files stay in `out/`.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

from bes import io_util
from bes.serving import local, traces


def _sample_memory(root_pid: int, stop: threading.Event, rows: list, sample_s: float) -> None:
  """Appends (t, pid, name, rss MiB) of the server and its children until `stop`."""
  t0 = time.monotonic()
  while not stop.wait(sample_s):
    try:
      root = psutil.Process(root_pid)
      procs = [root] + root.children(recursive=True)
    except psutil.Error:
      continue
    for p in procs:
      try:
        rss = p.memory_info().rss / 2 ** 20
        if p.pid == root_pid:
          name = "server"
        elif any("resource_tracker" in part for part in p.cmdline()):
          name = "resource-tracker"
        else:
          name = f"worker-{p.pid}"
        rows.append((time.monotonic() - t0, p.pid, name, rss))
      except psutil.Error:
        pass


def memory_trend(rows) -> dict:
  """Per process: median RSS (MiB) of the first and last third of its samples, the change
  in MiB and percent, and its peak."""
  out = {}
  for name in sorted({r[2] for r in rows}):
    rss = np.asarray([r[3] for r in rows if r[2] == name])
    if rss.size < 6:
      continue
    k = rss.size // 3
    first, last = float(np.median(rss[:k])), float(np.median(rss[-k:]))
    out[name] = {"samples": int(rss.size), "first_third_mib": round(first, 1),
                 "last_third_mib": round(last, 1), "change_mib": round(last - first, 1),
                 "change_pct": round(100 * (last - first) / first, 2),
                 "peak_mib": round(float(rss.max()), 1)}
  return out


def _count_rows(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader(f))


def run_soak(config_args: list[str], config, *, rate: float, duration_s: float, out: str,
             policy: str, seed: int = 0, sample_s: float = 2.0, command: str = "",
             log=print) -> dict:
  """The soak (module docstring). `config` is the loaded serving config, `config_args` the
  `--config...` arguments forwarded to launch/serve.py."""
  os.makedirs(out, exist_ok=True)
  profile = config.profile
  from bes.experiment.setup import Setup  # pylint: disable=g-import-not-at-top
  setup = Setup.from_config(config)
  max_len = int(config.serve.max_len)
  trace = os.path.join(out, "trace.csv")
  summary = traces.bursty_trace(rate, duration_s, list(setup.profile.tasks), seed=seed,
                                 max_prompt_len=max(1, max_len // 2),
                                 max_output_len=max(1, max_len // 4), out_csv=trace)
  log(f"soak: {summary['rows']} requests over {duration_s:.0f} s (bursty, mean "
      f"{summary['rate']:.2f} req/s) -> {trace}")
  server = local.ServerProcess(
      [*config_args, f"--policy={policy}", "--host=127.0.0.1",
       f"--out={os.path.join(out, 'server')}"], os.path.join(out, "server.log"), log=log,
      what="soak: the server")
  server_out = os.path.join(out, "server")
  rows, stop = [], threading.Event()
  try:
    server.start()
    log(f"soak: server ready after {server.ready_s:.1f} s on {server.url}; replaying")
    sampler = threading.Thread(target=_sample_memory, args=(server.pid, stop, rows, sample_s),
                               daemon=True)
    sampler.start()
    measured = os.path.join(out, "measured")
    lg = [sys.executable, str(local.REPO / "launch" / "loadgen.py"), f"--url={server.url}",
          f"--trace={trace}", f"--out={measured}", "--noprogress"]
    start = time.monotonic()
    with open(os.path.join(out, "loadgen.log"), "w", encoding="utf-8") as lf:
      rc = subprocess.run(lg, stdout=lf, stderr=subprocess.STDOUT, cwd=str(local.REPO),
                          env=local.child_env(), check=False).returncode
    wall_s = time.monotonic() - start
    stop.set()
    sampler.join()
  finally:
    stop.set()
    exit_code = server.stop(600.0)
  io_util.write_text(out, "memory.csv", "t_s,pid,process,rss_mib\n" + "".join(
      f"{t:.1f},{pid},{name},{rss:.1f}\n" for t, pid, name, rss in rows))
  if rc != 0:
    raise ValueError(f"soak: the load generator failed (exit {rc}); see "
                     f"{os.path.join(out, 'loadgen.log')}")
  client_rows = _count_rows(os.path.join(measured, "requests_detail.csv"))
  server_rows = _count_rows(os.path.join(server_out, "outcomes.csv"))
  statuses = {}
  for r in client_rows:
    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
  with open(os.path.join(measured, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  result = {
      "command": command, "policy": policy, "profile": profile, "rate": rate,
      "duration_s": duration_s, "requests": summary["rows"], "replay_wall_s": round(wall_s, 1),
      "client_outcomes": len(client_rows), "server_outcomes": len(server_rows),
      "status_counts": statuses, "server_exit_code": exit_code,
      "all_answered": (len(client_rows) == summary["rows"] == len(server_rows)
                       and all(s in ("200", "429") or s.startswith("5") for s in statuses)),
      "availability": metrics.get("availability"), "mean_utility": metrics.get("mean_utility"),
      "rejected_frac": metrics.get("rejected_frac"), "memory": memory_trend(rows),
  }
  io_util.write_text(out, "soak.json", json.dumps(result, indent=2) + "\n")
  io_util.write_text(out, "soak.md", format_markdown(result))
  return result


def format_markdown(r: dict) -> str:
  lines = ["# Soak: the serving runtime above capacity", "", f"Command: `{r['command']}`", "",
           f"{r['requests']} requests (bursty, mean {r['rate']} req/s for {r['duration_s']:.0f} s, "
           f"policy {r['policy']}); replay took {r['replay_wall_s']} s.", "",
           f"- every request answered: **{r['all_answered']}** (client outcomes "
           f"{r['client_outcomes']}, server outcomes.csv rows {r['server_outcomes']}; HTTP "
           f"statuses {r['status_counts']})",
           f"- availability {r['availability']}, mean utility {r['mean_utility']}, rejected "
           f"{r['rejected_frac']}",
           f"- server exit code after SIGTERM (drain): {r['server_exit_code']}", "",
           "| process | samples | RSS first third MiB | last third MiB | change MiB | change % | "
           "peak MiB |", "|---|---|---|---|---|---|---|"]
  for name, m in r["memory"].items():
    lines.append(f"| {name} | {m['samples']} | {m['first_third_mib']} | {m['last_third_mib']} | "
                 f"{m['change_mib']} | {m['change_pct']} | {m['peak_mib']} |")
  return "\n".join(lines) + "\n"
