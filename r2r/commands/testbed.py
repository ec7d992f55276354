"""`r2r testbed data|train|eval`: building the embedded pair."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from r2r.commands.common import TESTBED_DIR


def run(args: argparse.Namespace) -> int:
    if args.testbed == "data":
        from testbed.splits import write_heldout
        from testbed.tokenizer import train_tokenizer, train_tokenizer_x

        write_heldout(args.out)
        train_tokenizer(args.tokenizer_dir)
        train_tokenizer_x(args.tokenizer_dir.parent / "tokenizer-x")
        print(f"wrote held-out splits to {args.out} and the tokenizers to {args.tokenizer_dir} (and tokenizer-x)")
        return 0
    if args.testbed == "train":
        from testbed.train import DEFAULT_STEPS_LR, LMTrainConfig, parse_family_weights, train

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
    from testbed.evaluate import EvalConfig, evaluate_model, models_to_evaluate, write_cards

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
