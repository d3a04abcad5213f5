"""Orbax checkpoints of a training run: the whole learner state, the policy parameters and
the full config, so that a run resumes exactly and a trained router loads on its own
(`bes.experiment.workdir.load_policies`).

Layout: `<workdir>/checkpoints/<chunk>/{state,params,config,progress}` (an orbax
CheckpointManager; the step is the number of chunks done). `params` holds the policy's
network parameters (stacked over seeds: the latest online ones, or with
`config.train.select_best` the best-evaluated ones) so that evaluation restores them
without building the training environments; `progress` holds the wall-clock seconds spent so far.

`trim_to_policy(workdir)` keeps only what evaluation reads (the latest step's params, config
and progress): what `results/` commits of a trained router. A trimmed workdir loads with
`bes.experiment.workdir.load_policies` but cannot resume training.

Damaged checkpoints (a truncated or emptied file after a full disk, a half-copied workdir):
every read goes through `_restore`, which turns whatever orbax, TensorStore or the JSON
parser raises into a one-line `CorruptCheckpointError` naming the step's directory, and
`newest_intact` falls back from the latest step to the newest one that reads, with a
warning. A resumed training run (`restore_latest_intact`) also moves the damaged newer
steps aside to `<step>.corrupt`, so that it can write those steps again.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from typing import Callable, TypeVar

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


T = TypeVar("T")
Warn = Callable[[str], None]


class CorruptCheckpointError(ValueError):
  """A checkpoint step that cannot be read; the message names its directory."""


def _stderr_warning(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
      max_to_keep=max(1, int(keep)), create=True))


def save(mngr: ocp.CheckpointManager, step: int, state, config: dict, progress: dict,
         params) -> None:
  """Saves the learner state (any pytree), the policy's `params`, the config (a JSON-able
  dict) and `progress` (JSON)."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(params),
      config=ocp.args.JsonSave(config), progress=ocp.args.JsonSave(progress)))
  mngr.wait_until_finished()


