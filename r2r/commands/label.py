"""`r2r label`: the path-divergence label pipeline."""
from __future__ import annotations

import argparse

from r2r.commands.common import load_pair_from_args


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from data_gen.pipeline import STAGES, LabelConfig, make_pipeline
    from data_gen.prompts import load_prompts
    from data_gen.verifiers import AnswerVerifier, EmbeddingVerifier, JudgeVerifier, VerifierKind, minilm_dir

    prompts = load_prompts(args.prompts)
    cfg = LabelConfig(out_dir=args.out, verifier=args.verifier, chunk_size=args.chunk_size,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                      keep_unfinished=args.keep_unfinished, continue_with=args.continue_with,
                      continue_share=args.continue_share)
    pair = load_pair_from_args(args)
    if cfg.verifier == VerifierKind.ANSWER:
        verifier = AnswerVerifier()
    elif cfg.verifier == VerifierKind.EMBEDDING:
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
