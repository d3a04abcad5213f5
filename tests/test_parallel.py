"""Training and evaluation over a device mesh and over several processes (bes/parallel):
a sharded run equals the 1-device run for the same seeds (to float tolerance: only the order
of float sums changes), checkpoints move between meshes and process counts, errors name the
config keys. Multi-device cases run in children with forced CPU devices (tests/multidevice.py).
"""
import csv
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from bes.experiment import Setup, train as train_lib, workdir as workdir_lib
from bes.parallel import distributed
from tests import tiny_router
from tests.multidevice import run_on_devices, run_processes

# Measured on the tiny run (2 chunks, 2 seeds): params differ by <= 3e-8, losses by ~1e-7.
PARAM_ATOL, METRIC_RTOL = 1e-5, 1e-4

# The child's side: the tiny run on a mesh of the first `devices` devices, its policies' params
# and metrics.csv rows as JSON-able values.
CHILD = r'''
import csv, json, os, sys
from bes.parallel import distributed
distributed.initialize()          # the environment of run_processes, or nothing
import jax, numpy as np
from bes.experiment import Setup, train as train_lib, workdir as workdir_lib
from bes.parallel import mesh as mesh_lib
from tests import tiny_router

def tiny_config(root, **mesh):
  path = os.path.join(root, "tiny_profile.json")
  if not os.path.exists(path):     # every process (none may read it before it exists)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(tiny_router.TINY_PROFILE, f)
    os.replace(tmp, path)
  cfg = tiny_router.config(path)
  for k, v in mesh.items():
    cfg.mesh[k] = v
  return cfg

def run(root, name, devices=None, stop=None, **mesh):
  cfg = tiny_config(root, **mesh)
  setup = Setup.from_config(cfg)
  devs = None if devices is None else jax.devices()[:devices]
  workdir = os.path.join(root, name)
  train_lib.train(setup, workdir, log=lambda m: print(m, file=sys.stderr),
                  stop_after_chunks=stop, mesh=setup.mesh(devs))
  params = [np.asarray(x).ravel().tolist() for x in jax.tree_util.tree_leaves(
      [p.params for p in workdir_lib.load_policies(workdir)])]
  return dict(params=params)

def error(fn):
  try:
    fn()
  except ValueError as e:
    return str(e)
  return None
'''


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.csv")) as f:
    return list(csv.DictReader(f))


def _assert_rows_close(got, want):
  assert [(r["chunk"], r["seed"]) for r in got] == [(r["chunk"], r["seed"]) for r in want]
  for g, w in zip(got, want):
    for key in train_lib.CSV_COLUMNS:
      if key != "seconds":
        np.testing.assert_allclose(float(g[key]), float(w[key]), rtol=METRIC_RTOL, atol=1e-6,
                                   err_msg=f"{key} of chunk {w['chunk']} seed {w['seed']}")


def _assert_params_close(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=PARAM_ATOL)


@pytest.mark.slow
def test_sharded_training_equals_one_device_and_resumes_on_another_mesh(tmp_path):
  """8 forced devices: the 1-device run; the same seeds on seed=2 x data=4 for one chunk,
  resumed on seed=1 x data=4 (another mesh) for the second: same params and metrics.
  Also: the errors of meshes that do not fit, heuristic scores sharded = unsharded."""
  root = str(tmp_path)
  script = CHILD + f'''
root = {root!r}
one = run(root, "one", devices=1)
run(root, "sharded", stop=1, seed=2, data=4)
resumed = run(root, "sharded", devices=4, seed=1, data=4)
setup = lambda **mesh: Setup.from_config(tiny_config(root, **mesh))
errors = dict(
    envs=error(lambda: setup(data=8).mesh()),
    seeds=error(lambda: setup(seed=4, data=2).mesh()),
    devices=error(lambda: setup(seed=3, data=1).mesh()))
from bes import heuristics
s = setup()
env, params = s.env()
from bes import policies
stack = policies.stack([heuristics.load_threshold(params, [t, 1.0]) for t in (0.0, 0.5, 1.0)])
keys = jax.random.split(jax.random.PRNGKey(1), 2)
plain = np.asarray(heuristics.evaluate(env, params, stack, keys, 24))
mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=-1))
sharded = np.asarray(heuristics.evaluate(env, params, stack, keys, 24, mesh))
print(json.dumps(dict(one=one, resumed=resumed, errors=errors, plain=plain.tolist(),
                      sharded=sharded.tolist())))
'''
  got = run_on_devices(8, script, timeout=400)
  _assert_params_close(got["resumed"]["params"], got["one"]["params"])
  _assert_rows_close(_rows(os.path.join(root, "sharded")), _rows(os.path.join(root, "one")))
  np.testing.assert_allclose(got["sharded"], got["plain"], rtol=1e-6)
  errors = got["errors"]
  assert "config.dqn.num_envs=4" in errors["envs"] and "'data'" in errors["envs"]
  assert "config.num_seeds=2" in errors["seeds"] and "'seed'" in errors["seeds"]
  assert "config.mesh" in errors["devices"] and "8" in errors["devices"]


