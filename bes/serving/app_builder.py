"""Builds the serving app of a serving config: Setup, ServeConfig, policy, tokenizer, front
end and FastAPI app, every input checked before any worker starts (`launch/serve.py`)."""
from __future__ import annotations

import dataclasses

import fastapi
import ml_collections

from bes.experiment.setup import Setup
from bes.serving import config as serve_config_lib
from bes.serving import prom, routing, server, tokenizer as tokenizer_lib
from bes.serving.frontend import Frontend


@dataclasses.dataclass
class Built:
  setup: Setup
  serve: serve_config_lib.ServeConfig
  frontend: Frontend
  app: fastapi.FastAPI


def build(config: ml_collections.ConfigDict) -> Built:
  """The app of `config` (an experiment config with a `serve` section)."""
  setup = Setup.from_config(config)
  serve = serve_config_lib.serve_config(config, setup.profile)
  policy = routing.load_policy(serve.policy, setup, serve.workdir)
  model_vocab = min(m.config.vocab_size for m in serve.models)
  checkpoint = next((m.checkpoint for m in serve.models if m.checkpoint), None)
  tokenizer = tokenizer_lib.tokenizer_for(checkpoint, serve.tokenizer_vocab, model_vocab)
  frontend = Frontend(setup, serve, policy, model_vocab=model_vocab,
                      metrics=prom.ServingMetrics())
  return Built(setup, serve, frontend, server.make_app(frontend, tokenizer))
