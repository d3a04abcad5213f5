"""launch/profile_latency.py: a tiny measured profile loads with bes.profile; fitting and flag parsing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bes import profile as profile_lib
from bes.models import latency as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "ffn_dim": 32, "max_position_embeddings": 64}


@pytest.mark.slow
def test_tiny_profile_is_written_and_loads(tmp_path):
  configs = tmp_path / "configs.json"
  configs.write_text(json.dumps({"tiny": TINY, "tiny2": dict(TINY, hidden_size=32)}))
  out = tmp_path / "profile.json"
  cmd = [sys.executable, os.path.join(ROOT, "launch", "profile_latency.py"),
         f"--config_json={configs}", "--models=tiny:2", "--max_batch=2",
         "--context_len=8", "--prefill_lengths=4,8", "--repeats=2", "--warmup=1",
         "--tasks=arc_easy,piqa", "--quality_default=0.25", f"--out={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  profile = profile_lib.load_profile(out)
  assert profile.tasks == ("arc_easy", "piqa")
  assert profile.model_names == ("tiny",)
  tiny, = profile.models
  assert tiny.instances == 2 and tiny.max_batch == 2 and len(tiny.decode_step_s) == 2
  assert all(t > 0 for t in tiny.decode_step_s)
  assert tiny.quality == {"arc_easy": 0.25, "piqa": 0.25}
  assert tiny.prefill_s_fixed >= 0 and tiny.prefill_s_per_token >= 0
  for key in ("cpu", "jax", "float32", "median of 2"):
    assert key in profile.provenance


def test_fit_prefill_recovers_a_line():
  lengths = [16, 32, 64, 128]
  seconds = [0.002 + 3e-5 * n for n in lengths]
  fixed, per_token = launcher.fit_prefill(lengths, seconds)
  np.testing.assert_allclose([fixed, per_token], [0.002, 3e-5], rtol=1e-9)
  assert launcher.fit_prefill([2, 4], [0.5, 0.1]) == (pytest.approx(0.9), 0.0)  # slope clipped
  with pytest.raises(ValueError, match="prefill_lengths"):
    launcher.fit_prefill([8, 8], [0.1, 0.2])


def test_model_and_config_flags():
  assert launcher.parse_models("opt-125m:1, tiny:3,x") == [("opt-125m", 1), ("tiny", 3), ("x", 1)]
  for bad in ("opt-125m:0", "a:b", ":2", ""):
    with pytest.raises(ValueError, match="--models"):
      launcher.parse_models(bad)
  assert launcher.resolve_config("opt-350m", {}).word_embed_proj_dim == 512


def test_bad_config_json_names_file_and_field(tmp_path):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"tiny": dict(TINY, hiden_size=3)}))
  with pytest.raises(ValueError, match=r"c\.json.*'tiny'.*hiden_size"):
    launcher.load_custom_configs(str(path))
  path.write_text(json.dumps({"tiny": dict(TINY, num_attention_heads=3)}))
  with pytest.raises(ValueError, match=r"c\.json.*'tiny'.*divisible"):
    launcher.load_custom_configs(str(path))
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match="expected an object"):
    launcher.load_custom_configs(str(path))


def test_quality_default_only_when_asked():
  table = {("facebook/opt-125m", "piqa"): 0.63}
  assert launcher.model_quality("opt-125m", ["piqa"], table, None) == ({"piqa": 0.63}, False)
  assert launcher.model_quality("tiny", ["piqa"], table, 0.4) == ({"piqa": 0.4}, True)
  with pytest.raises(ValueError, match="unknown model"):
    launcher.model_quality("tiny", ["piqa"], table, None)


def test_model_parallel_profile_measures_a_sharded_engine(tmp_path):
  """--model_parallel=2 on 2 forced CPU devices: a tensor-parallel engine is timed."""
  from tests.multidevice import child_env  # pylint: disable=import-outside-toplevel
  configs = tmp_path / "configs.json"
  configs.write_text(json.dumps({"tiny": TINY}))
  out = tmp_path / "profile.json"
  cmd = [sys.executable, os.path.join(ROOT, "launch", "profile_latency.py"),
         f"--config_json={configs}", "--models=tiny:1", "--max_batch=1", "--context_len=8",
         "--prefill_lengths=4,8", "--repeats=1", "--warmup=1", "--tasks=arc_easy",
         "--quality_default=0.25", "--model_parallel=2", f"--out={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                        env=child_env(2))
  assert proc.returncode == 0, proc.stderr[-3000:]
  profile = profile_lib.load_profile(out)
  assert profile.models[0].gpus_per_instance == 2
  assert "tensor-parallel engine, mesh {'seed': 1, 'data': 1, 'model': 2}" in profile.provenance
  proc = subprocess.run(cmd[:-2] + ["--model_parallel=3", f"--out={out}"], capture_output=True,
                        text=True, timeout=60, cwd=tmp_path, env=child_env(2))
  assert proc.returncode != 0 and "--model_parallel: expected 1..2" in proc.stderr
