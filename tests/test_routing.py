"""The runtime's routing decision (bes/serving/routing.py): every kind of policy, loaded by
spec, decides on a runtime-built ServingView exactly as the policy called directly does
(as a rollout calls it), and DeadlineGreedy's recorded prediction is its own."""
import jax
import ml_collections
import numpy as np
import pytest

from bes.env import observation
from bes.experiment import train as train_lib
from bes.experiment.setup import Setup
from bes.router.policy import LearnedPolicy
from bes.serving import routing
from tests import tiny_router


def _views(setup: Setup, n: int = 40, seed: int = 0):
  """Random runtime views of the tiny deployment (loads, queues, busy, remaining)."""
  rng = np.random.default_rng(seed)
  profile = setup.profile
  big_b = [m.max_batch for m in profile.models]
  cap = setup.serving.queue_capacity
  for i in range(n):
    running = [int(rng.integers(0, b + 1)) for b in big_b]
    waiting = [int(rng.integers(0, cap + 1)) if r == b else 0 for r, b in zip(running, big_b)]
    busy = [r + w > 0 for r, w in zip(running, waiting)]
    yield routing.runtime_view(
        task=int(rng.integers(0, len(profile.tasks))), prompt_len=int(rng.integers(1, 64)),
        index=i, now_us=int(rng.integers(0, 10 ** 7)), rate=float(rng.uniform(0, 80)),
        load=[(r + w) / b for r, w, b in zip(running, waiting, big_b)],
        target=[0] * len(big_b), busy=busy, running=running, waiting=waiting,
        remaining_us=[float(rng.uniform(0, 5000)) if b else 0.0 for b in busy],
        instances=[m.instances for m in profile.models], max_batch=big_b,
        queue_capacity=cap)


@pytest.fixture(scope="module")
def setup(tiny_profile_path):
  return Setup.from_config(tiny_router.config(tiny_profile_path))


def _direct(policy, router, view, count):
  """The policy called as a rollout calls it: policy(key, obs, view)."""
  layout = observation.ObservationLayout(2, view.num_models)
  key = jax.random.fold_in(router._key, count)  # pylint: disable=protected-access
  return int(policy(key, layout.build(view), view))


@pytest.mark.parametrize("spec", ["static:big", "round_robin", "random", "task_map:1,0",
                                  "deadline_greedy", "load_threshold"])
def test_decisions_equal_the_policy_called_directly(setup, spec):
  policy = routing.load_policy(spec, setup)
  router = routing.Router(policy, num_tasks=2, seed=3)
  decided = []
  for i, view in enumerate(_views(setup)):
    model, predicted = router.decide(view)
    assert model == _direct(policy, router, view, i + 1)
    decided.append(model)
    if spec == "deadline_greedy":
      assert predicted == pytest.approx(float(policy.predict_us(view)[model]) / 1e6, rel=1e-6)
    else:
      assert predicted is None
  if spec in ("round_robin", "random", "deadline_greedy", "load_threshold"):
    assert len(set(decided)) == 2, decided   # the views are varied enough to use both models


@pytest.mark.parametrize("router_keys", [
    {},                                                   # the paper's router (tiny_router)
    {"dqn.features": "predict", "dqn.demo": "deadline_greedy", "dqn.demo_frac": 0.8,
     "dqn.action_mask": "on_time_else_any"}])             # the default's keys
def test_learned_router_from_a_training_workdir(tiny_profile_path, tmp_path, router_keys):
  """A trained router served from its workdir decides as the policy called directly; with
  the 'predict' features, from the runtime's view through the predictor it carries."""
  config = tiny_router.config(tiny_profile_path)
  for key, value in router_keys.items():
    section, name = key.split(".")
    config[section][name] = value
  setup = Setup.from_config(config)
  workdir = str(tmp_path / "router")
  train_lib.train(setup, workdir, log=lambda *_: None)
  policy = routing.load_policy("learned", setup, workdir)
  assert isinstance(policy, LearnedPolicy)
  assert (policy.predictor is not None) == bool(router_keys)
  router = routing.Router(policy, num_tasks=2)
  for i, view in enumerate(_views(setup, n=12)):
    model, predicted = router.decide(view)
    assert model == _direct(policy, router, view, i + 1) and predicted is None


@pytest.mark.parametrize("spec, workdir, message", [
    ("learned", "", "config.serve.workdir"),
    ("deadline_greedy:x", "", "takes no argument"),
    ("static:nope", "", "config.serve.policy"),
    ("bogus", "", "expected one of"),
])
def test_bad_specs(setup, spec, workdir, message):
  with pytest.raises(ValueError, match=message):
    routing.load_policy(spec, setup, workdir)


def test_unknown_config_serve_keys_are_refused(setup):
  from bes.serving import config as serve_config
  cfg = ml_collections.ConfigDict(setup.config.to_dict())
  with pytest.raises(ValueError, match="config: no 'serve' section"):
    serve_config.serve_config(cfg, setup.profile)
