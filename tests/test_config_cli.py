"""bes/config_cli.py: flattening, overrides, unknown keys, the key listing, trace flags."""
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from bes import config_cli
from bes.experiment import workdir as workdir_lib
from bes.sweep_file import load_sweep
from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flatten_nested_configs_and_dicts_in_order():
  cfg = ml_collections.ConfigDict({"b": 1, "a": {"y": (1, 2), "x": {"z": "s"}}, "e": {}})
  assert config_cli.flatten(cfg) == {"a.x.z": "s", "a.y": [1, 2], "b": 1}
  assert list(config_cli.flatten({"b": 1, "a": {"y": 2}})) == ["b", "a.y"]
  assert config_cli.section_keys({"a": {"x": {"z": 1}}, "b": 2}) == {"a", "a.x"}


def test_apply_overrides_copies_and_sets_leaves():
  config = default.get_config()
  out = config_cli.apply_overrides(config, {"workload.rate": 40.0, "env.deadline_s": "2,2,3,3",
                                            "seed": 3})
  assert (out.workload.rate, out.env.deadline_s, out.seed) == (40.0, "2,2,3,3", 3)
  assert (config.workload.rate, config.seed) == (20.0, 0)          # the original is untouched
  assert config_cli.flatten(out).keys() == config_cli.flatten(config).keys()


def test_unknown_key_is_one_line_naming_it_and_the_closest_keys():
  with pytest.raises(ValueError) as e:
    config_cli.apply_overrides(default.get_config(), {"workload.rat": 3.0}, "configs/default.py")
  assert str(e.value) == ("--config.workload.rat: no such key in configs/default.py; closest: "
                          "workload.rate")
  with pytest.raises(ValueError, match=r"closest: env.queue_capacity$"):   # no section given
    config_cli.check_keys(default.get_config(), ["queue_capacity"], "x")
  with pytest.raises(ValueError, match=r"^--config.dqn.hiden: .*closest: dqn.hidden$"):
    config_cli.check_keys(default.get_config(), ["dqn.hiden"], "x")
  # the right name under the wrong section: the key under its real section
  with pytest.raises(ValueError, match=r"closest: env.queue_capacity$"):
    config_cli.check_keys(default.get_config(), ["workload.queue_capacity"], "x")
  with pytest.raises(ValueError, match=r"--config_help lists the keys$"):
    config_cli.check_keys(default.get_config(), ["zzz"], "x")
  # sections and indexed leaves are keys too
  config_cli.check_keys(default.get_config(), ["workload.bursty", "env.deadline_s[0]"], "x")


def test_command_line_keys_and_overrides():
  argv = ["train.py", "--config=configs/default.py", "--config.workload.rate=40",
          "--config.seed", "3", "--noconfig.dqn.dueling", "--workdir=w"]
  assert config_cli.command_line_keys(argv) == ["workload.rate", "seed", "dqn.dueling"]
  config = config_cli.apply_overrides(default.get_config(), {"workload.rate": 40.0, "seed": 3,
                                                             "dqn.dueling": False})
  assert config_cli.command_line_overrides(argv, config) == {
      "workload.rate": 40.0, "seed": 3, "dqn.dueling": False}
  assert config_cli.config_path_in(argv, "d.py") == "configs/default.py"
  assert config_cli.config_path_in(["x", "--config", "c.py"], "d.py") == "c.py"
  assert config_cli.config_path_in(["x"], "d.py") == "d.py"


def test_load_config_file_errors_name_the_file(tmp_path):
  with pytest.raises(ValueError, match=r"^--config: no such config file 'nope.py'$"):
    config_cli.load_config_file("nope.py")
  path = tmp_path / "c.py"
  path.write_text("x = 1\n")
  with pytest.raises(ValueError, match=r"c.py: ValueError: defines no get_config\(\)$"):
    config_cli.load_config_file(str(path))
  path.write_text("def get_config(arg='a'):\n  return {'arg': arg}\n")
  assert config_cli.load_config_file(f"{path}:b") == {"arg": "b"}


def test_file_comments_trailing_continued_and_leading():
  source = textwrap.dedent("""\
      def get_config():
        # The section.
        # Second line.
        config.sec = ConfigDict()
        config.sec.a = 1     # trailing
                             # continued
        config.sec.b = 2
        config.c = (1,
                    2)       # on the last line
        return config
      """)
  assert config_cli.file_comments(source) == {
      "sec": "The section. Second line.", "sec.a": "trailing continued", "sec.b": "",
      "c": "on the last line"}


def test_docstring_comments():
  doc = "Keys:\n  kind: a or b.\n    More.\n  x, y: both.\n\n  z: after a blank line.\nEnd.\n"
  assert config_cli.docstring_comments(doc, "w.") == {
      "w.kind": "a or b. More.", "w.x": "both.", "w.y": "both.", "w.z": "after a blank line."}


def test_describe_config_lists_every_key_with_value_and_comment():
  config = default.get_config()
  text = config_cli.describe_config(config, "configs/default.py")
  for key, value in config_cli.flatten(config).items():
    assert f"  {key} = {value!r}" in text
  assert "env.queue_capacity = 64" in text and "waiting requests per instance" in text
  assert "'poisson' | 'bursty' | 'trace'" in text            # workload keys: their docstring
  assert "[env] Serving model" in text                       # a section's comment heads it
  assert text.index("  profile = ''") < text.index("  workload.kind") < text.index("  env.")


def test_trace_overrides():
  assert config_cli.trace_overrides(None, 3.0) == {}
  assert config_cli.trace_overrides("t.csv", 0) == {
      "workload.kind": "trace", "workload.trace": "t.csv", "workload.lengths": "trace",
      "workload.rate": 0.0}


def test_evaluation_config_refuses_keys_the_workdir_config_lacks():
  config = default.get_config()
  assert workdir_lib.evaluation_config(config, {"workload.rate": 40.0}).workload.rate == 40.0
  with pytest.raises(ValueError, match=r"^--config.workload.rat: no such key in the workdir's "
                                       r"config; closest: workload.rate"):
    workdir_lib.evaluation_config(config, {"workload.rat": 40.0})


def test_sweep_with_an_unknown_override_key_fails_at_load(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text(textwrap.dedent("""\
      import ml_collections
      from bes.sweep import sweep

      def get_sweep():
        s = ml_collections.ConfigDict()
        s.base = 'configs/default.py'
        s.grid = sweep('config.workload.rat', [1.0, 2.0])
        s.steps = ['launch/simulate.py --config={base} --out={point_dir} {overrides}']
        s.metrics_from = '{point_dir}/metrics.json'
        s.plot = dict(x='config.workload.rat', y='availability')
        return s
      """))
  with pytest.raises(ValueError, match=r"bad.py: grid: --config.workload.rat: no such key in "
                                       r"configs/default.py; closest: workload.rate"):
    load_sweep(str(path))


@pytest.mark.slow
def test_launcher_with_an_unknown_key_fails_in_one_line():
  r = subprocess.run([sys.executable, os.path.join("launch", "simulate.py"),
                      "--config.env.queue_cap=3", "--out=unused"],
                     capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert r.returncode == 1
  assert r.stderr == ("simulate.py: error: --config.env.queue_cap: no such key in "
                      "configs/default.py; closest: env.queue_capacity\n")
