"""bes/serving/sim_to_real.py and bes/serving/profiling.py: profile assembly, policy names,
resume / skip logic and the summary across policies (no server or worker processes, except
the slow end-to-end test)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bes import profile as profile_lib
from bes import quality as quality_lib
from bes.serving import profiling
from bes.serving import local, sim_to_real as s2r
from configs.serve import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('{"vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "ffn_dim": 64, "max_position_embeddings": 128}')
TINY_BIG = ('{"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, '
            '"num_attention_heads": 2, "ffn_dim": 128, "max_position_embeddings": 128}')


def _timings(decode, fixed=0.002, per_token=1e-5):
  return {"decode_step_s": list(decode), "prefill_s_fixed": fixed,
          "prefill_s_per_token": per_token, "max_batch": len(decode), "raw": {"x": 1}}


def _config(profile="", **serve):
  config = cpu.get_config()
  config.profile = profile
  for k, v in serve.items():
    config.serve[k] = v
  return config


def _template_without_profile():
  return profiling.profile_template(_config(profile="/nonexistent/profile.json"))


# ------------------------------------------------------------------------- profile assembly
def test_template_without_profile_uses_stand_in_quality():
  t = _template_without_profile()
  assert [m["name"] for m in t["models"]] == ["cpu-small", "cpu-large"]
  assert t["tasks"] == list(profile_lib.default_profile().tasks)
  table = quality_lib.load_quality_table()
  assert t["models"][0]["quality"] == quality_lib.quality_for("opt-125m", t["tasks"], table)
  assert t["models"][1]["quality"] == quality_lib.quality_for("opt-1.3b", t["tasks"], table)
  assert all(m["instances"] == 1 and m["max_batch"] == 8 for m in t["models"])
  assert "opt-125m" in t["models"][0]["quality_from"]


def test_template_errors_name_the_key():
  with pytest.raises(ValueError, match="config.serve.quality_as"):
    profiling.profile_template(_config(profile="/none.json", quality_as="nope=opt-125m"))
  with pytest.raises(ValueError, match="config.serve.quality_as"):
    profiling.profile_template(_config(profile="/none.json", quality_as="cpu-small"))
  with pytest.raises(ValueError, match="config.serve.max_batch"):
    profiling.profile_template(_config(profile="/none.json", max_batch=0))


def test_profile_dict_is_a_valid_profile(tmp_path):
  t = _template_without_profile()
  d = profiling.profile_dict(t, [_timings([0.01, 0.011, 0.012]), _timings([0.03] * 4)],
                             name="x", provenance="measured here")
  p = profile_lib.profile_from_dict(d)
  assert p.model_names == ("cpu-small", "cpu-large")
  assert p.models[0].max_batch == 3 and p.models[1].max_batch == 4
  assert p.models[1].decode_step_s == (0.03,) * 4
  assert p.models[0].quality == t["models"][0]["quality"]
  path = str(tmp_path / "p.json")
  profile_lib.save_profile(p, path)
  assert profile_lib.load_profile(path) == p
  with pytest.raises(ValueError, match="2 models"):
    profiling.profile_dict(t, [_timings([0.01])], name="x", provenance="")


def test_template_from_an_existing_profile_keeps_its_deployment(tmp_path):
  t = _template_without_profile()
  t["models"][1]["instances"] = 2
  d = profiling.profile_dict(t, [_timings([0.01] * 2), _timings([0.03] * 5)], name="x",
                             provenance="p")
  path = str(tmp_path / "p.json")
  profile_lib.save_profile(profile_lib.profile_from_dict(d), path)
  t2 = profiling.profile_template(_config(profile=path))
  assert [(m["instances"], m["max_batch"]) for m in t2["models"]] == [(1, 2), (2, 5)]
  assert t2["source"] == path


def test_prefill_lengths():
  assert profiling.prefill_lengths(256) == [16, 32, 64, 128]
  assert profiling.prefill_lengths(64) == [4, 8, 16, 32]
  assert min(profiling.prefill_lengths(8)) >= 2


def test_measure_with_a_fake_worker_profiler():
  pytest.importorskip("bes.serving.worker")
  seen = []

  def fake(specs, lengths, repeats, warmup):
    for spec in specs:
      seen.append((spec.model, spec.cpus, spec.max_batch, tuple(lengths), repeats, warmup))
    return [_timings([0.001 * (1 + spec.instance)] * spec.max_batch) for spec in specs]
  config = _config(profile="/none.json", max_len=64, placement="0;0")
  p, raw = profiling.measure_serving_profile(config, repeats=3, warmup=1, log=lambda _: None,
                                             profile_workers=fake)
  assert [s[0] for s in seen] == ["cpu-small", "cpu-large"]
  assert seen[0][1:] == ((0,), 8, (4, 8, 16, 32), 3, 1)
  assert p.models[1].decode_step_s[0] == 0.002 and set(raw) == {"cpu-small", "cpu-large"}
  assert "profile_workers" in p.provenance and "opt-1.3b" in p.provenance


# ------------------------------------------------------------------------- small pieces
def test_policies_names_and_dirs():
  config = _config()
  assert s2r.smallest_model(config) == "cpu-small"
  assert s2r.default_policies(config) == ["learned", "deadline_greedy"]
  assert s2r.policy_dir("/o", "static:cpu-small") == "/o/static_cpu-small"
  assert s2r.policy_dir("/o", "task_map:0,1,1,0") == "/o/task_map_0_1_1_0"
  names = ["cpu-small", "cpu-large"]
  for ok in ("static:cpu-large", "round_robin", "learned", "deadline_greedy", "task_map:0,1"):
    assert s2r.check_policy(ok, names) == ok
  with pytest.raises(ValueError, match="--policy=greedy: unknown policy"):
    s2r.check_policy("greedy", names)
  with pytest.raises(ValueError, match="unknown model 'opt-66b'"):
    s2r.check_policy("static:opt-66b", names)
  with pytest.raises(ValueError, match="takes no argument"):
    s2r.check_policy("learned:x", names)


def test_check_resume_refuses_other_options(tmp_path):
  rec = {"trace": "/t.csv", "num_requests": 20, "time_scale": None, "rate": 2.0,
         "policies": ["round_robin"], "config_args": ["--config=x"]}
  s2r.check_resume(str(tmp_path), rec)
  s2r.check_resume(str(tmp_path), rec)              # same options: resumes
  with pytest.raises(ValueError, match="rate"):
    s2r.check_resume(str(tmp_path), dict(rec, rate=3.0))


def test_server_that_dies_fails_with_its_log_tail(tmp_path):
  log = str(tmp_path / "server.log")
  server = local.ServerProcess(["--config=/no/such/config.py"], log, timeout_s=60.0,
                               what="the server")
  with pytest.raises(ValueError, match=r"the server exited with code 1 before it was ready.*"
                     r"no/such/config"):
    server.start()


def test_stop_process_group_kills_the_group():
  code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
         "'import time; time.sleep(60)']); time.sleep(60)"
  proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
  time.sleep(0.5)
  assert local.stop_process_group(proc, 5.0) == -15
  gone = False
  for _ in range(50):                     # the orphaned grandchild is reaped by init
    try:
      os.killpg(proc.pid, 0)
    except ProcessLookupError:
      gone = True
      break
    time.sleep(0.1)
  assert gone


# ------------------------------------------------------------------------- the study, faked
def _write_outcomes(path, trace_csv, model, latency_scale):
  rows = open(trace_csv).read().splitlines()[1:]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lines = ["id,arrival,task,model,instance,latency,on_time,rejected,utility"]
  for i, row in enumerate(rows):
    a, _, n, task = row.split(",")
    lat = 0.5 + 0.01 * int(n) * latency_scale
    lines.append(f"{i},{a},{task},{model},0,{lat:.6f},1,0,0.5")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def test_run_resumes_and_summarises(tmp_path, monkeypatch):
  t = _template_without_profile()
  profile = profile_lib.profile_from_dict(profiling.profile_dict(
      t, [_timings([0.01] * 8), _timings([0.03] * 8)], name="fake", provenance="fake"))
  ppath = str(tmp_path / "given_profile.json")
  profile_lib.save_profile(profile, ppath)
  trace = tmp_path / "in.csv"
  trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" +
                   "".join(f"{i * 0.5},{10 + i},{3 + i % 4}\n" for i in range(12)))
  calls = []

  def fake_sim(config, trace_csv, spec, workdir, out_dir, command, log):
    calls.append(("sim", spec))
    assert config.profile.endswith("profile.json")
    _write_outcomes(os.path.join(out_dir, "outcomes.csv"), trace_csv, 0, 1.0)
    open(os.path.join(out_dir, "table.txt"), "w").write("t")

  def fake_serve(opts, profile_path, trace_csv, spec, workdir, pdir, log):
    calls.append(("serve", spec))
    d = os.path.join(pdir, "measured")
    _write_outcomes(os.path.join(d, "outcomes.csv"), trace_csv, 0, 1.02)
    open(os.path.join(d, "metrics.json"), "w").write("{}")
  monkeypatch.setattr(s2r, "simulate_policy", fake_sim)
  monkeypatch.setattr(s2r, "serve_and_measure", fake_serve)
  out = str(tmp_path / "out")
  opts = s2r.Options(config=_config(profile=ppath), config_args=("--config=x",),
                     trace=str(trace), out=out, num_requests=10,
                     policies=("static:cpu-small", "deadline_greedy"))
  lines = []
  summary = s2r.run(opts, "cmd", log=lines.append)
  assert calls == [("sim", "static:cpu-small"), ("serve", "static:cpu-small"),
                   ("sim", "deadline_greedy"), ("serve", "deadline_greedy")]
  assert profile_lib.load_profile(os.path.join(out, "profile.json")) == profile
  assert len(open(os.path.join(out, "trace.csv")).read().splitlines()) == 11
  e = summary["static:cpu-small"]
  assert set(e) == {"simulated", "measured", "delta", "targets_met"}
  for side in ("simulated", "measured"):
    assert e[side]["availability"] == 1.0 and e[side]["rejected_frac"] == 0.0
    assert set(e[side]["per_model"]) == {"cpu-small", "cpu-large"}
    assert e[side]["p50_latency_s"] > 0 and e[side]["p99_latency_s"] is not None
  assert e["targets_met"]["availability_within_1pp"]
  assert json.load(open(os.path.join(out, "comparison.json"))) == summary
  md = open(os.path.join(out, "comparison.md")).read()
  assert "static_cpu-small/comparison.md" in md and "| deadline_greedy |" in md
  assert os.path.isfile(os.path.join(out, "static_cpu-small", "comparison.md"))
  table = s2r.format_table(summary)
  assert "static:cpu-small" in table and "p99 s" in table
  # Re-run: every step's output exists, so nothing is simulated or served again.
  calls.clear()
  assert s2r.run(opts, "cmd", log=lines.append) == summary
  assert calls == []
  # An interrupted measurement (no metrics.json) is redone, the rest reused.
  os.remove(os.path.join(out, "deadline_greedy", "measured", "metrics.json"))
  s2r.run(opts, "cmd", log=lines.append)
  assert calls == [("serve", "deadline_greedy")]
  with pytest.raises(ValueError, match="num_requests"):
    s2r.run(s2r.Options(**{**opts.__dict__, "num_requests": 11}), "cmd", log=lines.append)


def test_run_input_errors(tmp_path):
  opts = s2r.Options(config=_config(), config_args=(), trace=str(tmp_path / "none.csv"),
                     out=str(tmp_path / "o"))
  with pytest.raises(ValueError, match="--trace=.*no such file"):
    s2r.run(opts, "cmd", log=lambda _: None)
  trace = tmp_path / "t.csv"
  trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,1,1\n")
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="--out="):
    s2r.run(s2r.Options(**{**opts.__dict__, "trace": str(trace),
                           "out": str(tmp_path / "file")}), "cmd", log=lambda _: None)
  with pytest.raises(ValueError, match="--policy=best"):
    s2r.run(s2r.Options(**{**opts.__dict__, "trace": str(trace), "policies": ("best",)}),
            "cmd", log=lambda _: None)


# ------------------------------------------------------------------------- end to end
TINY_CONFIG = f'''
from configs.serve import cpu

def get_config():
  config = cpu.get_config()
  config.profile = ""
  config.serve.models = 'tiny-s={TINY};tiny-l={TINY_BIG}'
  config.serve.quality_as = "tiny-s=opt-125m;tiny-l=opt-1.3b"
  config.serve.max_len = 64
  config.serve.max_batch = 4
  config.serve.placement = "0;0"
  config.serve.tokenizer_vocab = 512
  config.env.deadline_s = 5.0
  return config
'''


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
  pytest.importorskip("bes.serving.worker")
  pytest.importorskip("bes.serving.loadgen")
  cfg = tmp_path / "tiny.py"
  cfg.write_text(TINY_CONFIG)
  trace = tmp_path / "in.csv"
  rng = np.random.default_rng(0)
  trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(
      f"{i * 0.4:.3f},{rng.integers(4, 30)},{rng.integers(2, 12)}\n" for i in range(20)))
  out = tmp_path / "out"
  cmd = [sys.executable, os.path.join(ROOT, "launch", "sim_to_real.py"), f"--config={cfg}",
         f"--trace={trace}", f"--out={out}", "--reprofile", "--profile_repeats=2",
         "--profile_warmup=1", "--policy=round_robin"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  summary = json.load(open(out / "comparison.json"))
  assert set(summary) == {"round_robin"}
  assert json.load(open(out / "round_robin" / "server.json"))["clean_exit"]
  for e in summary.values():
    assert e["measured"]["requests"] == 20 and e["simulated"]["requests"] == 20
  assert "tiny-s" in profile_lib.load_profile(str(out / "profile.json")).model_names
  assert "availability" in r.stdout
