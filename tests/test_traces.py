"""Tests of trace files and trace replay: loading, errors, exact times, rescaling, replay."""
import jax
import numpy as np
import pytest

from bes import workloads as W

TASKS = ["arc_easy", "piqa", "winogrande", "lambada_openai"]
CONV = "bes/data/traces/azure_llm_2023_conv.csv"
CODE = "bes/data/traces/azure_llm_2023_code.csv"


@pytest.fixture(scope="module")
def conv():
  return W.load_trace_csv(CONV)


def _write(tmp_path, text, name="t.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("path,size,span,rate", [(CONV, 19_366, 3501.721937, 5.53),
                                                 (CODE, 8_819, 3435.948056, 2.57)])
def test_shipped_traces_load_and_keep_microseconds(path, size, span, rate):
  trace = W.load_trace_csv(path)
  assert len(trace) == size and trace.task is None
  assert trace.span_s() == pytest.approx(span, abs=1e-9)
  assert trace.mean_rate() == pytest.approx(rate, abs=0.01)
  assert trace.prompt_len.min() >= 0 and trace.output_len.min() >= 1
  r = W.trace_requests(trace, W.TaskMix.uniform(4), jax.random.key(0))
  assert r.gap_us.dtype == np.int32 and len(r) == size
  arrival_us = np.rint(trace.arrival_s * 1e6).astype(np.int64)
  assert np.asarray(r.gap_us, np.int64).sum() == arrival_us[-1]
  np.testing.assert_array_equal(np.cumsum(np.asarray(r.gap_us, np.int64)), arrival_us)
  np.testing.assert_array_equal(r.prompt_len, trace.prompt_len)
  np.testing.assert_array_equal(r.output_len, trace.output_len)


def test_replay_reproduces_the_trace_exactly_then_wraps(conv):
  requests = W.trace_requests(conv, W.TaskMix.uniform(4), jax.random.key(0))
  workload = W.TraceWorkload.create(requests, W.TaskMix.uniform(4), draw_tasks=False)
  size = len(conv)
  r = W.sample(workload, jax.random.key(1), size + 3)
  gaps = np.asarray(r.gap_us, np.int64)
  assert gaps[:size].sum() == np.rint(conv.arrival_s[-1] * 1e6)
  for field in ("gap_us", "task", "prompt_len", "output_len"):
    np.testing.assert_array_equal(getattr(r, field)[:size], getattr(requests, field))
  # Second pass: request 0 after the mean gap, then the trace again.
  assert gaps[size] == np.rint((conv.arrival_s[-1] - conv.arrival_s[0]) * 1e6 / (size - 1))
  np.testing.assert_array_equal(r.gap_us[size + 1:], requests.gap_us[1:3])
  np.testing.assert_array_equal(r.prompt_len[size:], requests.prompt_len[:3])


def test_random_start_and_task_draws(tmp_path):
  path = _write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n" +
                "".join(f"{0.5 * i},{10 + i},{1 + i}\n" for i in range(20)))
  trace = W.load_trace_csv(path)
  mix = W.TaskMix.create([[0, 1, 0, 0], [0, 0, 0, 1]], [4.0])
  requests = W.trace_requests(trace, mix, jax.random.key(0))
  np.testing.assert_array_equal(requests.task, np.where(trace.arrival_s >= 4.0, 3, 1))
  workload = W.TraceWorkload.create(requests, mix, draw_tasks=True, random_start=True)
  starts = []
  for seed in range(8):
    r = W.sample(workload, jax.random.key(seed), 5)
    start = int(r.prompt_len[0]) - 10
    starts.append(start)
    np.testing.assert_array_equal(r.prompt_len, 10 + (start + np.arange(5)) % 20)
    assert int(r.gap_us[0]) == requests.gap_us[start]
    # Tasks follow the mix at the replayed (episode) times, not the trace's.
    a = r.arrival_s()
    np.testing.assert_array_equal(r.task, np.where(a >= 4.0, 3, 1))
  assert len(set(starts)) > 3


def test_task_column_names_and_indices_are_kept(tmp_path):
  path = _write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens,task\n"
                "0.0,5,1,piqa\n1.25,6,2,3\n2.5,7,3,arc_easy\n")
  trace = W.load_trace_csv(path, TASKS)
  np.testing.assert_array_equal(trace.task, [1, 3, 0])
  requests = W.trace_requests(trace, W.TaskMix.uniform(4), jax.random.key(0))
  workload = W.TraceWorkload.create(requests, W.TaskMix.uniform(4), draw_tasks=False)
  r = W.sample(workload, jax.random.key(0), 6)
  np.testing.assert_array_equal(r.task, [1, 3, 0, 1, 3, 0])
  np.testing.assert_array_equal(r.gap_us, [0, 1_250_000, 1_250_000, 1_250_000, 1_250_000,
                                           1_250_000])


def test_single_request_replay_repeats_it():
  one = W.TraceWorkload.create(
      W.trace_requests(W.TraceData(np.array([2.5]), np.array([7]), np.array([3])),
                       W.TaskMix.uniform(4), jax.random.key(0)), W.TaskMix.uniform(4),
      draw_tasks=True)
  r = W.sample(one, jax.random.key(0), 3)
  np.testing.assert_array_equal(r.gap_us, [2_500_000] * 3)
  np.testing.assert_array_equal(r.output_len, [3] * 3)
  with pytest.raises(ValueError, match=">= 1 request"):
    W.TraceWorkload.create(jax.tree.map(lambda x: x[:0], W.sample(one, jax.random.key(0), 3)),
                           W.TaskMix.uniform(4), draw_tasks=True)


