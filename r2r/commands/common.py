"""What the subcommands share: loading the pair from the flags, number lists, writing bench JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.backends.threads import PassThreads

TESTBED_DIR = Path(__file__).resolve().parents[2] / "models" / "testbed"


def shown(path: Path) -> Path:
    """`path` relative to the working directory when inside it: portable in cards."""
    full = path.resolve()
    return full.relative_to(Path.cwd()) if full.is_relative_to(Path.cwd()) else full


def load_pair_from_args(args: argparse.Namespace, pass_threads: PassThreads | None = None):
    from serving.pair import BackendChoice, load_pair, resolve_pair

    return load_pair(resolve_pair(args.pair, args.slm, args.llm, args.router), args.device,
                     BackendChoice(kind=args.backend, llm_tp=args.llm_tp, pass_threads=pass_threads))


def floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from exc


def write_json(out: Path, result: dict) -> None:
    """Atomically: a run killed mid-write leaves the previous whole file."""
    from serving.backends.derived_files import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, [(json.dumps(result, indent=2) + "\n").encode()])


def write_bench(out: Path, result: dict) -> int:
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return 0
