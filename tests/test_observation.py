"""bes/env/observation.py: the observation layout, the serving view (hand-computed), the
environment's observation built from them, and that nothing above bes/env reads the
environment's internal arrays."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes import heuristics, policies
from bes.env import instances as inst
from bes.env import observation
from bes.env.observation import ObservationLayout, ServingView
from bes.env.serving_env import make_env
from bes.profile import profile_from_dict
from bes.requests import Requests
from bes.serving_config import ServingConfig
from tests import env_testing

KEY = jax.random.PRNGKey(0)
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- layout
def test_layout_blocks_slices_and_sizes():
  paper = ObservationLayout(4, 3)
  assert paper.blocks == (("task", 4), ("load", 3), ("rate", 1)) and paper.size == 8
  assert (paper.slice("task"), paper.slice("load"), paper.slice("rate")) == (
      slice(0, 4), slice(4, 7), slice(7, 8))
  queues = ObservationLayout(4, 3, "queues")
  assert queues.names == ("task", "load", "queues", "rate") and queues.size == 4 + 3 + 6 + 1
  assert queues.slice("queues") == slice(7, 13) and queues.slice("rate") == slice(13, 14)
  assert queues.base == paper and hash(paper) == hash(ObservationLayout(4, 3))
  obs = jnp.arange(2 * 14, dtype=jnp.float32).reshape(2, 14)          # batched: [..., size]
  np.testing.assert_array_equal(queues.take(obs, "queues"), obs[:, 7:13])
  np.testing.assert_array_equal(queues.take(obs, "rate"), obs[:, 13:])
  parts = {name: queues.take(obs, name) for name in queues.names}
  np.testing.assert_array_equal(queues.concat(parts), obs)


@pytest.mark.parametrize("call,message", [
    (lambda: ObservationLayout(4, 3, "all"), "observation features: expected one of"),
    (lambda: ObservationLayout(0, 3), "num_tasks and num_models must be >= 1"),
    (lambda: ObservationLayout(4, 3).slice("queues"), "no block 'queues'"),
    (lambda: ObservationLayout(4, 3).concat(dict(task=jnp.zeros(4), load=jnp.zeros(3))),
     r"blocks \['rate'\] missing"),
    (lambda: ObservationLayout(4, 3).concat(
        dict(task=jnp.zeros(4), load=jnp.zeros(2), rate=jnp.zeros(1))), "'load' has 2 values")])
def test_layout_errors_name_the_problem(call, message):
  with pytest.raises(ValueError, match=message):
    call()


# ----------------------------------------------------------------------------- the view
def _tiny_env(queue_capacity=1, gap_us=0, n=6):
  """'small': 2 instances, batch 2, 1 ms per iteration, no prefill; 'big': 1 instance,
  batch 1, 10 ms per iteration, prefill 2 ms + 10 us/token. Requests replayed: n arrivals
  `gap_us` apart, tasks 0,1,1,0,1,0..., prompts 100, 100, 50, 30, 20, 10..., 7 tokens out."""
  tasks = ["t0", "t1"]
  models = [dict(name="small", instances=2, gpus_per_instance=1, max_batch=2,
                 decode_step_s=[1e-3, 1e-3], prefill_s_fixed=0.0, prefill_s_per_token=0.0,
                 quality=dict(t0=0.3, t1=0.9)),
            dict(name="big", instances=1, gpus_per_instance=1, max_batch=1, decode_step_s=[10e-3],
                 prefill_s_fixed=2e-3, prefill_s_per_token=10e-6, quality=dict(t0=0.8, t1=0.5))]
  profile = profile_from_dict(dict(name="tiny", provenance="test", tasks=tasks, models=models))
  requests = Requests(
      gap_us=np.full(n, gap_us, np.int32), task=np.array([0, 1, 1, 0, 1, 0] * n, np.int32)[:n],
      prompt_len=np.array([100, 100, 50, 30, 20, 10] * n, np.int32)[:n],
      output_len=np.full(n, 7, np.int32))
  workload = env_testing.replay(requests, 2)
  config = ServingConfig(deadline_s=1.0, deadline_per_token_s=0.0, queue_capacity=queue_capacity)
  return make_env(profile, config, workload, episode_len=n)


def test_view_hand_computed():
  env, params = _tiny_env()
  _, state = env_testing.state_after(env, params, [])
  empty = observation.serving_view(state)
  assert float(empty.rate) == 0.0 and int(empty.index) == 0 and empty.timing is None
  np.testing.assert_array_equal(empty.load, [0, 0])
  # Three simultaneous arrivals at t = 0: request 0 starts an iteration on small's instance 0
  # (ends at 1 ms); request 1 starts one on big (3 ms prefill + 10 ms: ends at 13 ms);
  # request 2 waits in big's queue, which is then full (capacity 1).
  _, state = env_testing.state_after(env, params, [0, 1, 1])
  view = observation.serving_view(state, params)
  assert (int(view.task), int(view.prompt_len), int(view.index), int(view.now)) == (0, 30, 3, 0)
  assert float(view.rate) == pytest.approx(1e6)          # gaps of 0 s, floored at 1 us
  assert (view.instances, view.max_batch, view.queue_capacity) == ((2, 1), (2, 1), 1)
  np.testing.assert_array_equal(view.load, [1 / 4, 2 / 1])
  np.testing.assert_array_equal(view.target, [1, 0])     # small: instance 1 is empty
  np.testing.assert_array_equal(view.busy, [False, True])
  np.testing.assert_array_equal(view.running, [0, 1])
  np.testing.assert_array_equal(view.waiting, [0, 1])
  np.testing.assert_array_equal(view.remaining_us, [0, 13_000])
  np.testing.assert_array_equal(view.batch_fill(), [0, 2])
  np.testing.assert_array_equal(view.queue_fill(), [0, 1])
  np.testing.assert_array_equal(view.rejects(), [False, True])
  np.testing.assert_array_equal(view.timing.decode_us, [[0, 1000, 1000], [0, 10_000, 10_000]])
  np.testing.assert_array_equal(view.timing.prefill_fixed_us, [0, 2000])
  np.testing.assert_array_equal(view.timing.prefill_per_token_us, [0, 10])
  assert view.load.dtype == jnp.float32 and view.remaining_us.dtype == jnp.float32
  # Arrivals 4 ms apart, now 12 ms: request 0 (7 tokens from 0 ms on small) is done; big's
  # iteration for request 1 started at 4 ms and ends at 4 + 3 + 10 = 17 ms, 5 ms from now;
  # request 2 waits, the queue (capacity 2) half full.
  env2, params2 = _tiny_env(queue_capacity=2, gap_us=4000)
  _, state2 = env_testing.state_after(env2, params2, [0, 1, 1])
  view2 = observation.serving_view(state2)
  assert int(view2.now) == 12_000
  np.testing.assert_array_equal(view2.load, [0, 2])
  np.testing.assert_array_equal(view2.remaining_us, [0, 5_000])
  np.testing.assert_array_equal(view2.waiting, [0, 1])
  np.testing.assert_array_equal(view2.rejects(), [False, False])
  np.testing.assert_array_equal(view2.queue_fill(), [0, 0.5])


def test_as_view_accepts_a_view_built_from_plain_numbers():
  """A serving runtime builds the view from its own numbers; policies take it as `state`."""
  view = ServingView(task=jnp.int32(1), prompt_len=jnp.int32(10), index=jnp.int32(0),
                     now=jnp.int32(0), rate=jnp.float32(5.0), load=jnp.array([0.5, 3.0]),
                     target=jnp.array([0, 0]), busy=jnp.array([True, True]),
                     running=jnp.array([1, 1]), waiting=jnp.array([0, 2]),
                     remaining_us=jnp.array([10.0, 20.0]), instances=(1, 1), max_batch=(2, 1),
                     queue_capacity=2)
  assert observation.as_view(view) is view
  obs = ObservationLayout(2, 2, "queues").build(view)
  np.testing.assert_array_equal(obs, [0, 1, 0.5, 3.0, 0.5, 0, 3.0, 1.0, 5.0])
  env, params = _tiny_env()
  greedy = heuristics.deadline_greedy(params, mean_output_len=7, mean_prompt_len=10)
  assert float(greedy.predict_us(view)[1]) > 1e29           # big's queue is full
  assert int(greedy(KEY, obs, view)) == 0
  assert int(policies.round_robin(2, 2)(KEY, obs, view)) == 0


# ----------------------------------------------------------------------------- the env's observation
def _hand_observation(state, env):
  """The observation written out from the accessors (the formula of the design page)."""
  task = jax.nn.one_hot(state.request.task, env.num_tasks)
  loads = [inst.load(gs).sum() / (i * b) for gs, i, b in zip(state.groups, env.instances,
                                                            env.max_batch)]
  ema = float(state.ema_gap_s)
  rate = 0.0 if ema < 0 else 1.0 / max(ema, 1e-6)
  return np.concatenate([task, np.asarray(loads, np.float32), [rate]]).astype(np.float32)


def test_env_observation_is_the_layout_of_the_view_jit_and_vmap():
  env, params = _tiny_env(queue_capacity=2, gap_us=300, n=24)
  assert env.layout == ObservationLayout(2, 2) and env.obs_size == 5
  queues = ObservationLayout(2, 2, "queues")
  step = jax.jit(lambda s, a: env.step(KEY, s, a, params))
  build = jax.jit(lambda s: (env.layout.build(observation.serving_view(s)),
                             queues.build(observation.serving_view(s))))
  obs, state = env.reset(KEY, params)
  for i in range(20):
    paper, extended = build(state)
    np.testing.assert_array_equal(obs, paper)
    np.testing.assert_allclose(obs, _hand_observation(state, env), rtol=1e-6)
    np.testing.assert_array_equal(queues.extend(obs, observation.serving_view(state)), extended)
    obs, state, *_ = step(state, jnp.int32(1 if i % 4 else 0))
  # vmap: a batch of states gives a batch of views and observations.
  states = jax.tree_util.tree_map(lambda *x: jnp.stack(x), state, state)
  views = jax.vmap(observation.serving_view)(states)
  assert views.load.shape == (2, 2) and views.max_batch == (2, 1)
  np.testing.assert_array_equal(jax.vmap(env.layout.build)(views), np.stack([obs, obs]))
  np.testing.assert_array_equal(env.layout.build(views), np.stack([obs, obs]))


# ----------------------------------------------------------------------------- one door
_INTERNALS = re.compile(
    r"\.groups\b|\bgs\.|\.(iter_end|joined|admitted|finished|entries|busy|iters)\b"
    r"|bes\.env\.instances|from bes\.env import instances|num_tasks \+")


def test_nothing_above_bes_env_reads_the_env_internal_arrays():
  """Code outside bes/env reads the serving state only through bes/env/observation.py (the
  reference oracle, bes/reference.py, has its own instances and is exempt)."""
  files = [p for p in sorted((ROOT / "bes").rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))
           if "env" not in p.relative_to(ROOT).parts[:2] and p.name != "reference.py"]
  assert len(files) > 20
  hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
          for n, line in enumerate(p.read_text().splitlines(), 1) if _INTERNALS.search(line)]
  assert not hits, "\n".join(hits)
