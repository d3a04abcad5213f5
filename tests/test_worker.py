"""The serving worker: EngineLoop in-process (schedule, FIFO, rejections, EOS rules, greedy
tokens), then real spawned processes (Ready, serving, kill -9, hang, restart, drain, pinning)."""
import os
import queue
import signal
import time

import jax
import numpy as np
import pytest

from bes.models import engine as engine_lib
from bes.models import opt
from bes.models import sampling
from bes.models.opt_config import OPTConfig
from bes.serving import engine_loop
from bes.serving import protocol as P
from bes.serving import worker

CONFIG = OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   ffn_dim=64, max_position_embeddings=64)
MAX_LEN = 64
PROMPT = (5, 6, 7)


@pytest.fixture(scope="module")
def params():
  return opt.init_params(CONFIG, jax.random.key(0), std=0.3)


@pytest.fixture(scope="module")
def engine(params):
  return engine_lib.Engine(params, CONFIG, num_slots=2, max_len=MAX_LEN, buckets=(16, MAX_LEN))


@pytest.fixture
def loop(engine):
  return engine_loop.EngineLoop(engine, instance=3, queue_capacity=4)


def run(loop):
  its = []
  while (it := loop.step()) is not None:
    its.append(it)
  return its


def greedy_reference(params, prompt, n):
  out = sampling.generate(params, CONFIG, np.asarray([prompt], np.int32),
                          np.ones((1, len(prompt)), bool), jax.random.key(0), n)
  return [int(t) for t in np.asarray(out.tokens[0])]


def test_schedule_fifo_and_token_counts(loop):
  # max_batch 2, queue 4; r0 needs 3 tokens, r1 1, r2 2, r3 1; all wait until the first step.
  for rid, n in enumerate([3, 1, 2, 1]):
    assert loop.submit(P.Submit(rid=rid, tokens=PROMPT, max_tokens=n, ignore_eos=True)) is None
  assert loop.submit(P.Submit(rid=9, tokens=PROMPT, max_tokens=1)).reason.startswith(
      "waiting queue full")
  its = run(loop)
  assert [it.admitted_rids for it in its] == [(0, 1), (2,), (), (3,)]
  assert [tuple(r for r, _, _ in it.tokens) for it in its] == [(0, 1), (0, 2), (0, 2), (3,)]
  assert [it.completed for it in its] == [((1, "length"),), (), ((0, "length"), (2, "length")),
                                         ((3, "length"),)]
  assert [(it.running, it.waiting) for it in its] == [(1, 2), (2, 1), (0, 1), (0, 0)]
  assert all(it.instance == 3 and it.start <= it.end for it in its)
  assert all(a.end <= b.start for a, b in zip(its, its[1:]))
  assert loop.step() is None and loop.idle


