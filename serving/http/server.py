"""OpenAI-compatible HTTP server over a routed pair, with continuous batching.

Each handler validates (pydantic) -> converts to token ids, SamplingParams, a policy and a
mode -> submits a ticket to the scheduler -> streams (SSE) or waits for the result. Every
error leaves as an OpenAI-style error body; the server never answers with a traceback.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.policies import PolicyKind, RoutingPolicy
from serving.decoding.generation import Generation, RoutingMode
from serving.pair import ModelPair
from serving.http.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, error_body, new_id, now
from serving.decoding.sampling import SamplingParams
from serving.http.scheduler import QueueFull, Scheduler, SchedulerConfig, Ticket
from serving.http.text_stream import TextStream, token_texts

log = logging.getLogger(__name__)

PLAYGROUND = Path(__file__).parent / "static" / "playground.html"


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
    scheduler: SchedulerConfig = SchedulerConfig()

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
    """Turns validated requests into scheduler tickets."""

    def __init__(self, pair: ModelPair, cfg: ServeConfig, scheduler_thread: bool = True) -> None:
        self.pair, self.cfg = pair, cfg
        self.default_policy = cfg.policy or pair.default_policy
        engine = pair.engine()
        self.scheduler = Scheduler(engine, cfg.scheduler, (lambda: engine) if pair.cross else pair.byte_engine,
                                   own_thread=scheduler_thread)

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
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              top_k=req.top_k, seed=req.seed, stop=req.stop_list, logprobs=req.logprob_count)

    def ticket(self, ids: list[int], req: SamplingFields, notify, choice: int = 0) -> Ticket:
        """A scheduler ticket for one choice; choice i samples with seed + i so n choices differ.

        A completion with `exact_prompt_boundary` carries its prompt text: a byte-level engine
        conditions on its bytes exactly."""
        if req.model != self.cfg.model_name:
            raise UserError(f"the model {req.model!r} does not exist; this server serves {self.cfg.model_name!r}",
                            status=404, param="model", code="model_not_found")
        if not ids:
            raise UserError("the prompt is empty", param="prompt")
        exact = getattr(req, "exact_prompt_boundary", False)
        params = self.params_for(req, len(ids), byte_level=self.pair.cross or exact)
        if choice and params.seed is not None:
            params = replace(params, seed=params.seed + choice)
        mode = RoutingMode(req.mode) if req.mode else self.cfg.mode
        if params.logprobs is not None:
            mode = RoutingMode.SEQUENTIAL  # the protocol already refused an explicit speculative mode
        if exact:
            try:
                self.pair.byte_models()
            except ValueError as exc:
                raise UserError(str(exc), param="exact_prompt_boundary") from exc
        return Ticket(ids, params, self.policy_for(req), mode, notify, req.prompt if exact else None,
                      stream=req.stream)

    def metrics_text(self) -> str:
        m, s = self.scheduler.metrics, self.scheduler
        share = m.llm_tokens / m.tokens if m.tokens else 0.0
        lines = [
            "# TYPE r2r_requests_total counter", f"r2r_requests_total {m.requests}",
            "# TYPE r2r_requests_finished_total counter", f"r2r_requests_finished_total {m.finished}",
            "# TYPE r2r_requests_cancelled_total counter", f"r2r_requests_cancelled_total {m.cancelled}",
            "# TYPE r2r_requests_rejected_total counter", f"r2r_requests_rejected_total {m.rejected}",
            "# TYPE r2r_tokens_total counter", f"r2r_tokens_total {m.tokens}",
            "# TYPE r2r_llm_tokens_total counter", f"r2r_llm_tokens_total {m.llm_tokens}",
            "# TYPE r2r_llm_share gauge", f"r2r_llm_share {share:.6f}",
            "# TYPE r2r_queue_depth gauge", f"r2r_queue_depth {s.queue_depth}",
            "# TYPE r2r_running_requests gauge", f"r2r_running_requests {s.running}",
            "# TYPE r2r_active_sequences gauge", f"r2r_active_sequences {s.active_sequences}",
            "# TYPE r2r_slm_open_sequences gauge",
            f"r2r_slm_open_sequences {self.pair.slm.open_sequences}",
            "# TYPE r2r_llm_open_sequences gauge",
            f"r2r_llm_open_sequences {self.pair.llm.open_sequences}",
            "# TYPE r2r_steps_total counter", f"r2r_steps_total {m.steps}",
            "# TYPE r2r_mean_batch_size gauge",
            f"r2r_mean_batch_size {m.batch_size_sum / m.steps if m.steps else 0.0:.3f}",
            "# TYPE r2r_request_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip([*map(str, m.latency.buckets), "+Inf"], m.latency.counts):
            cumulative += count
            lines.append(f'r2r_request_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"r2r_request_latency_seconds_sum {m.latency.total:.6f}",
                  f"r2r_request_latency_seconds_count {m.latency.n}"]
        return "\n".join(lines) + "\n"


def _usage(gen: Generation) -> dict[str, int]:
    n = len(gen.token_ids)
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": n, "total_tokens": gen.prompt_tokens + n,
            "llm_tokens": gen.stats.llm_tokens}


def logprob_block(pair: ModelPair, gen: Generation, start: int, end: int, chat: bool) -> dict:
    """OpenAI `logprobs` for tokens start..end (the EOS token is not reported)."""
    decode = pair.tokenizer.decode
    rows = [(i, gen.token_ids[i]) for i in range(start, min(end, len(gen.logprobs)))
            if gen.token_ids[i] not in pair.eos_ids]
    if chat:
        def entry(tok: int, lp: float) -> dict:
            text = decode([tok])
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}

        return {"content": [entry(t, gen.logprobs[i]) | {"top_logprobs": [entry(a, b) for a, b in gen.top_logprobs[i]]}
                            for i, t in rows]}
    offset = len(decode(gen.token_ids[:start]))
    tokens = [decode([t]) for _, t in rows]
    offsets = [offset + sum(len(x) for x in tokens[:k]) for k in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [gen.logprobs[i] for i, _ in rows],
            "top_logprobs": [{decode([a]): b for a, b in gen.top_logprobs[i]} for i, _ in rows],
            "text_offset": offsets}


def build_app(pair: ModelPair, cfg: ServeConfig, scheduler_thread: bool = True) -> FastAPI:
    """The FastAPI application serving `pair` under the OpenAI API (`scheduler_thread` False: the
    caller runs `app.state.service.scheduler.run()`)."""
    service = RoutedService(pair, cfg, scheduler_thread)
    app = FastAPI(title="r2r", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if cfg.api_key and request.url.path not in ("/health", "/"):  # the page asks for the key itself
            if request.headers.get("authorization", "") != f"Bearer {cfg.api_key}":
                return JSONResponse(error_body("invalid or missing API key", code="invalid_api_key"), status_code=401)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
            return JSONResponse(error_body(f"request body over {cfg.max_body_bytes} bytes"), status_code=413)
        return await call_next(request)

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

    async def run(request: Request, ids: list[int], req: SamplingFields, chat: bool):
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        tickets = [service.ticket(ids, req, lambda: loop.call_soon_threadsafe(wake.set), choice=i)
                   for i in range(req.n)]
        try:
            for t in tickets:
                service.scheduler.submit(t)
        except QueueFull as exc:
            for t in tickets:
                service.scheduler.cancel(t)
            raise UserError(str(exc), status=429, code="rate_limit_exceeded") from exc
        rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
        if req.stream:
            return StreamingResponse(_sse(request, tickets[0], wake, req, chat, rid, created),
                                     media_type="text/event-stream")
        try:
            while any(t.result is None and t.error is None for t in tickets):
                await wake.wait()
                wake.clear()
        except asyncio.CancelledError:
            for t in tickets:
                service.scheduler.cancel(t)
            raise
        if any(t.error for t in tickets):
            raise UserError(next(t.error for t in tickets if t.error), status=500)
        choices = []
        for i, t in enumerate(tickets):
            gen = t.result
            choice = ({"index": i, "message": {"role": "assistant", "content": gen.text}} if chat
                      else {"index": i, "text": gen.text})
            logprobs = logprob_block(pair, gen, 0, len(gen.token_ids), chat) if req.logprob_count is not None else None
            choices.append(choice | {"finish_reason": gen.finish_reason.value, "logprobs": logprobs})
        usage = _usage(tickets[0].result)
        for t in tickets[1:]:
            extra = _usage(t.result)
            for k in ("completion_tokens", "total_tokens", "llm_tokens"):
                usage[k] += extra[k] - (extra["prompt_tokens"] if k == "total_tokens" else 0)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": cfg.model_name, "choices": choices, "usage": usage}

    async def _sse(request: Request, ticket: Ticket, wake: asyncio.Event, req: SamplingFields, chat: bool,
                   rid: str, created: int) -> AsyncIterator[str]:
        if pair.cross or ticket.prompt_text is not None:  # byte-level outputs: the ids only count pieces
            def decode(ids: list[int]) -> str:
                return pair.decode_output(ticket.request.out, len(ids))

            stream, decode_visible = TextStream(decode, ticket.params.stop, frozenset()), decode
        else:
            stream = TextStream(lambda ids: pair.tokenizer.decode(ids), ticket.params.stop, pair.eos_ids)

            def decode_visible(ids: list[int]) -> str:
                return pair.tokenizer.decode(ids, skip_special_tokens=True)

        obj = "chat.completion.chunk" if chat else "text_completion"
        sent_tokens = 0

        def chunk(text: str, finish: str | None, extra: dict | None = None) -> str:
            choice = ({"index": 0, "delta": ({"role": "assistant", "content": text} if sent_tokens == 0 and chat
                                             else {"content": text})} if chat else {"index": 0, "text": text})
            choice |= {"finish_reason": finish, "logprobs": None}
            if extra:
                choice |= extra
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": cfg.model_name,
                                          "choices": [choice]}) + "\n\n"

        try:
            while True:
                await wake.wait()
                wake.clear()
                if await request.is_disconnected():
                    service.scheduler.cancel(ticket)
                    return
                if ticket.error:
                    yield "data: " + json.dumps(error_body(ticket.error, kind="server_error")) + "\n\n"
                    return
                final = ticket.result is not None
                ids = list(ticket.tokens)
                if len(ids) > sent_tokens or final:
                    text = stream.delta(ids, final)
                    extra = None
                    if req.r2r_token_info:  # per-token text, source and router score (the playground)
                        extra = {"r2r": {"tokens": token_texts(decode_visible, ids, sent_tokens),
                                         "sources": ticket.sources[sent_tokens:len(ids)],
                                         "scores": ticket.scores[sent_tokens:len(ids)]}}
                    if req.logprob_count is not None:
                        extra = (extra or {}) | {"logprobs": logprob_block(pair, ticket.request.out, sent_tokens,
                                                                           len(ids), chat)}
                    if text or extra:
                        yield chunk(text, None, extra)
                    sent_tokens = len(ids)
                if final:
                    gen = ticket.result
                    yield chunk("", gen.finish_reason.value)
                    if req.stream_options and req.stream_options.get("include_usage"):
                        yield "data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                                     "model": cfg.model_name, "choices": [],
                                                     "usage": _usage(gen)}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
        finally:  # the client went away mid-stream (the generator is closed): free its sequence
            if ticket.result is None:
                service.scheduler.cancel(ticket)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, req: ChatCompletionRequest):
        try:
            ids = pair.encode_chat([m.model_dump() for m in req.messages])
        except ValueError as exc:
            raise UserError(str(exc), param="messages") from exc
        return await run(request, ids, req, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest):
        return await run(request, pair.encode_text(req.prompt), req, chat=False)

    @app.on_event("shutdown")
    async def _shutdown() -> None:
        service.scheduler.close()

    return app


def serve(pair: ModelPair, cfg: ServeConfig) -> None:
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach it can use it", cfg.host)
    log.info("serving %s on http://%s:%d", cfg.model_name, cfg.host, cfg.port)
    app = build_app(pair, cfg, scheduler_thread=False)
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
