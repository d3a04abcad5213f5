"""launch/generate.py end to end on a tiny saved random OPT checkpoint (subprocesses)."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from bes.models import checkpoint
from bes.models import sampling
from tests import opt_testing

pytestmark = pytest.mark.slow   # subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *args):
  cmd = [sys.executable, os.path.join(ROOT, "launch", "generate.py"), *args]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  directory, _ = opt_testing.make_hf_checkpoint(tmp_path_factory.mktemp("gen"), variant="pre")
  return directory


def test_token_prompts_greedy_match_sampling_generate(ckpt, tmp_path):
  prompts = [[5, 9, 33, 12, 7], [40, 41]]
  (tmp_path / "p.json").write_text(json.dumps(prompts))
  proc = _run(tmp_path, f"--checkpoint={ckpt}", "--prompts=p.json", "--max_new_tokens=6",
              "--greedy", "--out=o/out.json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "o" / "out.json").read_text())
  assert set(out) == {"tokens", "logprobs"}
  config, params = checkpoint.load_checkpoint(ckpt)
  tokens = np.array([[1, 1, 1] + prompts[1], prompts[0]][::-1], np.int32)
  mask = tokens != 1
  ref = sampling.generate(params, config, tokens, mask, jax.random.key(0), 6)
  for b in range(2):
    n = int(ref.lengths[b])
    assert out["tokens"][b] == np.asarray(ref.tokens[b, :n]).tolist()
    np.testing.assert_allclose(out["logprobs"][b], np.asarray(ref.logprobs[b, :n]), atol=1e-5)


def test_string_prompts_with_tokenizer_sampling_bfloat16(ckpt, tmp_path):
  opt_testing.save_word_tokenizer(ckpt)
  try:
    (tmp_path / "p.json").write_text(json.dumps(["w5 w9 w33", "w40"]))
    proc = _run(tmp_path, f"--checkpoint={ckpt}", "--prompts=p.json", "--max_new_tokens=5",
                "--temperature=0.9", "--top_k=20", "--top_p=0.9", "--seed=3",
                "--dtype=bfloat16", "--out=out.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
  finally:
    for name in ("tokenizer.json", "tokenizer_config.json"):
      os.remove(os.path.join(ckpt, name))
  assert set(out) == {"tokens", "logprobs", "text"} and len(out["text"]) == 2
  for toks, lps, text in zip(out["tokens"], out["logprobs"], out["text"]):
    assert 1 <= len(toks) == len(lps) <= 5 and all(lp <= 0 for lp in lps)
    assert text.split() == [f"w{t}" for t in toks if t > 3]


@pytest.mark.parametrize("prompts,flag,message", [
    (None, "--checkpoint=/nonexistent/dir", "--checkpoint: directory"),
    ("{oops", None, "not valid JSON"),
    ([], None, "non-empty JSON list"),
    (["a string"], None, "has no tokenizer"),
    ([[5]], "--top_k=3", "--greedy conflicts"),
])
def test_clear_errors(ckpt, tmp_path, prompts, flag, message):
  text = prompts if isinstance(prompts, str) else json.dumps(prompts if prompts is not None
                                                             else [[5]])
  (tmp_path / "p.json").write_text(text)
  args = [f"--checkpoint={ckpt}", "--prompts=p.json", "--max_new_tokens=2", "--out=o.json"]
  if flag and flag.startswith("--checkpoint"):
    args[0] = flag
  elif flag:
    args += [flag, "--greedy"]
  proc = _run(tmp_path, *args)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]   # one line, not a traceback
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("generate.py: error: ") and re.search(message, last), last
  assert not (tmp_path / "o.json").exists()
