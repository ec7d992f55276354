"""OpenAI-compatible HTTP server over a routed pair.

Each handler validates (pydantic) -> converts to token ids, SamplingParams and a policy ->
runs routed decoding in a worker thread -> answers in OpenAI's shape. Every error leaves
as an OpenAI-style error body; the server never answers with a traceback.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.policies import PolicyKind, RoutingPolicy
from serving.generation import Generation
from serving.pair import ModelPair, RoutingMode
from serving.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, error_body, new_id, now
from serving.sampling import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_CONFIDENCE_THRESHOLD = 0.1


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "r2r-testbed"
    policy: PolicyKind | None = None  # None: learned when the pair has a router, else entropy
    threshold: float | None = None  # None: the learned router's calibrated one, 0.1 for confidence/entropy
    default_max_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


class UserError(ValueError):
    """A request the server understood but cannot serve; answered with the given HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class RoutedService:
    """Turns validated requests into routed generations; one generation runs at a time."""

    def __init__(self, pair: ModelPair, cfg: ServeConfig) -> None:
        self.pair, self.cfg = pair, cfg
        self._lock = threading.Lock()
        self.default_policy = cfg.policy or pair.default_policy

    def policy_for(self, req: SamplingFields) -> RoutingPolicy:
        kind = req.policy or self.default_policy
        threshold = req.threshold if req.threshold is not None else self.cfg.threshold
        if threshold is None and req.llm_share is None and kind in (PolicyKind.CONFIDENCE, PolicyKind.ENTROPY):
            threshold = DEFAULT_CONFIDENCE_THRESHOLD
        try:
            return self.pair.policy(kind, threshold, req.llm_share, self.cfg.seed)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc), param="policy") from exc

    def params_for(self, req: SamplingFields, prompt_len: int) -> SamplingParams:
        room = self.pair.context_length - prompt_len
        if room <= 0:
            raise UserError(f"the prompt has {prompt_len} tokens; the context is {self.pair.context_length}",
                            param="messages", code="context_length_exceeded")
        limit = req.token_limit
        if limit is not None and limit > room:
            raise UserError(f"max_tokens={limit} plus the {prompt_len}-token prompt exceeds the context of "
                            f"{self.pair.context_length} tokens", param="max_tokens", code="context_length_exceeded")
        max_tokens = limit if limit is not None else min(self.cfg.default_max_tokens, room)
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              top_k=req.top_k, seed=req.seed, stop=req.stop_list)

    def check_model(self, req: SamplingFields) -> None:
        if req.model != self.cfg.model_name:
            raise UserError(f"the model {req.model!r} does not exist; this server serves {self.cfg.model_name!r}",
                            status=404, param="model", code="model_not_found")

    def run(self, ids: list[int], req: SamplingFields) -> Generation:
        self.check_model(req)
        if not ids:
            raise UserError("the prompt is empty", param="prompt")
        params = self.params_for(req, len(ids))
        policy = self.policy_for(req)
        mode = RoutingMode(req.mode) if req.mode else RoutingMode.SPECULATIVE
        with self._lock:
            return self.pair.generate(policy, [ids], [params], mode)[0]


def _usage(gen: Generation) -> dict[str, int]:
    n = len(gen.token_ids)
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": n, "total_tokens": gen.prompt_tokens + n,
            "llm_tokens": gen.stats.llm_tokens}


def build_app(pair: ModelPair, cfg: ServeConfig) -> FastAPI:
    """The FastAPI application serving `pair` under the OpenAI API."""
    service = RoutedService(pair, cfg)
    app = FastAPI(title="r2r", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else first.get("msg", "invalid request")
        return JSONResponse(error_body(message, param=loc or None), status_code=400)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), param=exc.param, code=exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body("internal server error", kind="server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": now(),
                                            "owned_by": "r2r"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest) -> dict:
        try:
            ids = pair.encode_chat([m.model_dump() for m in req.messages])
        except ValueError as exc:
            raise UserError(str(exc), param="messages") from exc
        gen = await run_in_threadpool(service.run, ids, req)
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": cfg.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                             "finish_reason": gen.finish_reason.value, "logprobs": None}],
                "usage": _usage(gen)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> dict:
        ids = pair.encode_text(req.prompt)
        gen = await run_in_threadpool(service.run, ids, req)
        return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": cfg.model_name,
                "choices": [{"index": 0, "text": gen.text, "finish_reason": gen.finish_reason.value,
                             "logprobs": None}],
                "usage": _usage(gen)}

    return app


def serve(pair: ModelPair, cfg: ServeConfig) -> None:
    import uvicorn

    log.info("serving %s on http://%s:%d", cfg.model_name, cfg.host, cfg.port)
    asyncio.run(uvicorn.Server(uvicorn.Config(build_app(pair, cfg), host=cfg.host, port=cfg.port,
                                              log_level="info")).serve())