@pytest.mark.parametrize("kw,match", [
    (dict(tokens=()), "non-empty"), (dict(tokens=(1, 96)), r"\[0, 96\)"),
    (dict(tokens=(1.0,)), "ints"), (dict(max_tokens=0), "max_tokens must be >= 1"),
    (dict(max_tokens=MAX_LEN - 2), "max_len"), (dict(min_tokens=5), "min_tokens"),
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p")])
def test_bad_input_is_rejected(loop, kw, match):
  msg = P.Submit(**{**dict(rid=7, tokens=PROMPT, max_tokens=4), **kw})
  refused = loop.submit(msg)
  assert refused.rid == 7 and refused.reason and __import__("re").search(match, refused.reason)
  assert loop.idle


def test_greedy_matches_sampling_generate_and_eos_rules(params, engine):
  want = greedy_reference(params, PROMPT, 8)
  loop = engine_loop.EngineLoop(engine, 0, 8)
  loop.submit(P.Submit(rid=0, tokens=PROMPT, max_tokens=8, ignore_eos=True))
  got = [t for it in run(loop) for _, t, _ in it.tokens]
  assert got == want
  # EOS forced: make the 3rd greedy token the EOS id (first occurrence in the stream).
  eos = want[2]
  assert eos not in want[:2]
  cfg = OPTConfig(**{**CONFIG.__dict__, "eos_token_id": eos})
  eng = engine_lib.Engine(params, cfg, num_slots=3, max_len=MAX_LEN, buckets=(16, MAX_LEN))
  loop = engine_loop.EngineLoop(eng, 0, 8)
  loop.submit(P.Submit(rid=0, tokens=PROMPT, max_tokens=8))                    # stops at 3
  loop.submit(P.Submit(rid=1, tokens=PROMPT, max_tokens=8, ignore_eos=True))   # runs to 8
  loop.submit(P.Submit(rid=2, tokens=PROMPT, max_tokens=8, min_tokens=4))      # EOS too early
  fin, count = {}, {0: 0, 1: 0, 2: 0}
  for it in run(loop):
    for rid, _, _ in it.tokens:
      count[rid] += 1
    fin.update(it.completed)
  assert fin[0] == "stop" and count[0] == 3
  assert fin[1] == "length" and count[1] == 8
  later = want.index(eos, 3) + 1 if eos in want[3:] else None
  assert count[2] == (later or 8) and fin[2] == ("stop" if later else "length")


def test_sampling_is_per_request_and_seeded(engine):
  def tokens(submits):
    loop = engine_loop.EngineLoop(engine, 0, 8)
    for m in submits:
      loop.submit(m)
    out = {}
    for it in run(loop):
      for rid, t, lp in it.tokens:
        out.setdefault(rid, []).append(t)
        assert lp <= 0
    return out
  hot = P.Submit(rid=0, tokens=PROMPT, max_tokens=10, ignore_eos=True, temperature=1.5,
                 top_p=0.95, seed=11)
  greedy = P.Submit(rid=1, tokens=PROMPT, max_tokens=10, ignore_eos=True)
  alone = tokens([hot])[0]
  mixed = tokens([greedy, hot])  # another slot, another batch: same stream
  assert mixed[0] == alone
  assert mixed[1] == tokens([greedy])[1]
  other = tokens([P.Submit(**{**hot.__dict__, "seed": 12})])[0]
  assert other != alone


@pytest.mark.parametrize("split", [True, False])
def test_batched_admission_matches_alone(params, engine, monkeypatch, split):
  # Prompts of different buckets admitted in one iteration (one prefill_batch call per
  # bucket, or one for both) give the tokens they give alone: greedy = the reference,
  # sampled = the same seeded stream.
  long = tuple(range(3, 33))
  calls = []
  prefill_batch = engine.prefill_batch
  monkeypatch.setattr(engine, "prefill_batch", lambda ps, *a: calls.append(
      [len(p) for p in ps]) or prefill_batch(ps, *a))
  loop = engine_loop.EngineLoop(engine, 0, 8, split_buckets=split)
  loop.submit(P.Submit(rid=0, tokens=PROMPT, max_tokens=6, ignore_eos=True))
  loop.submit(P.Submit(rid=1, tokens=long, max_tokens=6, ignore_eos=True, temperature=1.0,
                       seed=3))
  loop.submit(P.Submit(rid=2, tokens=PROMPT[:2], max_tokens=1, ignore_eos=True))
  its = run(loop)
  assert [it.admitted_rids for it in its if it.admitted_rids] == [(0, 1), (2,)]
  assert calls == ([[3], [30], [2]] if split else [[3, 30], [2]])
  monkeypatch.undo()
  got = {}
  for it in its:
    for rid, t, _ in it.tokens:
      got.setdefault(rid, []).append(t)
  assert got[0] == greedy_reference(params, PROMPT, 6)
  alone = engine_loop.EngineLoop(engine, 0, 8)
  alone.submit(P.Submit(rid=1, tokens=long, max_tokens=6, ignore_eos=True, temperature=1.0,
                        seed=3))
  assert [t for it in run(alone) for _, t, _ in it.tokens] == got[1]


def test_warmup_compiles_everything(engine):
  loop = engine_loop.EngineLoop(engine, 0, 8)
  t = loop.warmup()
  compiled = loop.compiled_shapes()
  for rid, (n, m) in enumerate([(1, 3), (17, 2), (40, 5), (3, 1)]):
    loop.submit(P.Submit(rid=rid, tokens=tuple(range(3, 3 + n)), max_tokens=m,
                         temperature=0.5 * (rid % 2), top_p=0.9))
  run(loop)
  assert loop.compiled_shapes() == compiled and t > 0


def test_spec_validation():
  base = dict(instance=0, model="m", config=CONFIG, checkpoint=None, seed=0, dtype="float32",
              max_batch=2, max_len=MAX_LEN, queue_capacity=4)
  worker.WorkerSpec(**base)
  for field, bad in [("dtype", "int8"), ("max_batch", 0), ("max_len", 1000), ("cpus", ()),
                     ("buckets", (16,)), ("device", -1)]:
    with pytest.raises(ValueError, match=f"WorkerSpec.{field}:"):
      worker.WorkerSpec(**{**base, field: bad})


# ---- real processes ----------------------------------------------------------------------

PROC_LEN = 24
SPEC = worker.WorkerSpec(instance=1, model="tiny", config=CONFIG, checkpoint=None, seed=0,
                         dtype="float32", max_batch=2, max_len=PROC_LEN, queue_capacity=8,
                         cpus=(0,), buckets=(PROC_LEN,))  # one bucket: a quick warm-up


class Events:
  def __init__(self):
    self.q = queue.Queue()

  def get(self, kind, timeout=120.0):
    """The next event of type `kind`; others are skipped, except an unexpected WorkerDown,
    which fails at once with its reason (instead of waiting out the timeout)."""
    end = time.monotonic() + timeout
    while True:
      ev = self.q.get(timeout=max(0.0, end - time.monotonic()))
      if isinstance(ev, kind):
        return ev, time.monotonic()
      assert not isinstance(ev, P.WorkerDown), f"worker down while waiting for {kind.__name__}: {ev}"


@pytest.fixture(scope="module")
def proc():
  events = Events()
  # A generous hang timeout: a loaded CI machine once stalled the worker (pinned to CPU 0)
  # for over 1 s mid-request and it was killed as hung. The hang test sets 1 s itself.
  handle = worker.WorkerHandle(SPEC, events.q.put, hang_timeout_s=30.0)
  handle.start()
  ready, _ = events.get(P.Ready)
  assert ready.instance == 1 and ready.warmup_s > 0 and handle.ready
  yield handle, events
  handle.kill()


def submit_long(handle, rids):
  for rid in rids:
    handle.submit(P.Submit(rid=rid, tokens=PROMPT, max_tokens=PROC_LEN - 3, ignore_eos=True))


def test_process_serves_and_is_pinned(proc):
  handle, events = proc
  assert os.sched_getaffinity(handle.pid) == {0}
  threads = os.listdir(f"/proc/{handle.pid}/task")   # every thread, not just the main one
  assert len(threads) > 1 and all(os.sched_getaffinity(int(t)) == {0} for t in threads)
  for rid, n in enumerate([3, 1, 4]):
    handle.submit(P.Submit(rid=rid, tokens=PROMPT, max_tokens=n, ignore_eos=True))
  handle.submit(P.Submit(rid=9, tokens=(), max_tokens=1))
  rej, _ = events.get(P.Rejected)
  assert rej.rid == 9
  counts, fin = {}, {}
  while len(fin) < 3:
    it, _ = events.get(P.Iteration)
    for rid, _, _ in it.tokens:
      counts[rid] = counts.get(rid, 0) + 1
    fin.update(it.completed)
  assert counts == {0: 3, 1: 1, 2: 4} and set(fin.values()) == {"length"}
  assert handle.outstanding == frozenset()


def test_kill_hang_restart_drain(proc):
  handle, events = proc
  # kill -9 with requests outstanding: WorkerDown with their rids within ~1 s. (The worker
  # is stopped first, so the tiny model cannot finish them before the kill on a slow machine.)
  os.kill(handle.pid, signal.SIGSTOP)
  submit_long(handle, [10, 11, 12])
  os.kill(handle.pid, signal.SIGKILL)
  t0 = time.monotonic()
  down, t = events.get(P.WorkerDown, timeout=5)
  # Detection is at the next 50 ms poll; the bounds leave room for a loaded 2-core machine.
  assert down.rids == (10, 11, 12) and "exited" in down.reason and t - t0 < 1.5, t - t0
  assert not handle.alive
  with pytest.raises(RuntimeError, match="not alive"):
    handle.submit(P.Submit(rid=13, tokens=PROMPT, max_tokens=1))
  # restart -> Ready; a hang (SIGSTOP) -> killed and reported within ~1.5 s.
  handle.restart()
  events.get(P.Ready)
  handle.hang_timeout_s = 1.0
  pid = handle.pid
  os.kill(pid, signal.SIGSTOP)
  submit_long(handle, [20, 21])
  t0 = time.monotonic()
  down, t = events.get(P.WorkerDown, timeout=5)
  assert down.rids == (20, 21) and down.reason.startswith("hang") and t - t0 < 2.0, t - t0
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)  # killed and reaped
  # restart, serve, drain: accepted requests finish, exit 0.
  handle.hang_timeout_s = 30.0
  handle.restart()
  events.get(P.Ready)
  for rid in (30, 31, 32):
    handle.submit(P.Submit(rid=rid, tokens=PROMPT, max_tokens=5, ignore_eos=True))
  assert handle.shutdown(drain=True, timeout_s=30) == 0
  fin = set()
  while True:
    ev = events.q.get(timeout=5)
    if isinstance(ev, P.Iteration):
      fin.update(r for r, _ in ev.completed)
    if isinstance(ev, P.WorkerDown):
      break
  assert fin == {30, 31, 32} and ev.rids == () and ev.reason == "exited (code 0)"


def test_fatal_is_reported_as_worker_down(tmp_path):
  events = Events()
  bad = worker.WorkerSpec(**{**SPEC.__dict__, "checkpoint": str(tmp_path / "missing")})
  handle = worker.WorkerHandle(bad, events.q.put)
  handle.start()
  fatal, _ = events.get(P.Fatal, timeout=60)
  down, _ = events.get(P.WorkerDown, timeout=5)
  assert fatal.instance == 1 and down.reason.startswith("fatal: ") and down.rids == ()
  assert not handle.alive