def _abstract(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  """The directory of checkpoint `step`."""
  return os.path.join(os.fspath(mngr.directory), str(step))


def _restore(mngr: ocp.CheckpointManager, step: int, **items):
  """`mngr.restore` of the composite `items`. Any failure becomes a one-line
  `CorruptCheckpointError` naming the step's directory: for one truncated file orbax,
  TensorStore and json raise many exception types, some with 100-line messages."""
  try:
    return mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore")[0][:200]
    raise CorruptCheckpointError(f"checkpoint {step_dir(mngr, step)} cannot be read "
                                 f"({type(e).__name__}: {first})") from e


def restore_state(mngr: ocp.CheckpointManager, step: int, like):
  """The learner state of `step`, shaped like `like` (a state or its eval_shape), and the
  saved progress dict."""
  where = step_dir(mngr, step)
  if not os.path.isdir(os.path.join(where, "state")):
    raise ValueError(f"{where}: holds only the trained policy (no learner state, it was "
                     f"trimmed for results/), so training cannot resume from it; train in a "
                     f"new --workdir")
  got = _restore(mngr, step, state=ocp.args.StandardRestore(_abstract(like)),
                 progress=ocp.args.JsonRestore())
  return got.state, got.progress


def step_config(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The full config (JSON object) saved with checkpoint `step`."""
  saved = _restore(mngr, step, config=ocp.args.JsonRestore()).config
  if not isinstance(saved, dict):
    raise CorruptCheckpointError(f"checkpoint {step_dir(mngr, step)}: its config is not a "
                                 f"JSON object (got {type(saved).__name__})")
  return saved


def _move_aside(path: str) -> str:
  """Renames directory `path` to the first free `path.corrupt[N]`; returns the new name."""
  target, n = f"{path}.corrupt", 1
  while os.path.exists(target):
    target, n = f"{path}.corrupt{n}", n + 1
  os.replace(path, target)
  return target


def newest_intact(mngr: ocp.CheckpointManager, restore_step: Callable[[int], T],
                  warn: Warn = _stderr_warning, move_aside: bool = False) -> tuple[int, T] | None:
  """(step, restore_step(step)) for the newest step whose `restore_step` raises no
  `CorruptCheckpointError`; None when there is no checkpoint at all.

  Each damaged newer step is reported through `warn` (one line naming its directory); with
  `move_aside` it is renamed `<step>.corrupt` (orbax ignores it) so that a resumed run can
  write that step again. Other errors of `restore_step` (e.g. a config check) propagate.

  Raises:
    CorruptCheckpointError naming the checkpoints directory when no step can be read.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  damaged = []
  for step in steps:
    try:
      got = restore_step(step)
    except CorruptCheckpointError as e:
      damaged.append((step, e))
      continue
    primary = jax.process_index() == 0    # one process renames (shared directory)
    for bad, error in damaged:
      moved = ""
      if move_aside and primary:
        moved = f"; moved it to {_move_aside(step_dir(mngr, bad))}"
      warn(f"{error}{moved}; using the newest intact checkpoint, step {step}")
    if damaged and move_aside:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("bes.checkpoint.move_aside")
      mngr.reload()
    return step, got
  if damaged:
    raise CorruptCheckpointError(
        f"{mngr.directory}: no intact checkpoint among steps {steps} (newest: "
        f"{damaged[0][1]}); move the directory away to start from scratch")
  return None


@dataclasses.dataclass(frozen=True)
class Resumed:
  """Where a resumed training run restarts: the checkpoint's step (chunks done), its
  learner state, progress dict and full config."""
  step: int
  state: object
  progress: dict
  config: dict


def restore_latest_intact(mngr: ocp.CheckpointManager, like,
                          check_config: Callable[[dict], None] | None = None,
                          warn: Warn = _stderr_warning) -> Resumed | None:
  """The newest intact checkpoint of a training run, or None when there is none; damaged
  newer steps are moved aside with a warning (`newest_intact`).

  Args:
    mngr: the run's manager.
    like: the learner state or its eval_shape.
    check_config: called with a step's saved config before its state is read; its errors
      (e.g. a resume with another config) propagate.
    warn: reports each damaged step (one line).
  """
  def restore(step: int) -> Resumed:
    config = step_config(mngr, step)
    if check_config is not None:
      check_config(config)
    state, progress = restore_state(mngr, step, like)
    return Resumed(step=step, state=state, progress=progress, config=config)
  found = newest_intact(mngr, restore, warn, move_aside=True)
  return None if found is None else found[1]


def read_config(workdir: str,
                warn: Warn = _stderr_warning) -> tuple[dict, int]:
  """The config saved with the newest checkpoint of `workdir` whose config and params both
  read (a damaged newer one is skipped with a warning), and that checkpoint's step."""
  root = os.path.join(workdir, "checkpoints")
  mngr = manager(workdir) if os.path.isdir(root) else None   # reading creates nothing
  if mngr is None or mngr.latest_step() is None:
    raise ValueError(f"--workdir={workdir}: no checkpoint under {root} "
                     f"(train first with launch/train.py --workdir={workdir})")

  def readable(step: int) -> dict:
    config = step_config(mngr, step)
    _restore(mngr, step, params=ocp.args.StandardRestore())  # reads (checks) every array
    return config
  step, config = newest_intact(mngr, readable, warn)
  return config, step


def restore_params(workdir: str, step: int, like):
  """The online network parameters (stacked over seeds) of checkpoint `step`."""
  return _restore(manager(workdir), step,
                  params=ocp.args.StandardRestore(_abstract(like))).params


def trim_to_policy(workdir: str) -> int:
  """Deletes `workdir`'s learner states (replay buffers, environment states, optimiser) and
  every checkpoint but the latest, keeping that one's params, config and progress (what
  `load_policies` reads). Returns the number of bytes freed; 0 when there is no checkpoint."""
  root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
  doomed = [os.path.join(root, str(s)) for s in steps[:-1]]
  doomed += [os.path.join(root, str(s), "state") for s in steps[-1:]]
  freed = 0
  for path in filter(os.path.isdir, doomed):
    freed += _tree_bytes(path)
    shutil.rmtree(path)
  return freed


def _tree_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
