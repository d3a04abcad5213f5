"""Tests for bes.roofline (latency model, memory-derived batch, builder) and the CLI."""
import os
import re
import subprocess
import sys

import pytest

from bes import profile as P
from bes import roofline as R
from bes.models.opt_config import OPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny architecture whose arithmetic is done by hand below:
#   num_params = vocab*h + (max_pos+2)*h + layers*(4(h^2+h) + (hf+f) + (fh+h) + 4h) + 2h
#              = 40 + 32 + (80 + 40 + 36 + 16) + 8 = 252  -> 504 bytes in bf16
#   kv_bytes_per_token = 2 * layers * h * 2 = 16
#   flops_per_token(ctx) = 2 * (layers*(4h^2 + 2hf) + vocab*h) + 4*layers*h*ctx = 336 + 16 ctx
TINY = OPTConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                 ffn_dim=8, max_position_embeddings=6)
TINY_GPU = R.GPUSpec("tiny-gpu", memory_bytes=10_000, mem_bandwidth_bytes_per_s=1000, peak_flops=1000)
TINY_PARAMS = R.RooflineParams(dtype_bytes=2, efficiency=0.5, iteration_overhead_s=0.25,
                               context_len=4, max_batch_cap=1000, memory_reserve_frac=0.2)


def test_tiny_config_arithmetic_matches_hand_count():
  assert TINY.num_params() == 252
  assert R.param_bytes(TINY, TINY_PARAMS) == 504
  assert TINY.kv_bytes_per_token(2) == 16
  assert TINY.flops_per_token(2) == 336 + 32


@pytest.mark.parametrize("batch,g,expected", [
    # bytes(b) = 504 + b*16*(4/2) = 504 + 32b; flops(b) = 368b; eff*bw = eff*peak = 500.
    (1, 1, 0.25 + 536 / 500),    # memory bound: 1.072 > 0.736
    (2, 1, 0.25 + 736 / 500),    # compute bound: 1.472 > 568/500
    (2, 2, 0.25 + 736 / 1000),   # tensor parallel over 2 GPUs halves both
    (4, 1, 0.25 + 1472 / 500),
])
def test_decode_step_hand_computed(batch, g, expected):
  got = R.decode_step_s(TINY, batch, TINY_GPU, TINY_PARAMS, gpus_per_instance=g)
  assert got == pytest.approx(expected, rel=1e-12)


def test_prefill_costs_hand_computed():
  fixed, per_token = R.prefill_costs(TINY, TINY_GPU, TINY_PARAMS)
  assert fixed == pytest.approx(504 / 500)
  assert per_token == pytest.approx(368 / 500)
  fixed2, per_token2 = R.prefill_costs(TINY, TINY_GPU, TINY_PARAMS, gpus_per_instance=2)
  assert (fixed2, per_token2) == pytest.approx((fixed / 2, per_token / 2))


def test_max_batch_from_memory():
  # floor((10000 * 0.8 - 504) / (16 * 4)) = floor(117.1) = 117; on 2 GPUs floor(242.1) = 242.
  assert R.max_batch_from_memory(TINY, TINY_GPU, TINY_PARAMS) == 117
  assert R.max_batch_from_memory(TINY, TINY_GPU, TINY_PARAMS, gpus_per_instance=2) == 242
  capped = R.RooflineParams(**{**TINY_PARAMS.__dict__, "max_batch_cap": 50})
  assert R.max_batch_from_memory(TINY, TINY_GPU, capped) == 50
  small_gpu = R.GPUSpec("small", memory_bytes=600, mem_bandwidth_bytes_per_s=1, peak_flops=1)
  with pytest.raises(ValueError, match="does not fit on 1 x small"):
    R.max_batch_from_memory(TINY, small_gpu, TINY_PARAMS)


def test_real_models_memory_limits():
  # OPT-6.7B on one A100-80GB: (72e9 - 13.3e9) / (512 KiB * 1024) -> 109 sequences.
  assert R.max_batch_from_memory("opt-6.7b") == 109
  assert R.max_batch_from_memory("opt-125m") == 128  # capped
  with pytest.raises(ValueError, match="opt-30b does not fit on 1 x A100-40GB"):
    R.max_batch_from_memory("opt-30b", "A100-40GB")
  assert R.max_batch_from_memory("opt-30b", "A100-40GB", gpus_per_instance=2) >= 1


