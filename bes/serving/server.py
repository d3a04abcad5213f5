"""The OpenAI-compatible HTTP API of the serving runtime (FastAPI, served by uvicorn).

  POST /v1/completions   OpenAI completions: `prompt` (text or token ids), `max_tokens`,
                         `temperature`, `top_p`, `stream` (server-sent events, `data: [DONE]`
                         last, as OpenAI and vLLM), `seed`, `model` ("auto": the router
                         decides; a deployed model's name pins it). bes extensions in the
                         body: `task` (a profile task name; default the first task),
                         `deadline_s` (this request's latency budget, default the serving
                         config's), `min_tokens`, `ignore_eos` (as vLLM). The response's
                         `model` is the model that served it; `usage` as OpenAI; a `bes` object
                         (task, model_index, instance, latency_s, on_time, utility, queue_s,
                         ttft_s, tpot_s, deadline_s, predicted).
  GET /v1/models         "auto" and the deployed models.
  GET /health            200 when every engine is warm and live, else 503; per-engine state.
  GET /metrics           Prometheus text (`bes.serving.prom`).
  GET /bes/deployment    tasks, models (instances, max context, vocabulary), the profile.

Errors are OpenAI-style `{"error": {"message", "type", "param", "code"}}`: 400 for a malformed
request (the message names the field: bad JSON, unknown task or model, a prompt too long for
the context, max_tokens < 1, token ids that are not integers in the vocabulary), 429 when the
chosen instance's waiting queue is full, 503 when no engine can take it or the server is
draining, 500/503 when the engine serving it fails.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Union

import fastapi
from fastapi import responses
from fastapi.exceptions import RequestValidationError
import pydantic

from bes.serving.frontend import Frontend, Request, ServingError


class CompletionBody(pydantic.BaseModel):
  """The request body (module docstring). Unknown OpenAI fields are accepted and ignored,
  except those that would change the output and are not supported (n > 1, echo, stop,
  logprobs, best_of), which are refused naming the field."""
  model_config = pydantic.ConfigDict(extra="allow")
  model: str = "auto"
  prompt: Union[str, list[pydantic.StrictInt]]
  max_tokens: int = pydantic.Field(16, ge=1)
  temperature: float = pydantic.Field(1.0, ge=0.0, le=100.0)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
  stream: bool = False
  seed: int | None = None
  task: str | None = None
  deadline_s: float | None = pydantic.Field(None, gt=0.0)
  min_tokens: int = pydantic.Field(0, ge=0)
  ignore_eos: bool = False


_UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "stop": None,
                "suffix": None}


def error_response(status: int, message: str, kind: str, param: str | None = None,
                   extra: dict | None = None) -> responses.JSONResponse:
  body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
  body.update(extra or {})
  return responses.JSONResponse(body, status_code=status)


class _BadRequest(Exception):
  def __init__(self, param: str, message: str):
    super().__init__(message)
    self.param = param


def make_app(frontend: Frontend, tokenizer) -> fastapi.FastAPI:
  """The app serving `frontend` (started and drained by the app's lifespan)."""
  profile = frontend.profile
  names = [m.name for m in profile.models]
  tasks = list(profile.tasks)
  max_len, vocab = frontend.serve.max_len, frontend.model_vocab

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    frontend.start()
    yield
    await frontend.drain()

  app = fastapi.FastAPI(title="bes", lifespan=lifespan)

  @app.exception_handler(RequestValidationError)
  async def _invalid(request, exc: RequestValidationError):
    del request
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = loc[0] if loc else "body"
    where = ".".join(loc) or "body"
    if first.get("type") == "json_invalid":
      message = f"body: invalid JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
      param = "body"
    else:
      message = f"{where}: {first.get('msg', 'invalid')}"
      if param == "prompt":
        message = ("prompt: expected a string or a list of integer token ids "
                   f"({first.get('msg', 'invalid')} at {where})")
    return error_response(400, message, "invalid_request_error", param)

  def parse(body: CompletionBody) -> Request:
    for key, default in _UNSUPPORTED.items():
      value = (body.model_extra or {}).get(key, default)
      if value not in (default, None) and not (key == "n" and value == 1):
        raise _BadRequest(key, f"{key}: not supported by bes (expected {default!r}), got "
                          f"{value!r}")
    task_name = body.task if body.task is not None else tasks[0]
    if task_name not in tasks:
      raise _BadRequest("task", f"task: expected one of {tasks}, got {task_name!r}")
    if body.model != "auto" and body.model not in names:
      raise _BadRequest("model", f"model: expected 'auto' or one of {names}, got {body.model!r}")
    if isinstance(body.prompt, str):
      if not body.prompt:
        raise _BadRequest("prompt", "prompt: expected a non-empty string or token ids")
      tokens = tokenizer.encode(body.prompt)
    else:
      tokens = list(body.prompt)
      if not tokens:
        raise _BadRequest("prompt", "prompt: expected at least one token id, got []")
      bad = [t for t in tokens if not 0 <= t < vocab]
      if bad:
        raise _BadRequest("prompt", f"prompt: token ids must be in [0, {vocab}), got {bad[0]}")
    if len(tokens) + body.max_tokens > max_len:
      raise _BadRequest("prompt", f"prompt: this deployment's maximum context is {max_len} "
                        f"tokens, you requested {len(tokens) + body.max_tokens} "
                        f"({len(tokens)} in the prompt, {body.max_tokens} for max_tokens)")
    if body.min_tokens > body.max_tokens:
      raise _BadRequest("min_tokens", f"min_tokens: must be <= max_tokens={body.max_tokens}, "
                        f"got {body.min_tokens}")
    seed = body.seed if body.seed is not None else 0
    return Request(rid=-1, task=tasks.index(task_name), tokens=tokens,
                   max_tokens=body.max_tokens, min_tokens=body.min_tokens,
                   ignore_eos=body.ignore_eos, temperature=body.temperature, top_p=body.top_p,
                   seed=seed, deadline_s=body.deadline_s,
                   pinned=None if body.model == "auto" else names.index(body.model))

  def bes_object(req: Request) -> dict:
    o = req.outcome or {}
    return {"task": tasks[req.task], "model_index": req.model, "instance": req.instance,
            "latency_s": o.get("latency"), "on_time": bool(o.get("on_time", False)),
            "utility": o.get("utility"), "queue_s": o.get("queue"), "ttft_s": o.get("ttft"),
            "tpot_s": o.get("tpot"), "deadline_s": o.get("budget"),
            "predicted": req.predicted, "decision_us": req.decision_us}

  def serving_error(e: ServingError) -> responses.JSONResponse:
    extra = {"bes": bes_object(e.request)} if e.request is not None else None
    if extra and extra["bes"]["latency_s"] == float("inf"):
      extra["bes"]["latency_s"] = None
    return error_response(e.status, str(e), e.kind, None, extra)

  def completion_id(req: Request) -> str:
    return f"cmpl-bes-{req.rid}"

  @app.post("/v1/completions")
  async def completions(body: CompletionBody):
    try:
      req = frontend.submit(parse(body))
    except _BadRequest as e:
      return error_response(400, str(e), "invalid_request_error", e.param)
    except ServingError as e:
      return serving_error(e)
    created = int(time.time())
    if body.stream:
      return responses.StreamingResponse(stream(req, created), media_type="text/event-stream")
    while True:
      event = await req.events.get()
      if event[0] == "error":
        return error_response(event[1], event[2], "engine_error", None,
                              {"bes": {**bes_object(req), "latency_s": None}})
      if event[0] == "done":
        break
    text = tokenizer.decode(_visible(req))
    return {"id": completion_id(req), "object": "text_completion", "created": created,
            "model": names[req.model],
            "choices": [{"index": 0, "text": text, "finish_reason": req.finish_reason,
                         "logprobs": None}],
            "usage": {"prompt_tokens": len(req.tokens), "completion_tokens": len(req.output),
                      "total_tokens": len(req.tokens) + len(req.output)},
            "bes": bes_object(req)}

  def _visible(req: Request) -> list:
    """Generated tokens without a final EOS (OpenAI does not return the stop token)."""
    out = list(req.output)
    if req.finish_reason == "stop" and out and out[-1] == tokenizer.eos_token_id:
      out = out[:-1]
    return out

  async def stream(req: Request, created: int):
    detok = tokenizer.detokenizer()
    chunk = lambda text, finish: {
        "id": completion_id(req), "object": "text_completion", "created": created,
        "model": names[req.model],
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
    while True:
      event = await req.events.get()
      if event[0] == "token":
        if event[1] == tokenizer.eos_token_id and not req.ignore_eos:
          continue
        piece = detok.push(event[1])
        if piece:
          yield f"data: {json.dumps(chunk(piece, None))}\n\n"
      elif event[0] == "done":
        final = chunk(detok.flush(), req.finish_reason)
        final["usage"] = {"prompt_tokens": len(req.tokens), "completion_tokens": len(req.output),
                          "total_tokens": len(req.tokens) + len(req.output)}
        final["bes"] = bes_object(req)
        yield f"data: {json.dumps(final)}\n\n"
        break
      else:
        error = {"error": {"message": event[2], "type": "engine_error", "code": event[1]}}
        yield f"data: {json.dumps(error)}\n\n"
        break
    yield "data: [DONE]\n\n"

  @app.get("/v1/models")
  async def models():
    created = int(frontend.t0)
    data = [{"id": "auto", "object": "model", "created": created, "owned_by": "bes",
             "bes": {"routed_by": frontend.serve.policy}}]
    data += [{"id": m.name, "object": "model", "created": created, "owned_by": "bes",
              "bes": {"instances": m.instances, "max_batch": m.max_batch}}
             for m in profile.models]
    return {"object": "list", "data": data}

  @app.get("/health")
  async def health():
    engines = frontend.engine_states()
    if frontend.draining:
      status = "draining"
    elif frontend.ready:
      status = "ready"
    else:
      status = "starting" if frontend.counts == {"ok": 0, "rejected": 0, "error": 0} and \
          all(e["restarts"] == 0 for e in engines) else "degraded"
    code = 200 if status == "ready" else 503
    return responses.JSONResponse({"status": status, "engines": engines,
                                   "requests": dict(frontend.counts)}, status_code=code)

  @app.get("/metrics")
  async def metrics():
    frontend.metrics.queues(frontend)
    return responses.Response(frontend.metrics.render(),
                              media_type="text/plain; version=0.0.4; charset=utf-8")

  @app.get("/bes/deployment")
  async def deployment():
    return {"tasks": tasks, "policy": frontend.serve.policy,
            "models": [{"name": m.name, "instances": m.instances, "max_batch": m.max_batch,
                        "max_context": max_len, "vocab_size": vocab} for m in profile.models],
            "miss_penalty": frontend.serving.miss_penalty,
            "queue_capacity": frontend.serving.queue_capacity,
            "profile": profile.to_dict()}

  return app
