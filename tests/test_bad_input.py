"""Bad input ends in one clear line naming the file, field or flag (or in a correct result).

One test per class of issue 8's probe: damaged router checkpoints, unwritable outputs,
zero-span traces, UTF-8 BOM traces, undecodable or truncated input files, launcher errors.
"""
import json
import os
import subprocess
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
import pytest

from bes import cli_errors, io_util, metrics, quality
from bes import profile as profile_lib
from bes import workloads as W
from bes.models import checkpoint as model_checkpoint
from bes.models import scoring
from bes.profile import default_profile
from bes.experiment import workdir as workdir_lib
from bes.router import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(message: str) -> str:
  assert "\n" not in message.strip(), message
  return message


# --- 1. damaged router checkpoints -------------------------------------------------------

def _save_steps(workdir: str, steps=(1, 2)):
  """Checkpoints of a tiny 'learner state' {x: [1000], y: [3]} = step * ones."""
  mngr = checkpoint.manager(workdir, keep=5)
  config = {"seed": 0}                   # the saved config: a JSON object
  for s in steps:
    state = {"x": jnp.full((1000,), s, jnp.float32), "y": jnp.full((3,), s, jnp.float32)}
    checkpoint.save(mngr, s, state, config, {"seconds": float(s)}, {"w": jnp.full((4,), s)})
  return mngr


def _truncate_largest(directory: str, size: int = 10) -> None:
  """Truncates the largest file under `directory` to `size` bytes."""
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(size)


LIKE = {"x": jnp.zeros((1000,), jnp.float32), "y": jnp.zeros((3,), jnp.float32)}


@pytest.mark.parametrize("damage", ["empty_config", "truncated_state"])
def test_damaged_latest_checkpoint_resumes_from_the_newest_intact_one(tmp_path, damage):
  workdir = str(tmp_path / "run")
  mngr = _save_steps(workdir)
  step2 = os.path.join(workdir, "checkpoints", "2")
  if damage == "empty_config":
    open(os.path.join(step2, "config", "metadata"), "w").close()
  else:
    _truncate_largest(os.path.join(step2, "state"))
  warnings, checked = [], []
  resumed = checkpoint.restore_latest_intact(
      checkpoint.manager(workdir, keep=5), LIKE, checked.append, warn=warnings.append)
  assert resumed.step == 1 and resumed.progress == {"seconds": 1.0}
  np.testing.assert_array_equal(resumed.state["x"], np.ones(1000, np.float32))
  assert resumed.config["seed"] == 0 and len(checked) == 1 + (damage == "truncated_state")
  assert len(warnings) == 1 and step2 in _one_line(warnings[0]) and "step 1" in warnings[0]
  assert os.path.isdir(step2 + ".corrupt") and not os.path.exists(step2)
  # Training goes on: step 2 can be written again, and is then the latest intact one.
  mngr = checkpoint.manager(workdir, keep=5)
  checkpoint.save(mngr, 2, resumed.state, resumed.config, {"seconds": 2.0}, {"w": jnp.ones(4)})
  assert checkpoint.restore_latest_intact(checkpoint.manager(workdir), LIKE).step == 2


def test_evaluation_skips_a_damaged_latest_checkpoint_and_names_it(tmp_path):
  workdir = str(tmp_path / "run")
  _save_steps(workdir)
  _truncate_largest(os.path.join(workdir, "checkpoints", "2", "params"))
  warnings = []
  config, step = checkpoint.read_config(workdir, warn=warnings.append)
  assert step == 1 and config["seed"] == 0
  assert len(warnings) == 1 and os.path.join(workdir, "checkpoints", "2") in warnings[0]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # evaluation moves nothing


def test_no_intact_checkpoint_is_one_error_naming_the_directory(tmp_path):
  workdir = str(tmp_path / "run")
  _save_steps(workdir)
  for s in (1, 2):
    open(os.path.join(workdir, "checkpoints", str(s), "config", "metadata"), "w").close()
  with pytest.raises(checkpoint.CorruptCheckpointError) as e:
    checkpoint.restore_latest_intact(checkpoint.manager(workdir), LIKE, warn=lambda m: None)
  message = _one_line(str(e.value))
  assert os.path.join(workdir, "checkpoints") in message and "no intact checkpoint" in message


