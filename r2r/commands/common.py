"""What the subcommands share: nested subcommands, the pair's flags and loading the pair from them, number lists,
writing bench JSON."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from r2r.serving.pair import MODELS_DIR, BackendKind

if TYPE_CHECKING:
    from r2r.serving.backends.threads import PassThreads

TESTBED_DIR = MODELS_DIR / "testbed"


@dataclass(frozen=True)
class Subcommand:
    """One subcommand of a command with several (`r2r bench decode`, `r2r testbed train`): its arguments are
    defined beside its `run`."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_subcommands(parser: argparse.ArgumentParser, dest: str, subcommands: Sequence[Subcommand]) -> None:
    """Each subcommand's parser, in order; the chosen name lands in `args.<dest>`."""
    sub = parser.add_subparsers(dest=dest, required=True)
    for command in subcommands:
        command.add_arguments(sub.add_parser(command.name, help=command.help))


def run_subcommand(args: argparse.Namespace, dest: str, subcommands: Sequence[Subcommand]) -> int:
    return {c.name: c for c in subcommands}[getattr(args, dest)].run(args)


def choices(enum: type) -> list[str]:
    """A closed set's values as argparse choices (the CLI takes strings; the commands turn them into the enum)."""
    return [member.value for member in enum]


def add_pair_args(p: argparse.ArgumentParser) -> None:
    """Which models, router, device and backend: every command that loads a pair takes these."""
    p.add_argument("--pair", default=None, help="a preset pair: testbed, testbed-x (other tokenizer), smol-gemma, ... "
                   "(default: testbed)")
    p.add_argument("--slm", default=None, help="SLM model directory (with --llm, instead of --pair)")
    p.add_argument("--llm", default=None, help="LLM model directory (with --slm, instead of --pair)")
    p.add_argument("--router", default=None, help="router checkpoint directory (default: the preset's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default=BackendKind.HF.value, choices=choices(BackendKind),
                   help="hf: transformers, CPU/GPU (default); sglang: SGLang engines, GPUs (a CPU only for tests: "
                        "`make test-sglang`; install: pip install -e '.[sglang]' in a venv of its own)")
    p.add_argument("--llm-tp", type=int, default=1, help="tensor-parallel GPUs for the LLM (sglang backend)")


def shown(path: Path) -> Path:
    """`path` relative to the working directory when inside it: portable in cards."""
    full = path.resolve()
    return full.relative_to(Path.cwd()) if full.is_relative_to(Path.cwd()) else full


def load_pair_from_args(args: argparse.Namespace, pass_threads: PassThreads | None = None):
    from r2r.serving.pair import BackendChoice, load_pair, resolve_pair

    return load_pair(resolve_pair(args.pair, args.slm, args.llm, args.router), args.device,
                     BackendChoice(kind=BackendKind(args.backend), llm_tp=args.llm_tp, pass_threads=pass_threads))


def floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from exc


def write_json(out: Path, result: dict) -> None:
    """Atomically: a run killed mid-write leaves the previous whole file."""
    from r2r.serving.backends.derived_files import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, [(json.dumps(result, indent=2) + "\n").encode()])


def write_bench(out: Path, result: dict) -> int:
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return 0
