"""Random serving cases (profile, requests, config, actions) for simulator tests.

Plain Python / numpy, no pytest fixtures: shared by the reference's property tests and the
jitted environment's differential tests. Everything is drawn from a `np.random.Generator`,
so a case is reproducible from its seed (`random_case(seed)`).

Half of the profiles are on a millisecond grid (whole-millisecond decode and fixed prefill
times, no per-token prefill) and half of the workloads have whole-millisecond gaps, so that
arrivals often land exactly on iteration ends and the same-instant ordering rules are
exercised; some gaps are exactly 0 (simultaneous arrivals). `fine` profiles have times
that are not whole microseconds (picoseconds, and per-token prefill costs of femtosecond
resolution, tiny), as measured or roofline profiles have.
"""
from __future__ import annotations

import numpy as np

from bes.profile import Profile, profile_from_dict
from bes.requests import Requests
from bes.serving_config import ServingConfig


def random_profile(rng: np.random.Generator, num_models: int | None = None,
                   num_tasks: int | None = None, grid: bool | None = None,
                   fine: bool = False) -> Profile:
  """A random small deployment.

  1-3 models with 1-3 instances each, max_batch 1-6, decode tables in 1..20 ms (sorted
  increasing with probability 1/2, otherwise non-monotone), prefill fixed 0..5 ms and
  per-token 0..50 us, random quality in [0, 1], 1-4 tasks. With `grid` (default: a coin
  flip) every time is a whole number of milliseconds and the per-token prefill is 0. With
  `fine` (and not `grid`), decode and fixed prefill times have picosecond resolution and
  the per-token prefill is 0..20 ns with femtosecond resolution.
  """
  num_models = int(rng.integers(1, 4)) if num_models is None else num_models
  num_tasks = int(rng.integers(1, 5)) if num_tasks is None else num_tasks
  grid = bool(rng.integers(2)) if grid is None else grid
  tasks = [f"task{t}" for t in range(num_tasks)]
  models = []
  for m in range(num_models):
    max_batch = int(rng.integers(1, 7))
    if grid:
      decode = rng.integers(1, 21, max_batch) / 1e3
      fixed = int(rng.integers(0, 6)) / 1e3
      per_token = 0.0
    elif fine:
      decode = np.round(rng.uniform(1e-3, 20e-3, max_batch), 12)
      fixed = round(float(rng.uniform(0.0, 5e-3)), 12)
      per_token = round(float(rng.uniform(0.0, 20e-9)), 15)
    else:
      decode = np.round(rng.uniform(1e-3, 20e-3, max_batch), 6)
      fixed = round(float(rng.uniform(0.0, 5e-3)), 6)
      per_token = round(float(rng.uniform(0.0, 50e-6)), 9)
    if rng.integers(2):
      decode = np.sort(decode)
    models.append({
        "name": f"model{m}", "instances": int(rng.integers(1, 4)), "gpus_per_instance": 1,
        "max_batch": max_batch, "decode_step_s": [float(x) for x in decode],
        "prefill_s_fixed": fixed, "prefill_s_per_token": per_token,
        "quality": {t: round(float(rng.uniform(0.0, 1.0)), 4) for t in tasks},
    })
  return profile_from_dict({"name": "random", "provenance": "tests/sim_cases.py",
                            "tasks": tasks, "models": models}, source="random_profile")


def random_requests(rng: np.random.Generator, n: int, num_tasks: int, rate: float | None = None,
                    grid_us: int | None = None) -> Requests:
  """N random requests (int32 arrays [N]).

  Gaps are exponential with `rate` requests/second (default: log-uniform in 5..400 /s, so
  that queues and rejections happen sometimes); about 15% of gaps are exactly 0. With
  `grid_us` (default: 1000 with probability 1/2, else none) gaps are rounded to multiples
  of it. output_len 1..12 tokens, prompt_len 0..300 tokens.
  """
  rate = float(np.exp(rng.uniform(np.log(5.0), np.log(400.0)))) if rate is None else rate
  if grid_us is None:
    grid_us = 1000 if rng.integers(2) else 1
  gap = rng.exponential(1e6 / rate, n)
  gap = np.rint(gap / grid_us).astype(np.int64) * grid_us
  gap[rng.random(n) < 0.15] = 0
  return Requests(
      gap_us=gap.astype(np.int32),
      task=rng.integers(0, num_tasks, n).astype(np.int32),
      prompt_len=rng.integers(0, 301, n).astype(np.int32),
      output_len=rng.integers(1, 13, n).astype(np.int32),
  )


def random_config(rng: np.random.Generator, num_tasks: int) -> ServingConfig:
  """Hard or soft reward, queue capacity 1..4, deadlines 5..200 ms (per task or one),
  soft window 5..200 ms, miss penalty 0 or 0.5, and a per-token deadline 1/3 of the time."""
  if rng.integers(2):
    deadline = tuple(round(float(x), 6) for x in rng.uniform(5e-3, 0.2, num_tasks))
  else:
    deadline = round(float(rng.uniform(5e-3, 0.2)), 6)
  per_token = round(float(rng.uniform(0.0, 10e-3)), 6) if rng.random() < 1 / 3 else 0.0
  return ServingConfig(
      deadline_s=deadline,
      deadline_per_token_s=per_token,
      reward=str(rng.choice(["hard", "soft"])),
      soft_window_s=round(float(rng.uniform(5e-3, 0.2)), 6),
      miss_penalty=float(rng.choice([0.0, 0.5])),
      queue_capacity=int(rng.integers(1, 5)),
  ).validate(num_tasks)


def random_actions(rng: np.random.Generator, n: int, num_models: int) -> np.ndarray:
  """N model indices (int32 [N]), uniform or skewed towards one model."""
  if rng.integers(2):
    return rng.integers(0, num_models, n).astype(np.int32)
  p = rng.dirichlet(np.full(num_models, 0.5))
  return rng.choice(num_models, n, p=p).astype(np.int32)


def random_case(seed: int, n: int = 200):
  """(profile, requests, actions, config), in `simulate`'s argument order, from `seed`."""
  rng = np.random.default_rng(seed)
  grid = bool(rng.integers(2))  # a grid profile with grid gaps: arrivals hit iteration ends
  profile = random_profile(rng, grid=grid)
  requests = random_requests(rng, n, len(profile.tasks), grid_us=1000 if grid else None)
  config = random_config(rng, len(profile.tasks))
  actions = random_actions(rng, n, len(profile.models))
  return profile, requests, actions, config
