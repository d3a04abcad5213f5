"""Tests for bes.profile (format, validation, transforms) and bes.quality (the CSV table)."""
import copy
import json
import warnings

import numpy as np
import pytest

from bes import profile as P
from bes import quality as Q


def _dict():
  return {
      "name": "tiny",
      "provenance": "hand-written for tests",
      "tasks": ["a", "b"],
      "models": [
          {"name": "small", "instances": 2, "gpus_per_instance": 1, "max_batch": 3,
           "decode_step_s": [0.001, 0.002, 0.0025], "prefill_s_fixed": 0.0005,
           "prefill_s_per_token": 1e-6, "quality": {"a": 0.25, "b": 0.5}},
          {"name": "big", "instances": 1, "gpus_per_instance": 2, "max_batch": 2,
           "decode_step_s": [0.01, 0.011], "prefill_s_fixed": 0.0,
           "prefill_s_per_token": 0.0, "quality": {"b": 0.75, "a": 1.0}},
      ],
  }


def test_from_dict_fields_and_derived_values():
  p = P.profile_from_dict(_dict())
  assert p.tasks == ("a", "b")
  assert p.models[1].decode_step_s == (0.01, 0.011)
  assert p.num_gpus == 2 * 1 + 1 * 2
  q = p.quality_matrix()
  assert q.dtype == np.float32
  np.testing.assert_array_equal(q, [[0.25, 0.5], [1.0, 0.75]])
  assert p.model_index("big") == 1 and p.task_index("b") == 1


def test_dict_and_file_round_trip(tmp_path):
  d = _dict()
  p = P.profile_from_dict(d)
  assert p.to_dict() == d
  path = tmp_path / "sub" / "p.json"
  P.save_profile(p, path)
  assert P.load_profile(path) == p
  assert json.loads(path.read_text()) == d


def test_default_profile_loads():
  p = P.default_profile()
  assert P.DEFAULT_PROFILE_PATH.name == "opt_a100_roofline.json"
  assert [m.name for m in p.models] == ["opt-125m", "opt-1.3b", "opt-6.7b"]
  assert [m.instances for m in p.models] == [1, 1, 2]
  assert p.num_gpus == 4
  assert p.tasks == ("arc_easy", "piqa", "winogrande", "lambada_openai")
  assert p.quality_matrix().shape == (3, 4)


def test_unknown_names_are_clear_errors():
  p = P.profile_from_dict(_dict())
  with pytest.raises(ValueError, match="unknown model 'nope'.*small"):
    p.model_index("nope")
  with pytest.raises(ValueError, match="unknown task 'c'"):
    p.task_index("c")


def test_with_instances_and_subset():
  p = P.profile_from_dict(_dict())
  p2 = p.with_instances([1, 3])
  assert [m.instances for m in p2.models] == [1, 3]
  assert p2.num_gpus == 1 + 6
  assert p2.models[0].decode_step_s == p.models[0].decode_step_s
  with pytest.raises(ValueError, match="instances"):
    p.with_instances([1, 0])
  with pytest.raises(ValueError, match="2 counts"):
    p.with_instances([1])
  s = p.subset(["big"])
  assert s.model_names == ("big",) and s.tasks == p.tasks
  np.testing.assert_array_equal(s.quality_matrix(), p.quality_matrix()[1:])
  with pytest.raises(ValueError, match="unknown model"):
    p.subset(["huge"])


def test_non_monotone_table_is_accepted_silently():
  d = _dict()
  d["models"][0]["decode_step_s"] = [0.003, 0.001, 0.002]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    p = P.profile_from_dict(d)
  assert p.models[0].decode_step_s == (0.003, 0.001, 0.002)


def _set(path, value):
  def f(d):
    node = d
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = value
  return f


def _delete(path):
  def f(d):
    node = d
    for k in path[:-1]:
      node = node[k]
    del node[path[-1]]
  return f


