"""Roofline projection of the reproduced experiments onto accelerator nodes.

A router's training is a chain of `num_iterations` dependent iterations (each: every parallel
environment steps once, the replay takes the transitions, one gradient step); an evaluation
is a chain of one routing decision per request. Devices split the work *within* an
iteration (environments and the batch over 'data', seeds over 'seed'), never the chain, so a
run's time on D devices is bounded below by two numbers:

  roofline   iterations x max(flops / (D x peak_flops), bytes / (D x hbm_bandwidth))
             + updates x all-reduce(gradient bytes)           (what the hardware can move)
  latency    iterations x (kernels x kernel_s + loop_s)        (what one iteration must wait)

`flops`, `bytes` and `kernels` come from XLA's own analysis of the compiled program
(`CompiledCost`): `cost_analysis()` counts a `while` body once, so a chunk's figures are one
iteration's; XLA counts an in-place update of a buffer as touching all of it, so `bytes` is an
upper bound on the traffic. `kernels` counts the non-fused computations' compute
instructions (fusions, dots, gathers, scatters, ...) of the program as XLA:CPU compiled it;
another backend fuses differently. `kernel_s` and `loop_s` are assumptions (`ACCELERATORS`),
stated in the results next to every figure. The projection is the larger of the two bounds.
"""
from __future__ import annotations

import dataclasses
import re

# compute instructions of non-fused computations that run as (at least) one kernel each
_KERNEL_OPS = ("fusion", "custom-call", "dot", "convolution", "gather", "scatter", "sort",
               "reduce", "dynamic-update-slice", "dynamic-slice", "all-reduce", "rng-bit-generator",
               "select-and-scatter", "reduce-window")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*[^=]*?\s([a-z][a-z\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A node's datasheet numbers and the per-kernel overheads assumed for it.

  Attributes:
    name: e.g. 'tpu-v5e-8'.
    devices: chips (TPU) or GPUs in the node.
    peak_flops: per device, FLOP/s (dense bf16; XLA's default f32 matmul precision on TPU
      is one bf16 pass; the simulator's elementwise work runs on the vector units, so this
      bound is optimistic for it).
    hbm_bytes_per_s: per device memory bandwidth.
    link_bytes_per_s: per device interconnect bandwidth, one direction (ICI / NVLink).
    kernel_s: assumed cost of one kernel inside a device-side loop (launch + tail).
    loop_s: assumed cost of one loop iteration's control (GPU: the predicate's copy to host).
    source: where the datasheet numbers come from.
  """
  name: str
  devices: int
  peak_flops: float
  hbm_bytes_per_s: float
  link_bytes_per_s: float
  kernel_s: float
  loop_s: float
  source: str


ACCELERATORS: dict[str, Accelerator] = {
    a.name: a for a in (
        Accelerator("tpu-v5e-8", 8, 197e12, 819e9, 200e9, kernel_s=1e-6, loop_s=2e-6,
                    source="Cloud TPU v5e docs: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, "
                           "400 GB/s bidirectional ICI per chip"),
        Accelerator("h100x8", 8, 989e12, 3.35e12, 450e9, kernel_s=3e-6, loop_s=15e-6,
                    source="NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 80 GB HBM3 at "
                           "3.35 TB/s, 900 GB/s bidirectional NVLink"),
    )
}


@dataclasses.dataclass(frozen=True)
class CompiledCost:
  """One loop iteration of a compiled program: FLOPs, bytes accessed (upper bound), kernels."""
  flops: float
  bytes: float
  kernels: int


def count_kernels(hlo_text: str) -> int:
  """Compute instructions (`_KERNEL_OPS`) outside fused computations of an optimized HLO
  module's text: an estimate of the kernels one execution of every computation launches."""
  count, fused = 0, False
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and "=" not in line.split("{")[0].split("(")[0]:
      name = head.group(1)
      fused = name.startswith(("fused", "wrapped_", "horizontally_fused")) or \
          "fused_computation" in name
      continue
    if fused:
      continue
    match = _INSTRUCTION.match(line)
    if match and match.group(1) in _KERNEL_OPS:
      count += 1
  return count


def compiled_cost(compiled) -> CompiledCost:
  """`CompiledCost` of a `jax.stages.Compiled` (its cost analysis and optimized HLO)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return CompiledCost(flops=float(analysis.get("flops", 0.0)),
                      bytes=float(analysis.get("bytes accessed", 0.0)),
                      kernels=count_kernels(compiled.as_text()))


def allreduce_s(num_bytes: float, devices: int, link_bytes_per_s: float) -> float:
  """A ring all-reduce of `num_bytes` over `devices`: 2 (D - 1) / D x bytes over one link."""
  if devices <= 1:
    return 0.0
  return 2.0 * (devices - 1) / devices * num_bytes / link_bytes_per_s


def project(cost: CompiledCost, iterations: int, updates: int, grad_bytes: float,
            accel: Accelerator, devices: int | None = None) -> dict:
  """Seconds for `iterations` dependent iterations of `cost` (with `updates` all-reduces of
  `grad_bytes`) spread over `devices` (default: the node's): both bounds and their max."""
  d = devices or accel.devices
  per_iteration = max(cost.flops / (d * accel.peak_flops), cost.bytes / (d * accel.hbm_bytes_per_s))
  roofline = iterations * per_iteration + updates * allreduce_s(grad_bytes, d,
                                                                accel.link_bytes_per_s)
  latency = iterations * (cost.kernels * accel.kernel_s + accel.loop_s)
  return dict(accelerator=accel.name, devices=d, roofline_s=roofline, latency_s=latency,
              projected_s=max(roofline, latency),
              bound="latency" if latency >= roofline else "roofline")


def measure_bandwidth(mib: int = 1024, repeats: int = 5) -> float:
  """This host's read bandwidth in bytes/s: best of `repeats` jitted float32 sums over
  `mib` MiB (read-only traffic)."""
  import time

  import jax
  import jax.numpy as jnp
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    total(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return x.nbytes / best


_COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-gather|collective-permute|all-to-all|"
                         r"reduce-scatter)(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "bf16": 2}


def _shape_bytes(shape_text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(shape_text):
    size = _DTYPE_BYTES.get(dtype) or int(dtype[1:]) // 8
    for d in filter(None, dims.split(",")):
      size *= int(d)
    total += size
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """The cross-device collectives of an optimized HLO module's text: per kind, how many
  instructions and the bytes of their results (per device, one execution of each)."""
  out: dict[str, dict[str, int]] = {}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if match:
      entry = out.setdefault(match.group(2), {"count": 0, "bytes": 0})
      entry["count"] += 1
      entry["bytes"] += _shape_bytes(match.group(1))
  return out
