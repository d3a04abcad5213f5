"""The per-environment replay ring (`bes.router.replay`): masked writes, ring order, sampling
of n-step windows, and crediting rewards to earlier transitions.

Transitions are labelled so that every field tells where it came from: transition k of
environment e (its k-th write), written by call t, has obs [e, k, t], action 10 e + k,
reward k + 1 and next_obs [e, k + 0.5, t].
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bes.router import replay

E, C, D = 2, 3, 3
GAMMA = 0.5
_add = jax.jit(replay.add)
_credit = jax.jit(replay.credit)
_sample = jax.jit(replay.sample, static_argnums=(2, 3, 4))

# Env 0 is written by every call (4 writes: the ring wraps once), env 1 by calls 0 and 2.
MASKS = [(True, True), (True, False), (True, True), (True, False)]
HELD = {0: {1, 2, 3}, 1: {0, 1}}          # absolute indices still in each ring afterwards


def _write(masks=MASKS, done_at=(), resolved=None):
  """A buffer after one `add` per row of `masks`; (e, k) in `done_at` ends an episode."""
  buf = replay.init(E, C, D)
  for t, mask in enumerate(masks):
    k = np.asarray(buf.count)
    e = np.arange(E)
    obs = np.stack([e, k, np.full(E, t)], -1).astype(np.float32)
    done = np.array([(i, int(j)) in done_at for i, j in zip(e, k)])
    res = None if resolved is None else jnp.full(E, resolved)
    buf = _add(buf, jnp.asarray(obs), jnp.asarray(10 * e + k), jnp.asarray(k + 1.0),
               jnp.asarray(done), jnp.asarray(obs + [0.0, 0.5, 0.0]), jnp.array(mask), res)
  return buf


def _samples(buf, n_step, batch_size=512, seed=0):
  b = jax.device_get(_sample(buf, jax.random.PRNGKey(seed), batch_size, n_step, GAMMA))
  env, k = b.obs[:, 0].astype(int), b.obs[:, 1].astype(int)
  return b, env, k


def test_init_rejects_empty_ring():
  with pytest.raises(ValueError, match="capacity"):
    replay.init(2, 0, 3)


def test_add_with_masks_counts_and_ring_order():
  buf = _write()
  np.testing.assert_array_equal(buf.count, [4, 2])
  np.testing.assert_array_equal(buf.size(), [3, 2])
  assert buf.capacity == C
  # Env 0: the 4th write (k = 3, call 3) overwrote slot 0; slots 1, 2 hold k = 1, 2.
  np.testing.assert_array_equal(buf.obs[0], [[0, 3, 3], [0, 1, 1], [0, 2, 2]])
  np.testing.assert_array_equal(buf.action[0], [3, 1, 2])
  np.testing.assert_array_equal(buf.reward[0], [4.0, 2.0, 3.0])
  np.testing.assert_array_equal(buf.next_obs[0], [[0, 3.5, 3], [0, 1.5, 1], [0, 2.5, 2]])
  # Env 1: written by calls 0 and 2 only (the masked calls left it alone); slot 2 is empty.
  np.testing.assert_array_equal(buf.obs[1], [[1, 0, 0], [1, 1, 2], [0, 0, 0]])
  np.testing.assert_array_equal(buf.action[1], [10, 11, 0])
  np.testing.assert_array_equal(buf.resolved, [[True, True, True], [True, True, False]])
  assert not np.asarray(buf.done).any()
  unresolved = _write(resolved=False)
  assert not np.asarray(unresolved.resolved).any()


def test_can_sample_needs_n_transitions_in_every_env():
  buf = _write()
  assert bool(replay.can_sample(buf, 1)) and bool(replay.can_sample(buf, 2))
  assert not bool(replay.can_sample(buf, 3))           # env 1 holds 2
  assert not bool(replay.can_sample(replay.init(E, C, D), 1))


def test_sample_draws_only_written_transitions_of_their_env():
  buf = _write()
  b, env, k = _samples(buf, n_step=1)
  assert set(zip(env, k)) == {(e, j) for e in HELD for j in HELD[e]}   # all, and only those
  np.testing.assert_array_equal(b.action, 10 * env + k)
  np.testing.assert_array_equal(b.ret, k + 1.0)
  np.testing.assert_array_equal(b.next_obs[:, :2], np.stack([env, k + 0.5], -1))
  np.testing.assert_array_equal(b.next_obs[:, 2], b.obs[:, 2])        # the same write
  np.testing.assert_allclose(b.discount, GAMMA)
  np.testing.assert_array_equal(b.weight, 1.0)
  assert 0.4 < np.mean(env == 0) < 0.6                                # environments uniformly


def test_n_step_windows_are_consecutive_entries():
  buf = _write()
  b, env, k = _samples(buf, n_step=2)
  # Starts with a successor in the ring: env 0 k = 1, 2 (2 -> 3 wraps from slot 2 to 0).
  assert set(zip(env, k)) == {(0, 1), (0, 2), (1, 0)}
  np.testing.assert_allclose(b.ret, (k + 1) + GAMMA * (k + 2), rtol=1e-6)
  np.testing.assert_array_equal(b.next_obs[:, :2], np.stack([env, k + 1.5], -1))
  np.testing.assert_allclose(b.discount, GAMMA ** 2)
  np.testing.assert_array_equal(b.action, 10 * env + k)


def test_n_step_window_stops_at_episode_end():
  buf = _write(done_at={(0, 2)})
  b, env, k = _samples(buf, n_step=2)
  ret = {(0, 1): 2 + GAMMA * 3, (0, 2): 3.0, (1, 0): 1 + GAMMA * 2}
  discount = {(0, 1): 0.0, (0, 2): 0.0, (1, 0): GAMMA ** 2}
  np.testing.assert_allclose(b.ret, [ret[x] for x in zip(env, k)], rtol=1e-6)
  np.testing.assert_allclose(b.discount, [discount[x] for x in zip(env, k)])


def test_credit_adds_to_the_right_transition_and_skips_the_rest():
  buf = _write(resolved=False)
  absolute = jnp.array([[0, 2, 3, 1], [1, 5, 0, 0]])
  utility = jnp.array([[100.0, 20.0, 30.0, 7.0], [1.0, 4.0, 2.0, 9.0]])
  mask = jnp.array([[True, True, False, True], [True, True, True, False]])
  buf = _credit(buf, absolute, utility, mask)
  # Env 0, slots hold k = 3, 1, 2: k = 0 was overwritten (its 100 must not reach k = 3 in
  # slot 0), k = 3 is masked; k = 1 gets 7, k = 2 gets 20.
  np.testing.assert_allclose(buf.reward[0], [4.0, 2.0 + 7.0, 3.0 + 20.0])
  np.testing.assert_array_equal(buf.resolved[0], [False, True, True])
  # Env 1: k = 1 gets 1, k = 0 gets 2 (its masked 9 nothing); k = 5 is not written yet.
  np.testing.assert_allclose(buf.reward[1], [1.0 + 2.0, 2.0 + 1.0, 0.0])
  np.testing.assert_array_equal(buf.resolved[1], [True, True, False])
  np.testing.assert_array_equal(buf.count, [4, 2])
  # Crediting twice adds twice (a transition gathers several utilities).
  again = _credit(buf, jnp.array([[2], [0]]), jnp.array([[1.0], [0.5]]), jnp.ones((2, 1), bool))
  np.testing.assert_allclose(again.reward, [[4.0, 9.0, 24.0], [3.5, 3.0, 0.0]])


def test_weight_is_zero_for_a_window_with_an_unresolved_transition():
  buf = _write(resolved=False)
  buf = _credit(buf, jnp.array([[1, 2], [0, 1]]), jnp.array([[7.0, 20.0], [2.0, 1.0]]),
                jnp.ones((E, 2), bool))
  b, env, k = _samples(buf, n_step=2)
  assert set(zip(env, k)) == {(0, 1), (0, 2), (1, 0)}
  # Env 0's k = 3 (slot 0) is unresolved: only the window (2, 3) gets weight 0.
  np.testing.assert_array_equal(b.weight, ~((env == 0) & (k == 2)))
  first = (env == 0) & (k == 1)
  np.testing.assert_allclose(b.ret[first], 9.0 + GAMMA * 23.0, rtol=1e-6)
  b1, env1, _ = _samples(buf, n_step=1, seed=1)
  np.testing.assert_array_equal(b1.weight, b1.obs[:, 1] != 3)
