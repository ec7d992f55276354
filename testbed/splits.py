"""Fixed-seed train / validation / test splits of the testbed families.

Splits are disjoint by construction: every problem is drawn from its own seeded stream,
and validation/test prompts are removed from the training stream by prompt text.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from r2r.testbed.code_tasks import generate_code
from r2r.testbed.math_tasks import generate_math
from r2r.testbed.problem import Problem

FAMILIES: dict[str, Callable[[random.Random, random.Random | None], Problem]] = {"math": generate_math, "code": generate_code}
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
HELDOUT_SIZE = 1000


def _stream(family: str, split: str) -> Iterator[Problem]:
    if family not in FAMILIES:
        raise ValueError(f"unknown testbed family {family!r}; known: {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}-{SPLIT_SEEDS[split]}")
    while True:
        yield FAMILIES[family](rng, None)


def heldout(family: str, split: str, n: int) -> list[Problem]:
    """The first n problems of the validation or test split (deduplicated, at most HELDOUT_SIZE)."""
    if split not in ("validation", "test"):
        raise ValueError(f"held-out split must be validation or test, got {split!r}")
    if not 0 <= n <= HELDOUT_SIZE:
        raise ValueError(f"held-out problems per split must be in 0..{HELDOUT_SIZE}, asked for {n}")
    seen: set[str] = set()
    out: list[Problem] = []
    stream = _stream(family, split)
    while len(out) < n:
        problem = next(stream)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            out.append(problem)
    return out


def heldout_prompts(families: list[str]) -> frozenset[str]:
    """Every validation and test prompt of the given families (what training must never see)."""
    return frozenset(p.prompt for f in families for s in ("validation", "test") for p in heldout(f, s, HELDOUT_SIZE))


def sample_train(rng: random.Random, n: int, families: list[str], excluded: frozenset[str] | None = None,
                 weights: list[float] | None = None) -> list[Problem]:
    """n training problems, families drawn by `weights` (uniform by default), none whose prompt is held out."""
    excluded = heldout_prompts(families) if excluded is None else excluded
    out: list[Problem] = []
    while len(out) < n:
        family = rng.choice(families) if weights is None else rng.choices(families, weights)[0]
        problem = FAMILIES[family](rng, rng)  # the wording is sampled per training example
        if problem.prompt not in excluded:
            out.append(problem)
    return out


def write_heldout(out_dir: Path) -> None:
    """Every family's validation and test splits as JSONL (prompt, solution, answer per line)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        for split in ("validation", "test"):
            rows = [{"prompt": p.prompt, "solution": p.solution, "answer": p.answer}
                    for p in heldout(family, split, HELDOUT_SIZE)]
            (out_dir / f"{family}-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
