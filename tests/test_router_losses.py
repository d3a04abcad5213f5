"""Double Q-learning pieces (`bes.router.losses`) on hand-computed numbers, in the style of
rlax's `value_learning_test.py`: each function plain and under `jax.jit` (`chex.variants`),
and batched by `jax.vmap`."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from bes.router import losses

# One transition: the selector (online network) prefers action 0, the value (target) network
# action 2, so Double Q evaluates action 0 with the target network.
Q_TM1 = jnp.array([0.2, 0.7, -1.0])
Q_T_VALUE = jnp.array([1.0, 2.0, 3.0])
Q_T_SELECTOR = jnp.array([5.0, 0.0, 1.0])


class JitAndPlainTest(chex.TestCase):
  """Each test runs twice: `self.variant` is `jax.jit`, then the plain function."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_huber_both_branches(self):
    huber = self.variant(losses.huber)
    # |x| <= delta: x^2 / 2.
    np.testing.assert_allclose(huber(jnp.float32(0.5)), 0.125, rtol=1e-6)
    np.testing.assert_allclose(huber(jnp.float32(-1.0)), 0.5, rtol=1e-6)
    # |x| > delta = 1: |x| - 1/2.
    np.testing.assert_allclose(huber(jnp.float32(-2.0)), 1.5, rtol=1e-6)
    # delta = 2: 1.5^2 / 2 = 1.125 inside; 2 * (3 - 1) = 4 beyond.
    np.testing.assert_allclose(huber(jnp.float32(1.5), 2.0), 1.125, rtol=1e-6)
    np.testing.assert_allclose(huber(jnp.float32(3.0), 2.0), 4.0, rtol=1e-6)
    out = huber(jnp.array([0.0, 0.5, -2.0, 4.0]))
    chex.assert_shape(out, (4,))
    np.testing.assert_allclose(out, [0.0, 0.125, 1.5, 3.5], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_double_q_target_uses_value_at_selector_argmax(self):
    target = self.variant(losses.double_q_target)
    # 0.5 + 0.9 * q_t_value[argmax q_t_selector = 0] = 0.5 + 0.9 * 1 (Q-learning would use 3).
    np.testing.assert_allclose(target(0.5, 0.9, Q_T_VALUE, Q_T_SELECTOR), 1.4, rtol=1e-6)
    # The selectors agree with the value network: 0.5 + 0.9 * 3.
    np.testing.assert_allclose(target(0.5, 0.9, Q_T_VALUE, Q_T_VALUE), 3.2, rtol=1e-6)
    # Discount 0 (episode end): the reward alone.
    np.testing.assert_allclose(target(0.5, 0.0, Q_T_VALUE, Q_T_SELECTOR), 0.5, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_double_q_learning_td_error(self):
    td = self.variant(losses.double_q_learning)
    np.testing.assert_allclose(td(Q_TM1, 1, 0.5, 0.9, Q_T_VALUE, Q_T_SELECTOR), 1.4 - 0.7,
                               rtol=1e-6)
    np.testing.assert_allclose(td(Q_TM1, 2, 0.5, 0.0, Q_T_VALUE, Q_T_SELECTOR), 0.5 + 1.0,
                               rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("no_episode_end", [1.0, 2.0, 3.0], [0, 0, 0], 1 + 0.5 * 2 + 0.25 * 3, 0.125),
      ("ends_at_step_2_truncated", [1.0, 2.0, 3.0], [0, 1, 0], 1 + 0.5 * 2, 0.0),
      ("ends_at_once", [1.0, 2.0, 3.0], [1, 0, 0], 1.0, 0.0),
      ("ends_on_the_last_step", [1.0, 2.0, 3.0], [0, 0, 1], 2.75, 0.0),
      ("n_1", [4.0], [0], 4.0, 0.5),
      ("n_1_end", [4.0], [1], 4.0, 0.0))
  def test_n_step_return(self, rewards, dones, expected_return, expected_discount):
    n_step = self.variant(lambda r, d: losses.n_step_return(r, d, 0.5))
    ret, discount = n_step(jnp.array(rewards), jnp.array(dones, bool))
    chex.assert_type([ret, discount], jnp.float32)
    chex.assert_shape([ret, discount], ())
    np.testing.assert_allclose(ret, expected_return, rtol=1e-6)
    np.testing.assert_allclose(discount, expected_discount, rtol=1e-6)


def test_huber_gradient_is_clipped_at_delta():
  grad = jax.jit(jax.vmap(jax.grad(losses.huber), in_axes=(0, None)))
  np.testing.assert_allclose(grad(jnp.array([0.5, -0.25, 3.0, -7.0]), 2.0),
                             [0.5, -0.25, 2.0, -2.0], rtol=1e-6)


def test_double_q_learning_gradient_flows_only_through_q_tm1():
  def td(q_tm1, q_t_value, q_t_selector):
    return losses.double_q_learning(q_tm1, 1, 0.5, 0.9, q_t_value, q_t_selector)
  g_tm1, g_value, g_selector = jax.jit(jax.grad(td, argnums=(0, 1, 2)))(
      Q_TM1, Q_T_VALUE, Q_T_SELECTOR)
  np.testing.assert_array_equal(g_tm1, [0.0, -1.0, 0.0])
  np.testing.assert_array_equal(g_value, np.zeros(3))
  np.testing.assert_array_equal(g_selector, np.zeros(3))


def test_double_q_learning_batched():
  q_tm1 = jnp.stack([Q_TM1, jnp.array([1.0, 0.0, 0.0])])
  a_tm1 = jnp.array([1, 0])
  r_t = jnp.array([0.5, -1.0])
  discount_t = jnp.array([0.9, 0.5])
  q_t_value = jnp.stack([Q_T_VALUE, jnp.array([4.0, -2.0, 0.0])])
  q_t_selector = jnp.stack([Q_T_SELECTOR, jnp.array([0.0, 1.0, 0.5])])
  td = jax.jit(jax.vmap(losses.double_q_learning))(q_tm1, a_tm1, r_t, discount_t, q_t_value,
                                                    q_t_selector)
  # Second: -1 + 0.5 * q_t_value[1] - q_tm1[0] = -1 - 1 - 1.
  np.testing.assert_allclose(td, [0.7, -3.0], rtol=1e-6)
  targets = jax.vmap(losses.double_q_target)(r_t, discount_t, q_t_value, q_t_selector)
  np.testing.assert_allclose(targets, [1.4, -2.0], rtol=1e-6)


def test_n_step_return_batched():
  rewards = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [-1.0, 0.0, 10.0]])
  dones = jnp.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
  ret, discount = jax.jit(jax.vmap(lambda r, d: losses.n_step_return(r, d, 0.9)))(rewards, dones)
  np.testing.assert_allclose(ret, [1 + 1.8 + 0.81 * 3, 1 + 1.8, -1 + 0.81 * 10], rtol=1e-6)
  np.testing.assert_allclose(discount, [0.729, 0.0, 0.729], rtol=1e-6)
