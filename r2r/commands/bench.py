"""`r2r bench ...`: every benchmark, JSON out (the benchmarks live in evals.bench). Each benchmark's arguments are
defined beside its run; `BENCHES` lists them in the order `r2r bench --help` shows."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from r2r.evals.bench.budget_search import BudgetSearch
from r2r.commands.common import (TESTBED_DIR, Subcommand, add_pair_args, add_subcommands, choices, floats,
                                 load_pair_from_args, run_subcommand, shown, write_bench, write_json)
from r2r.testbed.splits import FAMILIES

if TYPE_CHECKING:
    from r2r.serving.pair import ModelPair

HELP = "benchmarks, JSON out"


def _decode_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--out", type=Path, default=Path("bench/decode.json"))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)


def _decode(args: argparse.Namespace) -> int:
    from r2r.evals.bench.decode import DecodeBenchConfig, bench_decode
    from r2r.testbed.splits import heldout

    pair = load_pair_from_args(args)
    prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in heldout("math", "test", 16)]
    return write_bench(args.out, bench_decode(pair, prompts, DecodeBenchConfig(new_tokens=args.new_tokens,
                                                                               repeats=args.repeats)))


def _headline_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--n", type=int, default=200, help="test problems per family (default 200)")
    p.add_argument("--families", default="math,code", help="testbed families, comma-separated")
    p.add_argument("--batch-sizes", default="1,8,32", help="static batch sizes, comma-separated")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="output tokens per problem (default: the testbed's answer limit; less for a quick check)")
    p.add_argument("--out", type=Path, default=Path("bench/headline.json"),
                   help="JSON out; the plots go beside it (<stem>_<family>.png)")
    p.add_argument("--no-plot", action="store_true", help="JSON only (where matplotlib is not installed)")
    p.add_argument("--labels", type=Path, nargs="*", default=[],
                   help="the pair's off-policy label directories, one per family (testbed-<family> in the name): "
                        "their token split goes in meta.split with its bound on routed over lossless")


def _headline(args: argparse.Namespace) -> int:
    from r2r.data_gen.shards import read_manifest
    from r2r.evals.bench.headline import HeadlineConfig, bench_headline
    from r2r.evals.bench.split_bound import TokenSplit
    from r2r.testbed.splits import heldout
    from r2r.testbed.tokenizer import chat_text

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
    splits = {_label_family(d): TokenSplit.from_label_summary(read_manifest(d)["counts"]) for d in args.labels}
    pair = load_pair_from_args(args)
    routed = pair.policy(pair.default_policy)

    def encode(problem) -> list[int]:
        return list(pair.tokenizer(chat_text(problem.prompt))["input_ids"])

    problems = {}
    for f in families:
        split = heldout(f, "test", cfg.n_problems + cfg.warmup_problems)
        problems[f] = (split[cfg.warmup_problems :], split[: cfg.warmup_problems])
    result = bench_headline(pair, routed, problems, cfg, encode, progress=lambda what: print(what, file=sys.stderr),
                            splits=splits)
    write_bench(args.out, result)
    if not args.no_plot:
        from r2r.evals.bench.headline_plot import plot_headline

        for path in plot_headline(result, args.out.with_suffix("")):
            print(f"plot: {path}", file=sys.stderr)
    return 0


def _label_family(label_dir: Path) -> str:
    """The testbed family a label directory holds, from its name (data/labels/testbed-math, ...-op-code)."""
    found = [f for f in FAMILIES if label_dir.name.endswith(f"-{f}")]
    if len(found) != 1:
        raise ValueError(f"cannot tell the family of the labels in {label_dir}: name it testbed-<family>")
    return found[0]


def _speculative_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--n", type=int, default=32, help="prompts (half math, half code test problems)")
    p.add_argument("--out", type=Path, default=Path("bench/speculative.json"))


def _speculative(args: argparse.Namespace) -> int:
    from r2r.evals.bench.decode import SpeculativeBenchConfig, bench_speculative
    from r2r.testbed.splits import heldout

    pair = load_pair_from_args(args)
    problems = heldout("math", "test", args.n // 2) + heldout("code", "test", args.n - args.n // 2)
    prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
    return write_bench(args.out, bench_speculative(pair, prompts, SpeculativeBenchConfig(n_prompts=args.n)))


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--out", type=Path, default=Path("bench/serve.json"))
    p.add_argument("--max-tokens", type=int, default=64)


def _serve(args: argparse.Namespace) -> int:
    from r2r.evals.bench.serve import ServeBenchConfig, bench_serve
    from r2r.testbed.splits import heldout

    serve_args = [flag for name in ("pair", "slm", "llm", "router", "device")
                  if getattr(args, name) for flag in (f"--{name}", str(getattr(args, name)))]
    prompts = [p.prompt for p in heldout("math", "test", 32) + heldout("code", "test", 32)]

    def offline_pair() -> ModelPair:  # loaded as `r2r serve` loads it, after the server has exited
        from r2r.commands.serve import DEFAULT_WIDE_PASS_GFLOP, serving_threads

        return load_pair_from_args(args, serving_threads(None, DEFAULT_WIDE_PASS_GFLOP))

    result = bench_serve(serve_args, prompts, ServeBenchConfig(max_tokens=args.max_tokens), offline_pair)
    return write_bench(args.out, result)


def _cross_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--llm-x", type=Path, default=None,
                   help="the LLM with the other tokenizer (default: the testbed-x preset's)")
    p.add_argument("--router-x", type=Path, default=None,
                   help="the router for SLM + llm-x, trained on that pair's labels (default: the testbed-x preset's)")
    p.add_argument("--n", type=int, default=200, help="test problems per family")
    p.add_argument("--shares", default="0.15,0.25", help="learned-router LLM shares")
    p.add_argument("--out", type=Path, default=Path("bench/cross_tokenizer.json"))


def _cross_tokenizer(args: argparse.Namespace) -> int:
    from r2r.evals.bench.cross_tokenizer import CrossBenchConfig, cross_bench
    from r2r.serving.pair import PairSpec, load_pair, resolve_pair

    cfg = CrossBenchConfig(shares=floats(args.shares, "--shares"), n_problems=args.n)  # before loading models
    pair = load_pair_from_args(args)
    preset = resolve_pair("testbed-x", None, None)
    cross = load_pair(PairSpec("testbed-x", pair.spec.slm, args.llm_x or preset.llm, args.router_x or preset.router),
                      args.device)
    return write_bench(args.out, cross_bench(pair, cross, cfg))


def _handoff_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--n", type=int, default=8, help="prompts")
    p.add_argument("--rate", type=float, default=0.2, help="random policy LLM rate")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path("bench/handoff.json"))


def _handoff(args: argparse.Namespace) -> int:
    from r2r.evals.bench.cross_tokenizer import HANDOFF_PROMPTS, handoff_cost
    from r2r.serving.byte_level.cross_tokenizer import Handoff

    pair = load_pair_from_args(args)
    if not pair.cross:
        raise ValueError("bench handoff needs a pair with different tokenizers (e.g. --pair smol-gemma)")
    texts = [pair.tokenizer.decode(pair.encode_chat([{"role": "user", "content": q}]), skip_special_tokens=False)
             for q in HANDOFF_PROMPTS[: args.n]]
    result = {"pair": [str(pair.spec.slm), str(pair.spec.llm)], "rate": args.rate, "prompts": len(texts)}
    result |= {h.value: handoff_cost(pair, texts, h, args.rate, len(texts), args.max_tokens) for h in Handoff}
    result["exact_over_naive_passes"] = result["exact"]["passes_per_byte"] / result["naive"]["passes_per_byte"]
    return write_bench(args.out, result)


def _router_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--labels", type=Path, nargs="+", required=True,
                   help="testbed label directories (their SLM confidences calibrate the confidence baseline)")
    p.add_argument("--share", default="math=0.15,code=0.15",
                   help="the learned router's LLM-share budget per family, e.g. math=0.25,code=0.15")
    p.add_argument("--n", type=int, default=500, help="test problems per family")
    p.add_argument("--out", type=Path, default=Path("bench/router_testbed.json"))


def _router(args: argparse.Namespace) -> int:
    from r2r.evals.bench.router_bar import RouterBarConfig, router_bar, top1_by_family

    pair = load_pair_from_args(args)
    try:
        shares = {f: float(v) for f, v in (item.split("=") for item in args.share.split(","))}
    except ValueError as exc:
        raise ValueError(f"--share must look like math=0.2,code=0.15, got {args.share!r}") from exc
    cfg = RouterBarConfig(target_share=shares, n_problems=args.n)
    result = router_bar(pair, top1_by_family(args.labels), cfg)
    if pair.spec.router is not None:
        from r2r.router.card import write_router_card

        write_router_card(pair.spec.router, result)
    return write_bench(args.out, result)


def _router_budget_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--family", choices=list(FAMILIES), required=True)
    p.add_argument("--budgets", default="0.15,0.16,0.17,0.18", help="candidate budgets, comma-separated")
    p.add_argument("--max-share", type=float, default=0.2, help="the routed LLM share to stay within")
    p.add_argument("--n", type=int, default=300, help="validation problems")
    p.add_argument("--search", choices=choices(BudgetSearch), default=BudgetSearch.FULL.value,
                   help="full: every budget; down-to-fit: from the largest down to the first whose share fits (the "
                        "full sweep's choice, on fewer runs); up-to-plateau: from the smallest up to the first within "
                        "--tolerance of --plateau's accuracy (the operating point the full sweep gives)")
    p.add_argument("--plateau", type=Path, default=None,
                   help="the family's plateau run (router-budget JSON), for --search up-to-plateau")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="accuracy below the plateau allowed, for --search up-to-plateau (default 0.01)")
    p.add_argument("--out", type=Path, default=Path("bench/router_budget.json"),
                   help="JSON out, rewritten after each budget so an interrupted run keeps its rows")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of an interrupted run at --out (same search, problems and models) and run "
                        "the rest")


def _router_budget(args: argparse.Namespace) -> int:
    from r2r.evals.bench.router_bar import choose_budget

    search = BudgetSearch(args.search)
    if (search is BudgetSearch.UP_TO_PLATEAU) != (args.plateau is not None):  # before loading the models
        raise ValueError("--plateau goes with --search up-to-plateau, and only with it")
    plateau = None if args.plateau is None else _budget_run(args.plateau, "--plateau")
    pair = load_pair_from_args(args)
    resume = json.loads(args.out.read_text()) if args.resume and args.out.exists() else None
    result = choose_budget(pair, args.family, list(floats(args.budgets, "--budgets")), args.max_share, args.n,
                           search, plateau, args.tolerance, lambda partial: write_json(args.out, partial), resume)
    return write_bench(args.out, result)


def _budget_run(path: Path, flag: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{flag}: no such file {path}")
    run = json.loads(path.read_text())
    if "family" not in run or "budgets" not in run:
        raise ValueError(f"{flag}: {path} is not a `r2r bench router-budget` result")
    if not run.get("complete", True):
        raise ValueError(f"{flag}: {path} is an interrupted run (finish it with --resume)")
    return run


def _gpu_costs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes (a CPU check of the same code paths)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated")
    p.add_argument("--sglang-dir", type=Path, default=None,
                   help="also time the SLM-shaped model's step through the SGLang backend (weights saved here)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu/costs.json"))


def _gpu_costs(args: argparse.Namespace) -> int:
    from r2r.evals.bench.gpu_costs import GpuCostsConfig, gpu_costs

    batches = floats(args.batch_sizes, "--batch-sizes")
    cfg = GpuCostsConfig(device=args.device, quick=args.quick, batch_sizes=tuple(int(b) for b in batches),
                         **({"new_tokens": 8, "repeats": 3, "prompt_tokens": 16} if args.quick else {}))
    return write_bench(args.out, gpu_costs(cfg, args.sglang_dir))


def _long_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    p.add_argument("--new-tokens", type=int, default=16_384, help="output tokens per request (EOS ignored)")
    p.add_argument("--share", type=float, default=0.1, help="the random policy's LLM share")
    p.add_argument("--before", type=Path, default=None,
                   help="an earlier run's JSON (e.g. on the code before a change), kept under `before` and plotted")
    p.add_argument("--out", type=Path, default=Path("bench/long.json"), help="JSON out; the plot goes beside it")
    p.add_argument("--no-plot", action="store_true", help="JSON only (where matplotlib is not installed)")


def _long(args: argparse.Namespace) -> int:
    from r2r.evals.bench.long import LongBenchConfig, bench_long, plot_long

    cfg = LongBenchConfig(batch_sizes=tuple(int(b) for b in floats(args.batch_sizes, "--batch-sizes")),
                          new_tokens=args.new_tokens, share=args.share)
    before = json.loads(args.before.read_text()) if args.before else None  # read before the long run
    result = bench_long(cfg) | ({"before": before} if before else {})
    if not args.no_plot:
        plot_long(result, args.out.with_suffix(".png"))
    return write_bench(args.out, result)


def _sglang_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default="testbed", help="a preset pair sharing the SLM's tokenizer (default: testbed)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per request at most")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every routed configuration")
    p.add_argument("--calls", type=int, default=40, help="one-token calls per model and backend")
    p.add_argument("--out", type=Path, default=Path("bench/sglang_cpu.json"))


def _sglang(args: argparse.Namespace) -> int:
    from r2r.evals.bench.sglang_cpu import SGLangBenchConfig, bench_sglang
    from r2r.serving.backends.sglang import SGLangDevice, require_sglang
    from r2r.serving.pair import resolve_pair

    cfg = SGLangBenchConfig(batch_sizes=tuple(int(b) for b in floats(args.batch_sizes, "--batch-sizes")),
                            max_tokens=args.max_tokens, rounds=args.rounds, calls=args.calls)
    require_sglang(SGLangDevice.CPU)
    return write_bench(args.out, bench_sglang(resolve_pair(args.pair, None, None), cfg))


def _operating_point_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", type=Path, default=TESTBED_DIR / "router", help="router checkpoint to update")
    p.add_argument("--plateau", type=Path, nargs="+", required=True,
                   help="router-budget JSON per family over large budgets (the LLM's plateau)")
    p.add_argument("--low", type=Path, nargs="+", required=True,
                   help="router-budget JSON per family over small budgets (the candidates)")
    p.add_argument("--tolerance", type=float, default=0.01, help="accuracy below the plateau allowed (default 0.01)")
    p.add_argument("--out", type=Path, default=Path("bench/router_default.json"))


def _operating_point(args: argparse.Namespace) -> int:
    from r2r.evals.bench.router_bar import default_operating_point
    from r2r.router.checkpoint import set_default_threshold

    def by_family(paths: list[Path], flag: str) -> dict[str, dict]:
        return {run["family"]: run for run in (_budget_run(path, flag) for path in paths)}

    plateau, low = by_family(args.plateau, "--plateau"), by_family(args.low, "--low")
    point = default_operating_point(plateau, low, args.router, args.tolerance)
    threshold = set_default_threshold(args.router, point["default_share"], point["rule"])
    result = {**point, "default_threshold": threshold, "router": str(shown(args.router)), "validation": low,
              "plateau": plateau}
    return write_bench(args.out, result)


BENCHES = (
    Subcommand("decode", "per-token latency: SLM, LLM and routed (random policy)", _decode_arguments, _decode),
    Subcommand("headline", "LLM alone, SLM alone, lossless speculative and routed decoding (the default operating "
               "point), interleaved in one run: accuracy and tokens/s", _headline_arguments, _headline),
    Subcommand("speculative", "sequential vs speculative routing throughput (learned router)",
               _speculative_arguments, _speculative),
    Subcommand("serve", "server throughput and p50/p95 latency at concurrency 1, 8, 32", _serve_arguments, _serve),
    Subcommand("cross-tokenizer", "testbed: shared-tokenizer pair vs SLM+llm-x with exact and naive handoff at the "
               "same router shares; passes per byte", _cross_tokenizer_arguments, _cross_tokenizer),
    Subcommand("handoff", "cost of exactness on a cross-tokenizer pair: passes per output byte and bytes/s, exact vs "
               "naive handoff, same random routing", _handoff_arguments, _handoff),
    Subcommand("router", "testbed router bar: learned vs confidence vs random at one LLM share", _router_arguments,
               _router),
    Subcommand("router-budget", "choose a family's learned-router budget on validation problems (the largest whose "
               "routed LLM share fits)", _router_budget_arguments, _router_budget),
    Subcommand("gpu-costs", "decode-step and catch-up costs of random-weight models shaped like "
               "R1-Distill-Qwen-1.5B/32B on a device, and the routed-vs-LLM-alone bound they imply",
               _gpu_costs_arguments, _gpu_costs),
    Subcommand("long", "reasoning-length outputs at R1-Distill-Qwen's vocabulary: ms per token by output window and "
               "peak memory, random-weight models of the testbed's layer shapes", _long_arguments, _long),
    Subcommand("sglang", "SGLang engine calls against the HF backend's steps on the testbed pair (run from "
               ".venv-sglang: `make bench-sglang`; on a CPU it needs the test stand-in)", _sglang_arguments, _sglang),
    Subcommand("operating-point", "choose each family's learned-router budget from router-budget runs on validation "
               "and make it the router's default threshold", _operating_point_arguments, _operating_point),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_subcommands(p, "bench", BENCHES)


def run(args: argparse.Namespace) -> int:
    return run_subcommand(args, "bench", BENCHES)
