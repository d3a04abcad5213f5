"""Measured model quality: a CSV table of accuracy per (model, task).

Format (header required, extra columns ignored): `model,task,acc[,acc_stderr]`, one row per
(model, task), accuracy as a fraction in [0, 1]. The shipped table
(`bes/data/quality/opt_zero_shot_accuracy.csv`) holds the zero-shot accuracy of the OPT family
from EleutherAI's lm-evaluation-harness results; its provenance is in `bes/data/PROVENANCE.md`.
Model names are stored as written (e.g. 'facebook/opt-1.3b'); lookups accept the name with
or without an organisation prefix ('opt-1.3b').
"""
from __future__ import annotations

import csv
import math
import os
import pathlib
from typing import Mapping, Sequence

from bes import io_util

DEFAULT_QUALITY_PATH = (pathlib.Path(__file__).resolve().parent / "data" / "quality"
                        / "opt_zero_shot_accuracy.csv")
_REQUIRED_COLUMNS = ("model", "task", "acc")

QualityTable = dict[tuple[str, str], float]


def load_quality_table(path: str | os.PathLike = DEFAULT_QUALITY_PATH) -> QualityTable:
  """Reads a quality CSV into {(model, task): accuracy}.

  Raises:
    ValueError: naming the file (and the line) for a missing file or column, a blank model
      or task, an accuracy that is not a number in [0, 1], a duplicate (model, task) row,
      or a table with no rows.
  """
  path = pathlib.Path(path)
  try:
    with path.open(newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      columns = reader.fieldnames or []
      missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
      if missing:
        raise ValueError(f"quality table {str(path)!r}: missing column(s) {missing}; expected a "
                         f"header with {list(_REQUIRED_COLUMNS)}, got {columns}")
      table: QualityTable = {}
      for row in reader:
        line = reader.line_num
        model, task = (row.get("model") or "").strip(), (row.get("task") or "").strip()
        if not model or not task:
          raise ValueError(f"quality table {str(path)!r} line {line}: expected a non-empty model "
                           f"and task, got model={model!r} task={task!r}")
        try:
          acc = float(row["acc"])
        except (TypeError, ValueError):
          acc = math.nan
        if not 0.0 <= acc <= 1.0:
          raise ValueError(f"quality table {str(path)!r} line {line}: field 'acc' expected an "
                           f"accuracy in [0, 1], got {row.get('acc')!r}")
        if (model, task) in table:
          raise ValueError(f"quality table {str(path)!r} line {line}: duplicate row for "
                           f"model {model!r} task {task!r}")
        table[(model, task)] = acc
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(str(path), "quality table ")) from None
  except OSError as e:
    raise ValueError(f"quality table {str(path)!r}: cannot read file: {e}") from e
  if not table:
    raise ValueError(f"quality table {str(path)!r}: expected at least one row, got none")
  return table


def _short(name: str) -> str:
  """'facebook/opt-1.3b' -> 'opt-1.3b' (lower case; any organisation prefix dropped)."""
  return name.strip().lower().rsplit("/", 1)[-1]


def models_in(table: Mapping[tuple[str, str], float]) -> list[str]:
  """Model names of the table, as stored, in first-seen order."""
  return list(dict.fromkeys(m for m, _ in table))


def quality_for(model_name: str, tasks: Sequence[str],
                table: Mapping[tuple[str, str], float] | None = None) -> dict[str, float]:
  """Accuracy of `model_name` on each of `tasks`: {task: acc}.

  `model_name` matches a table entry exactly or after dropping an organisation prefix on
  either side (case-insensitive), so 'opt-1.3b' finds 'facebook/opt-1.3b'. `table` defaults
  to the shipped OPT table.

  Raises:
    ValueError: for a model not in the table (listing the known ones), or a task the table
      has no row for (listing the tasks it has for that model).
  """
  if table is None:
    table = load_quality_table()
  if isinstance(tasks, str):
    tasks = [tasks]
  by_short: dict[str, list[str]] = {}
  for m in models_in(table):
    by_short.setdefault(_short(m), []).append(m)
  if any((model_name, t) in table for t in tasks):
    stored = model_name
  else:
    matches = by_short.get(_short(model_name), [])
    if not matches:
      raise ValueError(f"quality table: unknown model {model_name!r}; known: {models_in(table)}")
    if len(matches) > 1:
      raise ValueError(f"quality table: model {model_name!r} is ambiguous, matches {matches}")
    stored = matches[0]
  out = {}
  for t in tasks:
    if (stored, t) not in table:
      have = [tt for (m, tt) in table if m == stored]
      raise ValueError(f"quality table: no accuracy for model {stored!r} on task {t!r}; "
                       f"tasks it has: {have}")
    out[t] = float(table[(stored, t)])
  return out
