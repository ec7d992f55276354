"""`r2r train-router`: train the router on label directories and calibrate its threshold."""
from __future__ import annotations

import argparse
import json

from pathlib import Path

from r2r.commands.common import add_pair_args, choices, load_pair_from_args, shown
from r2r.router.fit import Positives

HELP = "train the router on label directories and calibrate its threshold"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--labels", type=Path, nargs="+", required=True, help="label directories from `r2r label`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recall", type=float, default=0.95, help="target recall of divergent tokens (default 0.95)")
    p.add_argument("--llm-share", type=float, default=None, help="calibrate to this LLM share instead of recall")
    p.add_argument("--width", type=int, default=None, help="router MLP width (default: RouterConfig's)")
    p.add_argument("--depth", type=int, default=None, help="residual blocks (default: RouterConfig's)")
    p.add_argument("--expansion", type=int, default=None,
                   help="MLP expansion inside each block (default: RouterConfig's); smaller routers cost less per step")
    p.add_argument("--positives", choices=choices(Positives), default=Positives.DIVERGENT.value,
                   help="tokens the router learns to flag: the verifier's divergent labels (default) or every "
                        "SLM/LLM mismatch")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch

    from r2r.data_gen.router_data import load_router_data
    from r2r.router.fit import SLMInfo, fit_router
    from r2r.router.model import RouterConfig
    from r2r.router.train import TrainConfig
    from r2r.serving.backends.fingerprint import tokenizer_fingerprint
    from r2r.router.card import write_router_card

    pair = load_pair_from_args(args)
    slm = SLMInfo(str(shown(pair.spec.slm)), pair.slm.fingerprint, tokenizer_fingerprint(pair.tokenizer),
                  pair.slm.hidden_size, pair.slm.embed(torch.arange(pair.slm.vocab_size)))
    data = load_router_data(args.labels, slm, pair.llm.fingerprint, str(shown(pair.spec.llm)),
                            Positives(args.positives))
    sizes = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("expansion", args.expansion))
             if v is not None}
    rcfg = RouterConfig(hidden_size=slm.hidden_size, embed_size=slm.embeddings.shape[1], top_k=data.top_k, **sizes)
    tcfg = TrainConfig(epochs=args.epochs, seed=args.seed, target_recall=args.recall, target_share=args.llm_share)
    report = fit_router(data.tensors, slm, rcfg, tcfg, args.out, data.label_meta)
    write_router_card(args.out, None)
    print(json.dumps(report["validation"], indent=2))
    return 0