def test_evaluating_a_workdir_without_checkpoints_creates_nothing(tmp_path):
  workdir = tmp_path / "never_trained"
  with pytest.raises(ValueError) as e:
    checkpoint.read_config(str(workdir))
  assert _one_line(str(e.value)).startswith(f"--workdir={workdir}: no checkpoint under")
  assert not workdir.exists()


def test_a_config_check_failure_is_not_taken_for_damage(tmp_path):
  workdir = str(tmp_path / "run")
  _save_steps(workdir)

  def refuse(config):
    raise ValueError("resume with another config")
  with pytest.raises(ValueError, match="another config"):
    checkpoint.restore_latest_intact(checkpoint.manager(workdir), LIKE, refuse)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


@pytest.mark.parametrize("text", ["{", "[1, 2]", "\udce9"])
def test_damaged_heuristics_file_is_named(tmp_path, text):
  path = tmp_path / workdir_lib.HEURISTICS_FILE
  path.write_bytes(text.encode("utf-8", "surrogateescape"))
  with pytest.raises(ValueError) as e:
    workdir_lib.heuristic_policies(str(tmp_path), params=None)
  assert _one_line(str(e.value)).startswith(f"{path}: expected")


# --- 2. unwritable or failing output directories -----------------------------------------

def test_unwritable_out_is_found_up_front(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  for out, reason in ((a_file, "expected a directory, found a file"),
                      (a_file / "sub", "cannot create or write the output directory")):
    with pytest.raises(ValueError) as e:
      io_util.check_writable_dir(str(out), "--out")
    assert _one_line(str(e.value)).startswith(f"--out={out}: {reason}")
  assert io_util.check_writable_dir(str(tmp_path / "new" / "dir")) == str(tmp_path / "new" / "dir")
  with pytest.raises(ValueError) as e:   # an output file (generate, profile_latency, ...)
    io_util.check_writable_file(str(a_file / "o.json"), "--out")
  assert _one_line(str(e.value)).startswith(f"--out={a_file / 'o.json'}: its directory")


def test_outputs_are_rescued_when_out_fails_after_the_run(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system_tmp"))
  os.makedirs(tempfile.tempdir)
  out = tmp_path / "out"
  io_util.check_writable_dir(str(out))
  assert io_util.write_text(str(out), "metrics.json", "{}") == str(out / "metrics.json")
  os.remove(out / "metrics.json")
  os.rmdir(out)
  out.write_text("the directory became a file while the simulation ran")
  first = io_util.write_text(str(out), "p/outcomes.csv", "id\n0\n")
  second = io_util.write_text(str(out), "table.txt", "table")
  rescue = os.path.dirname(os.path.dirname(first))
  assert rescue.startswith(tempfile.tempdir) and os.path.dirname(second) == rescue
  assert open(first).read() == "id\n0\n" and open(second).read() == "table"
  warning = capsys.readouterr().err.strip()
  assert _one_line(warning).startswith(f"warning: cannot write to {out}") and rescue in warning


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "metrics.json"
  io_util.atomic_write_text(str(path), "old")
  with pytest.raises(TypeError):
    io_util.atomic_write_text(str(path), 12345)   # fails while writing
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]
  plain = tmp_path / "plain.json"
  plain.write_text("")
  assert os.stat(path).st_mode == os.stat(plain).st_mode   # as open() would make it


# --- 3. zero-span traces; 4. UTF-8 byte-order marks --------------------------------------

HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


@pytest.mark.parametrize("rows", ["0.0,10,5\n", "2.5,10,5\n", "1.0,10,5\n1.0,12,5\n1.0,3,2\n"])
def test_zero_span_trace_is_refused_when_loaded(tmp_path, rows):
  path = tmp_path / "trace.csv"
  path.write_text(HEADER + rows)
  with pytest.raises(ValueError) as e:
    W.load_trace_csv(str(path))
  assert _one_line(str(e.value)).startswith(f"{path}: zero time span")
  outcomes = {k: np.zeros(2, {"on_time": bool, "rejected": bool, "task": int, "model": int,
                              "instance": int}.get(k, float))
              for k in metrics.OUTCOME_KEYS}   # two arrivals at 0 s, built in memory
  with pytest.raises(ValueError, match="zero duration"):
    metrics.summarize(outcomes, default_profile())


def test_utf8_bom_trace_reads_like_the_plain_one(tmp_path):
  plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
  plain.write_text(HEADER + "0.0,10,5\n0.5,12,6\n")
  bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
  a, b = W.load_trace_csv(str(plain)), W.load_trace_csv(str(bom))
  for field in ("arrival_s", "prompt_len", "output_len"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# --- 5. undecodable or truncated input files ---------------------------------------------

def _latin1(path, text: str) -> str:
  path.write_bytes(text.encode("latin-1"))
  return str(path)


def test_non_utf8_inputs_name_the_file_and_line(tmp_path):
  profile_text = json.dumps(default_profile().to_dict(), indent=2)
  profile_line = profile_text[:profile_text.index("roofline")].count("\n") + 1
  (tmp_path / "hf").mkdir()
  _latin1(tmp_path / "hf" / "config.json", '{"model_type": "opt", "\xe9": 1}')
  cases = [  # (loader, its argument, the file it names, the bad line, message prefix)
      (W.load_trace_csv, _latin1(tmp_path / "t.csv", HEADER + "0,1,1\n1,1,1 # \xe9\n"), None,
       3, ""),
      (profile_lib.load_profile,
       _latin1(tmp_path / "p.json", profile_text.replace("roofline", "\xe9", 1)), None,
       profile_line, "profile "),
      (quality.load_quality_table, _latin1(tmp_path / "q.csv", "model,task,acc\n\xe9,piqa,0.5\n"),
       None, 2, "quality table "),
      (model_checkpoint.load_config, str(tmp_path / "hf"), str(tmp_path / "hf" / "config.json"),
       1, ""),
      (scoring.load_task, _latin1(tmp_path / "task.jsonl", '{"context": "\xe9"}\n'), None, 1,
       "task file "),
  ]
  for load, arg, named, line, what in cases:
    with pytest.raises(ValueError) as e:
      load(arg)
    assert _one_line(str(e.value)) == (f"{what}{named or arg}:{line}: expected UTF-8 text, "
                                       "found byte 0xe9")


def test_truncated_safetensors_file_is_named(tmp_path):
  from safetensors.numpy import save_file
  path = tmp_path / "model.safetensors"
  save_file({"w": np.ones((64, 64), np.float32)}, str(path))
  data = path.read_bytes()
  for cut in (len(data) // 2, 20, 0):
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError) as e:
      model_checkpoint.read_tensors(str(tmp_path))
    assert _one_line(str(e.value)).startswith(f"{path}: expected a complete safetensors file")


# --- 6. launcher user errors: one line, exit status != 0 ---------------------------------

def test_user_errors_wrapper_gives_one_line_and_exit_1(monkeypatch, capsys):
  def main(argv):
    raise FileNotFoundError(2, "No such file or directory", "/nope/prompts.json")
  monkeypatch.setattr(sys, "argv", ["generate.py"])
  monkeypatch.delenv("BES_TRACEBACK", raising=False)
  with pytest.raises(SystemExit) as e:
    cli_errors.user_errors(main)(["generate.py"])
  assert e.value.code == "generate.py: error: [Errno 2] No such file or directory: " \
                         "'/nope/prompts.json'"
  with pytest.raises(KeyError):   # bugs keep their traceback
    cli_errors.user_errors(lambda argv: {}["x"])([])


@pytest.mark.slow   # a subprocess
def test_generate_launcher_user_error_is_one_line(tmp_path):
  (tmp_path / "p.json").write_text("[[5]]")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "generate.py"), "--checkpoint=/nonexistent",
       "--prompts=p.json", "--out=o.json"], capture_output=True, text=True, cwd=tmp_path,
      timeout=240)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "generate.py: error: --checkpoint: directory '/nonexistent' does not exist")
