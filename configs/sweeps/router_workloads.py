"""The learned router on unpredictable and shifted workloads, against every baseline.

The router of configs/experiments.py (trained on MAF-style bursty arrivals at 1..160 req/s,
uniform task mix) is evaluated, with the heuristics tuned on its training workload, on:
  bursty20         its training distribution at the base rate (windows >= 96/98% of peak,
                   performance per GPU vs OPT-6.7B alone on 8 GPUs);
  poisson20        a shift of arrival pattern;
  taskmix_lambada  a shift of task mix (70% lambada_openai, the task where model size
                   matters most);
  shift_mid        the mix shifts mid-stream (uniform, then 70% arc_easy after 400 s);
  azure_code       the real Azure LLM code trace at its own timing (short outputs);
  azure_conv       the real Azure LLM conversation trace at its own timing;
  azure_code_x8    the code trace sped up to 20 req/s (its bursts x8).

  python launch/sweep.py --sweep=configs/sweeps/router_workloads.py --out=results/router_workloads
"""
import ml_collections

CODE = "bes/data/traces/azure_llm_2023_code.csv"
CONV = "bes/data/traces/azure_llm_2023_conv.csv"
WORKDIR = "runs/experiments"
W = "config.workload"
WORKLOADS = {
    "bursty20": {f"{W}.kind": "bursty", f"{W}.rate": 20.0},
    "poisson20": {f"{W}.kind": "poisson", f"{W}.rate": 20.0},
    "taskmix_lambada": {f"{W}.kind": "bursty", f"{W}.rate": 20.0,
                        f"{W}.task_mix": "0.1,0.1,0.1,0.7"},
    "shift_mid": {f"{W}.kind": "bursty", f"{W}.rate": 20.0,
                  f"{W}.shifts": "400:0.7,0.1,0.1,0.1"},
    "azure_code": {f"{W}.kind": "trace", f"{W}.trace": CODE, f"{W}.lengths": "trace",
                   f"{W}.rate": 0.0},
    "azure_conv": {f"{W}.kind": "trace", f"{W}.trace": CONV, f"{W}.lengths": "trace",
                   f"{W}.rate": 0.0},
    "azure_code_x8": {f"{W}.kind": "trace", f"{W}.trace": CODE, f"{W}.lengths": "trace",
                      f"{W}.rate": 20.0},
}
KEYS = sorted({k for w in WORKLOADS.values() for k in w})
DEFAULTS = {f"{W}.task_mix": "", f"{W}.shifts": "", f"{W}.trace": "", f"{W}.lengths": "auto"}


def get_sweep() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.base = "configs/experiments.py"
  # Every point sets every key (the table needs one set of columns): unset ones get defaults.
  s.grid = [dict({k: DEFAULTS.get(k) for k in KEYS}, **w, **{"config.workload.name": name})
            for name, w in WORKLOADS.items()]
  s.steps = [
      dict(name="train",
           cmd=f"launch/train.py --config={{base}} --workdir={WORKDIR} --eval=false"),
      dict(name="evaluate", overrides=KEYS,
           cmd=(f"launch/evaluate.py --workdir={WORKDIR} --out={{point_dir}} "
                "--num_requests=20000 --deployments=opt-6.7b:4,opt-6.7b:8 {overrides}"))]
  s.metrics_from = "{point_dir}/metrics.json"
  s.plot = dict(x="config.workload.name", y="mean_utility", log_x=False,
                series=["learned", "deadline_greedy", "load_threshold", "static:opt-125m",
                        "static:opt-6.7b@8gpu"])
  return s
