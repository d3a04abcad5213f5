"""The launchers' config command line, one way for all of them.

A launcher defines its config flag with `define_config_flag()`: an `ml_collections` config
file (`--config=configs/NAME.py`, default `configs/default.py`) whose keys are overridden
as `--config.workload.rate=40`. Before absl parses anything, the `--config.KEY` flags of
the command line are checked against the file's keys: an unknown key ends the launcher with
one line naming it and the closest valid keys (`difflib`), and `--config_help` prints every
key with its value and the comment written beside it in the config file.

Overrides given as a dict (`{'workload.rate': 40}`: a workdir's saved config re-evaluated,
flags such as `--trace`, a benchmark's variants) go through `apply_overrides`, which checks
keys the same way. `flatten` is the one dotted-key view of a nested config or dict.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import os
import re
import sys
import textwrap
import tokenize
from typing import Any, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

# Flags defined here belong to the launcher that calls `define_config_flag` (so `--help`
# lists them under the launcher's name).
flags.disclaim_key_flags()

CONFIG_HELP_FLAG = "config_help"
# Sections whose keys are documented in a module docstring (`  key: meaning` lines) rather
# than by comments in the config file.
_DOCUMENTED_SECTIONS = {"workload": "bes.workloads.config"}


def default_config_path(name: str = "default.py") -> str:
  """Absolute path of `configs/<name>` (the `configs` package is installed with bes)."""
  import configs  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), name)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """The leaves of a nested dict or ConfigDict under dotted keys, in insertion order.

  {'env': {'reward': 'hard'}, 'seed': 0} -> {'env.reward': 'hard', 'seed': 0}. Tuples
  become lists (as they come back from JSON); an empty section has no keys.
  """
  out = {}
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def section_keys(tree: Any) -> set[str]:
  """The dotted keys of the sections (nested dicts) of a config: {'env', 'workload.bursty'}."""
  keys = set()
  for key in flatten(tree):
    parts = key.split(".")
    keys.update(".".join(parts[:i]) for i in range(1, len(parts)))
  return keys


def closest_keys(key: str, valid: Sequence[str], n: int = 3) -> list[str]:
  """The valid keys most like `key` (difflib): first its section's keys by last part
  (workload.rat -> workload.rate), else the same last part under another section
  (queue_capacity -> env.queue_capacity), else whole keys (dqn.hiden_sizes -> dqn.hidden)."""
  parent, _, leaf = key.rpartition(".")
  siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == parent}
  close = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n, 0.6)]
  close = close or [k for k in valid if k.rpartition(".")[2] == leaf][:n]
  return close or difflib.get_close_matches(key, list(valid), n, 0.6)


def unknown_key_message(key: str, valid: Sequence[str], where: str) -> str:
  """`--config.KEY: no such key in WHERE; closest: a, b` (one line)."""
  close = closest_keys(key, valid)
  hint = f"closest: {', '.join(close)}" if close else "--config_help lists the keys"
  return f"--config.{key}: no such key in {where}; {hint}"


def check_keys(config: Any, keys: Sequence[str], where: str) -> None:
  """Raises ValueError (`unknown_key_message`) for the first key that is neither a leaf nor
  a section of `config`. An index suffix (`env.deadline_s[0]`) is checked without it."""
  leaves = flatten(config)
  known = set(leaves) | section_keys(config)
  for key in keys:
    if key.split("[", 1)[0] not in known:
      raise ValueError(unknown_key_message(key, list(leaves), where))


def apply_overrides(config: Any, overrides: Mapping[str, Any],
                    where: str = "the config") -> ml_collections.ConfigDict:
  """A copy of `config` (not type-safe, so a tuple may become a string) with each dotted key
  of `overrides` ({'workload.rate': 40.0}) set to its value; every key must exist."""
  check_keys(config, list(overrides), where)
  out = ml_collections.ConfigDict(
      config.to_dict() if hasattr(config, "to_dict") else dict(config), type_safe=False)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
      node = node[part]
    node[leaf] = value
  return out


_OVERRIDE = re.compile(r"^--(?:no)?config\.([^=\s]+)")


def command_line_keys(argv: Sequence[str]) -> list[str]:
  """The keys of the `--config.a.b[=v]` (or `--noconfig.a.b`) flags in argv, in order."""
  return [m.group(1) for m in map(_OVERRIDE.match, argv) if m]


def command_line_overrides(argv: Sequence[str], config: Any) -> dict[str, Any]:
  """{key: value in `config`} for the `--config.KEY` flags given in argv: the overrides a
  user typed, with the values absl parsed into `config` (an indexed key, `a.b[0]`, gives
  the whole leaf `a.b`)."""
  out = {}
  for key in (k.split("[", 1)[0] for k in command_line_keys(argv)):
    node = config
    for part in key.split("."):
      node = node[part]
    out[key] = node.to_dict() if hasattr(node, "to_dict") else node
  return out


def config_path_in(argv: Sequence[str], default: str) -> str:
  """The value of `--config=PATH` or `--config PATH` in argv (the last one), else `default`."""
  path = default
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as `--config=PATH[:ARG]` loads it (ARG passed on).

  Raises ValueError naming the file when it is missing or has no get_config()."""
  file, arg = (path.split(":", 1) + [None])[:2] if ":" in path else (path, None)
  if not os.path.isfile(file):
    raise ValueError(f"--config: no such config file {file!r}")
  try:
    return call_file_function(file, "get_config", *(() if arg is None else (arg,)))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--config: {file}: {type(e).__name__}: {e}") from e


