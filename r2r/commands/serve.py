"""`r2r serve`: the OpenAI-compatible server. Everything a request needs loads before the port opens; a pair,
model or router that cannot serve is a one-line error (exit code 2) at start."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from r2r.commands.common import load_pair_from_args
from router.policies import PolicyKind

if TYPE_CHECKING:
    from serving.backends.threads import PassThreads
    from serving.pair import ModelPair


DEFAULT_WIDE_PASS_GFLOP = 0.5  # `r2r serve --wide-pass-gflop`'s default


def serving_threads(threads: int | None, wide_pass_gflop: float) -> PassThreads:
    """The server's CPU thread plan: the decoding loop's small passes and the router on one thread, passes of
    `wide_pass_gflop` or more on `threads` (default: all cores). Sets torch's thread count (`r2r bench serve`
    measures its offline engine under the same plan)."""
    import torch

    from serving.backends.threads import PassThreads

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
    from serving.pair import BackendKind

    if BackendKind(backend) == BackendKind.SGLANG:
        for b in (pair.slm, pair.llm):
            b.shutdown()


def run(args: argparse.Namespace) -> int:
    from serving.decoding.generation import RoutingMode
    from serving.http.scheduler import SchedulerConfig
    from serving.http.server import ServeConfig, serve

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