@pytest.mark.slow
@pytest.mark.usefixtures("persistent_compilation_cache")
def test_two_processes_train_as_one_and_their_checkpoint_resumes_in_one(tmp_path,
                                                                       tiny_router_config):
  """2 processes x 2 CPU devices over loopback train the first chunk into one workdir
  (metrics.csv written once, the policy restored by both); this single process resumes that
  checkpoint for the second chunk and ends where its own uninterrupted run ends."""
  root = str(tmp_path)
  script = CHILD + f'''
got = run({root!r}, "multi", stop=1)
print(json.dumps(dict(got, process=jax.process_index(), processes=jax.process_count(),
                      devices=jax.device_count())))
'''
  procs = run_processes(2, script, devices_per_process=2, timeout=400)
  assert [(p["process"], p["processes"], p["devices"]) for p in procs] == [(0, 2, 4), (1, 2, 4)]
  assert procs[0]["params"] == procs[1]["params"]
  multi = os.path.join(root, "multi")
  assert len(_rows(multi)) == 2                       # chunk 1 x 2 seeds, written once
  with open(os.path.join(multi, "metrics.csv")) as f:
    assert f.read().count("chunk,seed") == 1

  cfg = tiny_router.config(os.path.join(root, "tiny_profile.json"))
  one = os.path.join(root, "one")
  train_lib.train(Setup.from_config(cfg), one, log=lambda m: None)
  train_lib.train(Setup.from_config(cfg), multi, log=lambda m: None)   # resumes chunk 2
  _assert_rows_close(_rows(multi), _rows(one))
  got = [p.params for p in workdir_lib.load_policies(multi)]
  want = [p.params for p in workdir_lib.load_policies(one)]
  _assert_params_close(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))


@pytest.mark.slow
def test_sharded_evaluation_of_seeds_equals_one_by_one(tmp_path):
  """8 forced devices: 3 learned seeds (random networks) evaluated as one program sharded over
  the devices (padded to 8) have the outcomes of their one-by-one recorded episodes."""
  script = CHILD + f'''
from bes.experiment import evaluate as evaluate_lib
from bes.router import features as features_lib
from bes.router.policy import LearnedPolicy
from bes.router.qnetwork import make_qnetwork
setup = Setup.from_config(tiny_config({str(tmp_path)!r}))
layout = features_lib.layout(2, 2, setup.dqn.features)
network = make_qnetwork(layout, setup.dqn)
obs = jax.numpy.zeros((1, layout.size))
seeds = [LearnedPolicy(params=network.init(jax.random.PRNGKey(s), obs), network=network)
         for s in range(3)]
key, n = jax.random.PRNGKey(7), 60
mesh = mesh_lib.local_mesh()
sharded = evaluate_lib.run_seeds(setup, seeds, n, key, mesh)
single = [evaluate_lib.run_policy(setup, p, n, key) for p in seeds]
same = [all(np.array_equal(a[1][k], b[1][k]) for k in a[1]) for a, b in zip(sharded, single)]
result, _ = evaluate_lib.evaluate(setup, n, key, {{}}, seeds, log=lambda m: None)
print(json.dumps(dict(devices=mesh.size, same=same,
                      sharded=[s for s, _ in sharded], single=[s for s, _ in single],
                      learned=result["policies"]["learned"]["mean_utility"])))
'''
  got = run_on_devices(8, script, timeout=300)
  assert got["devices"] == 8
  assert got["same"] == [True, True, True]
  assert got["sharded"] == got["single"]
  assert got["learned"] == pytest.approx(np.mean([s["mean_utility"] for s in got["single"]]))


def test_resume_ignores_the_mesh_keys(tiny_router_config):
  """A saved config with another mesh, or none (an old workdir), resumes; other keys differ."""
  cfg = tiny_router_config()
  saved = cfg.to_dict()
  del saved["mesh"]
  train_lib.check_resume(saved, cfg)
  other = ml_collections.ConfigDict(cfg.to_dict())
  other.mesh.seed, other.mesh.data = 2, 4
  train_lib.check_resume(other.to_dict(), cfg)
  other.dqn.num_envs = 8
  with pytest.raises(ValueError, match=r"dqn\.num_envs"):
    train_lib.check_resume(other.to_dict(), cfg)


def test_resume_of_a_workdir_older_than_a_key_at_its_default(tiny_router_config):
  """A saved config that lacks a typed key added later (dqn.mask_slack) resumes when the
  key is set to its default (what the old run meant), and not when it is set otherwise."""
  cfg = tiny_router_config()
  saved = cfg.to_dict()
  del saved["dqn"]["mask_slack"]
  cfg.dqn.mask_slack = 1.25
  train_lib.check_resume(saved, cfg)
  cfg.dqn.mask_slack = 1.0
  with pytest.raises(ValueError, match=r"dqn\.mask_slack"):
    train_lib.check_resume(saved, cfg)
  cfg.dqn.mask_slack, cfg.dqn.unknown_key = 1.25, 3     # not a typed field: still differs
  with pytest.raises(ValueError, match=r"dqn\.unknown_key"):
    train_lib.check_resume(saved, cfg)


