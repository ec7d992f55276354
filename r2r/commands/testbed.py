"""`r2r testbed data|train|eval`: building the embedded pair."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from r2r.commands.common import TESTBED_DIR

COMPARED_WITH = {"slm": "llm", "llm": "slm", "llm-x": "slm"}  # each card's "vs the other model" row


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
                          ckpt_every=args.ckpt_every, seed=args.seed, warmup_steps=args.warmup, families=families, family_weights=weights,
                          init_from=args.init_from,
                          train_only=tuple(f.strip() for f in args.train_only.split(",")) if args.train_only is not None else ())
        print(f"saved {train(cfg)}")
        return 0
    from testbed.evaluate import LLM_CARD, LLM_X_CARD, LLM_X_REPRODUCE, EvalConfig, evaluate_model, write_model_card

    present = ["slm", "llm"] + (["llm-x"] if (TESTBED_DIR / "llm-x" / "config.json").exists() else [])
    cards = present if args.models is None else [m.strip() for m in args.models.split(",")]
    if unknown := sorted(set(cards) - set(present)):
        raise ValueError(f"no testbed model {', '.join(unknown)} (have {', '.join(present)})")
    sizes = [s for s in present if s in cards or any(COMPARED_WITH[c] == s for c in cards)]
    configs = {size: EvalConfig(TESTBED_DIR / size, n_problems=args.n) for size in sizes}  # checks --n first
    results = {size: evaluate_model(cfg) for size, cfg in configs.items()}
    texts = {"slm": (None, None), "llm": (LLM_CARD, None), "llm-x": (LLM_X_CARD, LLM_X_REPRODUCE)}
    for card in cards:
        write_model_card(TESTBED_DIR / card, card, results[card], results[COMPARED_WITH[card]], *texts[card])
    print(json.dumps(results, indent=2))
    return 0
