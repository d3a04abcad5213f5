"""Hand-written routers, the baselines a learned router has to beat, and their tuning.

Both are policies of `bes.policies`' interface, pytrees called as `policy(key, obs, state)`
that return the model index (int32 scalar). Numeric knobs are pytree leaves, so a stack of
knob settings runs as one `vmap` (one compilation per policy class). They read the
observation by its layout and the serving state through its view (`bes.env.observation`),
so `state` may be the simulator's `EnvState` or a runtime's `ServingView`; neither sees a
request's output length, which is not observable.

  DeadlineGreedy  predicts the request's latency on every model from the model's latency
                  table and the state of the instance it would join, and sends it to the
                  best model (quality for its task) predicted to meet the deadline.
  LoadThreshold   sends the request to the best model whose observed load is below that
                  model's threshold.

`tune(name, env, params, key)` grid-searches a policy's knobs on an environment by the mean
per-request reward of rollouts (common random numbers: every candidate sees the same
request streams); `to_dict` / `from_dict` save and rebuild tuned knobs as JSON.
"""
from __future__ import annotations

import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from bes import policies as policies_lib
from bes.env import observation
from bes.env import rollout as rollout_lib
from bes.env.serving_env import EnvParams, ServingEnv
from bes.parallel import mesh as mesh_lib
from bes.workloads import sample

HEURISTICS = ("deadline_greedy", "load_threshold")
DEFAULT_SLACKS = (0.75, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0)
DEFAULT_TURNOVERS = (0.0, 1.0)
DEFAULT_DUMPS = (0.0, 1.0)
DEFAULT_LEVELS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)
MAX_CANDIDATES = 4096
_NEVER = np.float32(1e30)  # predicted latency (us) of a rejecting model (numpy: no JAX
                           # array at import, so jax.distributed can start after it)


