"""`r2r bench serve`: throughput and latency of the HTTP server under concurrent load, against the engine's own
bound: the same requests decoded offline (no HTTP) at a batch of the top concurrency.

The server runs in its own process (`r2r serve` on a free loopback port); this process is
the load generator: `concurrency` client threads each send requests back to back over one
pooled client, as an application's OpenAI client would. A client made per request (a new
connection and TLS context each time) costs this process's CPU under its GIL, so the numbers
would measure the load generator as much as the server (docs/perf-notes.md, "Server throughput").

The offline run comes after the server has exited (so the two never share the CPU), in this process, on the
pair a caller's loader returns (loaded as `r2r serve` loads it: same thread plan). It keeps `batch` requests in
flight, adding one as one ends, as the server's scheduler does; `server_over_offline` is the server's
throughput at the top concurrency over the engine's: what HTTP, scheduling and streaming cost.
"""
from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from r2r.serving.pair import ModelPair


@dataclass(frozen=True)
class ServeBenchConfig:
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests_per_client: int = 2
    min_requests: int = 16
    max_tokens: int = 64
    warmup_requests: int = 2  # sent one by one before timing: lazy loads (router, pass-cost estimates)
    startup_timeout_s: float = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class _Reply:
    seconds: float
    ok: bool
    tokens: int = 0  # completion tokens
    llm_tokens: int = 0  # of which the LLM produced


def _request(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> _Reply:
    """One greedy chat request."""
    import httpx

    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens}
    start = time.perf_counter()
    try:
        r = client.post(f"{url}/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return _Reply(time.perf_counter() - start, False)
    if r.status_code != 200:
        return _Reply(time.perf_counter() - start, False)
    usage = r.json()["usage"]
    return _Reply(time.perf_counter() - start, True, usage["completion_tokens"], usage["llm_tokens"])


def offline_throughput(pair: ModelPair, prompts: list[str], n: int, batch: int, cfg: ServeBenchConfig) -> dict:
    """Requests i = 0..n-1 (prompt i mod len, greedy, the pair's default policy, speculative as `r2r serve`), decoded
    by the engine alone with `batch` in flight; the first `warmup_requests` once before timing."""
    from r2r.serving.decoding.engine import drain
    from r2r.serving.decoding.generation import RoutingMode
    from r2r.serving.decoding.sampling import SamplingParams

    ids = [pair.encode_chat([{"role": "user", "content": prompts[i % len(prompts)]}]) for i in range(n)]
    policy, params, mode = pair.policy(pair.default_policy), SamplingParams(max_tokens=cfg.max_tokens), \
        RoutingMode.SPECULATIVE
    with pair.lock:
        engine = pair.engine()
        for i in range(min(cfg.warmup_requests, n)):
            drain(engine, engine.add([ids[i]], [params], [policy], [mode], [i]))
        start = time.perf_counter()
        tokens, queued = 0, list(range(n))
        while queued or engine.active:
            room = batch - len(engine.active)
            if queued and room > 0:
                take, queued = queued[:room], queued[room:]
                engine.add([ids[i] for i in take], [params] * len(take), [policy] * len(take), [mode] * len(take),
                           take)
            tokens += sum(len(r.out.token_ids) for r in engine.step())
        wall = time.perf_counter() - start
    return {"requests": n, "output_tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}


def bench_serve(serve_args: list[str], prompts: list[str], cfg: ServeBenchConfig,
                offline_pair: Callable[[], ModelPair] | None = None) -> dict:
    """The server at each concurrency; with `offline_pair` (loads the pair the server serves), also the offline
    engine on the top concurrency's requests: `offline_batch_<c>_tokens_per_s` and `server_over_offline`."""
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", "from r2r.cli import main_entry; main_entry()", "serve",
                               "--port", str(port), "--model-name", "bench", *serve_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + cfg.startup_timeout_s
        while True:
            if server.poll() is not None:
                raise ValueError(f"the server exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ValueError("the server did not come up")
            time.sleep(0.2)
        result: dict = {"config": {"max_tokens": cfg.max_tokens, "warmup_requests": cfg.warmup_requests,
                                   "server_args": serve_args}}
        with httpx.Client(timeout=600) as client:
            if not all(_request(client, url, prompts[i % len(prompts)], cfg.max_tokens).ok
                       for i in range(cfg.warmup_requests)):
                raise ValueError("the server failed a warm-up request")
        for c in cfg.concurrency:
            n = max(cfg.min_requests, c * cfg.requests_per_client)
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            with httpx.Client(limits=limits, timeout=600) as client, ThreadPoolExecutor(max_workers=c) as pool:
                start = time.perf_counter()
                rows = list(pool.map(lambda i: _request(client, url, prompts[i % len(prompts)], cfg.max_tokens),
                                     range(n)))
                wall = time.perf_counter() - start
            latencies = [r.seconds * 1000 for r in rows if r.ok]
            tokens = sum(r.tokens for r in rows)
            result[f"concurrency_{c}"] = {
                "requests": n, "output_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
                "llm_share": round(sum(r.llm_tokens for r in rows) / tokens, 4) if tokens else None,
                "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
                "p95_ms": round(_percentile(latencies, 0.95), 1) if latencies else None,
                "errors": sum(not r.ok for r in rows),
            }
        base = result[f"concurrency_{cfg.concurrency[0]}"]["tokens_per_s"]
        top = result[f"concurrency_{cfg.concurrency[-1]}"]["tokens_per_s"]
        result["scaling"] = round(top / base, 2) if base else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    if offline_pair is not None:
        c = cfg.concurrency[-1]
        row = result[f"concurrency_{c}"]
        offline = offline_throughput(offline_pair(), prompts, row["requests"], c, cfg)
        result[f"offline_batch_{c}"] = offline
        result[f"offline_batch_{c}_tokens_per_s"] = offline["tokens_per_s"]
        result["server_over_offline"] = round(row["tokens_per_s"] / offline["tokens_per_s"], 3)
    return result
