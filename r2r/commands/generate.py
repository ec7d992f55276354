"""`r2r generate`: routed generation for prompts given on the command line."""
from __future__ import annotations

import argparse
import json

from r2r.commands.common import load_pair_from_args
from router.policies import PolicyKind


def run(args: argparse.Namespace) -> int:
    from serving.decoding.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    if any(not p.strip() for p in args.prompts):
        raise ValueError("the prompt is empty")
    pair = load_pair_from_args(args)
    kind = PolicyKind(args.policy) if args.policy else pair.default_policy
    policy = pair.policy(kind, args.threshold, args.llm_share, args.seed or 0)
    ids = [pair.encode_text(p) if args.raw else pair.encode_chat([{"role": "user", "content": p}])
           for p in args.prompts]
    for i in ids:
        if len(i) + params.max_tokens > pair.context_length:
            raise ValueError(f"--max-tokens {params.max_tokens} plus the {len(i)}-token prompt exceeds the "
                             f"context of {pair.context_length} tokens")
    from serving.decoding.generation import RoutingMode

    gens = pair.generate(policy, ids, [params] * len(ids), RoutingMode(args.mode))
    if args.json:
        for g in gens:
            print(json.dumps(g.as_json()))
        return 0
    from r2r.render import print_generation

    for g in gens:
        print_generation(g, pair.decode_output)
    return 0
