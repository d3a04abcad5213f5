r"""Builds a roofline serving profile (JSON) for OPT models on one GPU type.

The defaults rebuild the shipped `bes/data/profiles/opt_a100_roofline.json`:

  python launch/build_profile.py \
    --models=opt-125m:1,opt-1.3b:1,opt-6.7b:2 \
    --tasks=arc_easy,piqa,winogrande,lambada_openai \
    --gpu=A100-80GB-SXM --out=bes/data/profiles/opt_a100_roofline.json

It prints a markdown table of the result (max_batch, tau(1), tau(B) per model). The roofline
constants have flags of the same names as `bes.roofline.RooflineParams`.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags

from bes import cli_errors, profile as profile_lib, roofline

_DEFAULTS = roofline.RooflineParams()

_MODELS = flags.DEFINE_string(
    "models", ",".join(f"{m}:{n}" for m, n in roofline.DEFAULT_MODELS),
    "Comma-separated OPT_NAME:INSTANCES pairs.")
_TASKS = flags.DEFINE_string("tasks", ",".join(roofline.DEFAULT_TASKS), "Comma-separated tasks.")
_GPU = flags.DEFINE_enum("gpu", roofline.DEFAULT_GPU, sorted(roofline.GPUS), "GPU type.")
_GPUS_PER_INSTANCE = flags.DEFINE_string(
    "gpus_per_instance", "1", "GPUs per instance: one integer for all models, or one per model "
    "(comma-separated, in --models order).")
_QUALITY_CSV = flags.DEFINE_string(
    "quality_csv", None, "Quality table CSV (model,task,acc[,acc_stderr]); default: the shipped "
    "bes/data/quality/opt_zero_shot_accuracy.csv.")
_NAME = flags.DEFINE_string("name", None, "Profile name (default: opt-<gpu>-roofline).")
_DATE = flags.DEFINE_string("date", None, "Build date written into the provenance (default today, UTC).")
_OUT = flags.DEFINE_string("out", str(profile_lib.DEFAULT_PROFILE_PATH), "Output JSON path.")
_DTYPE_BYTES = flags.DEFINE_integer("dtype_bytes", _DEFAULTS.dtype_bytes, "Bytes per weight / KV value.")
_EFFICIENCY = flags.DEFINE_float("efficiency", _DEFAULTS.efficiency,
                                 "Fraction of peak bandwidth and FLOP/s attained.")
_OVERHEAD = flags.DEFINE_float("iteration_overhead_s", _DEFAULTS.iteration_overhead_s,
                               "Fixed seconds per iteration.")
_CONTEXT_LEN = flags.DEFINE_integer("context_len", _DEFAULTS.context_len,
                                    "KV-cache tokens per sequence (memory sizing; half for reads).")
_MAX_BATCH_CAP = flags.DEFINE_integer("max_batch_cap", _DEFAULTS.max_batch_cap,
                                      "Configured limit on the running batch.")
_RESERVE = flags.DEFINE_float("memory_reserve_frac", _DEFAULTS.memory_reserve_frac,
                              "Fraction of device memory kept for activations / fragmentation.")


def parse_models(text: str) -> list[tuple[str, int]]:
  """'opt-125m:1,opt-6.7b:2' -> [('opt-125m', 1), ('opt-6.7b', 2)]; ValueError naming --models."""
  out = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, count = item.partition(":")
    if not sep or not name or not count.strip().isdigit() or int(count) < 1:
      raise ValueError(f"--models: expected NAME:INSTANCES with INSTANCES an integer >= 1, got {item!r}")
    out.append((name.strip(), int(count)))
  if not out:
    raise ValueError(f"--models: expected at least one NAME:INSTANCES pair, got {text!r}")
  return out


def parse_gpus(text: str, num_models: int) -> int | list[int]:
  """'1' -> 1 (all models); '1,1,2' -> [1, 1, 2]; ValueError naming --gpus_per_instance."""
  parts = [s.strip() for s in text.split(",")]
  if not all(p.isdigit() and int(p) >= 1 for p in parts) or len(parts) not in (1, num_models):
    raise ValueError(f"--gpus_per_instance: expected one integer >= 1 or {num_models} "
                     f"(one per model), got {text!r}")
  return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


def summary_table(profile: profile_lib.Profile) -> str:
  """A markdown table: model, instances x GPUs, max_batch, tau(1), tau(B), prefill costs."""
  rows = ["| model | instances x GPUs | max_batch B | tau(1) ms | tau(B) ms | prefill fixed ms "
          "| prefill per token us |", "|---|---|---|---|---|---|---|"]
  for m in profile.models:
    rows.append(f"| {m.name} | {m.instances} x {m.gpus_per_instance} | {m.max_batch} | "
                f"{m.decode_step_s[0] * 1e3:.3f} | {m.decode_step_s[-1] * 1e3:.3f} | "
                f"{m.prefill_s_fixed * 1e3:.3f} | {m.prefill_s_per_token * 1e6:.3f} |")
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    build(_OUT.value)
  except ValueError as e:
    sys.exit(f"build_profile: {e}")


def build(out: str) -> profile_lib.Profile:
  """Builds the profile the flags describe, writes it to `out` and prints its summary."""
  models = parse_models(_MODELS.value)
  tasks = [t.strip() for t in _TASKS.value.split(",") if t.strip()]
  if not tasks:
    raise ValueError(f"--tasks: expected at least one task, got {_TASKS.value!r}")
  params = roofline.RooflineParams(
      dtype_bytes=_DTYPE_BYTES.value, efficiency=_EFFICIENCY.value,
      iteration_overhead_s=_OVERHEAD.value, context_len=_CONTEXT_LEN.value,
      max_batch_cap=_MAX_BATCH_CAP.value, memory_reserve_frac=_RESERVE.value)
  profile = roofline.build_profile(
      models, tasks, gpu=_GPU.value, params=params,
      gpus_per_instance=parse_gpus(_GPUS_PER_INSTANCE.value, len(models)),
      quality_table=_QUALITY_CSV.value, name=_NAME.value, date=_DATE.value)
  profile_lib.save_profile(profile, out)
  print(f"wrote {out}: {len(profile.models)} models, {profile.num_gpus} GPUs")
  print(summary_table(profile))
  return profile


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
