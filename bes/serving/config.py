"""The serving runtime's typed configuration: `config.serve` of an experiment config.

A serving config is an experiment config (`configs/default.py`: profile, env, workload, dqn,
train) plus a `serve` section, so one file ties training and serving together: the router
trains in the simulator on `config.profile` (the deployment's latency profile), and the server
deploys the same models, instances and serving knobs (`config.env`: deadlines, reward mode,
queue capacity) with that router in front (`configs/serve/cpu.py`).

`config.serve` keys (`ServeConfig`):
  models      ';'-separated NAME=SHAPE[@CHECKPOINT] entries, one per model of the profile
              (same names; the profile gives instances, max batch and quality). SHAPE is a
              named OPT size (`opt-125m` ...) or a JSON object of OPTConfig fields;
              @CHECKPOINT an HF-format directory (weights and tokenizer), else random weights.
  max_len     cache entries per slot (tokens): prompt + output of one request.
  dtype       float32 | bfloat16 | float16.
  placement   'auto' or ';'-separated per-instance placements in profile order: on CPU the
              cores of each instance ('0;1' or '0,1;2,3'; a CPU instance is one device), on
              accelerators a device slice per instance: 'gpu:0;gpu:1' (one GPU each),
              'gpu:0-3' or 'gpu:0,1,2,3' (4 GPUs, the model tensor-parallel over them),
              likewise 'tpu:...' (chips). 'auto': instance i gets CPU core i mod cores.
  policy      the router: static:M | round_robin | random | task_map:... | deadline_greedy |
              load_threshold (knobs tuned in `workdir`'s heuristics.json when given) |
              learned (the router trained in `workdir`).
  workdir     the training workdir the learned router and tuned heuristics come from.
  host, port  where the HTTP server listens.
  hang_timeout_s  an engine with work and no iteration for this long is declared hung.
  tokenizer_vocab vocabulary of the locally trained BPE used when no checkpoint has one.
  out         directory of the server's own records (outcomes.csv, one row per request).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from bes.models.opt_config import OPTConfig, opt_config
from bes.profile import Profile

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One deployed model: its profile name, architecture and optional checkpoint directory."""
  name: str
  config: OPTConfig
  checkpoint: str | None = None


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """Validated `config.serve` (module docstring); `placements` has one entry per instance:
  a tuple of CPU cores, or (kind, device ids) with kind 'gpu' | 'tpu' (`parse_placement`)."""
  models: tuple[ModelSpec, ...]
  max_len: int
  dtype: str
  placements: tuple
  policy: str
  workdir: str
  host: str
  port: int
  hang_timeout_s: float
  tokenizer_vocab: int
  out: str


def _fail(key: str, expected: str, got: Any) -> ValueError:
  return ValueError(f"config.serve.{key}: expected {expected}, got {got!r}")


def parse_shape(text: str, key: str) -> OPTConfig:
  """A named OPT size or a JSON object of OPTConfig fields."""
  text = text.strip()
  if not text.startswith("{"):
    try:
      return opt_config(text)
    except (KeyError, ValueError):
      raise _fail(key, "a named OPT size (opt-125m ...) or a JSON object of OPTConfig "
                  "fields", text) from None
  try:
    fields = json.loads(text)
    return OPTConfig(**fields)
  except (ValueError, TypeError) as e:
    raise _fail(key, f"a JSON object of OPTConfig fields ({e})", text) from None


def parse_models(text: str, profile: Profile) -> tuple[ModelSpec, ...]:
  specs = {}
  for item in filter(None, (s.strip() for s in str(text).split(";"))):
    name, sep, rest = item.partition("=")
    if not sep or not name.strip():
      raise _fail("models", "NAME=SHAPE[@CHECKPOINT] entries separated by ';'", item)
    shape, _, checkpoint = rest.partition("@")
    checkpoint = checkpoint.strip() or None
    if checkpoint is not None and not os.path.isdir(checkpoint):
      raise _fail(f"models ({name.strip()})", "an existing checkpoint directory", checkpoint)
    specs[name.strip()] = ModelSpec(name.strip(), parse_shape(shape, f"models ({name.strip()})"),
                                    checkpoint)
  names = [m.name for m in profile.models]
  if sorted(specs) != sorted(names):
    raise _fail("models", f"one entry per model of the profile {names}", sorted(specs))
  return tuple(specs[n] for n in names)


