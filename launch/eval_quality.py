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
reads (its `acc` column) into a profile. The work is done by `bes.models.scoring`.
"""
from __future__ import annotations

import os

from absl import app
from absl import flags

import jax.numpy as jnp

from bes import cli_errors, io_util
from bes.models import checkpoint
from bes.models import scoring

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Local HF-format OPT checkpoint directory.")
_TASKS = flags.DEFINE_list("tasks", None, "Comma-separated NAME=PATH.jsonl task files.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Sequences per jitted forward pass.")
_OUT = flags.DEFINE_string("out", None, "Output CSV path.")
_MODEL_NAME = flags.DEFINE_string("model_name", None,
                                  "Model column (default: the checkpoint directory's name).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
_DELIMITER = flags.DEFINE_string("target_delimiter", " ", "Put between context and a text choice.")
_LIMIT = flags.DEFINE_integer("limit", None, "Score only the first LIMIT examples of each task.")


def main(argv):
  del argv
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  io_util.check_writable_file(_OUT.value, "--out")   # before scoring, not after
  tasks = scoring.parse_tasks(_TASKS.value)
  config, params = checkpoint.load_checkpoint(_CHECKPOINT.value, jnp.dtype(_DTYPE.value))
  tokenizer = checkpoint.load_tokenizer(_CHECKPOINT.value)
  results = scoring.evaluate(params, config, tokenizer, tasks, _BATCH_SIZE.value,
                             _DELIMITER.value, _LIMIT.value)
  model = _MODEL_NAME.value or os.path.basename(os.path.normpath(_CHECKPOINT.value))
  scoring.write_csv(_OUT.value, model, results)
  for task, r in results.items():
    print(f"{model} {task}: acc {r['acc']:.4f} +- {r['acc_stderr']:.4f}, "
          f"acc_norm {r['acc_norm']:.4f} +- {r['acc_norm_stderr']:.4f}")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(cli_errors.user_errors(main))
