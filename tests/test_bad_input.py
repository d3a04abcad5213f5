"""Bad input ends in one clear line naming the file, field or flag (or in a correct result).

One test per class of issue 8's probe: damaged router checkpoints, unwritable outputs,
zero-span traces, UTF-8 BOM traces, undecodable or truncated input files, launcher errors.
"""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bes.router import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(message: str) -> str:
  assert "\n" not in message.strip(), message
  return message


# --- 1. damaged router checkpoints -------------------------------------------------------

def _save_steps(workdir: str, steps=(1, 2)):
  """Checkpoints of a tiny 'learner state' {x: [1000], y: [3]} = step * ones."""
  mngr = checkpoint.manager(workdir, keep=5)
  config = ml_collections.ConfigDict({"seed": 0})
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
  assert resumed.config.seed == 0 and len(checked) == 1 + (damage == "truncated_state")
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
  assert step == 1 and config.seed == 0
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


def test_a_config_check_failure_is_not_taken_for_damage(tmp_path):
  workdir = str(tmp_path / "run")
  _save_steps(workdir)

  def refuse(config):
    raise ValueError("resume with another config")
  with pytest.raises(ValueError, match="another config"):
    checkpoint.restore_latest_intact(checkpoint.manager(workdir), LIKE, refuse)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
