"""Observation features of the router beyond the environment's observation (opt-in).

The environment observes what the paper's router sees (`ServingEnv.observe`: task one-hot,
per-model load summed over instances, arrival rate). The hand-written deadline-aware
heuristic reads more: the instance a request would join. `features='queues'` adds, per
model m, for the instance the environment would pick (fewest running + waiting):
  its running + waiting requests / max_batch_m   (above 1: the request would queue), and
  its waiting requests / queue_capacity          (1: the request would be rejected).
`features='predict'` adds to those, per model, what the deadline-aware greedy computes at
arrival: the request's predicted latency over its deadline ('slack', clipped to [0, 4]) and
the greedy's pick as a one-hot ('advice'), from `predictor(env_params)`: the reference
greedy (slack 1.25, turnover 1, no dump, the training workload's mean lengths) that the
learned policy carries, so a serving runtime computes the same features from its view.
The blocks, their order and sizes are defined once by `bes.env.observation`'s
`ObservationLayout` (the extra blocks sit between the loads and the rate) and the values
come from its `ServingView`. Shapes: float32 [T + M + 1] -> [T + 3M + 1] ('queues') or
[T + 5M + 1] ('predict').
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bes import heuristics
from bes.env import observation

REFERENCE_SLACK = 1.25  # the greedy's slack tuned on the default workload
                        # (results/router_default/heuristics.json)
REFERENCE_KNOBS = (REFERENCE_SLACK, 1.0, 0.0)  # its (slack, turnover, dump): `dqn.reference`

FEATURES = tuple(observation.FEATURES)


def check(name: str) -> str:
  """`name` if it is a feature set, else a ValueError naming `config.dqn.features`."""
  if name not in FEATURES:
    raise ValueError(f"config.dqn.features: expected one of {FEATURES}, got {name!r}")
  return name


def layout(num_tasks: int, num_models: int, name: str) -> observation.ObservationLayout:
  """The router's observation layout with feature set `name` (checked)."""
  return observation.ObservationLayout(int(num_tasks), int(num_models), check(name))


def reference_greedy(env_params, params_batched: bool = False,
                     knobs: tuple = REFERENCE_KNOBS) -> heuristics.DeadlineGreedy:
  """The deadline-aware greedy with `knobs` = (slack, turnover, dump) (`dqn.reference`;
  default REFERENCE_KNOBS: slack 1.25, turnover 1, no dump) and the mean lengths of
  `env_params`' workload: the demonstrator of `dqn.demo` and the latency predictor of
  `features='predict'`. With `params_batched` (a stack of EnvParams, e.g. one arrival rate
  each) the first is used: latency tables, quality, deadlines and length distributions do
  not vary across such a stack."""
  params = jax.tree_util.tree_map(lambda x: x[0], env_params) if params_batched else env_params
  prompt, output = heuristics.mean_lengths(params.workload, jax.random.PRNGKey(0))
  slack, turnover, dump = knobs
  return heuristics.deadline_greedy(params, output, prompt, slack=slack, turnover=turnover,
                                    dump=dump)


def predictor(obs_layout: observation.ObservationLayout, env_params,
              params_batched: bool = False, knobs: tuple = REFERENCE_KNOBS):
  """The latency predictor `obs_layout` needs (`reference_greedy` of the training
  environment's params with `knobs`), or None when it needs none."""
  if not obs_layout.needs_predictor:
    return None
  return reference_greedy(env_params, params_batched, knobs)


def extend(obs: jnp.ndarray, state, obs_layout: observation.ObservationLayout,
           predictor=None) -> jnp.ndarray:
  """The environment's observation of one environment (float32 [T + M + 1]) extended to
  `obs_layout`, the extra blocks computed from `state`'s serving view (an `EnvState` or a
  `ServingView`) and, for 'predict', `predictor`; unchanged, and `state` unread, without
  extra features."""
  if obs_layout.features == obs_layout.base.features:
    return obs
  return obs_layout.extend(obs, observation.as_view(state), predictor)
