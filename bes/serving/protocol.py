"""Messages between the router front end and its engine workers (one process per instance).

Everything here is a plain picklable dataclass: the front end sends them to a worker over a
`multiprocessing` pipe, the worker answers with events. Times are `time.monotonic()` seconds,
one clock for every process of the machine (Linux CLOCK_MONOTONIC), so a worker's iteration
times compare directly with the front end's arrival times.

Front end -> worker:
  Submit      a request joins the worker's FIFO waiting queue.
  Shutdown    finish (drain=True: every accepted request first) and exit.

Worker -> front end:
  Ready       the engine is built and every shape it will run is compiled (warm).
  Iteration   one engine iteration: which requests it admitted, the token each running
              request produced, which requests finished, and the instance's state after it.
  Rejected    a Submit the worker refused (its waiting queue was full, or bad input).
  Fatal       the worker hit an error it cannot continue from (it exits after sending it).

Handle -> front end (made in the front end's process by `bes.serving.worker.WorkerHandle`,
never sent by a worker):
  WorkerDown  the worker process is gone (exited, crashed, or killed as hung); its
              outstanding requests are lost.
"""
from __future__ import annotations

import dataclasses

# Why a request completed (Iteration.completed), as OpenAI's `finish_reason`.
LENGTH, STOP = "length", "stop"


@dataclasses.dataclass(frozen=True)
class Submit:
  """A request for the worker.

  rid: the front end's request id (unique per server run).
  tokens: the prompt's token ids (a tuple of ints, 1 <= len < the worker's max_len).
  max_tokens: tokens to generate at most (>= 1); the request finishes with LENGTH there.
  min_tokens: EOS is ignored before this many tokens (0 <= min_tokens <= max_tokens).
  ignore_eos: never stop at EOS (the request runs to max_tokens).
  temperature: 0 for greedy decoding, else sampling from logits / temperature.
  top_p: nucleus sampling mass (0 < top_p <= 1; 1 keeps every token).
  seed: the request's sampling seed.
  """
  rid: int
  tokens: tuple
  max_tokens: int
  min_tokens: int = 0
  ignore_eos: bool = False
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Shutdown:
  """Stop: with drain, after every submitted request has finished; else at once."""
  drain: bool = True


@dataclasses.dataclass(frozen=True)
class Ready:
  """The worker is warm. warmup_s: seconds from process start to ready (build + compile)."""
  instance: int
  warmup_s: float


@dataclasses.dataclass(frozen=True)
class Iteration:
  """One engine iteration of the serving model (admit, prefill admitted, decode the rest).

  start, end: monotonic seconds of the iteration's start (before admission) and end (after
    its tokens are on the host).
  admitted_rids: rids admitted at the start, FIFO order (each produced its first token).
  tokens: (rid, token id, logprob) for every request that produced a token this iteration.
  completed: (rid, reason) for every request that completed (reason LENGTH or STOP).
  running, waiting: the instance's running and waiting requests after the iteration
    (finished ones removed; includes requests submitted while it ran).
  """
  instance: int
  start: float
  end: float
  admitted_rids: tuple
  tokens: tuple
  completed: tuple
  running: int
  waiting: int


@dataclasses.dataclass(frozen=True)
class Rejected:
  """A Submit the worker refused: rid and a one-line reason."""
  rid: int
  reason: str


@dataclasses.dataclass(frozen=True)
class Fatal:
  """The worker cannot go on (a one-line error); it exits after sending this."""
  instance: int
  error: str


@dataclasses.dataclass(frozen=True)
class WorkerDown:
  """The worker process of `instance` is gone; `rids` (sorted) were outstanding (submitted,
  neither finished nor rejected) and are lost: the front end ends them with an error.

  reason: one line, 'exited (code N)', 'fatal: <error>' (after a Fatal) or 'hang: ...'
    (no message for the hang timeout with requests outstanding; the process was killed).
    A worker that exits after a Shutdown is reported too (reason 'exited (code 0)').
  """
  instance: int
  reason: str
  rids: tuple
