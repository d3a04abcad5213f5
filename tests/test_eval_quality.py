"""Log-likelihood scoring against PyTorch transformers, and the zero-shot evaluator end to end."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models

from bes import quality as quality_lib
from bes.models import checkpoint
from bes.models import scoring
from tests import opt_testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_tiny_tokenizer(directory):
  """A character BPE tokenizer (ids < opt_testing.VOCAB) with a few merges, incl. ' a' and ': '."""
  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
  for c in " abcdefghijklmnopqrstuvwxyz.:?\n":
    vocab[c] = len(vocab)
  merges = [(" ", "a"), ("t", "h"), ("th", "e"), (":", " "), ("e", "s"), (" ", "n")]
  for a, b in merges:
    vocab[a + b] = len(vocab)
  assert len(vocab) <= opt_testing.VOCAB
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
      unk_token="<unk>").save_pretrained(directory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  directory, hf_model = opt_testing.make_hf_checkpoint(tmp_path_factory.mktemp("ckpt"))
  save_tiny_tokenizer(directory)
  config, params = checkpoint.load_checkpoint(directory)
  return directory, hf_model, config, params


def torch_loglikelihood(hf_model, context, continuation):
  """Sum of continuation log-probs from the transformers model's logits (empty context -> [2])."""
  ids = (list(context) or [2]) + list(continuation)
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
  logp = torch.log_softmax(logits, dim=-1)
  start = len(ids) - len(continuation)
  lp = [logp[p - 1, ids[p]] for p in range(start, len(ids))]
  greedy = all(int(logits[p - 1].argmax()) == ids[p] for p in range(start, len(ids)))
  return float(sum(lp)), greedy


def test_loglikelihoods_match_torch(ckpt):
  _, hf_model, config, params = ckpt
  rng = np.random.default_rng(0)
  ids = lambda n: rng.integers(3, config.vocab_size, n).tolist()
  requests = [(ids(5), ids(1)), (ids(30), ids(4)), ([], ids(3)), (ids(1), ids(2)),
              (ids(12), ids(7))]  # batches of 3 (one padded with dummy rows), several buckets
  # Longer than the 64 positions: truncated from the left to the last 65 tokens, as the harness.
  long_context, long_cont = ids(70), ids(3)
  requests.append((long_context, long_cont))
  got, greedy = scoring.loglikelihoods(params, config, requests, batch_size=3)
  want = [torch_loglikelihood(hf_model, c, x) for c, x in requests[:-1]]
  want.append(torch_loglikelihood(hf_model, long_context[-(opt_testing.MAX_POSITIONS + 1 - 3):],
                                  long_cont))
  np.testing.assert_allclose(got, [w for w, _ in want], atol=1e-4, rtol=0)
  assert greedy.tolist() == [g for _, g in want]
  # A greedy continuation is recognised as such.
  ctx = ids(6)
  with torch.no_grad():
    nxt = int(hf_model(input_ids=torch.tensor([ctx])).logits[0, -1].argmax())
  assert scoring.loglikelihoods(params, config, [(ctx, [nxt])])[1].tolist() == [True]