def test_default_profile_tables_are_monotone_and_plausible():
  p = P.default_profile()
  for m in p.models:
    t = m.decode_step_s
    assert all(a < b for a, b in zip(t, t[1:])), m.name  # strictly slower with batch
    assert len(t) == m.max_batch
  by = {m.name: m for m in p.models}
  assert 1e-3 < by["opt-125m"].decode_step_s[0] < 5e-3
  assert 10e-3 < by["opt-6.7b"].decode_step_s[0] < 20e-3
  assert by["opt-125m"].decode_step_s[0] < by["opt-1.3b"].decode_step_s[0] < by["opt-6.7b"].decode_step_s[0]
  assert by["opt-6.7b"].max_batch < by["opt-125m"].max_batch


def test_builder_other_gpu_and_deployment():
  table = {("opt-125m", "t"): 0.25, ("facebook/opt-13b", "t"): 0.75}
  p = R.build_profile([("opt-125m", 3), ("opt-13b", 1)], ["t"], gpu="H100-80GB-SXM",
                      gpus_per_instance=[1, 2], quality_table=table, name="h100", date="2000-01-02")
  assert p.name == "h100" and p.tasks == ("t",)
  assert [(m.instances, m.gpus_per_instance) for m in p.models] == [(3, 1), (1, 2)]
  assert p.num_gpus == 5
  big = p.models[1]
  assert big.max_batch == R.max_batch_from_memory("opt-13b", "H100-80GB-SXM", gpus_per_instance=2)
  assert big.decode_step_s[4] == pytest.approx(
      R.decode_step_s("opt-13b", 5, "H100-80GB-SXM", gpus_per_instance=2), abs=1e-9)
  assert big.quality == {"t": 0.75}
  for text in ("H100-80GB-SXM", "3.35 TB/s", "989 TFLOP/s", "efficiency=0.6", "context_len=1024",
               "iteration_overhead_s=0.002", "memory_reserve_frac=0.1", "max_batch_cap=128",
               "2000-01-02", "passed by the caller"):
    assert text in p.provenance
  h100 = p.models[0].decode_step_s[0]
  a100 = R.build_profile([("opt-125m", 1)], ["piqa"]).models[0].decode_step_s[0]
  assert h100 < a100


def test_builder_errors():
  with pytest.raises(ValueError, match="unknown GPU 'V100'"):
    R.build_profile(gpu="V100")
  with pytest.raises(ValueError, match="gpus_per_instance expected 3 values"):
    R.build_profile(gpus_per_instance=[1, 1])
  with pytest.raises(ValueError, match="RooflineParams.efficiency"):
    R.build_profile(params=R.RooflineParams(efficiency=1.5))
  with pytest.raises(ValueError, match="unknown model 'opt-175b'"):
    R.build_profile([("opt-175b", 1)])
  with pytest.raises(ValueError, match="no accuracy for model 'facebook/opt-125m' on task 'mmlu'"):
    R.build_profile(tasks=["mmlu"])


def _file_date(profile):
  return re.search(r"built (\d{4}-\d{2}-\d{2})", profile.provenance).group(1)


def test_committed_default_equals_builder_output():
  committed = P.default_profile()
  rebuilt = R.build_profile(date=_file_date(committed))
  assert rebuilt.to_dict() == committed.to_dict()


@pytest.mark.slow
def test_cli_reproduces_committed_default(tmp_path):
  out = tmp_path / "p.json"
  cmd = [sys.executable, os.path.join(REPO, "launch", "build_profile.py"),
         "--models=opt-125m:1,opt-1.3b:1,opt-6.7b:2", "--tasks=arc_easy,piqa,winogrande,lambada_openai",
         "--gpu=A100-80GB-SXM", f"--out={out}", f"--date={_file_date(P.default_profile())}"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=True)
  assert "| opt-6.7b | 2 x 1 | 109 |" in res.stdout
  assert out.read_text() == P.DEFAULT_PROFILE_PATH.read_text()
  bad = subprocess.run(cmd[:2] + ["--models=opt-125m", f"--out={out}"], capture_output=True,
                       text=True, cwd=tmp_path)
  assert bad.returncode != 0 and "--models: expected NAME:INSTANCES" in bad.stderr
