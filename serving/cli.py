"""The `r2r` command line: the project's only entry point.

User errors (bad flags, missing models, bad prompts) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from router.policies import PolicyKind

EXIT_USAGE = 2
TESTBED_DIR = Path(__file__).resolve().parents[1] / "models" / "testbed"


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default=None, help="a preset pair (default: testbed)")
    p.add_argument("--slm", default=None, help="SLM model directory (with --llm, instead of --pair)")
    p.add_argument("--llm", default=None, help="LLM model directory (with --slm, instead of --pair)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_policy_args(p: argparse.ArgumentParser, default_policy: str = "entropy") -> None:
    p.add_argument("--policy", default=default_policy, choices=[k.value for k in PolicyKind],
                   help=f"routing policy (default: {default_policy})")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="route a token to the LLM when the policy's score exceeds this (default: 0.1)")
    p.add_argument("--rate", type=float, default=None, help="LLM rate for the random policy")
    p.add_argument("--mode", default="sequential", choices=["sequential"], help="routing mode")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r2r", description="Routed SLM/LLM decoding: a small model writes, "
                                     "a router hands the few divergent tokens to a large model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="routed generation for one or more prompts")
    _add_pair_args(gen)
    _add_policy_args(gen)
    _add_sampling_args(gen)
    gen.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout")
    gen.add_argument("prompts", nargs="+", help="prompt text(s)")

    srv = sub.add_parser("serve", help="OpenAI-compatible server (default: testbed pair on 127.0.0.1:8000)")
    _add_pair_args(srv)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--policy", default="entropy", choices=[k.value for k in PolicyKind],
                     help="default policy for requests that do not set one")
    srv.add_argument("--threshold", type=float, default=0.1, help="default routing threshold")
    srv.add_argument("--model-name", default=None, help="the model id clients ask for (default: r2r-<pair>)")

    bench = sub.add_parser("bench", help="benchmarks, JSON out")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    dec = bench_sub.add_parser("decode", help="per-token latency: SLM, LLM and routed (random policy)")
    _add_pair_args(dec)
    dec.add_argument("--out", type=Path, default=Path("bench/decode.json"))
    dec.add_argument("--new-tokens", type=int, default=64)
    dec.add_argument("--repeats", type=int, default=3)

    tb = sub.add_parser("testbed", help="build the testbed pair: task data, tokenizer, training, evaluation")
    tb_sub = tb.add_subparsers(dest="testbed", required=True)
    data = tb_sub.add_parser("data", help="write the held-out splits as JSONL and train the tokenizer")
    data.add_argument("--out", type=Path, default=Path("data/testbed"))
    data.add_argument("--tokenizer-dir", type=Path, default=TESTBED_DIR / "tokenizer")
    train = tb_sub.add_parser("train", help="train the SLM or LLM from scratch (resumable)")
    train.add_argument("--size", choices=["slm", "llm"], required=True)
    train.add_argument("--steps", type=int, default=None, help="default: 800 (slm), 1200 (llm)")
    train.add_argument("--lr", type=float, default=None, help="default: 3e-3 (slm), 2e-3 (llm)")
    train.add_argument("--ckpt-dir", type=Path, default=None, help="default: runs/testbed/ckpt-<size>")
    train.add_argument("--threads", type=int, default=2)
    ev = tb_sub.add_parser("eval", help="held-out accuracy and latency of both models; writes the model cards")
    ev.add_argument("--n", type=int, default=500, help="problems per family")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_libraries()
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"r2r: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_pair(args: argparse.Namespace):
    from serving.pair import load_pair, resolve_pair

    return load_pair(resolve_pair(args.pair, args.slm, args.llm), args.device)


def _policy(args: argparse.Namespace):
    from router.policies import make_policy

    return make_policy(args.policy, threshold=args.threshold, rate=args.rate, seed=args.seed or 0)


def _cmd_generate(args: argparse.Namespace) -> int:
    from serving.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    policy = _policy(args)
    if any(not p.strip() for p in args.prompts):
        raise ValueError("the prompt is empty")
    pair = _load_pair(args)
    ids = [pair.encode_text(p) if args.raw else pair.encode_chat([{"role": "user", "content": p}])
           for p in args.prompts]
    for i in ids:
        if len(i) + params.max_tokens > pair.context_length:
            raise ValueError(f"--max-tokens {params.max_tokens} plus the {len(i)}-token prompt exceeds the "
                             f"context of {pair.context_length} tokens")
    gens = pair.generate(policy, ids, [params] * len(ids))
    if args.json:
        for g in gens:
            print(json.dumps(g.as_json()))
        return 0
    from serving.render import print_generation

    for g in gens:
        print_generation(g, pair.tokenizer)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import ServeConfig, serve

    pair = _load_pair(args)
    cfg = ServeConfig(host=args.host, port=args.port, model_name=args.model_name or f"r2r-{pair.spec.name}",
                      policy=PolicyKind(args.policy), threshold=args.threshold)
    serve(pair, cfg)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from evals.testbed.splits import heldout
    from serving.bench import DecodeBenchConfig, bench_decode

    pair = _load_pair(args)
    prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in heldout("math", "test", 16)]
    result = bench_decode(pair, prompts, DecodeBenchConfig(new_tokens=args.new_tokens, repeats=args.repeats))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _cmd_testbed(args: argparse.Namespace) -> int:
    if args.testbed == "data":
        from evals.testbed.splits import FAMILIES, heldout
        from evals.testbed.tokenizer import train_tokenizer

        args.out.mkdir(parents=True, exist_ok=True)
        for family in FAMILIES:
            for split in ("validation", "test"):
                rows = [{"prompt": p.prompt, "solution": p.solution, "answer": p.answer}
                        for p in heldout(family, split, 1000)]
                (args.out / f"{family}-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        train_tokenizer(args.tokenizer_dir)
        print(f"wrote held-out splits to {args.out} and the tokenizer to {args.tokenizer_dir}")
        return 0
    if args.testbed == "train":
        from evals.testbed.train import TrainConfig, train

        defaults = {"slm": (800, 3e-3), "llm": (1200, 2e-3)}[args.size]
        cfg = TrainConfig(size=args.size, tokenizer_dir=TESTBED_DIR / "tokenizer", out_dir=TESTBED_DIR / args.size,
                          ckpt_dir=args.ckpt_dir or Path(f"runs/testbed/ckpt-{args.size}"),
                          steps=args.steps or defaults[0], lr=args.lr or defaults[1], threads=args.threads,
                          ckpt_every=50)
        print(f"saved {train(cfg)}")
        return 0
    from evals.testbed.evaluate import EvalConfig, evaluate_model, write_model_card

    results = {size: evaluate_model(EvalConfig(TESTBED_DIR / size, n_problems=args.n)) for size in ("slm", "llm")}
    write_model_card(TESTBED_DIR / "slm", "slm", results["slm"], results["llm"])
    write_model_card(TESTBED_DIR / "llm", "llm", results["llm"], results["slm"])
    print(json.dumps(results, indent=2))
    return 0


_COMMANDS = {"generate": _cmd_generate, "serve": _cmd_serve, "bench": _cmd_bench, "testbed": _cmd_testbed}


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
