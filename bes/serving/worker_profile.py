"""Latency profile of a worker under serving conditions: the real `EngineLoop`, timed.

`profile_worker(spec, lengths, repeats, warmup)` spawns a process pinned exactly like a
worker (`worker.pin_process`: same cores, single-threaded XLA on CPU), builds and warms up
the instance's `EngineLoop` (`worker.build_loop`), and times whole iterations
(`Iteration.end - Iteration.start`: admission, the batched prefill, decode, the batched
insert, the host fetch of the tokens, frees), means over `repeats` after `warmup` untimed
ones (the mean, not the median: the serving model adds iteration times up, slow ones
included). `profile_workers` profiles several instances at once, each busy while the
others are measured, as they run when serving:

  * decode_step_s[b-1]: an iteration with b requests running and none admitted
    (b = 1..max_batch, requests with ignore_eos and enough max_tokens; short prompts). The
    engine decodes all max_batch slots densely, so this hardly depends on b: that is what
    this engine does, and the profile says so.
  * admission of one request of each prompt length in `lengths`, nothing else running (the
    request has max_tokens 1, so the iteration is prefill + insert + free): the prefill line
    prefill_s_fixed + prefill_s_per_token * p is fitted (`latency.fit_prefill`) to these
    times, i.e. to what a prefill costs. Where the serving model and this loop differ: the
    model charges every admitting iteration tau(b) + prefill; the loop's iteration that
    admits into a running batch costs exactly that (one decode step + the prefill), but one
    that admits into an idle instance runs no decode step (the admitted get their first
    token from the prefill), so the simulator overcharges it by tau(b): once per busy
    period, about 1/n of a request's latency at low load, nothing under load. (Fitting the
    line to the times minus tau(1) instead would make that case exact but undercharge every
    admission under load, and on CPU it drove the fitted fixed cost below 0.)
  * admit_k: an iteration admitting k requests of one length at once (nothing running),
    measured against the model's tau(k) + fixed + per_token * k * p. The model charges one
    fixed cost per iteration, and so does the loop: it prefills all admitted requests in one
    `prefill_batch` call (k rows padded to a power of two, at the bucket of the longest).
    The prefill line itself is fitted to k = 1 admissions (one row), which run that same
    call; a k that is not a power of two pays for the padded rows.
Rounds are interleaved (every b / length / k once per round) so a busy period of a shared
machine hits every entry alike.
"""
from __future__ import annotations

import multiprocessing
import statistics
import time

import numpy as np

from bes.serving import protocol
from bes.serving import worker as worker_lib


def _median_ms(xs):
  return statistics.median(xs)


