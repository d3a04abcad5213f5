"""Prometheus metrics of the serving runtime (`GET /metrics`), names prefixed `bes_`.

Named after vLLM's (`vllm:num_requests_running`, `vllm:time_to_first_token_seconds`, ...):
  bes_requests_total{model,outcome}          requests ended, outcome ok | rejected | error
  bes_requests_on_time_total{model}          requests completed by their deadline
  bes_utility_sum{model}                     total utility delivered (a gauge: it can fall)
  bes_router_decisions_total{model}          the router's choices (routed requests only)
  bes_router_decision_seconds                decision + dispatch time per accepted request
  bes_num_requests_running{instance,model}   requests decoding on an instance
  bes_num_requests_waiting{instance,model}   requests in an instance's waiting queue
  bes_engine_up{instance,model}              1 when the instance's worker is warm and live
  bes_engine_restarts{instance,model}        worker restarts after a failure
  bes_time_to_first_token_seconds{model}, bes_time_per_output_token_seconds{model},
  bes_e2e_request_latency_seconds{model}, bes_request_queue_time_seconds{model}: histograms
  bes_prompt_tokens_total{model}, bes_generation_tokens_total{model}
Each app has its own registry (several servers in one process, as the tests run, never mix).
"""
from __future__ import annotations

import prometheus_client as prom

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2)


class ServingMetrics:
  """The runtime's metrics in their own `CollectorRegistry`."""

  def __init__(self):
    r = self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter("bes_requests", "Requests ended, by outcome.",
                                 ["model", "outcome"], registry=r)
    self.on_time = prom.Counter("bes_requests_on_time", "Requests completed by their deadline.",
                                ["model"], registry=r)
    self.utility = prom.Gauge("bes_utility_sum", "Total utility delivered.", ["model"],
                              registry=r)
    self.decisions = prom.Counter("bes_router_decisions", "Router choices.", ["model"],
                                  registry=r)
    self.decision_s = prom.Histogram("bes_router_decision_seconds",
                                     "Routing decision + dispatch time per request.",
                                     buckets=_DECISION_BUCKETS, registry=r)
    labels = ["instance", "model"]
    self.running = prom.Gauge("bes_num_requests_running", "Requests decoding.", labels,
                              registry=r)
    self.waiting = prom.Gauge("bes_num_requests_waiting", "Requests waiting.", labels,
                              registry=r)
    self.up = prom.Gauge("bes_engine_up", "1 when the engine worker is warm and live.", labels,
                         registry=r)
    self.restarts = prom.Gauge("bes_engine_restarts", "Worker restarts after a failure.",
                               labels, registry=r)
    hist = lambda name, doc, buckets: prom.Histogram(name, doc, ["model"], buckets=buckets,
                                                     registry=r)
    self.ttft = hist("bes_time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS)
    self.tpot = hist("bes_time_per_output_token_seconds", "Time per output token after the "
                     "first.", _TOKEN_BUCKETS)
    self.e2e = hist("bes_e2e_request_latency_seconds", "Arrival to last token.",
                    _LATENCY_BUCKETS)
    self.queue = hist("bes_request_queue_time_seconds", "Arrival to admission.",
                      _LATENCY_BUCKETS)
    self.prompt_tokens = prom.Counter("bes_prompt_tokens", "Prompt tokens of served requests.",
                                      ["model"], registry=r)
    self.generation_tokens = prom.Counter("bes_generation_tokens", "Generated tokens.",
                                          ["model"], registry=r)

  def decision(self, model: str) -> None:
    self.decisions.labels(model).inc()

  def outcome(self, model: str, kind: str, o: dict) -> None:
    self.requests.labels(model, kind).inc()
    self.utility.labels(model).inc(o["utility"])
    if kind != "ok":
      return
    if o["on_time"]:
      self.on_time.labels(model).inc()
    self.decision_s.observe(o["decision_us"] / 1e6)
    self.e2e.labels(model).observe(o["latency"])
    for hist, key in ((self.ttft, "ttft"), (self.tpot, "tpot"), (self.queue, "queue")):
      if o[key] is not None:
        hist.labels(model).observe(o[key])
    self.prompt_tokens.labels(model).inc(o["prompt_tokens"])
    self.generation_tokens.labels(model).inc(o["completion_tokens"])

  def queues(self, frontend) -> None:
    names = [m.name for m in frontend.profile.models]
    for inst in frontend.instances:
      labels = (str(inst.index), names[inst.model])
      self.running.labels(*labels).set(len(inst.running))
      self.waiting.labels(*labels).set(len(inst.waiting))
      self.up.labels(*labels).set(1 if inst.up else 0)
      self.restarts.labels(*labels).set(inst.restarts)

  def render(self) -> bytes:
    return prom.generate_latest(self.registry)