@pytest.mark.parametrize("mesh, message", [
    (dict(data=0), r"config\.mesh\.data: expected an integer >= 1 or -1"),
    (dict(seed=-1, data=-1), r"config\.mesh: at most one axis may be -1"),
    (dict(seed=2, data=1), r"config\.mesh: seed x data x model = 2 devices, but 1 are available"),
])
def test_bad_mesh_keys(tiny_router_config, mesh, message):
  cfg = tiny_router_config()
  for key, value in mesh.items():
    cfg.mesh[key] = value
  with pytest.raises(ValueError, match=message):
    Setup.from_config(cfg).mesh()


def test_unknown_mesh_key(tiny_router_config):
  cfg = tiny_router_config()
  cfg.mesh.unlock()
  cfg.mesh.pipeline = 2
  with pytest.raises(ValueError, match=r"config\.mesh: unknown key\(s\) \['pipeline'\]"):
    Setup.from_config(cfg)


def test_single_process_distributed_is_a_no_op(monkeypatch):
  for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM, distributed.ENV_ID):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_cluster_detected", lambda: False)
  assert distributed.initialize() is False
  assert distributed.initialize(num_processes=1) is False
  assert distributed.is_primary()
  x = distributed.to_global(np.arange(6).reshape(3, 2), jax.sharding.SingleDeviceSharding(
      jax.devices()[0]))
  np.testing.assert_array_equal(distributed.fetch({"x": x})["x"], np.arange(6).reshape(3, 2))
  monkeypatch.setenv(distributed.ENV_NUM, "two")
  with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES: expected an integer"):
    distributed.initialize()
  with pytest.raises(ValueError, match=r"--process_id: expected 0\.\.1, got 2"):
    distributed.initialize(num_processes=2, process_id=2)


@pytest.mark.slow
def test_importing_the_launchers_starts_no_jax_backend():
  """jax.distributed.initialize() must run before JAX starts a backend, and the launchers
  call it first thing in main: importing them (and loading the default config) may not
  create a JAX array."""
  script = ("import json, jax._src.xla_bridge as xb\n"
            "import launch.train\n"
            "from configs import default\n"
            "default.get_config()\n"
            "print(json.dumps(dict(started=bool(xb._backends))))\n")
  assert run_on_devices(1, script, timeout=120) == {"started": False}


@pytest.mark.slow
def test_train_launcher_as_two_processes(tmp_path, tiny_profile_path):
  """launch/train.py run twice over loopback (flags from $JAX_*): one training, one
  evaluation report and metrics.csv written once (by process 0), both processes exit 0."""
  workdir = str(tmp_path / "run")
  argv = ["launch/train.py", f"--workdir={workdir}", *tiny_router.launcher_flags(tiny_profile_path)]
  script = f'''
import json, runpy, sys
sys.argv = {argv!r}
code = 0
try:
  runpy.run_path("launch/train.py", run_name="__main__")
except SystemExit as e:
  code = e.code or 0
import jax
print(json.dumps(dict(code=code, process=jax.process_index(), processes=jax.process_count())))
'''
  procs = run_processes(2, script, devices_per_process=1, timeout=400)
  assert procs == [dict(code=0, process=0, processes=2), dict(code=0, process=1, processes=2)]
  assert len(_rows(workdir)) == 4                     # 2 chunks x 2 seeds, once
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    learned = json.load(f)["policies"]["learned"]
  assert len(learned["seeds"]) == 2


def test_pad_leading_and_constrainer_on_one_device():
  from bes.parallel import mesh as mesh_lib
  tree = {"a": np.arange(3.0), "b": np.arange(6).reshape(3, 2)}
  padded, count = mesh_lib.pad_leading(tree, 4)
  assert count == 3 and padded["a"].tolist() == [0.0, 1.0, 2.0, 2.0]
  assert padded["b"].tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]
  assert mesh_lib.pad_leading(tree, 3)[0] is tree
  assert mesh_lib.constrainer(None)(tree, "batch") is tree
  one = mesh_lib.local_mesh()
  assert mesh_lib.constrainer(one)(tree, "batch") is tree       # a 1-device axis: unchanged


def test_scaling_benchmark_table():
  from bes.experiment import throughput
  cores = throughput.physical_cores()
  assert cores is None or cores >= 1
  rows = [dict(devices=d, env=dict(mesh={"data": d}, request_steps_per_s=100.0 * d),
               train=dict(decisions_per_s=10.0, updates_per_s=5.0 * d)) for d in (1, 2)]
  table = throughput.scaling_table(rows)
  assert "| 2 | {'data': 2} | 200 | 2.00x | 10 | 10 | 2.00x |" in table
