"""Multi-step arithmetic word problems with a worked chain of thought written the way people write one.

Each problem follows one quantity through 2-4 operations (buy, give away, multiply, share
equally). The content of a solution is fixed by the problem: every step's `a op b = c`. Its
wording is not: as in real reasoning text, each step has several equally good phrasings, the
operands of `+` and `*` come in either order, and an opening line, restatements of the running
total, a check of a step and a closing sentence may or may not appear, a check either right after
its step or at the end. Two models that both solve the problem disagree on those choices often and
on the arithmetic rarely, which is what a real pair's token statistics look like.

Wording is drawn from its own generator (`style`), so a problem's content (its prompt and answer)
is the same whatever wording it is written in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from r2r.testbed.problem import FINAL_MARK, Problem

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena",
         "Milo", "Nora", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tess", "Uma", "Vic", "Wren", "Zoe"]
ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells", "stickers",
         "cookies", "beads", "flowers", "toys", "eggs", "nuts", "rocks"]


class Op(Enum):
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"


@dataclass(frozen=True)
class Step:
    """One operation on the running quantity: `before op operand = after`."""

    op: Op
    operand: int
    before: int
    after: int


def _draw_step(rng: random.Random, value: int) -> Step:
    kinds = [Op.ADD, Op.SUB]
    if value <= 40:
        kinds.append(Op.MUL)
    if value >= 4 and any(value % k == 0 for k in (2, 3, 4)):
        kinds.append(Op.DIV)
    op = rng.choice(kinds)
    if op is Op.ADD:
        n = rng.randint(2, 49)
        return Step(op, n, value, value + n)
    if op is Op.SUB:
        n = rng.randint(1, value - 1) if value > 1 else 0
        return Step(op, n, value, value - n)
    if op is Op.MUL:
        k = rng.randint(2, 4)
        return Step(op, k, value, value * k)
    k = rng.choice([k for k in (2, 3, 4) if value % k == 0])
    return Step(op, k, value, value // k)


def _question(step: Step, name: str, item: str) -> str:
    return {
        Op.ADD: f"Then {name} finds {step.operand} more {item}.",
        Op.SUB: f"Then {name} gives away {step.operand} {item}.",
        Op.MUL: f"Then the number of {item} grows {step.operand} times.",
        Op.DIV: f"Then {name} splits them into {step.operand} equal piles and keeps one pile.",
    }[step.op]


def _equation(step: Step, style: random.Random) -> str:
    """`a op b = c`; `+` and `*` are written in either operand order."""
    a, b = step.before, step.operand
    if step.op in (Op.ADD, Op.MUL) and style.random() < 0.5:
        a, b = b, a
    return f"{a} {step.op.value} {b} = {step.after}"


def _step_line(step: Step, name: str, item: str, style: random.Random) -> str:
    eq, n = _equation(step, style), step.operand
    wordings = {
        Op.ADD: [f"{name} finds {n} more: {eq}.", f"Finding {n} more gives {eq}.",
                 f"After finding {n} more, {name} has {eq}.", f"With {n} more {item}, that is {eq}."],
        Op.SUB: [f"{name} gives away {n}: {eq}.", f"Giving away {n} leaves {eq}.",
                 f"After giving away {n}, {name} has {eq}.", f"Without those {n} {item}, that is {eq}."],
        Op.MUL: [f"It grows {n} times: {eq}.", f"Growing {n} times gives {eq}.",
                 f"{n} times as many is {eq}.", f"Multiplying by {n}: {eq}."],
        Op.DIV: [f"{name} keeps one of {n} piles: {eq}.", f"One pile of {n} is {eq}.",
                 f"Splitting into {n} piles gives {eq} in each.", f"Dividing by {n}: {eq}."],
    }[step.op]
    return style.choice(wordings)


def _restatement(value: int, name: str, item: str, style: random.Random) -> str:
    return style.choice([f"So {name} has {value} {item} now.", f"That makes {value} {item}.",
                         f"Now there are {value}."])


def _check(step: Step, style: random.Random) -> str:
    """The step undone: `after inverse-op operand = before`."""
    inverse = {Op.ADD: Op.SUB, Op.SUB: Op.ADD, Op.MUL: Op.DIV, Op.DIV: Op.MUL}[step.op]
    eq = f"{step.after} {inverse.value} {step.operand} = {step.before}"
    return style.choice([f"Check: {eq}.", f"To check, {eq}.", f"Going back, {eq}."])


def _solution(name: str, item: str, start: int, steps: list[Step], style: random.Random) -> str:
    lines: list[str] = []
    if style.random() < 0.5:
        lines.append(style.choice(["Let's work through it step by step.", f"Let me follow the {item} one step at a time.",
                                   f"We track how many {item} {name} has."]))
    lines.append(style.choice([f"{name} starts with {start} {item}.", f"At first {name} has {start} {item}.",
                               f"{name} begins with {start} {item}."]))
    checked = style.randrange(len(steps)) if style.random() < 0.5 else None
    check_at_end = style.random() < 0.5
    for i, step in enumerate(steps):
        lines.append(_step_line(step, name, item, style))
        if style.random() < 0.3:
            lines.append(_restatement(step.after, name, item, style))
        if i == checked and not check_at_end:
            lines.append(_check(step, style))
    if checked is not None and check_at_end:
        lines.append(_check(steps[checked], style))
    final = steps[-1].after
    if style.random() < 0.5:
        lines.append(style.choice([f"The answer is {final}.", f"So {name} has {final} {item}."]))
    lines.append(f"{FINAL_MARK} {final}")
    return "\n".join(lines)


def generate_math(rng: random.Random, style: random.Random | None = None) -> Problem:
    """A word problem with 2-4 steps; all intermediate values stay positive integers below 250.

    The content comes from `rng` alone; the wording from `style` (default: a generator seeded by
    the prompt, so a held-out problem's reference solution is reproducible)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(3, 60)
    start, steps = value, []
    for _ in range(rng.randint(2, 4)):
        steps.append(_draw_step(rng, value))
        value = steps[-1].after
    prompt = " ".join([f"{name} has {start} {item}.", *(_question(s, name, item) for s in steps),
                       f"How many {item} does {name} have now?"])
    style = random.Random(prompt) if style is None else style
    return Problem("math", prompt, _solution(name, item, start, steps, style), str(value))