# --------------------------------------------------------------------------------- policies
@struct.dataclass
class DeadlineGreedy:
  """The best model predicted to meet the request's deadline.

  Latency model, for the current request (task t) on model m. Let i be the instance the
  environment would pick (fewest running + waiting, lowest index), L its running + waiting
  requests, B the model's max batch, tau(b) = decode_us[b], n = mean_output_len and
  P = prefill_fixed_us + prefill_per_token_us * mean_prompt_len (one prompt's prefill, us).
  In steady state an iteration at batch b also admits b / n requests (the batch turns over
  once per n iterations), so it lasts tau_eff(b) = tau(b) + turnover * (b / n) * P. Then

    latency = r + q / B * n * tau_eff(B) + P + n * tau_eff(min(L + 1, B)),

  where r is what remains of i's current iteration (0 when idle) and q = max(0, L + 1 - B)
  is the request's position in the queue (the wait for q of B slots, which free at B / n
  per iteration); infinite when i's queue is full (rejection). The deadline is
  deadline_us[t] + deadline_per_token_us * n. Among the models with slack * latency <=
  deadline the one with the highest quality[m, t] wins (ties: lowest index). If none is on
  time: with dump = 0 the one with the lowest predicted latency (the brief's rule); with
  dump = 1 the one with the highest (a full queue, i.e. a rejection, first), so that a
  request predicted late does not delay, in the queues of the other models, the requests
  that can still be on time (under hard deadlines a late request earns what a rejected one
  does).

  Attributes (times in microseconds, float32):
    decode_us: [M, Bmax + 1] decode iteration time per batch size (index 0 unused; rows
      padded past the model's max batch with its last value).
    prefill_fixed_us, prefill_per_token_us: [M].
    quality: [M, T]; deadline_us: [T]; deadline_per_token_us: scalar.
    mean_output_len, mean_prompt_len: scalars, tokens (the workload's means, knobs).
    slack: scalar > 0, safety factor on the prediction (knob).
    turnover: scalar in [0, 1], weight of the steady-state prefill interference (knob).
    dump: scalar, 0 or 1: where a request no model can serve on time goes (knob).
  """
  decode_us: jnp.ndarray
  prefill_fixed_us: jnp.ndarray
  prefill_per_token_us: jnp.ndarray
  quality: jnp.ndarray
  deadline_us: jnp.ndarray
  deadline_per_token_us: jnp.ndarray
  mean_output_len: jnp.ndarray
  mean_prompt_len: jnp.ndarray
  slack: jnp.ndarray
  turnover: jnp.ndarray
  dump: jnp.ndarray

  def predict_us(self, state, output_len=None, prompt_len=None) -> jnp.ndarray:
    """Predicted latency of the current request on each model, float32 [M] (us), from the
    serving view (`bes.env.observation`) of `state` (an `EnvState` or a `ServingView`).
    `output_len` / `prompt_len` (tokens) replace the means for this request's own prefill
    and decode (a clairvoyant's true lengths, `bes.clairvoyant`); the requests ahead of it
    keep the means."""
    view = observation.as_view(state)
    n = self.mean_output_len
    own_n = n if output_len is None else jnp.asarray(output_len, jnp.float32)
    own_p = self.mean_prompt_len if prompt_len is None else jnp.asarray(prompt_len, jnp.float32)
    rejected = view.rejects()
    preds = []
    for m, big_b in enumerate(view.max_batch):
      load = view.running[m] + view.waiting[m]              # of the instance it would join
      prefill = self.prefill_fixed_us[m] + self.prefill_per_token_us[m] * self.mean_prompt_len
      own_prefill = self.prefill_fixed_us[m] + self.prefill_per_token_us[m] * own_p
      tau_eff = lambda b, m=m, prefill=prefill: (
          self.decode_us[m, b] + self.turnover * b.astype(jnp.float32) / n * prefill)
      queue = jnp.maximum(load + 1 - big_b, 0).astype(jnp.float32)
      batch = jnp.minimum(load + 1, big_b)
      latency = (view.remaining_us[m] + queue / big_b * n * tau_eff(jnp.int32(big_b))
                 + own_prefill + own_n * tau_eff(batch))
      preds.append(jnp.where(rejected[m], _NEVER, latency))
    return jnp.stack(preds)

  def deadline_us_of(self, state, output_len=None) -> jnp.ndarray:
    """The current request's deadline as the greedy sees it, float32 (us): its task's
    deadline plus the per-token part for the mean output length (or `output_len`)."""
    view = observation.as_view(state)
    n = self.mean_output_len if output_len is None else jnp.asarray(output_len, jnp.float32)
    return self.deadline_us[view.task] + self.deadline_per_token_us * n

  def choose(self, state, output_len=None, prompt_len=None) -> jnp.ndarray:
    """The model for the current request (int32 scalar); lengths as in `predict_us` (the
    deadline's per-token part uses `output_len` too when given)."""
    view = observation.as_view(state)
    latency = self.predict_us(view, output_len, prompt_len)
    on_time = self.slack * latency <= self.deadline_us_of(view, output_len)
    best = jnp.argmax(jnp.where(on_time, self.quality[:, view.task], -jnp.inf))
    late = jnp.where(self.dump > 0.5, jnp.argmax(latency), jnp.argmin(latency))
    return jnp.where(jnp.any(on_time), best, late).astype(jnp.int32)

  def __call__(self, key, obs, state) -> jnp.ndarray:
    del key, obs
    return self.choose(state)


@struct.dataclass
class LoadThreshold:
  """The best model (highest quality[m, t] for the request's task t) whose observed load
  (the observation's 'load' block) is below thresholds[m]; if every model is at or above
  its threshold, the one with the lowest load / threshold ratio (the relatively least
  overloaded, rather than a fixed fallback model, so the rule degrades gracefully when all
  are busy).

  Attributes: thresholds float32 [M] (knobs, load units: running + waiting over instances *
  max batch); quality float32 [M, T]; layout: the observation's (static).
  """
  thresholds: jnp.ndarray
  quality: jnp.ndarray
  layout: observation.ObservationLayout = struct.field(pytree_node=False)

  def __call__(self, key, obs, state) -> jnp.ndarray:
    del key, state
    task = jnp.argmax(self.layout.take(obs, "task"))
    load = self.layout.take(obs, "load")
    below = load < self.thresholds
    best = jnp.argmax(jnp.where(below, self.quality[:, task], -jnp.inf))
    ratio = load / jnp.maximum(self.thresholds, 1e-6)
    return jnp.where(jnp.any(below), best, jnp.argmin(ratio)).astype(jnp.int32)


