"""Fixtures shared by the test modules.

  tiny_profile_path             the tiny router deployment (tests/tiny_router.py) as a profile
                                JSON file, one per session
  tiny_router_config            credit -> the tiny training run's ConfigDict on that profile
  jax_cache_dir                 a JAX persistent compilation cache directory for the session;
                                launcher subprocesses get it as JAX_COMPILATION_CACHE_DIR
  persistent_compilation_cache  turns that cache on in this process for one module (use with
                                `pytestmark = pytest.mark.usefixtures(...)`); identical
                                programs built by different calls, modules or subprocesses
                                compile once

Helper modules, imported by the tests that need them: tiny_router.py (the tiny router run),
sim_cases.py (random serving cases), env_testing.py (replayed requests, fixed actions),
opt_testing.py (tiny HF OPT checkpoints). Tests marked `slow` (subprocesses, training) are
deselected by `-m "not slow"`.
"""
import functools
import json

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from tests import tiny_router

_CACHE_FLAGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="session")
def tiny_profile_path(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("tiny_profile") / "router_tiny_profile.json"
  path.write_text(json.dumps(tiny_router.TINY_PROFILE))
  return str(path)


@pytest.fixture(scope="session")
def tiny_router_config(tiny_profile_path):
  """`tiny_router_config(credit='request')`: a fresh ConfigDict of the tiny training run."""
  return functools.partial(tiny_router.config, tiny_profile_path)


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def persistent_compilation_cache(jax_cache_dir):
  """The persistent compilation cache in `jax_cache_dir` (every program cached) while one
  module runs; the previous settings afterwards."""
  old = {name: getattr(jax.config, name) for name in _CACHE_FLAGS}
  jax.config.update("jax_compilation_cache_dir", jax_cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  compilation_cache.reset_cache()
  yield jax_cache_dir
  for name, value in old.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