def load_file_function(path: str, name: str, flag: str):
  """`name()` of the Python file `path` given by `flag` (a sweep or protocol file); a
  ValueError naming the flag when the file is missing, or the flag and the file when
  importing or calling it fails."""
  if not os.path.isfile(path):
    raise ValueError(f"{flag}: no such file {path!r}")
  try:
    return call_file_function(path, name)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{flag}: {path}: {type(e).__name__}: {e}") from e


def call_file_function(path: str, name: str, *args):
  """Imports the Python file `path` (a config or sweep file) and returns `name(*args)`.

  Raises ValueError("defines no NAME()") when the file has no such function; whatever the
  import or the call raises propagates (callers name the file and flag)."""
  spec = importlib.util.spec_from_file_location(f"_bes_file_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  function = getattr(module, name, None)
  if not callable(function):
    raise ValueError(f"defines no {name}()")
  return function(*args)


# ------------------------------------------------------------------ key descriptions
def _comment_text(lines: Sequence[str]) -> str:
  return " ".join(line.lstrip("#").strip() for line in lines).strip()


def _assigned_key(node: ast.stmt) -> str | None:
  """'a.b' for a statement `NAME.a.b = ...` (any root name), else None."""
  targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
  target = targets[0]
  parts = []
  while isinstance(target, ast.Attribute):
    parts.append(target.attr)
    target = target.value
  return ".".join(reversed(parts)) if parts and isinstance(target, ast.Name) else None


def file_comments(source: str) -> dict[str, str]:
  """{key: comment} of every `config.a.b = ...` statement of a config file's source, in line
  order ('' for a statement without a comment).

  A statement's comment is the one on its line(s), continued by comment-only lines aligned
  with it; without one, the comment block right above the statement at its indentation
  (the way a section such as `config.env = ...` is introduced)."""
  comments: dict[int, tuple[int, str]] = {}   # line -> (column, text)
  code_lines = set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = (tok.start[1], tok.string)
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
      code_lines.update(range(tok.start[0], tok.end[0] + 1))
  only_comment = lambda n: n in comments and n not in code_lines
  statements = [node for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and _assigned_key(node)]
  out = {}
  for node in sorted(statements, key=lambda node: node.lineno):
    trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    lines = [text for _, text in trailing]
    if trailing:
      n = node.end_lineno + 1
      while only_comment(n) and comments[n][0] == trailing[-1][0]:
        lines.append(comments[n][1])
        n += 1
    else:
      n = node.lineno - 1
      while only_comment(n) and comments[n][0] == node.col_offset:
        lines.insert(0, comments[n][1])
        n -= 1
    out.setdefault(_assigned_key(node), _comment_text(lines))
  return out


def docstring_comments(doc: str, prefix: str) -> dict[str, str]:
  """{prefix + key: meaning} from a docstring's `  key: meaning` lines (continued by deeper
  indented lines), in order; `  a, b: meaning` documents both keys."""
  out, current = {}, []
  for line in (doc or "").splitlines():
    m = re.match(r"^  ([\w.]+(?:, [\w.]+)*): (.*)$", line)
    if m:
      current = [prefix + k for k in m.group(1).split(", ")]
      for k in current:
        out[k] = m.group(2).strip()
    elif current and re.match(r"^   +\S", line):
      for k in current:
        out[k] += " " + line.strip()
    else:
      current = []
  return out


def key_documentation(path: str) -> dict[str, str]:
  """What each key of the config file `path` means, in the order it is documented: the
  comments of `configs/default.py`, those of `path` (a config that changes a key may say
  why) and, for the sections of `_DOCUMENTED_SECTIONS`, the docstring of the module that
  defines their keys. A key may map to '' (set, but without a comment)."""
  out: dict[str, str] = {}
  docs = {}
  for file in dict.fromkeys([default_config_path(), path.split(":", 1)[0]]):
    with open(file) as f:
      docs.update({k: v for k, v in file_comments(f.read()).items() if v or k not in docs})
  for section, module_name in _DOCUMENTED_SECTIONS.items():
    module = importlib.import_module(module_name)
    for k, v in docstring_comments(module.__doc__, f"{section}.").items():
      docs[k] = docs.get(k) or v
  out.update(docs)
  return out


def _display_order(keys: Sequence[str], documented: Sequence[str]) -> list[str]:
  """Keys grouped by top-level section in the order the config file sets them; within a
  section its own keys before those of its subsections, documented order, then by name."""
  rank = {k: i for i, k in enumerate(documented)}
  last = len(rank)
  top_rank = {}
  for k in documented:
    top_rank.setdefault(k.split(".", 1)[0], rank[k])
  return sorted(keys, key=lambda k: (top_rank.get(k.split(".", 1)[0], last), k.count("."),
                                     rank.get(k, last), k))


def describe_config(config: Any, path: str, width: int = 100) -> str:
  """Every key of `config` with its value and meaning, grouped by section (`--config_help`)."""
  docs = key_documentation(path)
  leaves = flatten(config)
  lines = [f"Keys of {path} (override any with --config.KEY=VALUE):"]
  section = None
  for key in _display_order(list(leaves), list(docs)):
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent != section:
      section = parent
      head = f"[{section}] {docs.get(section, '')}".strip() if section else ""
      lines += [""] + ([textwrap.fill(head, width, subsequent_indent="  ")] if head else [])
    text = f"{key} = {leaves[key]!r}"
    if docs.get(key):
      text = f"{text:<34}  # {docs[key]}"
    lines.append(textwrap.fill(text, width, initial_indent="  ", subsequent_indent=" " * 40,
                               break_on_hyphens=False))
  return "\n".join(lines)


# ------------------------------------------------------------------------ the flag
def _launcher_name(argv: Sequence[str]) -> str:
  return os.path.basename(argv[0]) if argv and argv[0] else "launcher"


def define_config_flag(help_string: str = "Config file.", name: str = "config",
                       argv: Sequence[str] | None = None,
                       default_file: str = "default.py") -> flags.FlagHolder:
  """Defines `--config` (an ml_collections config file, default `configs/<default_file>`) and
  `--config_help`; to be called at a launcher's top level, before absl parses flags.

  Checks the command line first: with `--config_help` prints `describe_config` and exits 0;
  an unknown `--config.KEY` or a missing config file exits 1 with one line naming it.
  """
  argv = sys.argv if argv is None else argv
  default = default_config_path(default_file)
  path = config_path_in(argv, default)
  wants_help = f"--{CONFIG_HELP_FLAG}" in argv
  keys = command_line_keys(argv)
  if wants_help or keys or path != default:
    try:
      config = load_config_file(path)
      if wants_help:
        print(describe_config(config, os.path.relpath(path)))
        sys.exit(0)
      check_keys(config, keys, os.path.relpath(path.split(":", 1)[0]))
    except ValueError as e:
      sys.exit(f"{_launcher_name(argv)}: error: {e}")
  flags.DEFINE_bool(CONFIG_HELP_FLAG, False, "Print every config key with its value and "
                    "meaning (the comments of the config file), then exit.")
  return config_flags.DEFINE_config_file(
      name, default, f"{help_string} Override any key with --config.KEY=VALUE (e.g. "
      "--config.workload.rate=40); --config_help lists every key.")


# ------------------------------------------------------------------ replaying a trace
def define_trace_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """`--trace` and `--trace_rate` (launch/simulate.py, launch/evaluate.py); their effect on
  the config is `trace_overrides`."""
  trace = flags.DEFINE_string(
      "trace", None, "Trace CSV (arrived_at,num_prefill_tokens,num_decode_tokens[,task]) to "
      "replay whole, with its own lengths, at its own timing unless --trace_rate is set; "
      "sets config.workload.kind=trace.")
  rate = flags.DEFINE_float("trace_rate", 0.0, "With --trace: rescale time to this mean rate "
                            "in requests/s (0 = the trace's own timing).")
  return trace, rate


def trace_overrides(trace: str | None, trace_rate: float) -> dict[str, Any]:
  """The config overrides of `--trace=CSV --trace_rate=R` ({} without --trace): replay the
  trace with its own lengths, at rate R requests/s (0: its own timing)."""
  if trace is None:
    return {}
  return {"workload.kind": "trace", "workload.trace": trace, "workload.lengths": "trace",
          "workload.rate": float(trace_rate)}