ACCELERATORS = ("gpu", "tpu")


def parse_placement(item: str, num_cpus: int) -> tuple:
  """One instance's placement: CPU cores '0' / '0,1' -> (0, 1); an accelerator slice
  'gpu:2', 'gpu:0-3', 'gpu:0,1,2,3' (or 'tpu:...') -> ('gpu', (0, 1, 2, 3))."""
  kind, sep, rest = item.partition(":")
  if sep:
    if kind not in ACCELERATORS:
      raise _fail("placement", f"an accelerator slice {'/'.join(ACCELERATORS)}:IDS", item)
    try:
      if "-" in rest:
        lo, hi = (int(x) for x in rest.split("-"))
        ids = tuple(range(lo, hi + 1))
      else:
        ids = tuple(int(x) for x in rest.split(","))
    except ValueError:
      ids = ()
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
      raise _fail("placement", f"distinct device ids >= 0 like '{kind}:0', '{kind}:0-3' or "
                  f"'{kind}:0,1,2,3'", item)
    return (kind, ids)
  try:
    cores = tuple(int(c) for c in item.split(","))
  except ValueError:
    raise _fail("placement", "CPU cores like '0' or '0,1', or an accelerator slice like "
                "'gpu:0' or 'gpu:0-3'", item) from None
  if any(not 0 <= c < num_cpus for c in cores):
    raise _fail("placement", f"cores in 0..{num_cpus - 1} (this machine)", item)
  return cores


def is_accelerator(place: tuple) -> bool:
  """Whether a parsed placement is an accelerator slice (else CPU cores)."""
  return bool(place) and place[0] in ACCELERATORS


def worker_placement(place: tuple) -> dict:
  """The WorkerSpec fields (cpus, device, platform) of a parsed placement."""
  if is_accelerator(place):
    return dict(cpus=None, device=place[1], platform=place[0])
  return dict(cpus=tuple(place), device=None)


def parse_placements(text: str, num_instances: int, num_cpus: int) -> tuple:
  """Per-instance placements (module docstring)."""
  text = str(text).strip()
  if text == "auto":
    return tuple((i % num_cpus,) for i in range(num_instances))
  items = [s.strip() for s in text.split(";")]
  if len(items) != num_instances:
    raise _fail("placement", f"'auto' or {num_instances} ';'-separated placements (one per "
                "instance, profile order)", text)
  return tuple(parse_placement(item, num_cpus) for item in items)


def serve_config(config: ml_collections.ConfigDict, profile: Profile) -> ServeConfig:
  """`config.serve` checked against the deployment `profile` (errors name the key)."""
  if "serve" not in config:
    raise ValueError("config: no 'serve' section; a serving config adds one to an experiment "
                     "config (see configs/serve/cpu.py)")
  s = config.serve
  models = parse_models(s.models, profile)
  max_len = int(s.max_len)
  for m in models:
    if not 2 <= max_len <= m.config.max_position_embeddings:
      raise _fail("max_len", f"an integer in [2, {m.config.max_position_embeddings}] "
                  f"(model {m.name}'s positions)", s.max_len)
  if s.dtype not in DTYPES:
    raise _fail("dtype", f"one of {DTYPES}", s.dtype)
  num_instances = sum(m.instances for m in profile.models)
  placements = parse_placements(s.placement, num_instances, os.cpu_count() or 1)
  if not 0 < int(s.port) < 65536:
    raise _fail("port", "a TCP port in 1..65535", s.port)
  if not float(s.hang_timeout_s) > 0:
    raise _fail("hang_timeout_s", "seconds > 0", s.hang_timeout_s)
  if int(s.tokenizer_vocab) < 260:
    raise _fail("tokenizer_vocab", "an integer >= 260 (256 bytes + special tokens)",
                s.tokenizer_vocab)
  return ServeConfig(models=models, max_len=max_len, dtype=str(s.dtype), placements=placements,
                     policy=str(s.policy).strip(), workdir=str(s.workdir), host=str(s.host),
                     port=int(s.port), hang_timeout_s=float(s.hang_timeout_s),
                     tokenizer_vocab=int(s.tokenizer_vocab), out=str(s.out))
