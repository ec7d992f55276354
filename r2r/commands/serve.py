"""`r2r serve`: the OpenAI-compatible server. Everything a request needs loads before the port opens; a pair,
model or router that cannot serve is a one-line error (exit code 2) at start."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from r2r.commands.common import add_pair_args, choices, load_pair_from_args
from r2r.router.policies import PolicyKind
from r2r.serving.decoding.generation import RoutingMode
from r2r.serving.pair import BackendKind

if TYPE_CHECKING:
    from r2r.serving.backends.threads import PassThreads
    from r2r.serving.pair import ModelPair


HELP = "OpenAI-compatible server (default: testbed pair on 127.0.0.1:8000)"
DEFAULT_WIDE_PASS_GFLOP = 0.5  # `r2r serve --wide-pass-gflop`'s default


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--policy", default=None, choices=choices(PolicyKind),
                   help="default policy for requests that do not set one (default: learned when the pair "
                        "has a router, else entropy)")
    p.add_argument("--threshold", type=float, default=None, help="default routing threshold")
    p.add_argument("--model-name", default=None, help="the model id clients ask for (default: r2r-<pair>)")
    p.add_argument("--mode", default=RoutingMode.SPECULATIVE.value, choices=choices(RoutingMode))
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every route but /health "
                   "and the playground page / (which asks for the key itself)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take, queueing included, before it is answered 408 (default 600); "
                        "a request's own `timeout` field may shorten it")
    p.add_argument("--max-running", type=int, default=32, help="sequences decoded together (continuous batching)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 429")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for wide forward passes (default: all cores); smaller passes run on one "
                        "thread, leaving the other cores to HTTP")
    p.add_argument("--wide-pass-gflop", type=float, default=DEFAULT_WIDE_PASS_GFLOP,
                   help="a forward pass estimated at this many GFLOP or more is wide (default 0.5; 0: all)")


def serving_threads(threads: int | None, wide_pass_gflop: float) -> PassThreads:
    """The server's CPU thread plan: the decoding loop's small passes and the router on one thread, passes of
    `wide_pass_gflop` or more on `threads` (default: all cores). Sets torch's thread count (`r2r bench serve`
    measures its offline engine under the same plan)."""
    import torch

    from r2r.serving.backends.threads import PassThreads

    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if wide_pass_gflop < 0:
        raise ValueError(f"--wide-pass-gflop must be non-negative, got {wide_pass_gflop}")
    plan = PassThreads(threads or torch.get_num_threads(), wide_pass_gflop * 1e9)
    torch.set_num_threads(1)
    return plan


def check_router(pair: ModelPair, router_flag: str | None) -> None:
    """A router given with --router must load for this SLM, even where requests default to another policy."""
    if router_flag:
        pair.learned_policy()


def shutdown_backends(pair: ModelPair, backend: str) -> None:
    """SGLang engines run in processes of their own: stop them on exit."""
    if BackendKind(backend) == BackendKind.SGLANG:
        for b in (pair.slm, pair.llm):
            b.shutdown()


def run(args: argparse.Namespace) -> int:
    from r2r.serving.http.scheduler import SchedulerConfig
    from r2r.serving.http.server import ServeConfig, serve

    threads = serving_threads(args.threads, args.wide_pass_gflop)
    cfg = ServeConfig(host=args.host, port=args.port, model_name=args.model_name or "r2r",  # checked before loading
                      policy=PolicyKind(args.policy) if args.policy else None, threshold=args.threshold,
                      mode=RoutingMode(args.mode), api_key=args.api_key, request_timeout_s=args.request_timeout,
                      scheduler=SchedulerConfig(max_running=args.max_running, max_queue=args.max_queue))
    pair = load_pair_from_args(args, threads)
    try:
        check_router(pair, args.router)
        serve(pair, replace(cfg, model_name=args.model_name or f"r2r-{pair.spec.name}"))
    finally:
        shutdown_backends(pair, args.backend)
    return 0