# --------------------------------------------------------------------------------- builders
def _positive(value, name: str, strict: bool = True) -> float:
  x = float(value)
  if not np.isfinite(x) or x < 0 or (strict and x == 0):
    raise ValueError(f"heuristics: {name} must be a finite number {'>' if strict else '>='} 0, "
                     f"got {value!r}")
  return x


def deadline_greedy(params: EnvParams, mean_output_len: float, mean_prompt_len: float,
                    slack: float = 1.0, turnover: float = 1.0,
                    dump: float = 0.0) -> DeadlineGreedy:
  """A `DeadlineGreedy` for an environment's `EnvParams` (latency tables, quality, deadlines).

  mean_output_len (> 0) and mean_prompt_len (>= 0) in tokens; slack > 0; turnover in [0, 1];
  dump 0 or 1.
  """
  n = _positive(mean_output_len, "mean_output_len")
  p = _positive(mean_prompt_len, "mean_prompt_len", strict=False)
  s = _positive(slack, "slack")
  u = _positive(turnover, "turnover", strict=False)
  if u > 1:
    raise ValueError(f"heuristics: turnover must be in [0, 1], got {turnover!r}")
  if dump not in (0, 1):
    raise ValueError(f"heuristics: dump must be 0 or 1, got {dump!r}")
  timing = observation.model_timing(params)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return DeadlineGreedy(
      decode_us=f32(timing.decode_us), prefill_fixed_us=f32(timing.prefill_fixed_us),
      prefill_per_token_us=f32(timing.prefill_per_token_us),
      quality=f32(params.quality), deadline_us=f32(params.deadline_us),
      deadline_per_token_us=f32(params.deadline_per_token_us), mean_output_len=f32(n),
      mean_prompt_len=f32(p), slack=f32(s), turnover=f32(u), dump=f32(dump))


def load_threshold(params: EnvParams, thresholds: Sequence[float]) -> LoadThreshold:
  """A `LoadThreshold` with one threshold (>= 0, load units) per model of `params`."""
  quality = np.asarray(params.quality, np.float32)
  th = np.asarray(thresholds, np.float32).reshape(-1)
  if th.shape[0] != quality.shape[0] or not np.all(np.isfinite(th)) or np.any(th < 0):
    raise ValueError(f"heuristics: thresholds must be {quality.shape[0]} finite numbers >= 0 "
                     f"(one per model), got {list(np.asarray(thresholds).reshape(-1))}")
  return LoadThreshold(thresholds=jnp.asarray(th), quality=jnp.asarray(quality),
                       layout=observation.ObservationLayout(int(quality.shape[1]), th.shape[0]))


def mean_lengths(workload, key: jax.Array, n: int = 8192) -> tuple[float, float]:
  """(mean prompt tokens, mean output tokens) of `n` requests drawn from `workload`."""
  if int(n) < 1:
    raise ValueError(f"heuristics.mean_lengths: n must be >= 1, got {n}")
  requests = sample(workload, key, int(n))
  return (float(np.mean(np.asarray(requests.prompt_len, np.float64))),
          float(np.mean(np.asarray(requests.output_len, np.float64))))


