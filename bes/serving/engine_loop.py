"""One instance's serving loop over a slot `Engine`, as the serving model's "Execution" says.

No processes and no pipes here (`bes.serving.worker` runs this loop in a process), so it can
be unit-tested and profiled in-process.

  loop = EngineLoop(engine, instance=0, queue_capacity=64)
  loop.warmup()                      # compile every shape it will ever run
  loop.submit(protocol.Submit(...))  # -> protocol.Rejected or None (queued)
  it = loop.step()                   # -> protocol.Iteration, or None when idle

One `step()` is one iteration: admit waiting requests FIFO while slots are free; prefill the
admitted requests with one `prefill_batch` call per prompt-length bucket among them (their
first tokens; `split_buckets=False`: one call for all, padded to the longest one's bucket);
if any request was running before admission, one `generate_step` (one more token each);
`insert_batch` the admitted prefixes (one call per prefill call); fetch the tokens to the host (blocking); a request completes when it has `max_tokens` tokens (LENGTH) or
produced EOS (`config.eos_token_id`) with at least `min_tokens` tokens and not `ignore_eos`
(STOP; an EOS that is also the `max_tokens`-th token is STOP, as OpenAI reports it); the
slots of completed requests are freed. Slots are taken lowest index first.

Prefill cost: the serving model charges an admitting iteration one `prefill_s_fixed` plus
`prefill_s_per_token` per admitted prompt token. Batching the admitted prompts pays the
fixed cost once per call, not once per request; splitting by bucket pays it once per
distinct bucket but never pads a short prompt to a long one's bucket. Measured on one CPU
core (configs/serve/cpu.py shapes, max_len 256), prompts [16, 16, 16, 200]: one call 205 ms
(small) / 1130 ms (large), split 96 / 197 ms; on a tiny model, where the fixed cost
dominates, one call wins ([16, 63]: 1.1 vs 4.0 ms). Hence the default, split.

Sampling is per request (temperature, top_p, seed; see `bes.models.engine`, "Random
streams"): a request's tokens depend only on its prompt, parameters and seed, never on
which other requests share its iterations.
"""
from __future__ import annotations

import collections
import dataclasses
import time

import jax
import numpy as np

from bes.models import engine as engine_lib
from bes.serving import protocol


@dataclasses.dataclass
class _Running:
  msg: protocol.Submit
  slot: int
  produced: int = 0


