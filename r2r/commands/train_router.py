"""`r2r train-router`: train the router on label directories and calibrate its threshold."""
from __future__ import annotations

import argparse
import json

from r2r.commands.common import load_pair_from_args, shown


def run(args: argparse.Namespace) -> int:
    import torch

    from data_gen.router_data import load_router_data
    from router.fit import SLMInfo, fit_router
    from router.model import RouterConfig
    from router.train import TrainConfig
    from serving.backends.fingerprint import tokenizer_fingerprint
    from router.card import write_router_card

    pair = load_pair_from_args(args)
    slm = SLMInfo(str(shown(pair.spec.slm)), pair.slm.fingerprint, tokenizer_fingerprint(pair.tokenizer),
                  pair.slm.hidden_size, pair.slm.embed(torch.arange(pair.slm.vocab_size)))
    data = load_router_data(args.labels, slm, pair.llm.fingerprint, str(shown(pair.spec.llm)), args.positives)
    sizes = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("expansion", args.expansion))
             if v is not None}
    rcfg = RouterConfig(hidden_size=slm.hidden_size, embed_size=slm.embeddings.shape[1], top_k=data.top_k, **sizes)
    tcfg = TrainConfig(epochs=args.epochs, seed=args.seed, target_recall=args.recall, target_share=args.llm_share)
    report = fit_router(data.tensors, slm, rcfg, tcfg, args.out, data.label_meta)
    write_router_card(args.out, None)
    print(json.dumps(report["validation"], indent=2))
    return 0
