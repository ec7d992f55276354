"""`r2r bench ...`: every benchmark, JSON out (the benchmarks live in evals.bench)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from r2r.commands.common import floats, load_pair_from_args, shown, write_bench, write_json

if TYPE_CHECKING:
    from serving.pair import ModelPair


def run(args: argparse.Namespace) -> int:
    if args.bench == "serve":
        from testbed.splits import heldout
        from evals.bench.serve import ServeBenchConfig, bench_serve

        serve_args = [flag for name in ("pair", "slm", "llm", "router", "device")
                      if getattr(args, name) for flag in (f"--{name}", str(getattr(args, name)))]
        prompts = [p.prompt for p in heldout("math", "test", 32) + heldout("code", "test", 32)]

        def offline_pair() -> ModelPair:  # loaded as `r2r serve` loads it, after the server has exited
            from r2r.commands.serve import DEFAULT_WIDE_PASS_GFLOP, serving_threads

            return load_pair_from_args(args, serving_threads(None, DEFAULT_WIDE_PASS_GFLOP))

        result = bench_serve(serve_args, prompts, ServeBenchConfig(max_tokens=args.max_tokens), offline_pair)
        return write_bench(args.out, result)
    if args.bench == "cross-tokenizer":
        from evals.bench.cross_tokenizer import CrossBenchConfig, cross_bench
        from serving.pair import PairSpec, load_pair, resolve_pair

        cfg = CrossBenchConfig(shares=floats(args.shares, "--shares"), n_problems=args.n)  # before loading models
        pair = load_pair_from_args(args)
        preset = resolve_pair("testbed-x", None, None)
        cross = load_pair(PairSpec("testbed-x", pair.spec.slm, args.llm_x or preset.llm, args.router_x or preset.router),
                          args.device)
        return write_bench(args.out, cross_bench(pair, cross, cfg))
    if args.bench == "headline":
        return _bench_headline(args)
    if args.bench == "operating-point":
        return _bench_operating_point(args)
    if args.bench == "gpu-costs":
        from evals.bench.gpu_costs import GpuCostsConfig, gpu_costs

        batches = floats(args.batch_sizes, "--batch-sizes")
        cfg = GpuCostsConfig(device=args.device, quick=args.quick, batch_sizes=tuple(int(b) for b in batches),
                             **({"new_tokens": 8, "repeats": 3, "prompt_tokens": 16} if args.quick else {}))
        return write_bench(args.out, gpu_costs(cfg, args.sglang_dir))
    if args.bench == "sglang":
        from evals.bench.sglang_cpu import SGLangBenchConfig, bench_sglang
        from serving.backends.sglang import SGLangDevice, require_sglang
        from serving.pair import resolve_pair

        cfg = SGLangBenchConfig(batch_sizes=tuple(int(b) for b in floats(args.batch_sizes, "--batch-sizes")),
                                max_tokens=args.max_tokens, rounds=args.rounds, calls=args.calls)
        require_sglang(SGLangDevice.CPU)
        return write_bench(args.out, bench_sglang(resolve_pair(args.pair, None, None), cfg))
    if args.bench == "long":
        from evals.bench.long import LongBenchConfig, bench_long, plot_long

        cfg = LongBenchConfig(batch_sizes=tuple(int(b) for b in floats(args.batch_sizes, "--batch-sizes")),
                              new_tokens=args.new_tokens, share=args.share)
        before = json.loads(args.before.read_text()) if args.before else None  # read before the long run
        result = bench_long(cfg) | ({"before": before} if before else {})
        if not args.no_plot:
            plot_long(result, args.out.with_suffix(".png"))
        return write_bench(args.out, result)
    plateau = _budget_plateau(args) if args.bench == "router-budget" else None  # before loading the models
    pair = load_pair_from_args(args)
    if args.bench == "handoff":
        from evals.bench.cross_tokenizer import HANDOFF_PROMPTS, handoff_cost
        from serving.byte_level.cross_tokenizer import Handoff

        if not pair.cross:
            raise ValueError("bench handoff needs a pair with different tokenizers (e.g. --pair smol-gemma)")
        texts = [pair.tokenizer.decode(pair.encode_chat([{"role": "user", "content": q}]), skip_special_tokens=False)
                 for q in HANDOFF_PROMPTS[: args.n]]
        result = {"pair": [str(pair.spec.slm), str(pair.spec.llm)], "rate": args.rate, "prompts": len(texts)}
        result |= {h.value: handoff_cost(pair, texts, h, args.rate, len(texts), args.max_tokens) for h in Handoff}
        result["exact_over_naive_passes"] = result["exact"]["passes_per_byte"] / result["naive"]["passes_per_byte"]
    elif args.bench == "router":
        result = _bench_router(pair, args)
    elif args.bench == "router-budget":
        result = _bench_router_budget(pair, args, plateau)
    elif args.bench == "speculative":
        from testbed.splits import heldout
        from evals.bench.decode import SpeculativeBenchConfig, bench_speculative

        problems = heldout("math", "test", args.n // 2) + heldout("code", "test", args.n - args.n // 2)
        prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
        result = bench_speculative(pair, prompts, SpeculativeBenchConfig(n_prompts=args.n))
    else:
        from testbed.splits import heldout
        from evals.bench.decode import DecodeBenchConfig, bench_decode

        prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in heldout("math", "test", 16)]
        result = bench_decode(pair, prompts, DecodeBenchConfig(new_tokens=args.new_tokens, repeats=args.repeats))
    return write_bench(args.out, result)


def _bench_headline(args: argparse.Namespace) -> int:
    from evals.bench.headline import HeadlineConfig, bench_headline
    from testbed.splits import FAMILIES, heldout
    from testbed.tokenizer import chat_text

    batches = floats(args.batch_sizes, "--batch-sizes")
    if any(b != int(b) for b in batches):
        raise ValueError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    limit = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}
    cfg = HeadlineConfig(n_problems=args.n, batch_sizes=tuple(int(b) for b in batches), **limit)  # checks first
    families = [f.strip() for f in args.families.split(",")]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown testbed families {unknown}; known: {', '.join(FAMILIES)}")
    if cfg.n_problems > 1000 - cfg.warmup_problems:
        raise ValueError(f"--n must be at most {1000 - cfg.warmup_problems} (the test split's size less warm-up)")
    pair = load_pair_from_args(args)
    routed = pair.policy(pair.default_policy)

    def encode(problem) -> list[int]:
        return list(pair.tokenizer(chat_text(problem.prompt))["input_ids"])

    problems = {}
    for f in families:
        split = heldout(f, "test", cfg.n_problems + cfg.warmup_problems)
        problems[f] = (split[cfg.warmup_problems :], split[: cfg.warmup_problems])
    result = bench_headline(pair, routed, problems, cfg, encode, progress=lambda what: print(what, file=sys.stderr))
    write_bench(args.out, result)
    if not args.no_plot:
        from evals.bench.headline_plot import plot_headline

        for path in plot_headline(result, args.out.with_suffix("")):
            print(f"plot: {path}", file=sys.stderr)
    return 0


def _budget_run(path: Path, flag: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{flag}: no such file {path}")
    run = json.loads(path.read_text())
    if "family" not in run or "budgets" not in run:
        raise ValueError(f"{flag}: {path} is not a `r2r bench router-budget` result")
    if not run.get("complete", True):
        raise ValueError(f"{flag}: {path} is an interrupted run (finish it with --resume)")
    return run


def _budget_plateau(args: argparse.Namespace) -> dict | None:
    from evals.bench.budget_search import BudgetSearch

    if (BudgetSearch(args.search) is BudgetSearch.UP_TO_PLATEAU) != (args.plateau is not None):
        raise ValueError("--plateau goes with --search up-to-plateau, and only with it")
    return None if args.plateau is None else _budget_run(args.plateau, "--plateau")


def _bench_router_budget(pair: ModelPair, args: argparse.Namespace, plateau: dict | None) -> dict:
    from evals.bench.budget_search import BudgetSearch
    from evals.bench.router_bar import choose_budget

    resume = json.loads(args.out.read_text()) if args.resume and args.out.exists() else None
    return choose_budget(pair, args.family, list(floats(args.budgets, "--budgets")), args.max_share, args.n,
                         BudgetSearch(args.search), plateau, args.tolerance,
                         lambda partial: write_json(args.out, partial),
                         resume)


def _bench_operating_point(args: argparse.Namespace) -> int:
    from evals.bench.router_bar import default_operating_point
    from router.checkpoint import set_default_threshold

    def by_family(paths: list[Path], flag: str) -> dict[str, dict]:
        return {run["family"]: run for run in (_budget_run(path, flag) for path in paths)}

    plateau, low = by_family(args.plateau, "--plateau"), by_family(args.low, "--low")
    point = default_operating_point(plateau, low, args.router, args.tolerance)
    threshold = set_default_threshold(args.router, point["default_share"], point["rule"])
    result = {**point, "default_threshold": threshold, "router": str(shown(args.router)), "validation": low,
              "plateau": plateau}
    return write_bench(args.out, result)


def _bench_router(pair, args: argparse.Namespace) -> dict:
    from evals.bench.router_bar import RouterBarConfig, router_bar, top1_by_family

    try:
        shares = {f: float(v) for f, v in (item.split("=") for item in args.share.split(","))}
    except ValueError as exc:
        raise ValueError(f"--share must look like math=0.2,code=0.15, got {args.share!r}") from exc
    cfg = RouterBarConfig(target_share=shares, n_problems=args.n)
    result = router_bar(pair, top1_by_family(args.labels), cfg)
    if pair.spec.router is not None:
        from router.card import write_router_card

        write_router_card(pair.spec.router, result)
    return result
