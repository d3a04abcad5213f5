"""What a launcher prints while it works: the heartbeat log and the tuned knobs' format."""
import time

from bes import heuristics, progress


def _wait_for(lines, n, timeout_s=5.0):
  end = time.time() + timeout_s
  while len(lines) < n and time.time() < end:
    time.sleep(0.01)


def test_heartbeat_fills_silences_and_counts_from_the_last_line():
  now, lines = [0.0], []
  with progress.heartbeat(lines.append, every_s=1.0, clock=lambda: now[0]) as log:
    log("compiling")
    now[0] = 0.5
    time.sleep(0.2)
    assert lines == ["compiling"]                       # not yet every_s of silence
    now[0] = 1.5
    _wait_for(lines, 2)
    now[0] = 2.0
    time.sleep(0.2)                                     # 0.5 s since the last beat: none
    now[0] = 2.6
    _wait_for(lines, 3)
    log("done")
    now[0] = 3.0
    time.sleep(0.2)
  assert lines == ["compiling", "  ... still working (2 s)", "  ... still working (3 s)", "done"]
  now[0] = 10.0
  time.sleep(0.2)
  assert len(lines) == 4                                # the block ended: no more beats


def test_format_knobs_rounds_numbers_and_drops_the_name():
  knobs = dict(name="deadline_greedy", mean_output_len=195.387939453125, mean_prompt_len=1021.0,
               slack=1.25, turnover=0.0, dump=1.0)
  assert heuristics.format_knobs(knobs) == ("mean_output_len: 195.4, mean_prompt_len: 1021, "
                                            "slack: 1.25, turnover: 0, dump: 1")
  assert heuristics.format_knobs(dict(name="load_threshold", thresholds=[0.25, 1.0, 2.0])) == (
      "thresholds: [0.25, 1, 2]")
