"""The held-out evaluation protocol (issue 11): workload families a router never trained on.

A trained workdir (its router, and the heuristics tuned on its training workload, never on
these families) is evaluated on each family, with every policy on the same requests, once per
evaluation seed (`seeds` request streams, keys 1000 + s), and reported as means with 95%
Student-t intervals over seeds (`launch/heldout.py`). Each family is a set of overrides of the
workdir's saved config. `held_out: False` marks the training distribution itself (the
default config's: bursty arrivals at 20 req/s, uniform tasks), kept as the reference row.

Bursty parameters outside training: training uses rate_sigma 1.14, cv_median 1.32 (fitted to
the Azure code trace); `bursty_wild` doubles both. `scoring` overrides are applied to every
family, so routers trained with other rewards (a miss penalty) are scored alike. Traces replay with a random start per seed
(`trace_random_start`), so the seeds are different slices of the real trace.

  python launch/heldout.py --workdir=runs/router --out=results/heldout
"""
CODE = "bes/data/traces/azure_llm_2023_code.csv"
CONV = "bes/data/traces/azure_llm_2023_conv.csv"
W = "workload"
_TRACE = {f"{W}.kind": "trace", f"{W}.lengths": "trace", f"{W}.trace_random_start": True}

FAMILIES = {
    "bursty20": dict(held_out=False, about="the training distribution (reference)",
                     overrides={}),
    "poisson20": dict(held_out=True, about="arrival process: Poisson at the same rate",
                      overrides={f"{W}.kind": "poisson", f"{W}.rate": 20.0}),
    "bursty_wild": dict(held_out=True, about="burstier than training: rate_sigma 2.28, "
                        "cv_median 2.64",
                        overrides={f"{W}.bursty.rate_sigma": 2.28,
                                   f"{W}.bursty.cv_median": 2.64}),
    "bursty40": dict(held_out=True, about="twice the training rate",
                     overrides={f"{W}.rate": 40.0}),
    "taskmix_lambada": dict(held_out=True, about="task mix: 70% lambada_openai",
                            overrides={f"{W}.task_mix": "0.1,0.1,0.1,0.7"}),
    "shift_mid": dict(held_out=True, about="mid-stream shift to 70% arc_easy after 50 s",
                      overrides={f"{W}.shifts": "50:0.7,0.1,0.1,0.1"}),
    "azure_code": dict(held_out=True, about="Azure code trace, own timing",
                       overrides={**_TRACE, f"{W}.trace": CODE, f"{W}.rate": 0.0}),
    "azure_conv": dict(held_out=True, about="Azure conversation trace, own timing",
                       overrides={**_TRACE, f"{W}.trace": CONV, f"{W}.rate": 0.0}),
    "azure_code_x8": dict(held_out=True, about="Azure code trace rescaled to 20 req/s",
                          overrides={**_TRACE, f"{W}.trace": CODE, f"{W}.rate": 20.0}),
}


# Applied to every family: all routers are scored by the same utility (hard deadlines of
# 2 s + 30 ms per output token, no miss penalty), whatever reward they trained with.
SCORING = {"env.reward": "hard", "env.miss_penalty": 0.0, "env.deadline_s": 2.0,
           "env.deadline_per_token_s": 0.03}


def get_protocol() -> dict:
  return dict(
      families=FAMILIES,
      scoring=SCORING,
      seeds=5,               # evaluation request streams per family (keys 1000 + s)
      num_requests=2000,     # requests per stream (a trace: this many from a random start)
      horizons=(0,),         # lookahead horizons of the clairvoyant (bes/clairvoyant.py)
  )
