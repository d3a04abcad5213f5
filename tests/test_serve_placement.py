"""config.serve.placement: CPU cores and accelerator slices, and what a worker makes of them."""
import os
import textwrap

import pytest

from bes.models.opt_config import OPTConfig
from bes.serving import config as serve_config
from bes.serving import worker
from tests.multidevice import run_on_devices

CONFIG = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   ffn_dim=32, max_position_embeddings=64)
BASE = dict(instance=0, model="m", config=CONFIG, checkpoint=None, seed=0, dtype="float32",
            max_batch=2, max_len=32, queue_capacity=4)


def test_placements_parse():
  parse = serve_config.parse_placements
  assert parse("auto", 3, 2) == ((0,), (1,), (0,))
  assert parse("0;0,1", 2, 2) == ((0,), (0, 1))
  assert parse("gpu:0;gpu:1-3;gpu:4,5,6,7;tpu:0", 4, 1) == (
      ("gpu", (0,)), ("gpu", (1, 2, 3)), ("gpu", (4, 5, 6, 7)), ("tpu", (0,)))
  assert parse(" gpu:2-2 ", 1, 1) == (("gpu", (2,)),)


@pytest.mark.parametrize("text", ["gpu:", "gpu:3-1", "gpu:0,0", "gpu:-1", "gpu:a", "npu:0",
                                  "gpu:0-", "0,x", "5"])
def test_bad_placements_name_the_key(text):
  with pytest.raises(ValueError, match=r"^config.serve.placement: expected .*, got "):
    serve_config.parse_placements(text, 1, 2)


def test_worker_placement_fields():
  assert serve_config.worker_placement((0, 1)) == dict(cpus=(0, 1), device=None)
  fields = serve_config.worker_placement(("gpu", (0, 1, 2, 3)))
  assert fields == dict(cpus=None, device=(0, 1, 2, 3), platform="gpu")
  spec = worker.WorkerSpec(**BASE, **fields)
  assert spec.device == (0, 1, 2, 3)
  assert worker.WorkerSpec(**BASE, device=3).device == (3,)   # an int: a 1-device slice


@pytest.mark.parametrize("field,bad", [("device", ()), ("device", (0, 0)), ("device", (-1,)),
                                       ("platform", "cuda")])
def test_worker_spec_refuses_bad_slices(field, bad):
  with pytest.raises(ValueError, match=f"WorkerSpec.{field}:"):
    worker.WorkerSpec(**{**BASE, field: bad})
  with pytest.raises(ValueError, match="WorkerSpec.device: .*TPU slice"):
    worker.WorkerSpec(**BASE, device=(0, 1, 2), platform="tpu")


_ENV = ("CUDA_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS", "TPU_CHIPS_PER_PROCESS_BOUNDS",
        "TPU_PROCESS_BOUNDS")


def _pinned_env(monkeypatch, **fields):
  for name in _ENV:
    monkeypatch.setenv(name, "")       # recorded: restored (or removed) after the test
    monkeypatch.delenv(name)
  worker.pin_process(worker.WorkerSpec(**BASE, **fields))
  return {name: os.environ.get(name) for name in _ENV}


def test_pin_process_exposes_the_slice(monkeypatch):
  assert _pinned_env(monkeypatch, device=(2, 3, 4, 5)) == {
      "CUDA_VISIBLE_DEVICES": "2,3,4,5", "TPU_VISIBLE_CHIPS": None,
      "TPU_CHIPS_PER_PROCESS_BOUNDS": None, "TPU_PROCESS_BOUNDS": None}
  assert _pinned_env(monkeypatch, device=1) == {   # one device: as before, either platform
      "CUDA_VISIBLE_DEVICES": "1", "TPU_VISIBLE_CHIPS": "1",
      "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1", "TPU_PROCESS_BOUNDS": "1,1,1"}
  assert _pinned_env(monkeypatch, device=(0, 1, 2, 3), platform="tpu")[
      "TPU_CHIPS_PER_PROCESS_BOUNDS"] == "2,2,1"


def test_engine_mesh_of_a_slice():
  assert worker.engine_mesh(worker.WorkerSpec(**BASE)) is None            # CPU
  assert worker.engine_mesh(worker.WorkerSpec(**BASE, device=0)) is None  # one device
  # This process sees one device, not the slice's two.
  with pytest.raises(ValueError, match=r"WorkerSpec.device: a slice of 2 devices, but 1 "):
    worker.engine_mesh(worker.WorkerSpec(**BASE, device=(0, 1)))


@pytest.mark.parametrize("name,slices", [("gpu", [(0,), (1,), (2,), (3,)]),
                                         ("gpu_large", [(0, 1), (2, 3, 4, 5)])])
def test_gpu_serving_configs_parse(name, slices):
  import importlib  # pylint: disable=import-outside-toplevel
  from bes import profile as profile_lib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"configs.serve.{name}").get_config()
  profile = (profile_lib.load_profile(config.profile) if config.profile
             else profile_lib.default_profile())
  serve = serve_config.serve_config(config, profile)
  assert [p[1] for p in serve.placements] == slices
  gpus = [m.gpus_per_instance for m in profile.models for _ in range(m.instances)]
  assert gpus == [len(s) for s in slices]      # the profile's GPUs per instance = the slices


_WORKER = textwrap.dedent("""
    import json
    from bes.models.opt_config import OPTConfig
    from bes.serving import protocol, worker
    cfg = OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    ffn_dim=64, max_position_embeddings=64)
    base = dict(instance=0, model="m", config=cfg, checkpoint=None, seed=0, dtype="float32",
                max_batch=2, max_len=24, queue_capacity=4, buckets=(24,))

    def serve(**placement):
      loop = worker.build_loop(worker.WorkerSpec(**base, **placement))
      for rid, prompt in enumerate([(5, 6, 7), (9, 10)]):
        loop.submit(protocol.Submit(rid=rid, tokens=prompt, max_tokens=6, ignore_eos=True))
      tokens = []
      while (it := loop.step()) is not None:
        tokens += [(rid, tok) for rid, tok, _ in it.tokens]
      return loop, tokens

    loop, sharded = serve(device=(0, 1, 2, 3))
    _, single = serve(cpus=None, device=None)
    print(json.dumps(dict(sharded=sharded, single=single, mesh=dict(loop.engine.mesh.shape))))
""")


def test_worker_on_a_slice_serves_tensor_parallel():
  """A worker given a 4-device slice (4 forced CPU devices visible) builds a 'model' mesh
  over them and serves the tokens of an unsharded worker (random weights from the seed)."""
  r = run_on_devices(4, _WORKER, timeout=180)
  assert r["mesh"] == {"seed": 1, "data": 1, "model": 4}
  assert r["sharded"] == r["single"] and len(r["single"]) == 12