BAD_CASES = [
    # (mutation, field named in the error, words of the expectation)
    (_delete(["tasks"]), "top level", "missing key"),
    (_delete(["models", 1, "quality"]), "models[1]", "missing key"),
    (_set(["name"], 3), "name", "non-empty string"),
    (_set(["tasks"], []), "tasks", "non-empty list"),
    (_set(["tasks"], ["a", "a"]), "tasks", "distinct"),
    (_set(["models"], []), "models", "non-empty list"),
    (_set(["models", 1, "name"], "small"), "models", "distinct model names"),
    (_set(["models", 0, "instances"], 0), "models[0].instances", "integer >= 1"),
    (_set(["models", 0, "instances"], -1), "models[0].instances", "integer >= 1"),
    (_set(["models", 0, "instances"], 1.5), "models[0].instances", "integer >= 1"),
    (_set(["models", 0, "instances"], True), "models[0].instances", "integer >= 1"),
    (_set(["models", 1, "gpus_per_instance"], 0), "models[1].gpus_per_instance", "integer >= 1"),
    (_set(["models", 1, "max_batch"], 0), "models[1].max_batch", "integer >= 1"),
    (_set(["models", 0, "decode_step_s"], [0.001, 0.002]), "models[0].decode_step_s",
     "expected 3 positive numbers (one per batch size 1..max_batch), got 2"),
    (_set(["models", 0, "decode_step_s"], "fast"), "models[0].decode_step_s", "3 positive numbers"),
    (_set(["models", 0, "decode_step_s", 1], 0.0), "models[0].decode_step_s[1] (batch 2)", "> 0"),
    (_set(["models", 0, "decode_step_s", 2], -0.1), "models[0].decode_step_s[2]", "> 0"),
    (_set(["models", 0, "decode_step_s", 0], float("inf")), "models[0].decode_step_s[0]", "finite"),
    (_set(["models", 0, "decode_step_s", 0], float("nan")), "models[0].decode_step_s[0]", "finite"),
    (_set(["models", 0, "decode_step_s", 0], "1"), "models[0].decode_step_s[0]", "finite number"),
    (_set(["models", 1, "prefill_s_fixed"], -1e-3), "models[1].prefill_s_fixed", ">= 0"),
    (_set(["models", 1, "prefill_s_per_token"], None), "models[1].prefill_s_per_token", ">= 0"),
    (_set(["models", 0, "quality", "c"], 0.5), "models[0].quality", "unknown task(s) ['c']"),
    (_delete(["models", 1, "quality", "a"]), "models[1].quality", "missing task(s) ['a']"),
    (_set(["models", 0, "quality", "a"], 1.5), "models[0].quality['a']", "in [0, 1]"),
    (_set(["models", 0, "quality", "b"], -0.1), "models[0].quality['b']", "in [0, 1]"),
    (_set(["models", 0, "quality"], [0.1, 0.2]), "models[0].quality", "object task -> accuracy"),
    (_set(["models", 0], "opt"), "models[0]", "JSON object"),
]


@pytest.mark.parametrize("mutate,field,expected", BAD_CASES)
def test_bad_profile_error_names_file_field_and_expectation(tmp_path, mutate, field, expected):
  d = copy.deepcopy(_dict())
  mutate(d)
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(d))
  with pytest.raises(ValueError) as e:
    P.load_profile(path)
  msg = str(e.value)
  assert f"profile '{path}'" in msg
  assert field in msg
  assert expected in msg


def test_unreadable_or_invalid_json_names_file(tmp_path):
  with pytest.raises(ValueError, match="missing.json.*cannot read"):
    P.load_profile(tmp_path / "missing.json")
  path = tmp_path / "broken.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
    P.load_profile(path)


# --- bes.quality -----------------------------------------------------------------------------

def test_shipped_quality_table():
  table = Q.load_quality_table()
  assert len(table) == 64
  assert table[("facebook/opt-1.3b", "piqa")] == pytest.approx(0.717084)
  q = Q.quality_for("opt-1.3b", ["arc_easy", "piqa"], table)
  assert q == {"arc_easy": pytest.approx(0.570286), "piqa": pytest.approx(0.717084)}
  assert Q.quality_for("facebook/opt-1.3b", ["piqa"], table) == {"piqa": q["piqa"]}


def test_quality_for_errors():
  table = {("org/m1", "t1"): 0.5, ("org/m1", "t2"): 0.25}
  assert Q.quality_for("M1", ["t2"], table) == {"t2": 0.25}
  with pytest.raises(ValueError, match="unknown model 'm2'.*org/m1"):
    Q.quality_for("m2", ["t1"], table)
  with pytest.raises(ValueError, match="no accuracy for model 'org/m1' on task 't3'.*t1"):
    Q.quality_for("m1", ["t3"], table)


@pytest.mark.parametrize("text,expected", [
    ("model,task\nm,t\n", "missing column(s) ['acc']"),
    ("model,task,acc\nm,t,1.2\n", "line 2: field 'acc' expected an accuracy in [0, 1], got '1.2'"),
    ("model,task,acc\nm,t,high\n", "line 2: field 'acc'"),
    ("model,task,acc\nm,t,0.5\nm,t,0.6\n", "line 3: duplicate row"),
    ("model,task,acc\n,t,0.5\n", "line 2: expected a non-empty model and task"),
    ("model,task,acc\n", "expected at least one row"),
])
def test_malformed_quality_csv(tmp_path, text, expected):
  path = tmp_path / "q.csv"
  path.write_text(text)
  with pytest.raises(ValueError) as e:
    Q.load_quality_table(path)
  assert str(path) in str(e.value) and expected in str(e.value)


def test_quality_csv_general_format(tmp_path):
  path = tmp_path / "q.csv"
  path.write_text("task,acc,model,extra\nt1,0.5,my-model,x\n")
  assert Q.load_quality_table(path) == {("my-model", "t1"): 0.5}
