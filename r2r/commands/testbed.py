"""`r2r testbed data|train|eval`: building the embedded pair."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from r2r.commands.common import TESTBED_DIR, Subcommand, add_subcommands, run_subcommand
from r2r.testbed.train import SHAPES

HELP = "build the testbed pair: task data, tokenizer, training, evaluation"


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("data/testbed"))
    p.add_argument("--tokenizer-dir", type=Path, default=TESTBED_DIR / "tokenizer")


def _data(args: argparse.Namespace) -> int:
    from r2r.testbed.splits import write_heldout
    from r2r.testbed.tokenizer import train_tokenizer, train_tokenizer_x

    write_heldout(args.out)
    train_tokenizer(args.tokenizer_dir)
    train_tokenizer_x(args.tokenizer_dir.parent / "tokenizer-x")
    print(f"wrote held-out splits to {args.out} and the tokenizers to {args.tokenizer_dir} (and tokenizer-x)")
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=list(SHAPES), required=True,
                   help="llm-base trains from scratch; llm grows from it (--init-from an llm-base directory)")
    p.add_argument("--steps", type=int, default=None, help="default: 800 (slm), 1500 (llm-base), 240 (llm)")
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 (slm), 2e-3 (llm-base), 3e-4 (llm)")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="default: runs/testbed/ckpt-<size>")
    p.add_argument("--ckpt-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation and data order (a continued stage takes another seed for new problems)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this model directory's weights (continued training, a tokenizer transplant, or "
                        "depth growth from a shallower model)")
    p.add_argument("--train-only", default=None,
                   help="comma-separated parameter-name fragments that train (e.g. embed_tokens); the rest stay "
                        "--init-from's, and the saved model stores only what trained and reads the rest from there")
    p.add_argument("--family-weights", default=None, help="training mixture, e.g. math=1,code=3 (default: uniform)")
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warmup steps")
    p.add_argument("--tokenizer-dir", type=Path, default=None, help="default: models/testbed/tokenizer")
    p.add_argument("--out", type=Path, default=None, help="default: models/testbed/<size>")


def _train(args: argparse.Namespace) -> int:
    from r2r.testbed.train import DEFAULT_STEPS_LR, LMTrainConfig, parse_family_weights, train

    defaults = DEFAULT_STEPS_LR[args.size]
    families, weights = parse_family_weights(args.family_weights)
    cfg = LMTrainConfig(size=args.size, tokenizer_dir=args.tokenizer_dir or TESTBED_DIR / "tokenizer",
                        out_dir=args.out or TESTBED_DIR / args.size,
                        ckpt_dir=args.ckpt_dir or Path(f"runs/testbed/ckpt-{args.size}"),
                        steps=defaults[0] if args.steps is None else args.steps,
                        lr=defaults[1] if args.lr is None else args.lr, threads=args.threads,
                        ckpt_every=args.ckpt_every, seed=args.seed, warmup_steps=args.warmup, families=families,
                        family_weights=weights, init_from=args.init_from,
                        train_only=() if args.train_only is None else tuple(
                            f.strip() for f in args.train_only.split(",")))
    print(f"saved {train(cfg)}")
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=500, help="problems per family")
    p.add_argument("--models", default=None,
                   help="comma-separated cards to rewrite, of slm, llm, llm-x (default: all present); each card's "
                        "comparison model is evaluated too")


def _eval(args: argparse.Namespace) -> int:
    from r2r.testbed.evaluate import EvalConfig, evaluate_model, models_to_evaluate, write_cards

    present = ["slm", "llm"] + (["llm-x"] if (TESTBED_DIR / "llm-x" / "config.json").exists() else [])
    cards = present if args.models is None else list(dict.fromkeys(m.strip() for m in args.models.split(",")))
    if unknown := sorted(set(cards) - set(present)):
        raise ValueError(f"--models: no testbed model {', '.join(repr(m) for m in unknown)} "
                         f"(have {', '.join(present)})")
    configs = {m: EvalConfig(TESTBED_DIR / m, n_problems=args.n) for m in models_to_evaluate(cards)}  # checks --n
    results = {m: evaluate_model(cfg) for m, cfg in configs.items()}
    write_cards(TESTBED_DIR, cards, results)
    print(json.dumps(results, indent=2))
    return 0


SUBCOMMANDS = (
    Subcommand("data", "write the held-out splits as JSONL and train the tokenizer", _data_arguments, _data),
    Subcommand("train", "train the SLM or LLM from scratch (resumable)", _train_arguments, _train),
    Subcommand("eval", "held-out accuracy and latency of both models; writes the model cards", _eval_arguments, _eval),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_subcommands(p, "testbed", SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:
    return run_subcommand(args, "testbed", SUBCOMMANDS)
