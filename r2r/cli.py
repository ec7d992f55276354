"""The `r2r` command line: the project's only entry point. It assembles the subcommands: each module of
`r2r.commands` defines its arguments (`add_arguments`), its one-line `HELP` and its `run(args)`.

User errors (bad flags, missing models, bad prompts) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

EXIT_USAGE = 2
# subcommand -> module of r2r.commands that defines it, in the order `r2r --help` lists them
COMMANDS = {"generate": "generate", "serve": "serve", "label": "label", "train-router": "train_router",
            "eval": "eval", "models": "models", "bench": "bench", "testbed": "testbed"}


def command_module(name: str) -> ModuleType:
    """The module of subcommand `name`; each imports its heavy dependencies inside `run`, so parsing stays fast."""
    return importlib.import_module(f"r2r.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r2r", description="Routed SLM/LLM decoding: a small model writes, "
                                     "a router hands the few divergent tokens to a large model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = command_module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_libraries()
    try:
        return command_module(args.command).run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"r2r: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
