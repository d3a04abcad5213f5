r"""Replays a trace against a running bes server, open loop, and reports what it served.

Checks the server first (`GET /health` 200, `GET /bes/deployment`), then sends request i of
the trace at its arrival time (times --time_scale, or rescaled to mean rate --rate) as
`POST /v1/completions` with random prompt tokens and exactly the trace's output length,
whatever happened to earlier requests (`bes.serving.loadgen`). Writes into --out:
  requests.csv          the effective requests (after clipping to the max context) as a trace,
                        replayable by launch/simulate.py --trace=... for the same requests
  outcomes.csv          id,arrival,task,model,instance,latency,on_time,rejected,utility (the
                        simulator's schema; latency = the server's, inf when rejected/failed)
  requests_detail.csv   id,status,ttft_s,tpot_s,queue_s,client_latency_s,prompt_tokens,
                        completion_tokens,predicted,error
  metrics.json          bes.metrics.summarize + counts, per-model metrics, TTFT / TPOT,
                        send lag (the open loop's check), rates
  table.txt             the command and the printed summary

  python launch/loadgen.py --url=http://localhost:8000 \
      --trace=bes/data/traces/azure_llm_2023_conv.csv --num_requests=200 --rate=4 \
      --out=runs/loadgen
"""
from __future__ import annotations

import sys

from absl import app, flags

from bes import cli_errors
from bes.serving import loadgen

_URL = flags.DEFINE_string("url", "http://127.0.0.1:8000", "The bes server's base URL.")
_TRACE = flags.DEFINE_string("trace", None, "Trace CSV (arrived_at,num_prefill_tokens,"
                             "num_decode_tokens[,task]).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_TIME_SCALE = flags.DEFINE_float("time_scale", None, "Send at arrival * X (X < 1: faster).")
_RATE = flags.DEFINE_float("rate", None, "Rescale arrivals to this mean rate (requests/s).")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", None, "Send the trace's first N rows.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the prompt tokens and of drawn tasks.")
_CONCURRENCY_LIMIT = flags.DEFINE_integer(
    "concurrency_limit", 0, "At most N requests in flight (0: no limit, a true open loop).")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 600.0, "Per-request timeout in seconds.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar (stderr).")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; flags are --name=value")
  if not _TRACE.value:
    raise ValueError("--trace: required (a trace CSV)")
  if not _OUT.value:
    raise ValueError("--out: required (an output directory)")
  if _CONCURRENCY_LIMIT.value < 0:
    raise ValueError(f"--concurrency_limit: expected >= 0, got {_CONCURRENCY_LIMIT.value}")
  if not _TIMEOUT_S.value > 0:
    raise ValueError(f"--timeout_s: expected > 0 seconds, got {_TIMEOUT_S.value}")
  loadgen.run_loadgen(
      _URL.value, _TRACE.value, _OUT.value, time_scale=_TIME_SCALE.value, rate=_RATE.value,
      num_requests=_NUM_REQUESTS.value, seed=_SEED.value,
      concurrency_limit=_CONCURRENCY_LIMIT.value, timeout_s=_TIMEOUT_S.value,
      progress=_PROGRESS.value, command=f"python {' '.join(sys.argv)}")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