def test_encode_pair_follows_the_harness(ckpt):
  tokenizer = checkpoint.load_tokenizer(ckpt[0])
  enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
  # Trailing context whitespace moves onto the continuation, so ': ' is not merged here.
  ctx, cont = scoring.encode_pair(tokenizer, "the answer: ", "a cat")
  assert ctx == enc("the answer:") and cont == enc(" a cat") and ctx + cont == enc(
      "the answer: a cat")
  # The continuation is the tail of the whole encoding, even where a merge straddles the cut.
  ctx, cont = scoring.encode_pair(tokenizer, "th", "e cat")
  whole = enc("the cat")
  assert ctx == whole[:len(enc("th"))] and cont == whole[len(enc("th")):]


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.mark.slow
def test_accuracy_on_a_hand_made_task(ckpt, tmp_path):
  directory, hf_model, _, _ = ckpt
  examples = [
      {"context": [5, 9, 11, 4], "choices": [[7], [8, 12], [20, 21, 22]]},
      {"context": [30, 31], "choices": [[40, 41], [42]]},
      {"context": [], "choices": [[50], [51, 52]]},
  ]
  lls = [[torch_loglikelihood(hf_model, ex["context"], c)[0] for c in ex["choices"]]
         for ex in examples]
  # Labels by hand: examples 0 and 2 name the most likely choice, example 1 the least likely.
  examples[0]["label"] = int(np.argmax(lls[0]))
  examples[1]["label"] = int(np.argmin(lls[1]))
  examples[2]["label"] = int(np.argmax(lls[2]))
  norm_hits = [int(np.argmax(np.array(ll) / [len(c) for c in ex["choices"]])) == ex["label"]
               for ex, ll in zip(examples, lls)]
  text = [{"context": "the answer:", "choices": ["a cat", "the sea", "nest"], "label": 1},
          {"context": "is the sea at the east? ", "choices": ["yes", "no"], "label": 0}]
  tokenizer = checkpoint.load_tokenizer(directory)
  text_lls = [[torch_loglikelihood(hf_model, *scoring.encode_pair(tokenizer, ex["context"],
                                                                   " " + c))[0]
               for c in ex["choices"]] for ex in text]
  text_hits = [int(np.argmax(ll)) == ex["label"] for ex, ll in zip(text, text_lls)]
  out = tmp_path / "q.csv"
  cmd = [sys.executable, os.path.join(ROOT, "launch", "eval_quality.py"),
         f"--checkpoint={directory}", "--batch_size=4", f"--out={out}", "--model_name=tiny-opt",
         f"--tasks=ids={write_jsonl(tmp_path / 'ids.jsonl', examples)},"
         f"text={write_jsonl(tmp_path / 'text.jsonl', text)}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r["task"]: r for r in csv.DictReader(out.open())}
  assert list(rows["ids"]) == list(scoring.COLUMNS)
  assert float(rows["ids"]["acc"]) == pytest.approx(2 / 3, abs=1e-6)
  assert float(rows["ids"]["acc_stderr"]) == pytest.approx(1 / 3, abs=1e-6)  # sqrt(2/9 / 2)
  p = np.mean(norm_hits)
  assert float(rows["ids"]["acc_norm"]) == pytest.approx(p, abs=1e-6)
  assert float(rows["ids"]["acc_norm_stderr"]) == pytest.approx(math.sqrt(p * (1 - p) / 2),
                                                                abs=1e-6)
  assert float(rows["text"]["acc"]) == pytest.approx(np.mean(text_hits), abs=1e-6)
  table = quality_lib.load_quality_table(out)
  assert table[("tiny-opt", "ids")] == pytest.approx(2 / 3, abs=1e-6)


def test_acc_norm_uses_choice_characters():
  examples = [{"choices": ["ab", "abcdef"], "label": 1}]
  # Raw: choice 0 wins (-2 > -3); per character: -1.0 vs -0.5, choice 1 wins.
  r = scoring.accuracy(examples, np.array([-2.0, -3.0]), [2, 6])
  assert (r["acc"], r["acc_norm"]) == (0.0, 1.0) and math.isnan(r["acc_stderr"])


@pytest.mark.parametrize("line,match", [
    ('{"context": "x", "choices": ["a", "b"]}', r"t\.jsonl:2: missing field\(s\) \['label'\]"),
    ('{"context": "x", "choices": ["a"], "label": 0}', r"t\.jsonl:2: field 'choices'"),
    ('{"context": [1, 2], "choices": ["a", "b"], "label": 0}', r"t\.jsonl:2: field 'choices'"),
    ('{"context": 3, "choices": ["a", "b"], "label": 0}', r"t\.jsonl:2: field 'context'"),
    ('{"context": "x", "choices": ["a", "b"], "label": 2}', r"t\.jsonl:2: field 'label'"),
    ('{"context": "x", "choices": "ab", "label": 0}', r"t\.jsonl:2: field 'choices'"),
    ('{"context": "x", ', r"t\.jsonl:2: not valid JSON"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, match):
  path = tmp_path / "t.jsonl"
  path.write_text('{"context": "x", "choices": ["a", "b"], "label": 1}\n' + line + "\n")
  with pytest.raises(ValueError, match=match):
    scoring.load_task(str(path))


def test_text_task_without_tokenizer_is_refused(tmp_path):
  examples = scoring.load_task(write_jsonl(tmp_path / "t.jsonl", [
      {"context": "x", "choices": ["a", "b"], "label": 0}]))
  with pytest.raises(ValueError, match="no tokenizer"):
    scoring.requests_for(examples, None, " ", "t.jsonl")
  with pytest.raises(ValueError, match="--tasks"):
    scoring.parse_tasks(["arc_easy"])