class EngineLoop:
  """FIFO waiting queue + running slots of one `Engine` (module docstring).

  Args:
    engine: the slot engine (`num_slots` = the largest running batch).
    instance: the instance id written in every Iteration.
    queue_capacity: waiting requests at most; a Submit beyond it is Rejected.
    clock: the time source of Iteration.start/end (`time.monotonic`).
    split_buckets: one prefill call per prompt-length bucket among the admitted requests
      (True), or one call for all of them (False).
  """

  def __init__(self, engine: engine_lib.Engine, instance: int, queue_capacity: int,
               clock=time.monotonic, split_buckets: bool = True):
    if queue_capacity < 0:
      raise ValueError(f"EngineLoop: queue_capacity must be >= 0, got {queue_capacity}")
    self.engine, self.instance, self.queue_capacity = engine, instance, queue_capacity
    self.clock, self.split_buckets = clock, split_buckets
    self.eos = engine.config.eos_token_id
    self.state = engine.init_decode_state()
    self.waiting: collections.deque[protocol.Submit] = collections.deque()
    self.running: dict[int, _Running] = {}  # rid -> request, in admission order
    self.free_slots = list(range(engine.num_slots))

  @property
  def idle(self) -> bool:
    """Nothing running and nothing waiting."""
    return not self.running and not self.waiting

  def check(self, msg: protocol.Submit) -> str | None:
    """Why `msg` is bad input (one line), or None."""
    cfg, max_len = self.engine.config, self.engine.max_len
    toks = msg.tokens
    if not isinstance(toks, (tuple, list)) or not toks:
      return "tokens must be a non-empty tuple of token ids"
    if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in toks):
      return "tokens must be ints"
    if min(toks) < 0 or max(toks) >= cfg.vocab_size:
      return f"token ids must be in [0, {cfg.vocab_size})"
    for name in ("max_tokens", "min_tokens", "seed"):
      v = getattr(msg, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        return f"{name} must be an int, got {v!r}"
    if msg.max_tokens < 1:
      return f"max_tokens must be >= 1, got {msg.max_tokens}"
    if len(toks) + msg.max_tokens > max_len:
      return (f"prompt ({len(toks)}) + max_tokens ({msg.max_tokens}) must be <= max_len "
              f"({max_len})")
    if not 0 <= msg.min_tokens <= msg.max_tokens:
      return f"min_tokens must be in [0, max_tokens={msg.max_tokens}], got {msg.min_tokens}"
    try:
      temperature, top_p = float(msg.temperature), float(msg.top_p)
    except (TypeError, ValueError):
      return "temperature and top_p must be numbers"
    if not (np.isfinite(temperature) and temperature >= 0):
      return f"temperature must be a finite number >= 0, got {msg.temperature}"
    if not 0 < top_p <= 1:
      return f"top_p must be in (0, 1], got {msg.top_p}"
    return None

  def submit(self, msg: protocol.Submit) -> protocol.Rejected | None:
    """Queues `msg` (FIFO), or returns why it is refused (bad input, or the queue is full)."""
    reason = self.check(msg)
    if reason is None and len(self.waiting) >= self.queue_capacity:
      reason = f"waiting queue full ({self.queue_capacity} requests)"
    if reason is not None:
      return protocol.Rejected(rid=msg.rid, reason=reason)
    self.waiting.append(msg)
    return None

  def _prefill(self, msgs):
    return self.engine.prefill_batch(
        [np.asarray(m.tokens, np.int32) for m in msgs], [float(m.temperature) for m in msgs],
        [float(m.top_p) for m in msgs], [int(m.seed) for m in msgs])

  def step(self) -> protocol.Iteration | None:
    """One iteration (module docstring); None when idle (nothing running or waiting)."""
    if self.idle:
      return None
    start = self.clock()
    eng = self.engine
    admitted = []
    while self.waiting and self.free_slots:
      msg = self.waiting.popleft()
      admitted.append(_Running(msg, self.free_slots.pop(0)))
    groups = collections.defaultdict(list)  # bucket -> admitted requests, FIFO order
    for r in admitted:
      groups[eng.bucket_for(len(r.msg.tokens)) if self.split_buckets else 0].append(r)
    groups = [groups[b] for b in sorted(groups)]
    prefixes = [self._prefill([r.msg for r in g]) for g in groups]
    before = list(self.running.values())
    decoded = None
    if before:
      self.state, toks, lps = eng.generate_step(self.state)
      decoded = (toks, lps)
    for g, prefix in zip(groups, prefixes):
      self.state = eng.insert_batch(prefix, self.state, [r.slot for r in g])
    decoded, got = jax.device_get((decoded, [(p.token, p.logprob) for p in prefixes]))
    first = {id(r): (t, lp) for g, (toks, lps) in zip(groups, got)
             for r, t, lp in zip(g, toks, lps)}
    firsts = [first[id(r)] for r in admitted]
    produced = []
    if decoded is not None:
      toks, lps = decoded
      produced += [(r, int(toks[r.slot]), float(lps[r.slot])) for r in before]
    produced += [(r, int(t), float(lp)) for r, (t, lp) in zip(admitted, firsts)]
    for r in admitted:
      self.running[r.msg.rid] = r
    finished = []
    for r, tok, _ in produced:
      r.produced += 1
      msg = r.msg
      if tok == self.eos and not msg.ignore_eos and r.produced >= msg.min_tokens:
        finished.append((msg.rid, protocol.STOP))
      elif r.produced >= msg.max_tokens:
        finished.append((msg.rid, protocol.LENGTH))
    for rid, _ in finished:
      r = self.running.pop(rid)
      self.state = eng.free(self.state, r.slot)
      self.free_slots.append(r.slot)
    self.free_slots.sort()
    return protocol.Iteration(
        instance=self.instance, start=start, end=self.clock(),
        admitted_rids=tuple(r.msg.rid for r in admitted),
        tokens=tuple((r.msg.rid, tok, lp) for r, tok, lp in produced),
        completed=tuple(finished), running=len(self.running), waiting=len(self.waiting))

  def warmup(self) -> float:
    """Compiles every shape the loop runs (prefill_batch + insert_batch at every (bucket,
    batch size), generate_step, free, with greedy and sampled rows), then resets to a fresh
    state. Returns seconds."""
    if not self.idle:
      raise RuntimeError("EngineLoop.warmup: only an idle loop can warm up")
    t0 = time.perf_counter()
    eng = self.engine
    for i, bucket in enumerate(eng.buckets):
      length = min(bucket, eng.max_len - 1)
      for rows in eng.batch_sizes:
        prefix = eng.prefill_batch([np.full((length,), 3, np.int32)] * rows,
                                   [float((i + r) % 2) for r in range(rows)],
                                   [1.0 - 0.5 * ((i + r) % 2) for r in range(rows)],
                                   list(range(rows)))
        self.state = eng.insert_batch(prefix, self.state, list(range(rows)))
        jax.device_get((prefix.token, prefix.logprob))
    self.state, toks, lps = eng.generate_step(self.state)
    jax.device_get((toks, lps))
    for slot in range(eng.num_slots):
      self.state = eng.free(self.state, slot)
    jax.block_until_ready(self.state)
    self.state = eng.init_decode_state()
    jax.block_until_ready(self.state)
    return time.perf_counter() - t0

  def compiled_shapes(self) -> int:
    """Executables compiled so far by the engine's jitted functions (a test hook: it must
    not grow after `warmup`)."""
    eng = self.engine
    return sum(f._cache_size() for f in (eng._prefill, eng._insert, eng._prefill_batch,
                                         eng._insert_batch, eng._generate, eng._free))
