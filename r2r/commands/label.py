"""`r2r label`: the path-divergence label pipeline."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r2r.data_gen.pipeline import ContinueWith
from r2r.data_gen.verifiers import VerifierKind
from r2r.commands.common import add_pair_args, choices, load_pair_from_args

HELP = "label path-divergent tokens between the SLM and LLM (resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_args(p)
    p.add_argument("--prompts", required=True,
                   help="testbed-<family>:<n>, a JSONL file (prompt or messages per line), or hf:<name>[:split]")
    p.add_argument("--verifier", default=VerifierKind.ANSWER.value, choices=choices(VerifierKind))
    p.add_argument("--task", default=None,
                   help="read and compare each branch's answer as this task grades it (any `r2r eval --list` name: "
                        "math-verify for math, the letter for choices, the tests for code); with a JSONL --prompts "
                        "file in the dataset's own fields, or hf:NAME for the task's hub rows (default: the "
                        "testbed's #### rule)")
    p.add_argument("--judge-model", default=None, help="instruct model directory for --verifier judge")
    p.add_argument("--out", type=Path, required=True, help="output directory (re-run to resume)")
    p.add_argument("--chunk-size", type=int, default=100, help="prompts per shard")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--top-k", type=int, default=32, help="top-k log-probs stored as router features")
    p.add_argument("--keep-unfinished", action="store_true",
                   help="also label references that hit --max-new-tokens (dropped by default)")
    p.add_argument("--continue-with", choices=choices(ContinueWith), default=ContinueWith.LLM.value,
                   help="who continues each SLM branch for the verifier: the LLM (published method, default) or "
                        "routed decoding with the pair's router (--router), as in serving: on-policy labels")
    p.add_argument("--continue-share", type=float, default=None,
                   help="with --continue-with routed: the router's LLM-share budget (default: its stored threshold)")


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from r2r.data_gen.pipeline import STAGES, LabelConfig, make_pipeline
    from r2r.data_gen.verifiers import AnswerVerifier, EmbeddingVerifier, JudgeVerifier, minilm_dir

    task = None
    if args.task is not None:
        from r2r.evals.tasks import get_task

        task = get_task(args.task)
        if VerifierKind(args.verifier) != VerifierKind.ANSWER:
            raise ValueError("--task sets how the answer verifier compares branches: use it with --verifier answer")
    prompts, problems = _prompts(args.prompts, task)
    cfg = LabelConfig(out_dir=args.out, verifier=VerifierKind(args.verifier), chunk_size=args.chunk_size,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                      keep_unfinished=args.keep_unfinished, continue_with=ContinueWith(args.continue_with),
                      continue_share=args.continue_share, task=None if task is None else task.name)
    pair = load_pair_from_args(args)
    if cfg.verifier == VerifierKind.ANSWER and task is not None:
        from r2r.evals.branch_compare import comparer_for

        verifier = AnswerVerifier(comparer_for(task, problems), task=task.name)
    elif cfg.verifier == VerifierKind.ANSWER:
        verifier = AnswerVerifier()
    elif cfg.verifier == VerifierKind.EMBEDDING:
        verifier = EmbeddingVerifier(minilm_dir())
    else:
        if not args.judge_model:
            raise ValueError("--verifier judge needs --judge-model DIR (an instruct chat model)")
        from transformers import AutoTokenizer

        from r2r.serving.backends.hf import HFBackend

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
    from r2r.data_gen.prompts import PromptRecord, load_prompts

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
