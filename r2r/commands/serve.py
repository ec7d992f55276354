"""`r2r serve`: the OpenAI-compatible server."""
from __future__ import annotations

import argparse

from r2r.commands.common import load_pair_from_args
from router.policies import PolicyKind


def run(args: argparse.Namespace) -> int:
    import torch

    from serving.backends.threads import PassThreads
    from serving.decoding.generation import RoutingMode
    from serving.http.scheduler import SchedulerConfig
    from serving.http.server import ServeConfig, serve

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.wide_pass_gflop < 0:
        raise ValueError(f"--wide-pass-gflop must be non-negative, got {args.wide_pass_gflop}")
    threads = PassThreads(args.threads or torch.get_num_threads(), args.wide_pass_gflop * 1e9)
    torch.set_num_threads(1)  # the decoding loop's small passes and the router; wide passes borrow more
    pair = load_pair_from_args(args, threads)
    cfg = ServeConfig(host=args.host, port=args.port, model_name=args.model_name or f"r2r-{pair.spec.name}",
                      policy=PolicyKind(args.policy) if args.policy else None, threshold=args.threshold,
                      mode=RoutingMode(args.mode), api_key=args.api_key,
                      scheduler=SchedulerConfig(max_running=args.max_running, max_queue=args.max_queue))
    serve(pair, cfg)
    return 0
