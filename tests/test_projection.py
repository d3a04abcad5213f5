"""The pod projection's arithmetic (hand-computed) and XLA cost reading."""
import jax
import jax.numpy as jnp
import pytest

from bes.parallel import projection as proj

ACCEL = proj.Accelerator("toy", devices=4, peak_flops=1e12, hbm_bytes_per_s=1e11,
                         link_bytes_per_s=1e10, kernel_s=2e-6, loop_s=10e-6, source="test")


def test_project_by_hand():
  cost = proj.CompiledCost(flops=4e9, bytes=8e8, kernels=100)
  out = proj.project(cost, iterations=1000, updates=500, grad_bytes=1e6, accel=ACCEL)
  # per iteration: max(4e9 / 4e12, 8e8 / 4e11) = max(1 ms, 2 ms) = 2 ms -> 2 s; all-reduce:
  # 2 * 3/4 * 1e6 / 1e10 = 150 us x 500 = 75 ms; latency: 1000 x (100 x 2 us + 10 us) = 0.21 s
  assert out["roofline_s"] == pytest.approx(2.075)
  assert out["latency_s"] == pytest.approx(0.21)
  assert out["projected_s"] == pytest.approx(2.075) and out["bound"] == "roofline"
  one = proj.project(cost, 1000, 500, 1e6, ACCEL, devices=1)
  assert one["roofline_s"] == pytest.approx(8.0)          # 8e8 / 1e11 per iteration, no all-reduce


def test_allreduce_single_device_is_free():
  assert proj.allreduce_s(1e9, 1, 1e10) == 0.0
  assert proj.allreduce_s(1e9, 2, 1e10) == pytest.approx(0.1)


def test_compiled_cost_counts_a_loop_body_once_and_its_kernels():
  def body(x, _):
    return jnp.sort(jnp.cumsum(x) * 2.0), None

  def run(x, n):
    return jax.lax.scan(body, x, None, length=n)[0]

  x = jnp.ones(4096)
  short = proj.compiled_cost(jax.jit(lambda x: run(x, 10)).lower(x).compile())
  long = proj.compiled_cost(jax.jit(lambda x: run(x, 20)).lower(x).compile())
  assert short.kernels >= 1 and short.kernels == long.kernels
  assert short.bytes == pytest.approx(long.bytes, rel=0.05)     # the body is counted once
  assert short.bytes >= 4096 * 4


def test_count_kernels_skips_fused_computations():
  text = """HloModule m
%fused_computation (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %g = f32[4]{0} gather(%p, %p)
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation
  ROOT %s = f32[4]{0} sort(%f), dimensions={0}
}
"""
  assert proj.count_kernels(text) == 2


def test_collectives_census_by_hand():
  text = """
  %ag = s32[1,256]{0,1} all-gather(%x), replica_groups={{0,1}}, dimensions={1}
  %ar = (f32[1,64]{1,0}, pred[1,3]{1,0}) all-reduce(%a, %b), to_apply=%add
  %ars = f32[8]{0} all-reduce-start(%c), to_apply=%add
  %n = f32[8]{0} add(%c, %c)
"""
  assert proj.collectives(text) == {"all-gather": {"count": 1, "bytes": 1024},
                                    "all-reduce": {"count": 2, "bytes": 256 + 3 + 32}}
