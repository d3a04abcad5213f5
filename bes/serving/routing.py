"""The routing decision of the serving runtime: any bes policy over a runtime `ServingView`.

The runtime builds the same `bes.env.observation.ServingView` the simulator's policies read
(per model: load, the instance a request would join, its running / waiting requests, whether
it is busy, what remains of its iteration), the observation from it with the environment's
`ObservationLayout`, and calls the policy exactly as a rollout does: `policy(key, obs, view)`.
One jitted call per request decides the model (and, for `DeadlineGreedy`, its predicted
latency on that model, so the drift between prediction and reality is recorded per request).

Policy specs (`load_policy`): the fixed policies of `bes.policies` (static:M, round_robin,
random, task_map:...), `deadline_greedy` and `load_threshold` (knobs from the training
workdir's tuned `heuristics.json` when there is one, else the defaults below), and
`learned` (the router of the training workdir's newest intact checkpoint, seed 0).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from bes import heuristics, policies as policies_lib
from bes.env import observation
from bes.experiment import workdir as workdir_lib
from bes.experiment.setup import Setup

POLICY_KINDS = ("static:M", "round_robin", "random", "task_map:M0,M1,...", "deadline_greedy",
                "load_threshold", "learned")


def load_policy(spec: str, setup: Setup, workdir: str = ""):
  """The policy of `spec` (module docstring) for `setup`'s deployment and serving knobs."""
  profile = setup.profile
  names = [m.name for m in profile.models]
  _, params = setup.env()
  kind = spec.partition(":")[0]
  if kind in heuristics.HEURISTICS:
    if spec != kind:
      raise ValueError(f"config.serve.policy={spec!r}: {kind} takes no argument (its knobs come "
                       "from config.serve.workdir's heuristics.json)")
    tuned = workdir_lib.heuristic_policies(workdir, params) if workdir else {}
    if kind in tuned:
      return tuned[kind]
    if kind == "deadline_greedy":
      prompt, output = heuristics.mean_lengths(setup.workload, jax.random.PRNGKey(setup.seed))
      return heuristics.deadline_greedy(params, output, prompt)
    return heuristics.load_threshold(params, [1.0] * len(names))
  if kind == "learned":
    if not workdir or not os.path.isdir(workdir):
      raise ValueError(f"config.serve.policy=learned: config.serve.workdir must be a training "
                       f"workdir (launch/train.py --workdir), got {workdir!r}")
    return workdir_lib.load_policies(workdir)[0]
  try:
    return policies_lib.parse_policy(spec, len(names), len(profile.tasks), names)
  except ValueError as e:
    raise ValueError(f"config.serve.policy: {e}; expected one of {', '.join(POLICY_KINDS)}") \
        from None


class Router:
  """Decides the model of each request: `decide(view) -> (model index, predicted latency s
  or None)`, one jitted call (compiled once by `warmup`)."""

  def __init__(self, policy, num_tasks: int, seed: int = 0):
    self.policy = policy
    layout = lambda view: observation.ObservationLayout(int(num_tasks), view.num_models)

    def decide(policy, key, count, view):
      model = policy(jax.random.fold_in(key, count), layout(view).build(view), view)
      if isinstance(policy, heuristics.DeadlineGreedy):
        predicted = policy.predict_us(view)[model] / 1e6
      else:
        predicted = jnp.float32(jnp.nan)
      return model, predicted

    self._decide = jax.jit(decide)
    self._key = jax.random.PRNGKey(seed)
    self._count = 0

  def decide(self, view: observation.ServingView) -> tuple[int, float | None]:
    """(model index, predicted latency in s or None) for the request `view` describes."""
    self._count += 1
    model, predicted = self._decide(self.policy, self._key, np.int32(self._count), view)
    model, predicted = int(model), float(predicted)
    return model, (None if np.isnan(predicted) else predicted)


def runtime_view(*, task: int, prompt_len: int, index: int, now_us: int, rate: float,
                 load, target, busy, running, waiting, remaining_us, instances, max_batch,
                 queue_capacity: int) -> observation.ServingView:
  """A `ServingView` from the runtime's numbers (numpy; shapes as documented there)."""
  i32 = lambda x: np.asarray(x, np.int32)
  return observation.ServingView(
      task=i32(task), prompt_len=i32(prompt_len), index=i32(index),
      now=i32(now_us % (2 ** 31)), rate=np.float32(rate),
      load=np.asarray(load, np.float32), target=i32(target), busy=np.asarray(busy, bool),
      running=i32(running), waiting=i32(waiting),
      remaining_us=np.asarray(remaining_us, np.float32), instances=tuple(instances),
      max_batch=tuple(max_batch), queue_capacity=int(queue_capacity))