def measure(loop, lengths, repeats: int, warmup: int, admit_counts=(1, 2, 4),
            admit_length: int | None = None, seed: int = 0) -> dict:
  """Times `loop` (an idle, warm EngineLoop) as the module docstring says; returns the dict
  of `profile_worker`."""
  from bes.models import latency  # pylint: disable=import-outside-toplevel
  eng = loop.engine
  batch, max_len, vocab = eng.num_slots, eng.max_len, eng.config.vocab_size
  lengths = [int(n) for n in lengths]
  if not lengths or min(lengths) < 1 or max(lengths) >= max_len:
    raise ValueError(f"profile: lengths must be in [1, max_len - 1 = {max_len - 1}], "
                     f"got {lengths}")
  if repeats < 1 or warmup < 0:
    raise ValueError(f"profile: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
  rng = np.random.default_rng(seed)
  rid = iter(range(10**9))

  def submit(length, max_tokens):
    msg = protocol.Submit(rid=next(rid), tokens=tuple(int(t) for t in rng.integers(3, vocab, length)),
                          max_tokens=max_tokens, ignore_eos=True)
    refused = loop.submit(msg)
    if refused is not None:
      raise RuntimeError(f"profile: the loop refused a request: {refused.reason}")

  # Decode: rounds of b = 1..batch; each round admits b requests and times k iterations.
  prompt = min(8, max_len - 2)
  per_round = max_len - prompt - 1 - warmup
  if per_round < 1:
    raise ValueError(f"profile: max_len {max_len} too short for {warmup} warm-up iterations")
  decode = [[] for _ in range(batch)]
  while len(decode[0]) < repeats:
    k = min(per_round, repeats - len(decode[0]))
    for b in range(1, batch + 1):
      for _ in range(b):
        submit(prompt, 1 + warmup + k)
      loop.step()
      for i in range(warmup + k):
        it = loop.step()
        assert not it.admitted_rids and len(it.tokens) == b, it
        if i >= warmup:
          decode[b - 1].append(it.end - it.start)
      assert loop.idle
  decode_s = [statistics.fmean(t) for t in decode]   # the mean: the serving model adds them up

  def admission(counts_lengths):
    times = [[] for _ in counts_lengths]
    for r in range(warmup + repeats):
      for i, (count, length) in enumerate(counts_lengths):
        for _ in range(count):
          submit(length, 1)
        it = loop.step()
        assert len(it.admitted_rids) == count and loop.idle, it
        if r >= warmup:
          times[i].append(it.end - it.start)
    return [statistics.fmean(t) for t in times]

  admit_s = admission([(1, n) for n in lengths])
  fixed, per_token = latency.fit_prefill(lengths, admit_s)
  minus_fixed, minus_per_token = latency.fit_prefill(lengths, [t - decode_s[0] for t in admit_s])
  admit_length = admit_length or lengths[len(lengths) // 2]
  counts = [k for k in admit_counts if k <= batch]
  admit_k_s = admission([(k, admit_length) for k in counts])
  return {
      "decode_step_s": decode_s, "prefill_s_fixed": fixed, "prefill_s_per_token": per_token,
      "max_batch": batch,
      "raw": {
          "prefill_lengths": lengths, "padded_lengths": [eng.bucket_for(n) for n in lengths],
          "admit_iteration_s": admit_s,
          "admit_fit_minus_decode": [minus_fixed, minus_per_token],
          "admit_k": [{"k": k, "length": admit_length, "measured_s": t,
                       "model_s": decode_s[k - 1] + fixed + per_token * k * admit_length}
                      for k, t in zip(counts, admit_k_s)],
          "decode_prompt_len": prompt, "repeats": repeats, "warmup": warmup,
          "max_len": max_len, "buckets": list(eng.buckets)}}


def _background_load(loop, stop) -> None:
  """Keeps `loop` decoding a full batch until `stop` (a multiprocessing Event) is set, so a
  worker still being profiled sees the interference it will see when serving."""
  eng = loop.engine
  rid = iter(range(10**9, 2 * 10**9))
  while not stop.is_set():
    while len(loop.waiting) + len(loop.running) < eng.num_slots:
      loop.submit(protocol.Submit(rid=next(rid), tokens=(3,) * 8,
                                  max_tokens=eng.max_len - 9, ignore_eos=True))
    loop.step()


def _profile_main(spec, conn, args, start=None, stop=None) -> None:
  try:
    worker_lib.pin_process(spec)
    loop = worker_lib.build_loop(spec)
    warmup_s = loop.warmup()
    if start is not None:          # profiled together with the other workers
      conn.send(("warm", None))
      start.wait()
    out = measure(loop, **args)
    out["raw"]["warmup_s"] = warmup_s
    conn.send(("ok", out))
    if stop is not None:
      _background_load(loop, stop)
  except BaseException as e:  # pylint: disable=broad-except
    conn.send(("error", f"{type(e).__name__}: {e}"))
  finally:
    conn.close()


def profile_workers(specs, lengths, repeats: int = 20, warmup: int = 3,
                    admit_counts=(1, 2, 4), admit_length: int | None = None,
                    timeout_s: float = 1800.0) -> list[dict]:
  """`profile_worker` of every spec at once, as they serve: one pinned process each; all
  warm up, start measuring together, and a process that finishes keeps decoding a full batch
  until the last one is done, so every measurement includes the interference of the other
  instances on the machine (shared caches, memory bandwidth, SMT siblings: measured 10% on
  the 2-vCPU VM). Returns the dicts in the order of `specs`."""
  ctx = multiprocessing.get_context("spawn")
  start, stop = ctx.Event(), ctx.Event()
  args = dict(lengths=list(lengths), repeats=repeats, warmup=warmup,
              admit_counts=tuple(admit_counts), admit_length=admit_length)
  procs, pipes = [], []
  t0 = time.monotonic()
  for spec in specs:
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_profile_main, args=(spec, child, args, start, stop), daemon=True)
    proc.start()
    child.close()
    procs.append(proc)
    pipes.append(parent)

  def receive(i, expected):
    try:
      if not pipes[i].poll(max(timeout_s - (time.monotonic() - t0), 0.0)):
        raise RuntimeError(f"profile_workers: {specs[i].model}: no result within {timeout_s} s")
      status, out = pipes[i].recv()
    except EOFError:
      raise RuntimeError(f"profile_workers: {specs[i].model}: the process died (code "
                         f"{procs[i].exitcode})") from None
    if status != expected:
      raise RuntimeError(f"profile_workers: {specs[i].model}: {out}")
    return out

  try:
    for i in range(len(specs)):
      receive(i, "warm")
    start.set()
    results = [receive(i, "ok") for i in range(len(specs))]
  finally:
    stop.set()
    for proc in procs:
      proc.join(10.0)
      if proc.is_alive():
        proc.kill()
  for out in results:
    out["raw"]["process_s"] = time.monotonic() - t0
    out["raw"]["concurrent_with"] = len(specs) - 1
  return results


def profile_worker(spec: worker_lib.WorkerSpec, lengths, repeats: int = 20, warmup: int = 3,
                   admit_counts=(1, 2, 4), admit_length: int | None = None,
                   timeout_s: float = 1800.0) -> dict:
  """Profile model entry of `spec`'s instance, measured in a pinned process (module docstring).

  Returns {decode_step_s, prefill_s_fixed, prefill_s_per_token, max_batch, raw: {...}}; the
  caller adds name / instances / quality. Raises RuntimeError if the process fails.
  """
  return profile_workers([spec], lengths, repeats, warmup, admit_counts, admit_length,
                         timeout_s)[0]
