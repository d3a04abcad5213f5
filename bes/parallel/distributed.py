"""Many processes (hosts) with `jax.distributed`: one config, N processes, one global mesh.

  distributed.initialize()        first thing in a launcher's main (no-op for one process)
  distributed.is_primary()        process 0: the one that writes metrics, configs, reports
  distributed.to_global(x, s)     a host value, identical on every process -> a global array
  distributed.fetch(tree)         (possibly non-addressable) global arrays -> host numpy

Where the processes come from, in order:
  1. the launcher flags `--coordinator_address`, `--num_processes`, `--process_id`;
  2. the environment `JAX_COORDINATOR_ADDRESS` (read by `jax.distributed.initialize` itself),
     `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
  3. the clusters `jax.distributed.initialize()` detects on its own (Cloud TPU / GKE TPU
     slices, SLURM, Open MPI, Kubernetes jobsets): not re-implemented here, only asked
     whether one is present.
None of these: a single process, and `initialize` does nothing. On CPU the cross-process
collectives are gloo's (`jax_cpu_collectives_implementation`).

Every process runs the same program on the same config; arrays are global (sharded over
the devices of every process), orbax saves and restores them with every process taking part
(one checkpoint directory, shared), and host-side reads gather them (`fetch`, a collective:
every process calls it). Files other than checkpoints are written by the primary only.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

ENV_ADDRESS, ENV_NUM, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"

_initialized = False


def define_flags() -> tuple:
  """The launchers' `--coordinator_address`, `--num_processes`, `--process_id` (absent: the
  environment, a detected cluster, or one process)."""
  return (
      flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator "
                          f"(jax.distributed); default ${ENV_ADDRESS} or a detected cluster."),
      flags.DEFINE_integer("num_processes", None, f"Processes of the run; default ${ENV_NUM}, "
                           "a detected cluster, or 1."),
      flags.DEFINE_integer("process_id", None, f"This process's index; default ${ENV_ID} or "
                           "a detected cluster."))


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  if not value.lstrip("-").isdigit():
    raise ValueError(f"${name}: expected an integer, got {value!r}")
  return int(value)


def _cluster_detected() -> bool:
  """Whether `jax.distributed.initialize()` would find a cluster by itself (its registry of
  cluster environments is private, so any failure to ask reads as none)."""
  try:
    from jax._src import clusters  # pylint: disable=import-outside-toplevel
    return any(not c.opt_in_only_method and c.is_env_present()
               for c in clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    return False


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, flag_values: tuple | None = None) -> bool:
  """Starts `jax.distributed` when the run has several processes (module docstring); returns
  whether it did. Call before anything touches a JAX device. `flag_values`: the holders of
  `define_flags()`, read when given (their values win over the arguments)."""
  global _initialized
  if flag_values is not None:
    given = [h.value for h in flag_values]
    coordinator_address = given[0] or coordinator_address
    num_processes = given[1] if given[1] is not None else num_processes
    process_id = given[2] if given[2] is not None else process_id
  if _initialized:
    return True
  coordinator_address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM)
  process_id = process_id if process_id is not None else _env_int(ENV_ID)
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes: expected >= 1, got {num_processes}")
  if num_processes == 1 and process_id in (None, 0):
    return False
  explicit = (coordinator_address, num_processes, process_id) != (None, None, None)
  if not explicit and not _cluster_detected():
    return False
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id: expected 0..{num_processes - 1}, got {process_id}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  _initialized = True
  return True


def is_primary() -> bool:
  """True in process 0 (and in a single-process run)."""
  return jax.process_index() == 0


def to_global(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array with `sharding` from a host value that every process holds identically
  (e.g. keys split from the config's seed): each process places its own shards."""
  host = np.asarray(jax.device_get(value))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def fetch(tree: Any) -> Any:
  """Host numpy copies of the arrays of `tree`; arrays spread over several processes are
  gathered (a collective: every process must call it at the same point)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree_util.tree_map(one, tree)