# --------------------------------------------------------------------------------- evaluation
def evaluate(env: ServingEnv, params: EnvParams, policies, keys: jax.Array,
             num_steps: int, mesh=None, params_batched: bool = False) -> jnp.ndarray:
  """Mean per-request reward of each of a stack of policies (leading axis C) on each of
  `keys` [K, 2], float32 [C, K]: one jitted call of `rollout_lib.rollouts` (one decision per
  step) for `num_steps` steps each. With a `mesh` (`bes.parallel.mesh`), the candidates are
  sharded over its 'data' axis ('points'; the stack padded with copies of its last policy to
  a multiple of that axis, the copies' scores dropped): the same scores, in parallel. With
  `params_batched`, `params` is a stack of K EnvParams, one per key."""
  shards = 1 if mesh is None else mesh_lib.axis_size(mesh, "points")
  policies, count = mesh_lib.pad_leading(policies, shards)
  scores = _evaluate(env, params, policies, keys, int(num_steps), mesh if shards > 1 else None,
                     bool(params_batched))
  return scores[:count]


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _evaluate(env, params, policies, keys, num_steps, mesh, params_batched):
  policies = mesh_lib.constrainer(mesh)(policies, "points")

  def one(policy):
    traj = rollout_lib.rollouts(env, params, policy, keys, num_steps, params_batched)
    return traj["reward"].sum(-1) / num_steps
  return jax.vmap(one)(policies)


def _grid_search(name: str, env, params, key, candidates: list[dict], build, num_steps, num_keys,
                 mesh=None, score_params=None):
  if not candidates:
    raise ValueError(f"heuristics.tune({name!r}): the knob grid is empty")
  if len(candidates) > MAX_CANDIDATES:
    raise ValueError(f"heuristics.tune({name!r}): {len(candidates)} candidates, at most "
                     f"{MAX_CANDIDATES}; use fewer levels")
  num_steps = int(num_steps or env.episode_len)
  if num_steps < 1 or int(num_keys) < 1:
    raise ValueError(f"heuristics.tune({name!r}): num_steps and num_keys must be >= 1, got "
                     f"{num_steps} and {num_keys}")
  policies = [build(**c) for c in candidates]
  if score_params is not None:      # one key per environment variant of the stack
    num_keys = jax.tree_util.tree_leaves(score_params)[0].shape[0]
  keys = jax.random.split(key, int(num_keys))
  scores = np.asarray(evaluate(env, params if score_params is None else score_params,
                               policies_lib.stack(policies), keys, num_steps, mesh,
                               params_batched=score_params is not None))
  mean = scores.mean(axis=1)
  best = int(np.argmax(mean))
  report = dict(name=name, knobs=candidates[best], best_index=best, score=float(mean[best]),
                candidates=candidates, scores=[float(x) for x in mean],
                score_std=[float(x) for x in scores.std(axis=1)], num_steps=num_steps,
                num_keys=int(num_keys))
  return policies[best], report


def tune_deadline_greedy(env: ServingEnv, params: EnvParams, key: jax.Array,
                         slacks: Sequence[float] = DEFAULT_SLACKS,
                         turnovers: Sequence[float] = DEFAULT_TURNOVERS,
                         dumps: Sequence[float] = DEFAULT_DUMPS,
                         mean_output_len: float | None = None,
                         mean_prompt_len: float | None = None,
                         num_steps: int | None = None, num_keys: int = 4, mesh=None,
                         wrap=None, score_params=None):
  """Grid search of `DeadlineGreedy`'s slack x turnover x dump on (env, params); with a
  `mesh`, candidates are scored in parallel over its 'data' axis (`evaluate`). `wrap`, if
  given, turns each candidate into the policy scored and returned (e.g.
  `bes.clairvoyant.ClairvoyantGreedy`, tuned with its true lengths). `score_params`, if
  given, is a stack of K EnvParams (a randomised training distribution's variants) scored
  with one rollout each instead of `num_keys` rollouts on `params`.

  Mean lengths default to `mean_lengths(params.workload, ...)`; `num_steps` defaults to one
  episode. Returns (best policy, report dict: knobs, per-candidate mean scores, ...).
  """
  k_len, k_run = jax.random.split(key)
  if mean_output_len is None or mean_prompt_len is None:
    prompt, output = mean_lengths(params.workload, k_len)
    mean_prompt_len = prompt if mean_prompt_len is None else mean_prompt_len
    mean_output_len = output if mean_output_len is None else mean_output_len
  candidates = [dict(mean_output_len=float(mean_output_len), mean_prompt_len=float(mean_prompt_len),
                     slack=float(s), turnover=float(u), dump=float(d))
                for s, u, d in itertools.product(slacks, turnovers, dumps)]
  build = lambda **kw: (wrap or (lambda p: p))(deadline_greedy(params, **kw))
  return _grid_search("deadline_greedy", env, params, k_run, candidates, build, num_steps,
                      num_keys, mesh, score_params)


