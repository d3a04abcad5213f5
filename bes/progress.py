"""A log that is never silent for long: while a launcher compiles or runs a long jitted call,
`heartbeat` prints a short `... still working (N s)` line whenever nothing was logged for `every_s` seconds.

  with progress.heartbeat(print) as log:
    train.train(setup, workdir, log=log)     # every line goes through `log`

The heartbeat runs in a daemon thread (XLA compiles and runs without holding Python's GIL)
and stops when the block ends; it changes nothing but what is printed.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator


@contextlib.contextmanager
def heartbeat(log: Callable[[str], None] = print, every_s: float = 10.0,
              clock: Callable[[], float] = time.monotonic) -> Iterator[Callable[[str], None]]:
  """Yields a log function (`log`, then stdout flushed); meanwhile, after every `every_s`
  seconds without a line, prints `  ... still working (N s)`, N the seconds since the last
  line logged through it (or since the block began)."""
  lock = threading.Lock()
  times = {"line": clock(), "beat": clock()}
  done = threading.Event()

  def emit(message: str) -> None:
    log(message)
    sys.stdout.flush()

  def logged(message: str) -> None:
    with lock:
      emit(message)
      times["line"] = times["beat"] = clock()

  def beat() -> None:
    while not done.wait(every_s / 20):
      with lock:
        now = clock()
        if now - times["beat"] >= every_s:
          emit(f"  ... still working ({now - times['line']:.0f} s)")
          times["beat"] = now

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield logged
  finally:
    done.set()
    thread.join()
