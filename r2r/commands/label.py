"""`r2r label`: the path-divergence label pipeline."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r2r.commands.common import load_pair_from_args


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from data_gen.pipeline import STAGES, LabelConfig, make_pipeline
    from data_gen.verifiers import AnswerVerifier, EmbeddingVerifier, JudgeVerifier, VerifierKind, minilm_dir

    task = None
    if args.task is not None:
        from evals.tasks import get_task

        task = get_task(args.task)
        if args.verifier != VerifierKind.ANSWER.value:
            raise ValueError("--task sets how the answer verifier compares branches: use it with --verifier answer")
    prompts, problems = _prompts(args.prompts, task)
    cfg = LabelConfig(out_dir=args.out, verifier=args.verifier, chunk_size=args.chunk_size,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                      keep_unfinished=args.keep_unfinished, continue_with=args.continue_with,
                      continue_share=args.continue_share, task=None if task is None else task.name)
    pair = load_pair_from_args(args)
    if cfg.verifier == VerifierKind.ANSWER and task is not None:
        from evals.branch_compare import comparer_for

        verifier = AnswerVerifier(comparer_for(task, problems), task=task.name)
    elif cfg.verifier == VerifierKind.ANSWER:
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
    for i, shard in enumerate(counts.get("shards", [])):
        print(f"shard {i}: {shard['candidates']} candidates: {shard['neutral']} neutral, {shard['divergent']} "
              f"divergent, {shard['unverifiable']} unverifiable")
    print(f"{counts['tokens']} tokens labeled, {counts.get('mismatches', 0)} mismatches: "
          f"{counts.get('neutral', 0)} neutral, {counts.get('divergent', 0)} divergent "
          f"({counts.get('divergent_rate', 0):.2%} of tokens), {counts.get('unverifiable', 0)} unverifiable "
          f"(left out of training); this run: {last.get('tokens_labeled', 0)} tokens in {last.get('seconds', 0)} s "
          f"({last.get('tokens_per_second', 0)} tokens/s) -> {args.out}")
    if counts.get("unverifiable", 0) * 2 > counts.get("mismatches", 0) > 0:
        print(f"WARNING: {counts['unverifiable']} of {counts['mismatches']} candidates are unverifiable: neither "
              "branch gave an answer the verifier can read. Is --task right for these prompts, and "
              "--max-new-tokens long enough for the answers to finish?", file=sys.stderr)
    return 0


def _prompts(source: str, task) -> tuple[list, list]:
    """(prompt records, the task's problems): a --task reads a JSONL file or its hub rows in its own fields."""
    from data_gen.prompts import PromptRecord, load_prompts

    if task is None or source.startswith("testbed-"):
        return load_prompts(source), []
    if source.startswith("hf:"):
        name = source[3:].split(":")[0]
        if task.hub_id is None:
            raise ValueError(f"--task {task.name} does not read hub rows: pass a JSONL file in its fields ({task.fields})")
        if name != task.hub_id:
            raise ValueError(f"--task {task.name} reads the rows of {task.hub_id}, not {name}: pass --prompts "
                             f"hf:{task.hub_id}, or a JSONL file in the task's fields ({task.fields})")
    problems = task.load(None if source.startswith("hf:") else Path(source))
    return [PromptRecord(p.id, (("user", p.prompt),)) for p in problems], problems
