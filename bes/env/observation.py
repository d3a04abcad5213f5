"""What a router may observe: the observation layout and a read-only view of the serving state.

Two definitions, used by everything that routes (the environment's `observe`, fixed
policies, the heuristics, the learned router's features and Q-network, checkpoints,
benchmarks):

`ObservationLayout` (static, hashable): the observation vector as named blocks, in order,
  task  one-hot of the current request's task, [T];
  load  per model, running + waiting requests over its instances / (instances * max batch),
        [M] (above 1 when requests wait);
  ...   optional feature blocks, after the loads, chosen by a feature set name (`FEATURES`):
        'queues' adds, per model m for the instance a request would join, its running +
        waiting / max_batch_m and its waiting / queue_capacity, interleaved [2M];
        'predict' adds to those, per model, the predicted latency of the current request
        over its deadline (block 'slack', [M], clipped to [0, SLACK_CAP]) and the one-hot of
        the model a reference deadline-aware greedy picks (block 'advice', [M]); both come
        from a latency predictor (`bes.heuristics.DeadlineGreedy`, built by
        `bes.router.features.predictor`), what the heuristics know, knowable at arrival;
  rate  the estimated arrival rate in requests/s, [1], always last.
Code reads an observation by block name (`layout.take(obs, "load")`), never by offsets.

`ServingView` (a `flax.struct` dataclass, a pytree of plain arrays): what a policy may read
of the serving state beyond the observation: per model the load, the instance a request
would join and that instance's running / waiting requests, batch and queue fill, whether
it is busy and what remains of its current iteration; the current request's task, prompt
length and index; the clock; optionally the models' latency tables (`ModelTiming`).
`serving_view(state)` builds it from the simulator's `EnvState`, reading the instances
only through the accessors of `bes/env/instances.py`; nothing outside `bes/env` reads the
environment's internal arrays. A real serving runtime builds the same struct from its
engines' numbers (construct `ServingView(...)` directly, with the shapes documented on
it) and passes it where a policy expects `state`: policies call `as_view(state)`, which
accepts either.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import struct

from bes.env import instances as inst

# Feature set name -> the extra blocks it adds between the loads and the rate.
FEATURES = {"paper": (), "queues": ("queues",), "predict": ("queues", "slack", "advice")}
# Blocks computed by a latency predictor (an object with `predict_us(view)` -> float32 [M]
# microseconds, `deadline_us_of(view)` -> float32 microseconds and `choose(view)` -> int32,
# e.g. `bes.heuristics.DeadlineGreedy`; duck-typed so bes/env does not import the heuristics).
PREDICTED = ("slack", "advice")
SLACK_CAP = 4.0  # predicted latency / deadline above this (and a rejecting model) reads 4


# --------------------------------------------------------------------------------- the view
@struct.dataclass
class ModelTiming:
  """The models' latency as float32 microseconds, for predictions (the simulator itself
  runs on integers). decode_us: [M, Bmax + 1], decode_us[m, b] = iteration time at batch b
  (index 0 unused; rows padded past model m's max batch with its last value);
  prefill_fixed_us, prefill_per_token_us: [M] (one prompt's prefill: fixed + per_token *
  tokens)."""
  decode_us: jnp.ndarray
  prefill_fixed_us: jnp.ndarray
  prefill_per_token_us: jnp.ndarray


def model_timing(params) -> ModelTiming:
  """The latency tables of an environment's `EnvParams` (via `instances.timing_us`)."""
  timings = [inst.timing_us(g) for g in params.groups]
  width = max(t[0].shape[0] for t in timings)
  decode = jnp.stack([jnp.pad(t[0], (0, width - t[0].shape[0]), mode="edge") for t in timings])
  return ModelTiming(decode_us=decode, prefill_fixed_us=jnp.stack([t[1] for t in timings]),
                     prefill_per_token_us=jnp.stack([t[2] for t in timings]))


@struct.dataclass
class ServingView:
  """The serving state as a policy may read it, at the arrival of the current request.

  Scalars: task, prompt_len (tokens), index (the request's index in its episode; for a
  runtime, any request counter): int32; now: the clock (the environment's int32
  microseconds); rate: float32 estimated arrival rate, requests/s (0 before a gap is seen).
  Per model, arrays [M]: load float32 (running + waiting over all instances / (instances *
  max_batch)); and for `target` (int32), the instance a request routed to the model joins
  (fewest running + waiting, ties to the lowest index): busy bool (an iteration in
  progress), running and waiting int32 requests, remaining_us float32 (what remains of its
  current iteration, 0 when idle).
  Static (deployment shape): instances, max_batch (tuples of M ints), queue_capacity (int).
  timing: the models' `ModelTiming`, or None when not given.
  """
  task: jnp.ndarray
  prompt_len: jnp.ndarray
  index: jnp.ndarray
  now: jnp.ndarray
  rate: jnp.ndarray
  load: jnp.ndarray
  target: jnp.ndarray
  busy: jnp.ndarray
  running: jnp.ndarray
  waiting: jnp.ndarray
  remaining_us: jnp.ndarray
  instances: tuple = struct.field(pytree_node=False)
  max_batch: tuple = struct.field(pytree_node=False)
  queue_capacity: int = struct.field(pytree_node=False)
  timing: ModelTiming | None = None

  @property
  def num_models(self) -> int:
    return len(self.max_batch)

  def batch_fill(self) -> jnp.ndarray:
    """float32 [M]: the target instance's running + waiting / max_batch (above 1: a request
    joining it would queue)."""
    return (self.running + self.waiting) / jnp.asarray(self.max_batch, jnp.int32)

  def queue_fill(self) -> jnp.ndarray:
    """float32 [M]: the target instance's waiting / queue_capacity (1: a request joining it
    would be rejected)."""
    return self.waiting / max(self.queue_capacity, 1)

  def rejects(self) -> jnp.ndarray:
    """bool [M]: a request routed to the model now would be rejected (its target instance
    is busy and its queue full)."""
    return self.busy & (self.waiting >= self.queue_capacity)


def arrival_rate(ema_gap_s: jnp.ndarray) -> jnp.ndarray:
  """float32: 1 / moving average of inter-arrival gaps (s), 0 before the first gap."""
  return jnp.where(ema_gap_s < 0, 0.0, 1.0 / jnp.maximum(ema_gap_s, 1e-6))


def serving_view(state, params=None) -> ServingView:
  """The view of an `EnvState` (one environment); with the env's `params`, also the models'
  latency tables. Reads the instances only through `bes/env/instances.py`'s accessors."""
  groups = state.groups
  load, target, busy, running, waiting, remaining = [], [], [], [], [], []
  for gs in groups:
    per_instance = inst.load(gs)
    i = inst.join_target(gs)
    load.append(per_instance.sum() / (per_instance.shape[0] * gs.max_batch))
    target.append(i)
    busy.append(inst.busy(gs)[i])
    running.append(inst.running(gs)[i])
    waiting.append(inst.waiting(gs)[i])
    remaining.append(inst.remaining_us(gs, state.now)[i])
  return ServingView(
      task=state.request.task, prompt_len=state.request.prompt_len, index=state.index,
      now=state.now, rate=arrival_rate(state.ema_gap_s),
      load=jnp.stack(load).astype(jnp.float32), target=jnp.stack(target),
      busy=jnp.stack(busy), running=jnp.stack(running), waiting=jnp.stack(waiting),
      remaining_us=jnp.stack(remaining),
      instances=tuple(inst.load(gs).shape[0] for gs in groups),
      max_batch=tuple(gs.max_batch for gs in groups),
      queue_capacity=groups[0].queue_capacity,
      timing=None if params is None else model_timing(params))


def as_view(state) -> ServingView:
  """`state` itself if it is a `ServingView` (e.g. from a serving runtime), else the view of
  the simulator's `EnvState`."""
  return state if isinstance(state, ServingView) else serving_view(state)


# --------------------------------------------------------------------------------- the layout
def _block(name: str, view: ServingView, num_tasks: int, predictor=None) -> jnp.ndarray:
  """Block `name` of the observation of `view`, float32 [..., size] (the PREDICTED blocks
  from `predictor`)."""
  if name in PREDICTED and predictor is None:
    raise ValueError(f"observation: block {name!r} needs a latency predictor "
                     "(bes.router.features.predictor), got None")
  if name == "slack":
    ratio = predictor.predict_us(view) / predictor.deadline_us_of(view)
    return jnp.clip(ratio, 0.0, SLACK_CAP).astype(jnp.float32)
  if name == "advice":
    return jax.nn.one_hot(predictor.choose(view), view.num_models, dtype=jnp.float32)
  if name == "task":
    return jax.nn.one_hot(view.task, num_tasks, dtype=jnp.float32)
  if name == "load":
    return view.load.astype(jnp.float32)
  if name == "queues":
    fills = jnp.stack([view.batch_fill(), view.queue_fill()], -1).astype(jnp.float32)
    return fills.reshape(fills.shape[:-2] + (-1,))                  # m0 batch, m0 queue, m1 ...
  if name == "rate":
    return jnp.asarray(view.rate, jnp.float32)[..., None]
  raise ValueError(f"observation: no block {name!r}")


@dataclasses.dataclass(frozen=True)
class ObservationLayout:
  """The observation's blocks (module docstring): task [T], load [M], the feature set's
  extra blocks, rate [1]. Static and hashable (usable as a jit-static or Flax attribute)."""
  num_tasks: int
  num_models: int
  features: str = "paper"

  def __post_init__(self):
    if self.features not in FEATURES:
      raise ValueError(f"observation features: expected one of {tuple(FEATURES)}, "
                       f"got {self.features!r}")
    if int(self.num_tasks) < 1 or int(self.num_models) < 1:
      raise ValueError(f"observation layout: num_tasks and num_models must be >= 1, got "
                       f"{self.num_tasks} and {self.num_models}")

  @property
  def blocks(self) -> tuple[tuple[str, int], ...]:
    """(name, size) of every block, in order."""
    extra = {"queues": 2 * self.num_models, "slack": self.num_models,
             "advice": self.num_models}
    return (("task", self.num_tasks), ("load", self.num_models),
            *((name, extra[name]) for name in FEATURES[self.features]), ("rate", 1))

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.blocks)

  @property
  def size(self) -> int:
    return sum(size for _, size in self.blocks)

  @property
  def needs_predictor(self) -> bool:
    """Whether building this layout's observation needs a latency predictor."""
    return any(name in PREDICTED for name in self.names)

  @property
  def base(self) -> "ObservationLayout":
    """The environment's own layout (no extra features) of the same shape."""
    return ObservationLayout(self.num_tasks, self.num_models)

  def slice(self, name: str) -> slice:
    """Where block `name` lies in the observation's last axis."""
    start = 0
    for block, size in self.blocks:
      if block == name:
        return slice(start, start + size)
      start += size
    raise ValueError(f"observation: no block {name!r} in layout {self.names}")

  def take(self, obs: jnp.ndarray, name: str) -> jnp.ndarray:
    """Block `name` of observations [..., size]."""
    return obs[..., self.slice(name)]

  def concat(self, parts: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
    """The observation [..., size] from one array [..., block size] per block name."""
    missing = set(self.names) - set(parts)
    if missing:
      raise ValueError(f"observation: blocks {sorted(missing)} missing for layout {self.names}")
    for name, size in self.blocks:
      if parts[name].shape[-1] != size:
        raise ValueError(f"observation: block {name!r} has {parts[name].shape[-1]} values, "
                         f"layout {self.names} expects {size}")
    return jnp.concatenate([parts[name] for name in self.names], axis=-1)

  def build(self, view: ServingView, predictor=None) -> jnp.ndarray:
    """The observation of a serving view, float32 [size] (`predictor` for the PREDICTED
    blocks)."""
    return self.concat({name: _block(name, view, self.num_tasks, predictor)
                        for name in self.names})

  def extend(self, obs: jnp.ndarray, view: ServingView, predictor=None) -> jnp.ndarray:
    """This layout's observation from one of the base layout (`obs`, float32 [base size]):
    its blocks are kept, the extra ones computed from `view` (and `predictor`)."""
    base = self.base
    if self.features == base.features:
      return obs
    parts = {name: base.take(obs, name) for name in base.names}
    parts.update({name: _block(name, view, self.num_tasks, predictor)
                  for name in FEATURES[self.features]})
    return self.concat(parts)
