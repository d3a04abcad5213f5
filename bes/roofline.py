"""A roofline latency model of LLM decoding, and the serving-profile builder built on it.

One decode iteration of an instance running `b` sequences reads every weight once and each
sequence's KV cache once, and does `b` tokens' worth of FLOPs. It is bound by whichever of
memory traffic and arithmetic takes longer, plus a fixed per-iteration cost:

  tau(b) = overhead + max(bytes(b) / (eff * bandwidth), flops(b) / (eff * peak_flops))
  bytes(b) = (param_bytes + b * kv_bytes_per_token * context_len / 2) / g
  flops(b) = b * flops_per_token(context_len / 2) / g

The KV cache read per sequence is taken at the *average* context of a sequence that grows to
`context_len` tokens, i.e. `context_len / 2`; attention FLOPs use the same average. `g` is
`gpus_per_instance`: tensor parallelism is modelled as ideal (bytes and FLOPs split evenly
over the g GPUs, no communication cost), which flatters large g.

Prefill (compute bound) costs `prefill_s_per_token = flops_per_token(context_len / 2) /
(g * eff * peak_flops)` per prompt token, and `prefill_s_fixed = param_bytes / (g * eff *
bandwidth)` (one extra read of the weights) per iteration that admits anything.

The largest running batch follows from memory: the KV cache of `max_batch` sequences of
`context_len` tokens must fit beside the weights in `g * memory * (1 - memory_reserve_frac)`:

  max_batch = min(max_batch_cap, floor((g * mem * (1 - reserve) - param_bytes)
                                       / (kv_bytes_per_token * context_len)))

All arithmetic is plain Python floats (deterministic); times are rounded to the nanosecond.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import Mapping, Sequence

from bes import quality as quality_lib
from bes.models.opt_config import OPTConfig, opt_config
from bes.profile import ModelProfile, Profile, profile_from_dict


@dataclasses.dataclass(frozen=True)
class GPUSpec:
  """A GPU's datasheet numbers.

  Attributes:
    name: e.g. 'A100-80GB-SXM'.
    memory_bytes: device memory in bytes (datasheet GB, 1e9 bytes).
    mem_bandwidth_bytes_per_s: peak memory bandwidth, bytes per second.
    peak_flops: dense bf16 tensor-core peak, FLOP per second (without 2:4 sparsity).
  """
  name: str
  memory_bytes: float
  mem_bandwidth_bytes_per_s: float
  peak_flops: float


# Vendor datasheet numbers (dense bf16 = the datasheet's sparsity figure / 2):
# - A100 80GB SXM / 40GB SXM: NVIDIA A100 Tensor Core GPU datasheet (2021): 80 GB HBM2e at
#   2,039 GB/s, 40 GB HBM2 at 1,555 GB/s; BF16 Tensor Core 312 TFLOPS (624 with sparsity).
# - H100 80GB SXM: NVIDIA H100 Tensor Core GPU datasheet: 80 GB HBM3 at 3.35 TB/s; BF16 Tensor
#   Core 1,979 TFLOPS with sparsity, i.e. 989 dense.
# - L4: NVIDIA L4 datasheet: 24 GB GDDR6 at 300 GB/s; BF16 Tensor Core 242 TFLOPS with
#   sparsity, i.e. 121 dense.
# - A10G (AWS G5): NVIDIA publishes no A10G datasheet. 24 GB GDDR6 at 600 GB/s (as the A10
#   datasheet); tensor peak ~70 TFLOPS bf16 dense as commonly reported for the AWS part (the
#   A10 datasheet states 125). Decoding is memory bound, so this mostly affects prefill.
GPUS: dict[str, GPUSpec] = {
    g.name: g for g in (
        GPUSpec("A100-80GB-SXM", 80e9, 2.039e12, 312e12),
        GPUSpec("A100-40GB", 40e9, 1.555e12, 312e12),
        GPUSpec("H100-80GB-SXM", 80e9, 3.35e12, 989e12),
        GPUSpec("L4", 24e9, 0.300e12, 121e12),
        GPUSpec("A10G", 24e9, 0.600e12, 70e12),
    )
}


def gpu_spec(gpu: str | GPUSpec) -> GPUSpec:
  """The named GPU (a `GPUSpec` passes through); ValueError listing the known names."""
  if isinstance(gpu, GPUSpec):
    return gpu
  if gpu not in GPUS:
    raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(GPUS)} (or pass a GPUSpec)")
  return GPUS[gpu]


@dataclasses.dataclass(frozen=True)
class RooflineParams:
  """Every constant of the roofline model.

  Attributes:
    dtype_bytes: bytes per weight and per KV-cache value (2: bf16).
    efficiency: fraction of peak bandwidth and of peak FLOP/s actually attained (0.6: typical
      of well-tuned inference kernels, which reach 60-80% of HBM bandwidth on large GEMVs and
      less on small ones).
    iteration_overhead_s: fixed seconds per iteration, independent of model size: scheduling,
      sampling, host-device sync and kernel launches. 2e-3 s: a serving engine's Python
      scheduler and sampler cost about a millisecond per step and a decoder of 12-32 layers
      launches a few hundred kernels at several microseconds each. It dominates small models:
      OPT-125M reads its weights in ~0.2 ms, yet engines report ~2-3 ms per token.
    context_len: tokens of KV cache reserved per sequence (1024, a typical prompt + output
      budget well under OPT's 2048 positions). Memory sizing uses all of it; the per-iteration
      KV read and attention FLOPs use the average context, `context_len / 2`.
    max_batch_cap: configured limit on the running batch (128) even where memory allows more.
    memory_reserve_frac: fraction of device memory kept for activations, workspace and
      fragmentation (0.1, as vLLM's default gpu_memory_utilization=0.9).
  """
  dtype_bytes: int = 2
  efficiency: float = 0.6
  iteration_overhead_s: float = 2e-3
  context_len: int = 1024
  max_batch_cap: int = 128
  memory_reserve_frac: float = 0.1

  def validate(self) -> "RooflineParams":
    """ValueError naming the field when a constant is out of range."""
    checks = (
        ("dtype_bytes", isinstance(self.dtype_bytes, int) and self.dtype_bytes >= 1, "an integer >= 1"),
        ("efficiency", 0 < self.efficiency <= 1, "in (0, 1]"),
        ("iteration_overhead_s", math.isfinite(self.iteration_overhead_s)
         and self.iteration_overhead_s >= 0, ">= 0 seconds"),
        ("context_len", isinstance(self.context_len, int) and self.context_len >= 2,
         "an integer >= 2 (tokens)"),
        ("max_batch_cap", isinstance(self.max_batch_cap, int) and self.max_batch_cap >= 1,
         "an integer >= 1"),
        ("memory_reserve_frac", 0 <= self.memory_reserve_frac < 1, "in [0, 1)"),
    )
    for field, ok, expected in checks:
      if not ok:
        raise ValueError(f"RooflineParams.{field}: expected {expected}, got {getattr(self, field)!r}")
    return self


def _config(model: str | OPTConfig) -> OPTConfig:
  return model if isinstance(model, OPTConfig) else opt_config(model)


def param_bytes(model: str | OPTConfig, params: RooflineParams = RooflineParams()) -> float:
  """Bytes of all weights of the model (whole model, not per GPU)."""
  return float(_config(model).num_params() * params.dtype_bytes)


def decode_step_s(model: str | OPTConfig, batch: int, gpu: str | GPUSpec = "A100-80GB-SXM",
                  params: RooflineParams = RooflineParams(), gpus_per_instance: int = 1) -> float:
  """Seconds of one decode iteration at running batch `batch` (>= 1), unrounded."""
  cfg, spec, g = _config(model), gpu_spec(gpu), gpus_per_instance
  avg_ctx = params.context_len / 2
  bytes_ = param_bytes(cfg, params) + batch * cfg.kv_bytes_per_token(params.dtype_bytes) * avg_ctx
  flops = batch * cfg.flops_per_token(avg_ctx)
  memory_s = bytes_ / (g * params.efficiency * spec.mem_bandwidth_bytes_per_s)
  compute_s = flops / (g * params.efficiency * spec.peak_flops)
  return params.iteration_overhead_s + max(memory_s, compute_s)


def prefill_costs(model: str | OPTConfig, gpu: str | GPUSpec = "A100-80GB-SXM",
                  params: RooflineParams = RooflineParams(),
                  gpus_per_instance: int = 1) -> tuple[float, float]:
  """(prefill_s_fixed, prefill_s_per_token) in seconds, unrounded (see module docstring)."""
  cfg, spec, g = _config(model), gpu_spec(gpu), gpus_per_instance
  fixed = param_bytes(cfg, params) / (g * params.efficiency * spec.mem_bandwidth_bytes_per_s)
  per_token = cfg.flops_per_token(params.context_len / 2) / (g * params.efficiency * spec.peak_flops)
  return fixed, per_token


def max_batch_from_memory(model: str | OPTConfig, gpu: str | GPUSpec = "A100-80GB-SXM",
                          params: RooflineParams = RooflineParams(),
                          gpus_per_instance: int = 1) -> int:
  """Largest running batch whose KV cache (context_len tokens each) fits beside the weights.

  Raises:
    ValueError: when not even one sequence fits on `gpus_per_instance` GPUs.
  """
  cfg, spec, g = _config(model), gpu_spec(gpu), gpus_per_instance
  usable = g * spec.memory_bytes * (1.0 - params.memory_reserve_frac)
  per_seq = cfg.kv_bytes_per_token(params.dtype_bytes) * params.context_len
  fit = math.floor((usable - param_bytes(cfg, params)) / per_seq)
  if fit < 1:
    name = model if isinstance(model, str) else "model"
    raise ValueError(
        f"{name} does not fit on {g} x {spec.name}: {param_bytes(cfg, params) / 1e9:.1f} GB of "
        f"weights + {per_seq / 1e9:.3f} GB KV cache per sequence > {usable / 1e9:.1f} GB usable; "
        f"use more gpus_per_instance, a shorter context_len or a larger GPU")
  return min(params.max_batch_cap, fit)


def _round_ns(x: float) -> float:
  return round(x, 9)


def model_profile(model: str, instances: int, tasks: Sequence[str], quality: Mapping[str, float],
                  gpu: str | GPUSpec = "A100-80GB-SXM", params: RooflineParams = RooflineParams(),
                  gpus_per_instance: int = 1) -> ModelProfile:
  """The roofline `ModelProfile` of one OPT model (times rounded to the nanosecond)."""
  max_batch = max_batch_from_memory(model, gpu, params, gpus_per_instance)
  table = tuple(_round_ns(decode_step_s(model, b, gpu, params, gpus_per_instance))
                for b in range(1, max_batch + 1))
  fixed, per_token = prefill_costs(model, gpu, params, gpus_per_instance)
  return ModelProfile(
      name=model, instances=instances, gpus_per_instance=gpus_per_instance, max_batch=max_batch,
      decode_step_s=table, prefill_s_fixed=_round_ns(fixed), prefill_s_per_token=_round_ns(per_token),
      quality={t: float(quality[t]) for t in tasks})


DEFAULT_MODELS = (("opt-125m", 1), ("opt-1.3b", 1), ("opt-6.7b", 2))
DEFAULT_TASKS = ("arc_easy", "piqa", "winogrande", "lambada_openai")
DEFAULT_GPU = "A100-80GB-SXM"


def build_profile(models: Sequence[tuple[str, int]] = DEFAULT_MODELS,
                  tasks: Sequence[str] = DEFAULT_TASKS,
                  gpu: str | GPUSpec = DEFAULT_GPU,
                  params: RooflineParams = RooflineParams(),
                  gpus_per_instance: int | Sequence[int] = 1,
                  quality_table: Mapping[tuple[str, str], float] | str | os.PathLike | None = None,
                  name: str | None = None,
                  date: str | None = None) -> Profile:
  """A roofline profile for OPT models deployed on one GPU type.

  Args:
    models: (OPT name, instances) pairs, e.g. [('opt-125m', 1), ('opt-6.7b', 2)].
    tasks: task names; each model's quality is looked up for every one.
    gpu: a name in `GPUS` or a `GPUSpec`.
    params: the roofline constants.
    gpus_per_instance: one int for every model, or one per model (tensor parallelism).
    quality_table: a {(model, task): acc} table, a CSV path, or None for the shipped
      `bes/data/quality/opt_zero_shot_accuracy.csv`.
    name: the profile's name (default 'opt-<gpu>-roofline').
    date: build date for the provenance (default: today, UTC, ISO format).

  Returns:
    A validated `Profile` whose provenance states the GPU, every constant, the formula, the
    quality source and the date.
  """
  params.validate()
  spec = gpu_spec(gpu)
  models = [(str(m), int(n)) for m, n in models]
  if not models:
    raise ValueError("build_profile: expected at least one (model, instances) pair, got none")
  if isinstance(gpus_per_instance, int):
    gpus = [gpus_per_instance] * len(models)
  else:
    gpus = [int(g) for g in gpus_per_instance]
    if len(gpus) != len(models):
      raise ValueError(f"build_profile: gpus_per_instance expected {len(models)} values (one per "
                       f"model), got {len(gpus)}")
  if any(g < 1 for g in gpus):
    raise ValueError(f"build_profile: gpus_per_instance expected integers >= 1, got {gpus}")
  if quality_table is None or isinstance(quality_table, (str, os.PathLike)):
    path = quality_lib.DEFAULT_QUALITY_PATH if quality_table is None else quality_table
    table = quality_lib.load_quality_table(path)
    quality_source = (os.path.relpath(path, os.path.dirname(os.path.dirname(__file__)))
                      if quality_table is None else str(path))
  else:
    table, quality_source = quality_table, "a quality table passed by the caller"
  mps = [model_profile(m, n, tasks, quality_lib.quality_for(m, tasks, table), spec, params, g)
         for (m, n), g in zip(models, gpus)]
  date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
  provenance = (
      f"Roofline model (bes.roofline), built {date}. GPU {spec.name}: "
      f"{spec.memory_bytes / 1e9:g} GB, {spec.mem_bandwidth_bytes_per_s / 1e12:g} TB/s, "
      f"{spec.peak_flops / 1e12:g} TFLOP/s dense bf16 (vendor datasheets). Constants: "
      f"dtype_bytes={params.dtype_bytes}, efficiency={params.efficiency:g}, "
      f"iteration_overhead_s={params.iteration_overhead_s:g}, context_len={params.context_len}, "
      f"max_batch_cap={params.max_batch_cap}, memory_reserve_frac={params.memory_reserve_frac:g}. "
      "decode_step_s[b-1] = overhead + max(bytes(b) / (eff*bw), flops(b) / (eff*peak)) with "
      "bytes(b) = (params*dtype_bytes + b*kv_bytes_per_token*context_len/2) / g and "
      "flops(b) = b*flops_per_token(context_len/2) / g (g = gpus_per_instance, ideal tensor "
      "parallelism); prefill_s_per_token = flops_per_token(context_len/2) / (g*eff*peak); "
      "prefill_s_fixed = params*dtype_bytes / (g*eff*bw); max_batch = min(max_batch_cap, "
      "floor((g*memory*(1-reserve) - params*dtype_bytes) / (kv_bytes_per_token*context_len))). "
      "Architectures: bes.models.opt_config (released facebook/opt-* configs). Times rounded "
      f"to the nanosecond. Quality: zero-shot accuracy from {quality_source}.")
  profile = Profile(name=name or f"opt-{spec.name.lower()}-roofline", provenance=provenance,
                    tasks=tuple(tasks), models=tuple(mps))
  return profile_from_dict(profile.to_dict(), source=f"build_profile({profile.name})")
