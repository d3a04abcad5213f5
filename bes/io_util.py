"""Output directories that fail early, files that are never half-written or lost, and
one-line messages for input files that are not UTF-8.

A launcher checks its output directory before any simulation (`check_writable_dir`: one
line naming the flag and the reason), then writes every report through `write_text`:
atomically (a temporary file in the same directory, then `os.replace`), and, if the
directory has become unwritable meanwhile (a full disk, a removed mount), into a rescue
directory under the system temp instead, announced once on stderr, so a finished run is
never lost. Once an output directory has failed, its later files go to the same rescue
directory, so a run's outputs stay together.
"""
from __future__ import annotations

import os
import sys
import tempfile

_RESCUE_DIRS: dict[str, str] = {}   # output directory (absolute) -> its rescue directory


def not_utf8_message(path: str, what: str = "") -> str:
  """'WHAT PATH:LINE: expected UTF-8 text, found byte 0xNN' for a file that fails to decode
  as UTF-8 (with or without a byte-order mark); for the error path of text readers."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    return f"{what}{path}:{line}: expected UTF-8 text, found byte {data[e.start]:#04x}"
  return f"{what}{path}: expected UTF-8 text"


def _dir_problem(path: str) -> str | None:
  """Why directory `path` cannot hold new files (it is created if missing), or None."""
  if os.path.exists(path) and not os.path.isdir(path):
    return "expected a directory, found a file"
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
      pass
  except OSError as e:
    return f"cannot create or write the output directory ({e.strerror or e})"
  return None


def check_writable_dir(path: str, flag: str = "--out") -> str:
  """Creates directory `path` if needed and checks a file can be written in it, before any
  expensive work. Returns the absolute path; ValueError (one line naming `flag`, the path
  and the reason) when it is a file, cannot be created, or is not writable."""
  path = os.path.abspath(os.fspath(path))
  if problem := _dir_problem(path):
    raise ValueError(f"{flag}={path}: {problem}")
  return path


def check_writable_file(path: str, flag: str = "--out") -> str:
  """Checks that file `path` can be written (creating its directory if needed), before any
  expensive work. Returns the absolute path; ValueError (one line naming `flag`) if not."""
  path = os.path.abspath(os.fspath(path))
  if os.path.isdir(path):
    raise ValueError(f"{flag}={path}: expected a file path, found a directory")
  if problem := _dir_problem(os.path.dirname(path)):
    raise ValueError(f"{flag}={path}: its directory {os.path.dirname(path)}: {problem}")
  return path


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file in the same directory and a rename,
  so `path` holds either its old content or all of `text`; the file gets the permissions
  `open` would give it (0666 less the umask). Raises OSError."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600 files
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _rescue_dir(out_dir: str, error: OSError) -> str:
  """The rescue directory of `out_dir`, created (and announced on stderr) on first use."""
  if out_dir not in _RESCUE_DIRS:
    rescue = tempfile.mkdtemp(prefix=f"bes-{os.path.basename(out_dir) or 'out'}-")
    _RESCUE_DIRS[out_dir] = rescue
    print(f"warning: cannot write to {out_dir} ({error.strerror or error}); writing this "
          f"run's outputs to {rescue} instead", file=sys.stderr, flush=True)
  return _RESCUE_DIRS[out_dir]


def _write_under(root: str, name: str, text: str) -> str:
  path = os.path.join(root, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic_write_text(path, text)
  return path


def write_text(out_dir: str, name: str, text: str) -> str:
  """Writes `text` to `out_dir/name` (`name` may hold subdirectories) atomically; if that
  fails with an OSError, to the same `name` under a rescue directory (module docstring).
  Returns the path written."""
  out_dir = os.path.abspath(os.fspath(out_dir))
  if out_dir not in _RESCUE_DIRS:
    try:
      return _write_under(out_dir, name, text)
    except OSError as e:
      _rescue_dir(out_dir, e)
  return _write_under(_RESCUE_DIRS[out_dir], name, text)
