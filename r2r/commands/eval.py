"""`r2r eval`: benchmark tasks, every policy swept, JSON and plots (resumable)."""
from __future__ import annotations

import argparse
from pathlib import Path

from r2r.commands.common import add_pair_args, choices, load_pair_from_args
from r2r.router.policies import PolicyKind
from r2r.serving.decoding.generation import RoutingMode

HELP = "benchmark tasks: sweep every policy, JSON and plots (resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="a task name (see --list), or `report` to rebuild a run's report")
    p.add_argument("run_dir", nargs="?", type=Path, help="with `report`: the run directory")
    p.add_argument("--list", action="store_true", help="list the tasks")
    add_pair_args(p)
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/eval/<task>)")
    p.add_argument("--policies", nargs="+", default=None, choices=choices(PolicyKind))
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default=RoutingMode.SPECULATIVE.value, choices=choices(RoutingMode))
    p.add_argument("--data-file", type=Path, default=None, help="local JSONL/parquet rows for a hub dataset")
    p.add_argument("--max-tokens", type=int, default=None, help="generation limit (default: the task's)")


def run(args: argparse.Namespace) -> int:
    from r2r.evals.report import write_report
    from r2r.evals.tasks import TASKS, get_task

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

    from r2r.evals.sweep import DEFAULT_POLICIES, SweepConfig, run_sweep

    task = get_task(args.target)
    problems = task.load(args.data_file)[: args.limit]
    out = args.out or Path("runs/eval") / task.name
    pair = load_pair_from_args(args)
    kinds = tuple(PolicyKind(p) for p in args.policies) if args.policies else DEFAULT_POLICIES
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
