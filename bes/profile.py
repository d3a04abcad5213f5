"""Serving profiles: per-model latency tables and quality, loaded from and saved to JSON.

A profile is what the simulator knows about a deployment (see the "Profile format" section
of the serving-model design page): the tasks, and for every model its instance count,
GPUs per instance, largest running batch `max_batch` (B_m), the decode iteration time in
seconds at every running batch size 1..B_m, the prefill cost, and the accuracy on each task.

Every value is validated on load; an error names the source (file), the field (e.g.
`models[1].decode_step_s`) and what was expected. A non-monotone decode table is accepted
silently: measured tables are noisy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from bes import io_util

DEFAULT_PROFILE_PATH = pathlib.Path(__file__).resolve().parent / "data" / "profiles" / "opt_a100_roofline.json"

_TOP_KEYS = ("name", "provenance", "tasks", "models")
_MODEL_KEYS = ("name", "instances", "gpus_per_instance", "max_batch", "decode_step_s",
               "prefill_s_fixed", "prefill_s_per_token", "quality")


@dataclasses.dataclass(frozen=True)
class ModelProfile:
  """One deployed model.

  Attributes:
    name: model name, e.g. 'opt-1.3b'.
    instances: replicas deployed (>= 1).
    gpus_per_instance: GPUs one replica uses (>= 1; tensor parallelism).
    max_batch: B_m, the largest running batch of one instance (>= 1).
    decode_step_s: length B_m; entry [b-1] is the iteration time in seconds at running
      batch b (> 0, finite).
    prefill_s_fixed: seconds added once to an iteration that admits any request (>= 0).
    prefill_s_per_token: seconds per admitted prompt token (>= 0).
    quality: task name -> accuracy in [0, 1], for every task of the profile.
  """
  name: str
  instances: int
  gpus_per_instance: int
  max_batch: int
  decode_step_s: tuple[float, ...]
  prefill_s_fixed: float
  prefill_s_per_token: float
  quality: dict[str, float]

  def to_dict(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "instances": self.instances,
        "gpus_per_instance": self.gpus_per_instance,
        "max_batch": self.max_batch,
        "decode_step_s": list(self.decode_step_s),
        "prefill_s_fixed": self.prefill_s_fixed,
        "prefill_s_per_token": self.prefill_s_per_token,
        "quality": dict(self.quality),
    }


@dataclasses.dataclass(frozen=True)
class Profile:
  """A deployment: tasks and models (see `ModelProfile`). Build with `profile_from_dict`."""
  name: str
  provenance: str
  tasks: tuple[str, ...]
  models: tuple[ModelProfile, ...]

  @property
  def num_gpus(self) -> int:
    """GPUs the deployment uses: sum over models of instances * gpus_per_instance."""
    return sum(m.instances * m.gpus_per_instance for m in self.models)

  @property
  def model_names(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.models)

  def quality_matrix(self) -> np.ndarray:
    """Accuracy q[m, t], float32 of shape [num_models, num_tasks], tasks in `self.tasks` order."""
    return np.array([[m.quality[t] for t in self.tasks] for m in self.models], dtype=np.float32)

  def model_index(self, name: str) -> int:
    """Index of the model called `name` (ValueError naming the known models otherwise)."""
    names = self.model_names
    if name not in names:
      raise ValueError(f"profile {self.name!r}: unknown model {name!r}; known: {list(names)}")
    return names.index(name)

  def task_index(self, name: str) -> int:
    """Index of task `name` in `self.tasks` (ValueError naming the known tasks otherwise)."""
    if name not in self.tasks:
      raise ValueError(f"profile {self.name!r}: unknown task {name!r}; known: {list(self.tasks)}")
    return self.tasks.index(name)

  def to_dict(self) -> dict[str, Any]:
    """The JSON-able dict of the profile format (round-trips through `profile_from_dict`)."""
    return {
        "name": self.name,
        "provenance": self.provenance,
        "tasks": list(self.tasks),
        "models": [m.to_dict() for m in self.models],
    }

  def with_instances(self, counts: Sequence[int]) -> "Profile":
    """The same models deployed with `counts[m]` instances each (validated, >= 1)."""
    counts = list(counts)
    if len(counts) != len(self.models):
      raise ValueError(f"profile {self.name!r}: with_instances needs {len(self.models)} counts "
                       f"(one per model {list(self.model_names)}), got {len(counts)}")
    d = self.to_dict()
    for md, c in zip(d["models"], counts):
      md["instances"] = c
    return profile_from_dict(d, source=f"{self.name} with_instances({counts})")

  def subset(self, model_names: Sequence[str]) -> "Profile":
    """Only the models named (in the order given); tasks unchanged."""
    if isinstance(model_names, str):
      model_names = [model_names]
    d = self.to_dict()
    d["models"] = [d["models"][self.model_index(n)] for n in model_names]
    return profile_from_dict(d, source=f"{self.name} subset({list(model_names)})")


def _fail(source: str, field: str, expected: str, got: Any) -> ValueError:
  return ValueError(f"profile {source!r}: {field}: expected {expected}, got {got!r}")


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(d: Mapping, key: str, field: str, source: str, minimum: int = 1) -> int:
  x = d[key]
  if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
    raise _fail(source, f"{field}.{key}", f"an integer >= {minimum}", x)
  return int(x)


def _nonneg(d: Mapping, key: str, field: str, source: str) -> float:
  x = d[key]
  if not _is_number(x) or not math.isfinite(x) or x < 0:
    raise _fail(source, f"{field}.{key}", "a finite number >= 0 (seconds)", x)
  return float(x)


def _str(x: Any, field: str, source: str) -> str:
  if not isinstance(x, str) or not x:
    raise _fail(source, field, "a non-empty string", x)
  return x


def _check_keys(d: Any, keys: Sequence[str], field: str, source: str) -> None:
  if not isinstance(d, Mapping):
    raise _fail(source, field, "a JSON object", type(d).__name__)
  missing = [k for k in keys if k not in d]
  if missing:
    raise ValueError(f"profile {source!r}: {field}: missing key(s) {missing}; "
                     f"expected keys {list(keys)}")


def _model_from_dict(md: Any, tasks: tuple[str, ...], i: int, source: str) -> ModelProfile:
  field = f"models[{i}]"
  _check_keys(md, _MODEL_KEYS, field, source)
  name = _str(md["name"], f"{field}.name", source)
  instances = _int(md, "instances", field, source)
  gpus = _int(md, "gpus_per_instance", field, source)
  max_batch = _int(md, "max_batch", field, source)
  table = md["decode_step_s"]
  expected = (f"{max_batch} positive numbers (one per batch size 1..max_batch)")
  if not isinstance(table, (list, tuple)):
    raise _fail(source, f"{field}.decode_step_s", expected, type(table).__name__)
  if len(table) != max_batch:
    raise ValueError(f"profile {source!r}: {field}.decode_step_s: expected {expected}, "
                     f"got {len(table)}")
  for b, x in enumerate(table):
    if not _is_number(x) or not math.isfinite(x) or x <= 0:
      raise _fail(source, f"{field}.decode_step_s[{b}] (batch {b + 1})",
                  "a finite number > 0 (seconds)", x)
  prefill_fixed = _nonneg(md, "prefill_s_fixed", field, source)
  prefill_tok = _nonneg(md, "prefill_s_per_token", field, source)
  quality = md["quality"]
  if not isinstance(quality, Mapping):
    raise _fail(source, f"{field}.quality", "an object task -> accuracy", type(quality).__name__)
  unknown = [t for t in quality if t not in tasks]
  if unknown:
    raise _fail(source, f"{field}.quality", f"only tasks of the profile {list(tasks)}",
                f"unknown task(s) {unknown}")
  missing = [t for t in tasks if t not in quality]
  if missing:
    raise _fail(source, f"{field}.quality", f"an accuracy for every task {list(tasks)}",
                f"missing task(s) {missing}")
  for t in tasks:
    q = quality[t]
    if not _is_number(q) or not math.isfinite(q) or not 0.0 <= q <= 1.0:
      raise _fail(source, f"{field}.quality[{t!r}]", "an accuracy in [0, 1]", q)
  return ModelProfile(
      name=name, instances=instances, gpus_per_instance=gpus, max_batch=max_batch,
      decode_step_s=tuple(float(x) for x in table), prefill_s_fixed=prefill_fixed,
      prefill_s_per_token=prefill_tok, quality={t: float(quality[t]) for t in tasks})


def profile_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Profile:
  """Validates a profile dict (the JSON format) and builds a `Profile`.

  Raises:
    ValueError: naming `source`, the field and the expectation, for a missing key, a wrong
      type, an empty or duplicate task/model list, a quality for an unknown or missing
      task or outside [0, 1], a decode table of the wrong length or with a non-positive or
      non-finite entry, or a non-positive instance / GPU / batch count.
  """
  _check_keys(d, _TOP_KEYS, "top level", source)
  name = _str(d["name"], "name", source)
  if not isinstance(d["provenance"], str):
    raise _fail(source, "provenance", "a string", d["provenance"])
  tasks = d["tasks"]
  if not isinstance(tasks, (list, tuple)) or not tasks:
    raise _fail(source, "tasks", "a non-empty list of task names", tasks)
  tasks = tuple(_str(t, f"tasks[{i}]", source) for i, t in enumerate(tasks))
  if len(set(tasks)) != len(tasks):
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    raise _fail(source, "tasks", "distinct task names", f"duplicate(s) {dup}")
  models = d["models"]
  if not isinstance(models, (list, tuple)) or not models:
    raise _fail(source, "models", "a non-empty list of models", models)
  models = tuple(_model_from_dict(md, tasks, i, source) for i, md in enumerate(models))
  names = [m.name for m in models]
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise _fail(source, "models", "distinct model names", f"duplicate(s) {dup}")
  return Profile(name=name, provenance=d["provenance"], tasks=tasks, models=models)


def load_profile(path: str | os.PathLike) -> Profile:
  """Reads and validates a profile JSON file; every error names the file."""
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8-sig")
  except UnicodeDecodeError:
    raise ValueError(io_util.not_utf8_message(str(path), "profile ")) from None
  except OSError as e:
    raise ValueError(f"profile {str(path)!r}: cannot read file: {e}") from e
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"profile {str(path)!r}: not valid JSON: {e}") from e
  return profile_from_dict(d, source=str(path))


def save_profile(profile: Profile, path: str | os.PathLike) -> None:
  """Writes `profile` as indented JSON, creating parent directories."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")


def default_profile() -> Profile:
  """The shipped default: OPT-125M x1, OPT-1.3B x1, OPT-6.7B x2 on A100-80GB (roofline)."""
  return load_profile(DEFAULT_PROFILE_PATH)
