r"""Zero-shot multiple-choice accuracy of a local OPT checkpoint, lm-evaluation-harness style.

  python launch/eval_quality.py --checkpoint=/path/to/opt-125m \
    --tasks=arc_easy=data/arc_easy.jsonl,piqa=data/piqa.jsonl --batch_size=16 \
    --out=quality.csv

Each task is a JSONL file, one example per line:
  {"context": "Question: ...\nAnswer:", "choices": ["yes", "no"], "label": 0}
with the context and choices either text (tokenised by the checkpoint's tokenizer, which must
then be saved in --checkpoint) or token-id lists (`"context": [2, 7, 9], "choices": [[5], [6, 8]]`).

For every example, each choice is scored by the log-likelihood of its continuation given the
context (`bes.models.scoring`: sum of the continuation tokens' log-probs). For text the
continuation is --target_delimiter (default one space, the harness's default) + choice,
tokenised with the harness's `_encode_pair` (trailing context whitespace moves onto the
continuation; no BOS token). Token-id choices are the continuation as given.

  acc      = mean over examples of [argmax_c ll_c == label]
  acc_norm = mean of [argmax_c ll_c / len_c == label], len_c the choice's length in characters
             (text, without the delimiter, as the harness's `acc_norm`) or in tokens (token ids)
  stderr   = sqrt(p (1 - p) / (n - 1)) (the harness's standard error of a mean; nan if n = 1)

Ties go to the first choice (numpy argmax). The output CSV has the columns
`model,task,acc,acc_stderr,acc_norm,acc_norm_stderr`, which `bes.quality.load_quality_table`
reads (its `acc` column) into a profile.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bes.models import checkpoint  # noqa: E402
from bes.models import scoring  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Local HF-format OPT checkpoint directory.")
_TASKS = flags.DEFINE_list("tasks", None, "Comma-separated NAME=PATH.jsonl task files.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Sequences per jitted forward pass.")
_OUT = flags.DEFINE_string("out", None, "Output CSV path.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Model column (default: checkpoint dir name).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
_DELIMITER = flags.DEFINE_string("target_delimiter", " ", "Put between context and a text choice.")
_LIMIT = flags.DEFINE_integer("limit", None, "Score only the first LIMIT examples of each task.")

COLUMNS = ("model", "task", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def _is_ids(x) -> bool:
  return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_example(line: str, where: str) -> dict:
  """One JSONL example, checked; `where` is 'file:line' for the error messages."""
  try:
    ex = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e})") from e
  if not isinstance(ex, dict):
    raise ValueError(f"{where}: expected a JSON object with context, choices, label")
  missing = [k for k in ("context", "choices", "label") if k not in ex]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}")
  context, choices, label = ex["context"], ex["choices"], ex["label"]
  text = isinstance(context, str)
  if not text and not _is_ids(context):
    raise ValueError(f"{where}: field 'context': expected a string or a list of token ids, "
                     f"got {context!r}")
  ok = isinstance(choices, list) and len(choices) >= 2 and all(
      (isinstance(c, str) and c) if text else (_is_ids(c) and c) for c in choices)
  if not ok:
    kind = "non-empty strings" if text else "non-empty token-id lists"
    raise ValueError(f"{where}: field 'choices': expected a list of >= 2 {kind} (the same "
                     f"kind as 'context'), got {choices!r}")
  if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
    raise ValueError(f"{where}: field 'label': expected an integer in [0, {len(choices)}), "
                     f"got {label!r}")
  return {"context": context, "choices": choices, "label": label, "text": text}


def load_task(path: str, limit: int | None = None) -> list[dict]:
  """The examples of a JSONL task file (blank lines skipped)."""
  try:
    with open(path) as f:
      lines = f.readlines()
  except OSError as e:
    raise ValueError(f"task file {path!r}: cannot read: {e}") from e
  examples = [parse_example(line, f"{path}:{i + 1}") for i, line in enumerate(lines)
              if line.strip()]
  if not examples:
    raise ValueError(f"task file {path!r}: expected at least one example, got none")
  return examples[:limit] if limit else examples


def requests_for(examples: list[dict], tokenizer, delimiter: str, source: str):
  """(requests [(context ids, continuation ids)], lengths for acc_norm), choices flattened."""
  requests, lengths = [], []
  for i, ex in enumerate(examples):
    if ex["text"] and tokenizer is None:
      raise ValueError(f"{source}: example {i + 1} is text, but the checkpoint has no tokenizer "
                       "(save one in the checkpoint directory, or give token ids)")
    for choice in ex["choices"]:
      if ex["text"]:
        requests.append(scoring.encode_pair(tokenizer, ex["context"], delimiter + choice))
      else:
        requests.append((ex["context"], choice))
      lengths.append(len(choice))
  return requests, lengths


def stderr(p: float, n: int) -> float:
  """Standard error of a mean of n 0/1 outcomes with mean p: sqrt(p(1-p)/(n-1))."""
  return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else math.nan


def accuracy(examples: list[dict], lls: np.ndarray, lengths) -> dict[str, float]:
  """acc, acc_norm and their standard errors from the flattened per-choice log-likelihoods."""
  hits, hits_norm, k = [], [], 0
  for ex in examples:
    n = len(ex["choices"])
    ll, length = np.asarray(lls[k:k + n]), np.asarray(lengths[k:k + n], float)
    hits.append(int(np.argmax(ll)) == ex["label"])
    hits_norm.append(int(np.argmax(ll / length)) == ex["label"])
    k += n
  acc, acc_norm = float(np.mean(hits)), float(np.mean(hits_norm))
  return {"acc": acc, "acc_stderr": stderr(acc, len(hits)),
          "acc_norm": acc_norm, "acc_norm_stderr": stderr(acc_norm, len(hits))}


def parse_tasks(items) -> list[tuple[str, str]]:
  """['name=path', ...] -> [(name, path), ...]."""
  out = []
  for item in items or []:
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise ValueError(f"--tasks: expected NAME=PATH.jsonl, got {item!r}")
    out.append((name.strip(), path.strip()))
  if not out:
    raise ValueError("--tasks: expected at least one NAME=PATH.jsonl")
  return out


def evaluate(params, config, tokenizer, tasks, batch_size: int, delimiter: str = " ",
             limit: int | None = None) -> dict[str, dict[str, float]]:
  """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr}} over (name, path) task files."""
  results = {}
  for name, path in tasks:
    examples = load_task(path, limit)
    requests, lengths = requests_for(examples, tokenizer, delimiter, path)
    lls, _ = scoring.loglikelihoods(params, config, requests, batch_size)
    results[name] = accuracy(examples, lls, lengths)
  return results


def write_csv(path: str, model: str, results: dict[str, dict[str, float]]) -> None:
  """One row per task with the columns of `COLUMNS`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for task, r in results.items():
      writer.writerow([model, task] + [f"{r[c]:.6f}" for c in COLUMNS[2:]])


def main(argv):
  del argv
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  tasks = parse_tasks(_TASKS.value)
  config, params = checkpoint.load_checkpoint(_CHECKPOINT.value, jnp.dtype(_DTYPE.value))
  tokenizer = checkpoint.load_tokenizer(_CHECKPOINT.value)
  results = evaluate(params, config, tokenizer, tasks, _BATCH_SIZE.value, _DELIMITER.value,
                     _LIMIT.value)
  model = _MODEL_NAME.value or os.path.basename(os.path.normpath(_CHECKPOINT.value))
  write_csv(_OUT.value, model, results)
  for task, r in results.items():
    print(f"{model} {task}: acc {r['acc']:.4f} +- {r['acc_stderr']:.4f}, "
          f"acc_norm {r['acc_norm']:.4f} +- {r['acc_norm_stderr']:.4f}")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
