"""Multi-step arithmetic word problems with a worked chain of thought.

Each problem follows one quantity through 2-4 operations (buy, give away, multiply,
share equally); every step is written out as `a op b = c`, which is where a small model
goes wrong and a large one does not.
"""
from __future__ import annotations

import random

from testbed.problem import FINAL_MARK, Problem

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena",
         "Milo", "Nora", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tess", "Uma", "Vic", "Wren", "Zoe"]
ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells", "stickers",
         "cookies", "beads", "flowers", "toys", "eggs", "nuts", "rocks"]


def _step(rng: random.Random, name: str, item: str, value: int) -> tuple[str, str, int]:
    """One operation on the running quantity: (question sentence, worked line, new value)."""
    kinds = ["add", "sub"]
    if value <= 40:
        kinds.append("mul")
    if value >= 4 and any(value % k == 0 for k in (2, 3, 4)):
        kinds.append("div")
    kind = rng.choice(kinds)
    if kind == "add":
        n = rng.randint(2, 49)
        return (f"Then {name} finds {n} more {item}.", f"{name} finds {n} more: {value} + {n} = {value + n}.",
                value + n)
    if kind == "sub":
        n = rng.randint(1, value - 1) if value > 1 else 0
        return (f"Then {name} gives away {n} {item}.", f"{name} gives away {n}: {value} - {n} = {value - n}.",
                value - n)
    if kind == "mul":
        k = rng.randint(2, 4)
        return (f"Then the number of {item} grows {k} times.", f"It grows {k} times: {value} * {k} = {value * k}.",
                value * k)
    k = rng.choice([k for k in (2, 3, 4) if value % k == 0])
    return (f"Then {name} splits them into {k} equal piles and keeps one pile.",
            f"{name} keeps one of {k} piles: {value} / {k} = {value // k}.", value // k)


def generate_math(rng: random.Random) -> Problem:
    """A word problem with 2-4 steps; all intermediate values stay positive integers below 250."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(3, 60)
    questions = [f"{name} has {value} {item}."]
    lines = [f"{name} starts with {value} {item}."]
    for _ in range(rng.randint(2, 4)):
        question, line, value = _step(rng, name, item, value)
        questions.append(question)
        lines.append(line)
    questions.append(f"How many {item} does {name} have now?")
    lines.append(f"{FINAL_MARK} {value}")
    return Problem("math", " ".join(questions), "\n".join(lines), str(value))