def tune_load_threshold(env: ServingEnv, params: EnvParams, key: jax.Array,
                        levels: Sequence[float] = DEFAULT_LEVELS,
                        num_steps: int | None = None, num_keys: int = 4, mesh=None,
                        score_params=None):
  """Grid search of `LoadThreshold`: every model but the one of lowest mean quality (the
  natural fallback) takes each of `levels` (a product grid, levels ** (M - 1) candidates);
  the fallback model's threshold is max(levels); `score_params` as in
  `tune_deadline_greedy`. Returns (best policy, report dict)."""
  levels = [float(x) for x in levels]
  quality = np.asarray(params.quality, np.float64)
  fallback = int(np.argmin(quality.mean(axis=1)))
  candidates = []
  for th in itertools.product(levels, repeat=quality.shape[0] - 1):
    th = list(th)
    th.insert(fallback, max(levels) if levels else 0.0)
    candidates.append(dict(thresholds=th))
  build = lambda **kw: load_threshold(params, **kw)
  return _grid_search("load_threshold", env, params, key, candidates, build, num_steps,
                      num_keys, mesh, score_params)


# --------------------------------------------------------------------------------- registry
def tune(name: str, env: ServingEnv, params: EnvParams, key: jax.Array, **kwargs):
  """Tunes heuristic `name` (one of HEURISTICS); returns (policy, report)."""
  if name == "deadline_greedy":
    return tune_deadline_greedy(env, params, key, **kwargs)
  if name == "load_threshold":
    return tune_load_threshold(env, params, key, **kwargs)
  raise ValueError(f"heuristics: unknown heuristic {name!r}, expected one of {HEURISTICS}")


def to_dict(policy) -> dict:
  """The knobs of a (single, unstacked) heuristic policy as a JSON-able dict with its name."""
  if isinstance(policy, DeadlineGreedy):
    return dict(name="deadline_greedy", mean_output_len=float(policy.mean_output_len),
                mean_prompt_len=float(policy.mean_prompt_len), slack=float(policy.slack),
                turnover=float(policy.turnover), dump=float(policy.dump))
  if isinstance(policy, LoadThreshold):
    return dict(name="load_threshold", thresholds=[float(x) for x in np.asarray(policy.thresholds)])
  raise ValueError(f"heuristics.to_dict: not a heuristic policy: {type(policy).__name__}")


def format_knobs(knobs: dict) -> str:
  """`to_dict`'s knobs for reading, numbers to 4 significant digits and without the name:
  'mean_output_len: 195.4, mean_prompt_len: 1021, slack: 1.25, turnover: 0, dump: 1'."""
  number = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  value = lambda v: f"[{', '.join(map(number, v))}]" if isinstance(v, (list, tuple)) else number(v)
  return ", ".join(f"{k}: {value(v)}" for k, v in knobs.items() if k != "name")


def from_dict(name: str, d: dict, params: EnvParams):
  """Rebuilds heuristic `name` from `to_dict`'s knobs for an environment's `params`."""
  knobs = {k: v for k, v in d.items() if k != "name"}
  if d.get("name", name) != name:
    raise ValueError(f"heuristics.from_dict: knobs are for {d['name']!r}, not {name!r}")
  builders = dict(deadline_greedy=deadline_greedy, load_threshold=load_threshold)
  if name not in builders:
    raise ValueError(f"heuristics: unknown heuristic {name!r}, expected one of {HEURISTICS}")
  try:
    return builders[name](params, **knobs)
  except TypeError as e:
    raise ValueError(f"heuristics.from_dict({name!r}): bad knobs {sorted(knobs)}: {e}") from None
