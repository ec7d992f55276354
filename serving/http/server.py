"""OpenAI-compatible HTTP server over a routed pair, with continuous batching.

Each handler validates (pydantic, every field and its range) -> converts to token ids, SamplingParams, a
policy, a mode and a deadline -> submits tickets to the scheduler -> streams (SSE) or waits for the result,
reading only the immutable snapshots the scheduler publishes. A client that goes away, streaming or not,
cancels its request before the next engine step. Every error leaves as an OpenAI-style error body; the
server never answers with a traceback. Everything slow (the router, its native build, the embedding and
byte-level tables) is loaded in `RoutedService`, before the server reports healthy.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from importlib.metadata import version as installed_version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r2r.router.policies import PolicyKind, RoutingPolicy
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.decoding.sampling import SamplingParams
from r2r.serving.http.guard import Guard
from r2r.serving.http.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, error_body, new_id, now
from r2r.serving.http.responses import OutputReader, sse, total_usage, usage
from r2r.serving.http.scheduler import Closed, QueueFull, Scheduler, SchedulerConfig, Ticket, TicketError
from r2r.serving.pair import ModelPair

log = logging.getLogger(__name__)

PLAYGROUND = Path(__file__).parent / "static" / "playground.html"
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away (never delivered)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "r2r-testbed"
    policy: PolicyKind | None = None  # None: learned when the pair has a router, else entropy
    threshold: float | None = None  # None: the learned router's calibrated one, 0.1 for confidence/entropy
    mode: RoutingMode = RoutingMode.SPECULATIVE
    default_max_tokens: int = 256
    seed: int = 0
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 600.0  # every request's deadline, queueing included; a request's `timeout` within it
    scheduler: SchedulerConfig = SchedulerConfig()

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not (self.request_timeout_s > 0 and math.isfinite(self.request_timeout_s)):
            raise ValueError(f"the request timeout must be a positive number of seconds, got {self.request_timeout_s}")


class UserError(ValueError):
    """A request the server understood but cannot serve; answered with the given HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_kind(status: int) -> str:
    """The OpenAI error `type` for an HTTP status."""
    return {408: "timeout_error", 429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                                                 else "invalid_request_error")


def ticket_error_body(error: TicketError) -> dict:
    return error_body(error.message, kind=error_kind(error.status), code=error.code)


