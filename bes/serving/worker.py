"""An engine worker: one serving instance in its own process, and the front end's handle on it.

  spec = WorkerSpec(instance=0, model="tiny", config=cfg, checkpoint=None, seed=0,
                    dtype="float32", max_batch=8, max_len=512, queue_capacity=64,
                    cpus=(2,), device=None)
  handle = WorkerHandle(spec, on_event=queue.put)   # events arrive on the handle's thread
  handle.start()                                    # ... protocol.Ready when warm
  handle.submit(protocol.Submit(rid=1, tokens=(2, 100), max_tokens=16))
  handle.shutdown(drain=True)

The process (`worker_main`) pins itself before any JAX computation (`pin_process`):
  * CPU (device None): `XLA_FLAGS += --xla_cpu_multi_thread_eigen=false
    intra_op_parallelism_threads=1` (single-threaded XLA), `JAX_PLATFORMS=cpu`, and
    `os.sched_setaffinity(0, cpus)` when cpus is given.
  * Accelerator slice (device (d0, d1, ...), a config's 'gpu:0-3'): only those devices are
    visible: `CUDA_VISIBLE_DEVICES=d0,d1,...`; on TPU (platform 'tpu', or any one-device slice,
    as before) `TPU_VISIBLE_CHIPS=d0,...` with one process's bounds
    (`TPU_PROCESS_BOUNDS=1,1,1`, `TPU_CHIPS_PER_PROCESS_BOUNDS` from the chip count: 1 -> 1,1,1,
    2 -> 1,2,1, 4 -> 2,2,1, 8 -> 2,4,1; the libtpu convention for chips of one host, not
    tested here). cpus, when given, pin the host threads likewise.
Then it builds the engine (checkpoint, or random `opt.init_params` from `seed`), over a
slice of several devices tensor-parallel (`Engine(mesh=...)`, a 'model' axis over every
visible device; random weights then drawn already sharded), warms up
(`EngineLoop.warmup`: nothing compiles while serving), sends Ready, and loops: take every
pending message (block only when idle), one `EngineLoop.step`, send its Iteration. Refused
Submits get Rejected. Shutdown(drain=True): stop accepting (later Submits are Rejected),
finish everything, exit 0; Shutdown(drain=False): exit 0 at once. An exception: Fatal, exit 1.

Failure detection (`WorkerHandle`): the handle's reader thread reports `protocol.WorkerDown`
with every outstanding rid (submitted, neither finished nor rejected) when (a) the process
exits or the pipe breaks, at once, including after a Shutdown (rids then empty after a
drain); (b) requests are outstanding, the worker is Ready and no message came for
`hang_timeout_s` (the clock starts at the later of the last message and the Submit that made
the outstanding set non-empty): the process is SIGKILLed first. The reader polls every 50 ms.
A hang timeout shorter than the slowest iteration (a long prefill of a large model) reports
a live worker as hung: size it to the profile.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import threading
import time
from typing import Callable

from bes.models.opt_config import OPTConfig
from bes.serving import protocol

DTYPES = ("float32", "bfloat16", "float16")
CPU_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_POLL_S = 0.05
# TPU_CHIPS_PER_PROCESS_BOUNDS of a slice of n chips of one host.
TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
  """Everything a worker process needs to build its instance (picklable)."""
  instance: int
  model: str
  config: OPTConfig
  checkpoint: str | None
  seed: int
  dtype: str
  max_batch: int
  max_len: int
  queue_capacity: int
  cpus: tuple[int, ...] | None = None
  device: int | tuple[int, ...] | None = None   # None: CPU; an int is a 1-device slice
  buckets: tuple[int, ...] | None = None
  platform: str = "gpu"                          # 'gpu' | 'tpu' (accelerator slices only)

  def __post_init__(self):
    def need(ok, field, what):
      if not ok:
        raise ValueError(f"WorkerSpec.{field}: expected {what}, got {getattr(self, field)!r}")
    isint = lambda v: isinstance(v, int) and not isinstance(v, bool)
    need(isint(self.instance) and self.instance >= 0, "instance", "an int >= 0")
    need(isinstance(self.model, str) and self.model, "model", "a non-empty name")
    need(isinstance(self.config, OPTConfig), "config", "an OPTConfig")
    need(self.checkpoint is None or (isinstance(self.checkpoint, str) and self.checkpoint),
         "checkpoint", "None or a directory path")
    need(isint(self.seed), "seed", "an int")
    need(self.dtype in DTYPES, "dtype", f"one of {DTYPES}")
    need(isint(self.max_batch) and self.max_batch >= 1, "max_batch", "an int >= 1")
    need(isint(self.max_len) and 2 <= self.max_len <= self.config.max_position_embeddings,
         "max_len", f"an int in [2, {self.config.max_position_embeddings}]")
    need(isint(self.queue_capacity) and self.queue_capacity >= 0, "queue_capacity",
         "an int >= 0")
    need(self.cpus is None or (isinstance(self.cpus, tuple) and self.cpus
                               and all(isint(c) and c >= 0 for c in self.cpus)),
         "cpus", "None or a non-empty tuple of core ids")
    if isint(self.device):
      object.__setattr__(self, "device", (self.device,))
    need(self.device is None or (isinstance(self.device, tuple) and self.device
                                 and all(isint(d) and d >= 0 for d in self.device)
                                 and len(set(self.device)) == len(self.device)),
         "device", "None (CPU), an accelerator index >= 0 or a tuple of distinct ones")
    need(self.platform in ("gpu", "tpu"), "platform", "'gpu' or 'tpu'")
    need(self.platform != "tpu" or self.device is None or len(self.device) in TPU_BOUNDS,
         "device", f"a TPU slice of {sorted(TPU_BOUNDS)} chips")
    need(self.buckets is None or (isinstance(self.buckets, tuple) and self.buckets
                                  and all(isint(b) and 1 <= b <= self.max_len
                                          for b in self.buckets)
                                  and max(self.buckets) == self.max_len),
         "buckets", f"None or a tuple of lengths in [1, max_len] ending at {self.max_len}")


def pin_process(spec: WorkerSpec) -> None:
  """Restricts this process as the module docstring says; call before any JAX computation."""
  if spec.device is None:
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_XLA_FLAGS not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAGS}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
  else:
    ids = ",".join(str(d) for d in spec.device)
    os.environ["CUDA_VISIBLE_DEVICES"] = ids
    if spec.platform == "tpu" or len(spec.device) == 1:
      os.environ["TPU_VISIBLE_CHIPS"] = ids
      os.environ["TPU_CHIPS_PER_PROCESS_BOUNDS"] = TPU_BOUNDS[len(spec.device)]
      os.environ["TPU_PROCESS_BOUNDS"] = "1,1,1"
  if spec.cpus is not None:
    pin_threads(spec.cpus)


def pin_threads(cpus) -> None:
  """Pins every thread of this process to `cpus` (threads created later inherit it).

  `sched_setaffinity(0, ...)` pins only the calling thread, and a spawned worker already
  has threads when it starts: the spawn re-imports the parent's main module (a launcher
  importing bes, hence JAX and numpy), whose thread pools would stay free to run on every
  core (measured: a served worker used 1.7 cores).
  """
  tids = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
  for tid in tids:
    try:
      os.sched_setaffinity(int(tid), cpus)
    except (ProcessLookupError, PermissionError):
      pass                                   # a thread that ended meanwhile


def engine_mesh(spec: WorkerSpec):
  """The engine's mesh: a 'model' axis over every visible device for a slice of several
  accelerators (pinned: exactly the slice's), else None (one device, unsharded)."""
  if spec.device is None or len(spec.device) == 1:
    return None
  import jax  # pylint: disable=import-outside-toplevel
  from bes.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  if len(devices) != len(spec.device):
    raise ValueError(f"WorkerSpec.device: a slice of {len(spec.device)} devices, but "
                     f"{len(devices)} {devices[0].platform} device(s) are visible")
  return mesh_lib.make_mesh(mesh_lib.MeshConfig(seed=1, data=1, model=-1), devices)


def build_loop(spec: WorkerSpec):
  """The instance's EngineLoop (not warmed up); imports JAX, so pin first."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from bes.models import checkpoint, engine, opt, opt_sharding
  from bes.serving import engine_loop  # pylint: disable=import-outside-toplevel
  if spec.device is None:
    jax.config.update("jax_platforms", "cpu")
  dtype = jnp.dtype(spec.dtype)
  mesh = engine_mesh(spec)
  if spec.checkpoint is not None:
    # a sharded engine: host arrays, placed shard by shard (never the whole model on one device)
    config, params = checkpoint.load_checkpoint(spec.checkpoint, dtype, on_host=mesh is not None)
    if config != spec.config:
      raise ValueError(f"WorkerSpec.config: differs from {spec.checkpoint}/config.json")
  elif mesh is not None:
    params = opt_sharding.init_sharded_params(spec.config, jax.random.key(spec.seed), mesh,
                                              dtype)
  else:
    params = opt.init_params(spec.config, jax.random.key(spec.seed), dtype)
  eng = engine.Engine(params, spec.config, num_slots=spec.max_batch, max_len=spec.max_len,
                      dtype=dtype, buckets=spec.buckets, mesh=mesh)
  return engine_loop.EngineLoop(eng, spec.instance, spec.queue_capacity)


def _exit_code(proc, timeout_s: float = 5.0) -> int | None:
  """`proc`'s exit code once it has exited. `shutdown` may be reaping it in another thread at
  the same moment: that thread's waitpid wins, ours sees ECHILD and multiprocessing answers
  None until the winner records the code, so wait (briefly) for it."""
  deadline = time.monotonic() + timeout_s
  while proc.exitcode is None and time.monotonic() < deadline:
    time.sleep(0.01)
  return proc.exitcode


def _one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}".replace("\n", " ")[:500]


def worker_main(spec: WorkerSpec, conn, started: float | None = None) -> None:
  """The worker process (a `multiprocessing` spawn target); see the module docstring."""
  started = time.monotonic() if started is None else started
  try:
    pin_process(spec)
    loop = build_loop(spec)
    loop.warmup()
    conn.send(protocol.Ready(instance=spec.instance, warmup_s=time.monotonic() - started))
    draining = False
    while True:
      if loop.idle and not draining:
        conn.poll(None)
      while conn.poll(0):
        msg = conn.recv()
        if isinstance(msg, protocol.Shutdown):
          if not msg.drain:
            _exit(conn, 0)
          draining = True
        elif isinstance(msg, protocol.Submit):
          refused = (protocol.Rejected(msg.rid, "worker is shutting down") if draining
                     else loop.submit(msg))
          if refused is not None:
            conn.send(refused)
        else:
          raise TypeError(f"unexpected message {type(msg).__name__}")
      if draining and loop.idle:
        _exit(conn, 0)
      iteration = loop.step()
      if iteration is not None:
        conn.send(iteration)
  except (EOFError, BrokenPipeError):  # the front end is gone: nobody to tell
    _exit(conn, 1)
  except BaseException as e:  # pylint: disable=broad-except
    try:
      conn.send(protocol.Fatal(instance=spec.instance, error=_one_line(e)))
    finally:
      _exit(conn, 1)


def _exit(conn, code: int) -> None:
  """Ends the worker at once: no interpreter/JAX teardown, so the exit follows the pipe's
  close immediately (the handle reads the exit code when it sees EOF)."""
  try:
    conn.close()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


class WorkerHandle:
  """The front end's side of one worker process (module docstring).

  on_event(msg) is called from the handle's reader thread for every message of the worker
  (Ready, Iteration, Rejected, Fatal) and for protocol.WorkerDown; the caller marshals it to
  its own loop. `outstanding` is updated before on_event sees the message.
  """

  def __init__(self, spec: WorkerSpec, on_event: Callable[[object], None],
               hang_timeout_s: float = 1.0):
    self.spec, self.on_event, self.hang_timeout_s = spec, on_event, hang_timeout_s
    self._lock = threading.Lock()
    self._proc = self._conn = self._reader = None
    self._outstanding: set[int] = set()
    self._ready = False
    self._down = True
    self._fatal = None
    self._last = 0.0

  @property
  def alive(self) -> bool:
    return not self._down and self._proc is not None and self._proc.is_alive()

  @property
  def ready(self) -> bool:
    return self._ready and self.alive

  @property
  def pid(self) -> int | None:
    return None if self._proc is None else self._proc.pid

  @property
  def outstanding(self) -> frozenset:
    with self._lock:
      return frozenset(self._outstanding)

  def start(self) -> None:
    """Spawns the worker process and the reader thread."""
    if self.alive:
      raise RuntimeError(f"worker {self.spec.instance}: already running (pid {self.pid})")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=worker_main, args=(self.spec, child, time.monotonic()),
                       name=f"bes-worker-{self.spec.instance}", daemon=True)
    proc.start()
    child.close()
    with self._lock:
      self._proc, self._conn = proc, parent
      self._outstanding, self._ready, self._down = set(), False, False
      self._fatal = None
      self._last = time.monotonic()
    self._reader = threading.Thread(target=self._read, args=(proc, parent), daemon=True,
                                    name=f"bes-worker-{self.spec.instance}-reader")
    self._reader.start()

  def submit(self, msg: protocol.Submit) -> None:
    """Sends a request; raises RuntimeError when the worker is not alive."""
    with self._lock:
      if self._down or self._proc is None or not self._proc.is_alive():
        raise RuntimeError(f"worker {self.spec.instance}: not alive, cannot submit rid "
                           f"{msg.rid}")
      if not self._outstanding:
        self._last = time.monotonic()
      self._outstanding.add(msg.rid)
      try:
        self._conn.send(msg)
      except (OSError, ValueError) as e:
        self._outstanding.discard(msg.rid)
        raise RuntimeError(f"worker {self.spec.instance}: pipe closed ({e})") from e

  def shutdown(self, drain: bool = True, timeout_s: float = 30.0) -> int | None:
    """Asks the worker to stop (drain: after every accepted request); waits up to timeout_s,
    then kills it. Returns the exit code."""
    proc = self._proc
    if proc is None:
      return None
    with self._lock:
      try:
        self._conn.send(protocol.Shutdown(drain=drain))
      except (OSError, ValueError):
        pass
    proc.join(timeout_s)
    if proc.is_alive():
      self.kill()
      proc.join(5.0)
    if self._reader is not None:
      self._reader.join(5.0)
    return proc.exitcode

  def kill(self) -> None:
    """SIGKILLs the process (the reader thread then reports WorkerDown)."""
    if self._proc is not None and self._proc.is_alive():
      self._proc.kill()

  def restart(self) -> None:
    """Kills the process if it runs, waits for its WorkerDown, starts a fresh one."""
    if self._proc is not None:
      self.kill()
      self._proc.join(5.0)
      if self._reader is not None:
        self._reader.join(5.0)
    self.start()

  def _read(self, proc, conn) -> None:
    reason = None
    while reason is None:
      try:
        if conn.poll(_POLL_S):
          msg = conn.recv()
          with self._lock:
            self._last = time.monotonic()
            if isinstance(msg, protocol.Ready):
              self._ready = True
            elif isinstance(msg, protocol.Iteration):
              self._outstanding.difference_update(rid for rid, _ in msg.completed)
            elif isinstance(msg, protocol.Rejected):
              self._outstanding.discard(msg.rid)
            elif isinstance(msg, protocol.Fatal):
              self._fatal = msg.error
          self.on_event(msg)
          continue
      except (EOFError, OSError):
        proc.join(1.0)
        if proc.is_alive():  # the pipe closed but the process lingers: end it
          proc.kill()
          proc.join(5.0)
        reason = (f"fatal: {self._fatal}" if self._fatal is not None
                  else f"exited (code {_exit_code(proc)})")
        break
      if not proc.is_alive():  # exited with the pipe still open (cannot happen, but cheap)
        reason = f"exited (code {_exit_code(proc)})"
      elif (self._ready and self._outstanding
            and time.monotonic() - self._last > self.hang_timeout_s):
        proc.kill()
        proc.join(5.0)
        reason = f"hang: no message for {self.hang_timeout_s:g} s; killed"
    with self._lock:
      self._down, self._ready = True, False
      rids = tuple(sorted(self._outstanding))
      self._outstanding = set()
    conn.close()
    self.on_event(protocol.WorkerDown(instance=self.spec.instance, reason=reason, rids=rids))
