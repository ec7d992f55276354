"""`r2r generate`: routed generation for prompts given on the command line."""
from __future__ import annotations

import argparse
import json

from r2r.commands.common import add_pair_args, choices, load_pair_from_args
from r2r.router.policies import PolicyKind
from r2r.serving.decoding.generation import RoutingMode

HELP = "routed generation for one or more prompts"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--policy", default=None, choices=choices(PolicyKind),
                   help="routing policy (default: learned when the pair has a router, else entropy)")
    p.add_argument("--threshold", type=float, default=None,
                   help="route a token to the LLM when the policy's score exceeds this "
                        "(default: 0.1 for confidence/entropy, the calibrated one for learned)")
    p.add_argument("--llm-share", "--rate", dest="llm_share", type=float, default=None,
                   help="LLM token share: the random policy's rate, or a budget for the learned router")
    p.add_argument("--mode", default=RoutingMode.SPECULATIVE.value, choices=choices(RoutingMode),
                   help="speculative (default): the SLM drafts blocks and the LLM verifies the flagged positions "
                        "in one pass, same output as sequential")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout")
    p.add_argument("prompts", nargs="+", help="prompt text(s)")


def run(args: argparse.Namespace) -> int:
    from r2r.serving.decoding.sampling import SamplingParams

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
    gens = pair.generate(policy, ids, [params] * len(ids), RoutingMode(args.mode))
    if args.json:
        for g in gens:
            print(json.dumps(g.as_json()))
        return 0
    from r2r.render import print_generation

    for g in gens:
        print_generation(g, pair.decode_output)
    return 0