class RoutedService:
    """Loads what requests need, then turns validated requests into scheduler tickets."""

    def __init__(self, pair: ModelPair, cfg: ServeConfig, scheduler_thread: bool = True) -> None:
        self.pair, self.cfg = pair, cfg
        self.default_policy = cfg.policy or pair.default_policy
        if PolicyKind.LEARNED in (self.default_policy, pair.default_policy):
            pair.learned_policy()  # the router, the SLM's embedding table, the native build: a bad router fails here
        self.byte_level_error: str | None = None
        try:
            pair.byte_models()  # byte-level tables (exact prompt boundaries; every request of a cross pair)
        except ValueError as exc:
            if pair.cross:
                raise
            self.byte_level_error = str(exc)
        self.scheduler = Scheduler(pair.engine, cfg.scheduler, None if pair.cross else pair.byte_engine,
                                   own_thread=scheduler_thread, lock=pair.lock)

    def policy_for(self, req: SamplingFields) -> RoutingPolicy:
        kind = req.policy or self.default_policy
        threshold = req.threshold if req.threshold is not None else self.cfg.threshold
        try:
            return self.pair.policy(kind, threshold, req.llm_share, self.cfg.seed)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc), param="policy") from exc

    def params_for(self, req: SamplingFields, prompt_len: int, byte_level: bool) -> SamplingParams:
        """`byte_level`: the request decodes in byte pieces (a cross pair, or an exact prompt boundary)."""
        room = self.pair.context_length - prompt_len
        if room <= 0:
            raise UserError(f"the prompt has {prompt_len} tokens; the context is {self.pair.context_length}",
                            param="messages", code="context_length_exceeded")
        limit = req.token_limit
        if limit is not None and limit > room:
            raise UserError(f"max_tokens={limit} plus the {prompt_len}-token prompt exceeds the context of "
                            f"{self.pair.context_length} tokens", param="max_tokens", code="context_length_exceeded")
        max_tokens = limit if limit is not None else min(self.cfg.default_max_tokens, room)
        if req.logprob_count is not None and byte_level:
            raise UserError("logprobs are not available from byte-level decoding (a cross-tokenizer pair or "
                            "exact_prompt_boundary): its steps are byte pieces, not tokens", param="logprobs")
        # a sampled request without a seed gets one here: a replay after another request's fault (see the
        # scheduler) then writes the same tokens
        seed = req.seed if req.seed is not None or req.temperature == 0 else secrets.randbits(63)
        try:
            return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                  top_k=req.top_k, seed=seed, stop=req.stop_list, logprobs=req.logprob_count)
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    def byte_level(self, req: SamplingFields) -> bool:
        return self.pair.cross or getattr(req, "exact_prompt_boundary", False)

    def ticket(self, ids: list[int], req: SamplingFields, notify: Callable[[], None], choice: int = 0) -> Ticket:
        """A scheduler ticket for one choice; choice i samples with seed + i so n choices differ.

        A completion with `exact_prompt_boundary` carries its prompt text: a byte-level engine
        conditions on its bytes exactly."""
        if req.model is not None and req.model != self.cfg.model_name:
            raise UserError(f"the model {req.model!r} does not exist; this server serves {self.cfg.model_name!r}",
                            status=404, param="model", code="model_not_found")
        if not ids:
            raise UserError("the prompt is empty", param="prompt")
        exact = getattr(req, "exact_prompt_boundary", False)
        if exact and self.byte_level_error is not None:
            raise UserError(self.byte_level_error, param="exact_prompt_boundary")
        params = self.params_for(req, len(ids), byte_level=self.byte_level(req))
        if choice and params.seed is not None:
            params = replace(params, seed=params.seed + choice)
        mode = RoutingMode(req.mode) if req.mode else self.cfg.mode
        if params.logprobs is not None:
            mode = RoutingMode.SEQUENTIAL  # the protocol already refused an explicit speculative mode
        timeout = min(req.timeout or math.inf, self.cfg.request_timeout_s)
        # a client's seed also fixes seeded routing (the random policy draws from (seed, stream key, position))
        return Ticket(ids, params, self.policy_for(req), mode, notify, req.prompt if exact else None,
                      stream=req.stream, deadline=time.monotonic() + timeout,
                      routing_key=None if req.seed is None else req.seed + choice)

    def reader(self, ticket: Ticket, req: SamplingFields, chat: bool) -> OutputReader:
        return OutputReader(self.pair, ticket.params, self.byte_level(req), chat, req.r2r_token_info,
                            req.logprob_count is not None)

    def metrics_text(self) -> str:
        m, s = self.scheduler.metrics, self.scheduler
        share = m.llm_tokens / m.tokens if m.tokens else 0.0
        lines = []
        for name, kind, value in (
                ("requests_total", "counter", m.requests), ("requests_finished_total", "counter", m.finished),
                ("requests_cancelled_total", "counter", m.cancelled), ("requests_rejected_total", "counter", m.rejected),
                ("requests_failed_total", "counter", m.failed), ("requests_expired_total", "counter", m.expired),
                ("requests_replayed_total", "counter", m.replays),
                ("tokens_total", "counter", m.tokens), ("llm_tokens_total", "counter", m.llm_tokens),
                ("llm_share", "gauge", f"{share:.6f}"), ("queue_depth", "gauge", s.queue_depth),
                ("running_requests", "gauge", s.running), ("active_sequences", "gauge", s.active_sequences),
                ("slm_open_sequences", "gauge", self.pair.slm.open_sequences),
                ("llm_open_sequences", "gauge", self.pair.llm.open_sequences),
                ("steps_total", "counter", m.steps),
                ("mean_batch_size", "gauge", f"{m.batch_size_sum / m.steps if m.steps else 0.0:.3f}")):
            lines += [f"# TYPE r2r_{name} {kind}", f"r2r_{name} {value}"]
        lines.append("# TYPE r2r_request_latency_seconds histogram")
        cumulative = 0
        for bound, count in zip([*map(str, m.latency.buckets), "+Inf"], m.latency.counts):
            cumulative += count
            lines.append(f'r2r_request_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"r2r_request_latency_seconds_sum {m.latency.total:.6f}",
                  f"r2r_request_latency_seconds_count {m.latency.n}"]
        return "\n".join(lines) + "\n"


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait(request: Request, tickets: list[Ticket], wake: asyncio.Event) -> bool:
    """Until every ticket is done (True), or the client went away first (False)."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        while not all(t.snapshot.done for t in tickets):
            woken = asyncio.ensure_future(wake.wait())
            await asyncio.wait((woken, gone), return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                woken.cancel()
                return False
            wake.clear()
        return True
    finally:
        gone.cancel()


def build_app(pair: ModelPair, cfg: ServeConfig, scheduler_thread: bool = True) -> FastAPI:
    """The FastAPI application serving `pair` under the OpenAI API (`scheduler_thread` False: the
    caller runs `app.state.service.scheduler.run()`). Loads the router and tables first: raises
    ValueError or FileNotFoundError for a pair that cannot serve."""
    service = RoutedService(pair, cfg, scheduler_thread)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.scheduler.close()  # wakes and fails what still waits (503)

    app = FastAPI(title="r2r", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(Guard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else first.get("msg", "invalid request")
        return JSONResponse(error_body(message, param=loc or None), status_code=400)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), kind=error_kind(exc.status), param=exc.param, code=exc.code),
                            status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body("internal server error", kind="server_error"), status_code=500)

    @app.get("/")
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": now(),
                                            "owned_by": "r2r"}]}

    # Worker metadata in SGLang's shapes: sglang-router reads `served_model_name` (the model id it routes by) and
    # `tokenizer_path` from `/model_info` and `/server_info` when it registers a worker.
    def model_info() -> dict:
        return {"model_path": str(pair.spec.slm), "tokenizer_path": str(pair.spec.slm), "is_generation": True,
                "served_model_name": cfg.model_name, "max_context_length": pair.context_length,
                "vocab_size": pair.slm.vocab_size, "model_type": "r2r", "pair": pair.spec.name,
                "llm_path": str(pair.spec.llm), "cross_tokenizer": pair.cross}

    def server_info() -> dict:
        return {**model_info(), "version": installed_version("r2r"), "max_running_requests": cfg.scheduler.max_running,
                "max_total_num_tokens": cfg.scheduler.max_tokens, "routing_mode": cfg.mode.value}

    for path in ("/model_info", "/get_model_info"):
        app.add_api_route(path, model_info, methods=["GET"])
    for path in ("/server_info", "/get_server_info"):
        app.add_api_route(path, server_info, methods=["GET"])

    async def run(request: Request, ids: list[int], req: SamplingFields, chat: bool):
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify() -> None:  # from the scheduler's thread
            with contextlib.suppress(RuntimeError):  # the event loop has closed: no handler is left to wake
                loop.call_soon_threadsafe(wake.set)

        tickets = [service.ticket(ids, req, notify, choice=i) for i in range(req.n)]
        try:
            for t in tickets:
                service.scheduler.submit(t)
        except (QueueFull, Closed) as exc:
            for t in tickets:
                service.scheduler.cancel(t)
            status, code = (503, "shutting_down") if isinstance(exc, Closed) else (429, "rate_limit_exceeded")
            raise UserError(str(exc), status=status, code=code) from exc
        rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
        if req.stream:
            return StreamingResponse(_sse(tickets[0], wake, service.reader(tickets[0], req, chat), req, chat, rid,
                                          created), media_type="text/event-stream")
        try:
            finished = await _wait(request, tickets, wake)
        finally:  # the client went away, or the handler was cancelled: free the slots before the next step
            for t in tickets:
                if not t.snapshot.done:
                    service.scheduler.cancel(t)
        if not finished:
            return Response(status_code=CLIENT_CLOSED)
        error = next((t.error for t in tickets if t.error), None)
        if error is not None:
            return JSONResponse(ticket_error_body(error), status_code=error.status)
        if req.logprob_count is not None or req.r2r_token_info:  # O(length) per choice: off the event loop
            return await asyncio.to_thread(_response, tickets, req, chat, rid, created)
        return _response(tickets, req, chat, rid, created)

    def _response(tickets: list[Ticket], req: SamplingFields, chat: bool, rid: str, created: int) -> dict:
        choices = []
        for i, t in enumerate(tickets):
            snap = t.snapshot
            gen = snap.result
            choice = ({"index": i, "message": {"role": "assistant", "content": gen.text}} if chat
                      else {"index": i, "text": gen.text})
            extra = service.reader(t, req, chat).advance(snap)[1] if req.logprob_count is not None or \
                req.r2r_token_info else {}
            choices.append(choice | {"finish_reason": gen.finish_reason.value, "logprobs": extra.get("logprobs")}
                           | ({"r2r": extra["r2r"]} if "r2r" in extra else {}))
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": cfg.model_name, "choices": choices, "usage": total_usage([t.result for t in tickets])}

    async def _sse(ticket: Ticket, wake: asyncio.Event, reader: OutputReader, req: SamplingFields, chat: bool,
                   rid: str, created: int) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        first = True

        def chunk(text: str, finish: str | None, extra: dict | None = None) -> str:
            choice = ({"index": 0, "delta": ({"role": "assistant", "content": text} if first else {"content": text})}
                      if chat else {"index": 0, "text": text})
            choice |= {"finish_reason": finish, "logprobs": None} | (extra or {})
            return sse({"id": rid, "object": obj, "created": created, "model": cfg.model_name, "choices": [choice]})

        try:
            while True:
                snap = ticket.snapshot  # one immutable snapshot per step: tokens, sources and scores agree
                if snap.error is not None:
                    yield sse(ticket_error_body(snap.error))
                    return
                if len(snap.token_ids) > reader.read or snap.result is not None:
                    text, extra = reader.advance(snap)
                    if text or extra:
                        yield chunk(text, None, extra)
                        first = False
                if snap.result is not None:
                    yield chunk("", snap.result.finish_reason.value)
                    if req.stream_options and req.stream_options.include_usage:
                        yield sse({"id": rid, "object": obj, "created": created, "model": cfg.model_name,
                                   "choices": [], "usage": usage(snap.result)})
                    yield "data: [DONE]\n\n"
                    return
                await wake.wait()
                wake.clear()
        finally:  # the client went away mid-stream (the generator is closed): free its sequence
            if not ticket.snapshot.done:
                service.scheduler.cancel(ticket)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, req: ChatCompletionRequest):
        try:
            ids = pair.encode_chat([m.model_dump(mode="json") for m in req.messages])
        except ValueError as exc:
            raise UserError(str(exc), param="messages") from exc
        return await run(request, ids, req, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest):
        return await run(request, pair.encode_text(req.prompt), req, chat=False)

    return app


def serve(pair: ModelPair, cfg: ServeConfig) -> None:
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach it can use it", cfg.host)
    app = build_app(pair, cfg, scheduler_thread=False)  # loads everything before the port opens
    log.info("serving %s on http://%s:%d", cfg.model_name, cfg.host, cfg.port)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info"))
    http = threading.Thread(target=server.run, name="r2r-http", daemon=True)
    http.start()
    while not server.started:
        if not http.is_alive():
            app.state.service.scheduler.close()
            raise ValueError(f"could not serve on {cfg.host}:{cfg.port} (in use, or not an address of this host)")
        time.sleep(0.05)
    scheduler = app.state.service.scheduler
    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn only handles signals on the main thread
        signal.signal(sig, lambda *_: scheduler.close())
    try:  # the decoding loop runs on the main thread (see Scheduler); HTTP on a second one
        scheduler.run()
    finally:
        server.should_exit = True
        http.join(timeout=10)