def test_scale_to_rate(conv):
  scaled = W.scale_to_rate(conv.arrival_s, 11.0)
  assert len(scaled) / (scaled[-1] - scaled[0]) == pytest.approx(11.0, rel=1e-12)
  # Time is stretched about t = 0 by (len / span) / target.
  np.testing.assert_allclose(scaled, conv.arrival_s * (conv.mean_rate() / 11.0), rtol=1e-12)
  r = W.trace_requests(conv, W.TaskMix.uniform(4), jax.random.key(0), target_rate=11.0)
  np.testing.assert_array_equal(np.cumsum(np.asarray(r.gap_us, np.int64)),
                                np.rint(scaled * 1e6).astype(np.int64))
  with pytest.raises(ValueError, match="target_rate"):
    W.scale_to_rate(conv.arrival_s, 0.0)
  with pytest.raises(ValueError, match="same time"):
    W.scale_to_rate([1.0, 1.0, 1.0], 2.0)
  with pytest.raises(ValueError, match=">= 2 arrival"):
    W.scale_to_rate([1.0], 2.0)


HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens"


@pytest.mark.parametrize("text,where,message", [
    ("", "", "empty file"),
    (HEADER + "\n", "", "no requests"),
    ("arrived_at,num_prefill_tokens\n0,1\n", ":1", r"missing column\(s\) \['num_decode_tokens'\]"),
    (HEADER + "\n0.0,5,1\nsoon,5,1\n", ":3: column 'arrived_at'", "expected a number"),
    (HEADER + "\n0.0,5,1\nnan,5,1\n", ":3: column 'arrived_at'", "finite time >= 0"),
    (HEADER + "\n-1.0,5,1\n", ":2: column 'arrived_at'", "finite time >= 0"),
    (HEADER + "\n2.0,5,1\n1.0,5,1\n", ":3: column 'arrived_at'", "must be sorted"),
    (HEADER + "\n0.0,5.5,1\n", ":2: column 'num_prefill_tokens'", "expected an integer"),
    (HEADER + "\n0.0,-5,1\n", ":2: column 'num_prefill_tokens'", "expected an integer >= 0"),
    (HEADER + "\n0.0,5,many\n", ":2: column 'num_decode_tokens'", "expected an integer"),
    (HEADER + "\n0.0,5,0\n", ":2: column 'num_decode_tokens'", "expected an integer >= 1"),
    (HEADER + "\n0.0,5,1,1\n", ":2", "expected 3 fields, got 4"),
    (HEADER + ",task\n0.0,5,1,piqa\n0.5,5,1,mmlu\n", ":3: column 'task'", "unknown task 'mmlu'"),
    (HEADER + ",task\n0.0,5,1,4\n", ":2: column 'task'",
     r"task index 4 out of range \(expected 0..3\)"),
    (HEADER + ",task\n0.0,5,1,-1\n", ":2: column 'task'", "out of range"),
])
def test_bad_traces_are_refused_naming_file_line_and_column(tmp_path, text, where, message):
  path = _write(tmp_path, text)
  with pytest.raises(ValueError, match=message) as info:
    W.load_trace_csv(path, TASKS)
  assert str(info.value).startswith(path + where)


def test_task_names_need_the_task_list(tmp_path):
  path = _write(tmp_path, HEADER + ",task\n0.0,5,1,piqa\n")
  with pytest.raises(ValueError, match="pass tasks= for names"):
    W.load_trace_csv(path)
  trace = W.load_trace_csv(_write(tmp_path, HEADER + ",task\n0.0,5,1,7\n1.0,5,1,0\n", "i.csv"))
  with pytest.raises(ValueError, match="index 7 >= the number of tasks 4"):
    W.trace_requests(trace, W.TaskMix.uniform(4), jax.random.key(0))


def test_trace_config(tmp_path, conv):
  cfg = W.default_workload_config()
  cfg.kind = "trace"
  cfg.trace = CONV
  cfg.rate = 0.0  # Keep the trace's own timing.
  w = W.workload_from_config(cfg, TASKS)
  assert isinstance(w, W.TraceWorkload) and w.draw_tasks and w.lengths is None
  assert np.asarray(w.requests.gap_us, np.int64).sum() == np.rint(conv.arrival_s[-1] * 1e6)
  # The trace's own lengths, unclipped (max_prompt_len applies to generated lengths).
  np.testing.assert_array_equal(w.requests.prompt_len, conv.prompt_len)
  np.testing.assert_array_equal(w.requests.output_len, conv.output_len)
  # A rescaled rate.
  cfg = W.default_workload_config()
  cfg.update(kind="trace", trace=CONV, rate=11.0, trace_random_start=True)
  w = W.workload_from_config(cfg, TASKS)
  assert w.random_start
  gaps = np.asarray(w.requests.gap_us, np.int64)
  assert len(conv) / ((gaps[1:].sum()) / 1e6) == pytest.approx(11.0, rel=1e-6)
  # Lengths redrawn from the fitted model.
  cfg.lengths = "azure_conv"
  w = W.workload_from_config(cfg, TASKS)
  assert w.lengths is not None
  r = W.sample(w, jax.random.key(0), 200)
  assert not np.array_equal(r.prompt_len, np.asarray(w.requests.prompt_len)[:200])
  assert int(np.max(r.prompt_len)) <= 1536 and int(np.max(r.output_len)) <= 512
