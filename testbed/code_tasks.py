"""Short Python snippets whose printed output is derived by a line-by-line trace.

The prompt numbers the source lines; each trace line starts with the number of the line it
executes, restates it, substitutes the current values, and ends with the whole variable
state (`3: x = y + y = 28 + 28 = 56 | x=56 y=28`). Every value a step needs is then found
by a key (a line number, or a name in the previous line's state) instead of by tracking
which earlier line last wrote it: substitution is where a small model's traces go wrong
(docs/perf-notes.md, "Testbed pair"). The reference is confirmed by running the snippet
(`run_snippet`).

The content of a trace is fixed by the snippet; its wording is not. As in real reasoning
text, each trace line has several equally good forms (`=` or `->` between the stages, a
`line` prefix, the state after `|` or after `so`), a comparison is written as an equation or
as a sentence and may say which branch runs, and an opening line and a closing sentence may
or may not appear. Wording is drawn from its own generator (`style`), so a problem's content
is the same whatever wording it is written in.
"""
from __future__ import annotations

import contextlib
import io
import random

from r2r.testbed.problem import FINAL_MARK, Problem

VARS = ["a", "b", "c", "x", "y", "n", "s", "t"]
_OPS = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q}


def _operand(rng: random.Random, env: dict[str, int]) -> str:
    if env and rng.random() < 0.6:
        return rng.choice(sorted(env))
    return str(rng.randint(1, 9))


def _expr(rng: random.Random, env: dict[str, int]) -> tuple[str, str, int]:
    """(source, source with values substituted, value) for `p op q`; keeps values in [-99, 199]."""
    while True:
        left, right = _operand(rng, env), _operand(rng, env)
        op = rng.choice("+-*")
        lv = env[left] if left in env else int(left)
        rv = env[right] if right in env else int(right)
        value = _OPS[op](lv, rv)
        if -99 <= value <= 199 and not (op == "*" and abs(lv) > 20 and abs(rv) > 9):
            return f"{left} {op} {right}", f"{lv} {op} {rv}", value


def _assign_line(line: int, target: str, src: str, sub: str, value: int, state: str, style: random.Random) -> str:
    stages = f"{target} = {src}" + ("" if src == sub == str(value) else f" = {sub} = {value}")
    arrows = f"{target} = {src}" + ("" if src == sub == str(value) else f" -> {sub} -> {value}")
    return style.choice([f"{line}: {stages} | {state}", f"{line}: {arrows} | {state}",
                         f"line {line}: {stages}, so {state}"])


def _compare_line(line: int, p: str, q: str, pv: int, qv: int, cond: bool, style: random.Random) -> list[str]:
    out = [style.choice([f"{line}: if {p} > {q} = {pv} > {qv} = {cond}", f"{line}: if {p} > {q} -> {pv} > {qv} -> {cond}",
                         f"line {line}: {p} > {q} is {pv} > {qv}, which is {cond}"])]
    if style.random() < 0.5:
        out.append("so the if branch runs" if cond else "so the else branch runs")
    return out


def generate_code(rng: random.Random, style: random.Random | None = None) -> Problem:
    """A 3-5 statement snippet (assignments, at most one if/else) ending in print(), lines numbered.

    The content comes from `rng` alone; the trace's wording from `style` (default: a generator
    seeded by the prompt, so a held-out problem's reference solution is reproducible)."""
    names = rng.sample(VARS, 3)
    env: dict[str, int] = {}
    code: list[str] = []
    events: list[tuple] = []  # ("assign", line, target, src, sub, value, state) | ("if", line, p, q, pv, qv, cond)

    def state() -> str:
        return " ".join(f"{k}={env[k]}" for k in sorted(env))

    first = names[0]
    env[first] = rng.randint(1, 9)
    code.append(f"{first} = {env[first]}")
    events.append(("assign", 1, first, str(env[first]), str(env[first]), env[first], state()))
    used_if = False
    for _ in range(rng.randint(2, 4)):
        target = rng.choice(names)
        if not used_if and len(env) >= 2 and rng.random() < 0.3:
            used_if = True
            p, q = rng.sample(sorted(env), 2)
            then_src, then_sub, then_val = _expr(rng, env)
            else_src, else_sub, else_val = _expr(rng, env)
            cond = env[p] > env[q]
            head = len(code) + 1
            code += [f"if {p} > {q}:", f"    {target} = {then_src}", "else:", f"    {target} = {else_src}"]
            events.append(("if", head, p, q, env[p], env[q], cond))
            line, src, sub, val = (head + 1, then_src, then_sub, then_val) if cond else \
                (head + 3, else_src, else_sub, else_val)
            env[target] = val
            events.append(("assign", line, target, src, sub, val, state()))
            continue
        src, sub, val = _expr(rng, env)
        code.append(f"{target} = {src}")
        env[target] = val
        events.append(("assign", len(code), target, src, sub, val, state()))
    shown = rng.choice(sorted(env))
    code.append(f"print({shown})")
    numbered = "\n".join(f"{i}: {line}" for i, line in enumerate(code, 1))
    prompt = f"What does this code print?\n{numbered}"
    answer = env[shown]

    style = random.Random(prompt) if style is None else style
    trace: list[str] = []
    if style.random() < 0.5:
        trace.append(style.choice(["Let's trace it line by line.", "Tracing the code:", "Running it one line at a time:"]))
    for kind, *fields in events:
        trace += [_assign_line(*fields, style)] if kind == "assign" else _compare_line(*fields, style)
    trace.append(style.choice([f"{len(code)}: print({shown}) = {answer}", f"{len(code)}: print({shown}) -> {answer}",
                               f"line {len(code)}: print({shown}) shows {answer}"]))
    if style.random() < 0.5:
        trace.append(style.choice([f"So the code prints {answer}.", f"The output is {answer}."]))
    trace.append(f"{FINAL_MARK} {answer}")
    return Problem("code", prompt, "\n".join(trace), str(answer))


def run_snippet(prompt: str) -> str:
    """Execute the snippet of a generated code prompt and return what it prints.

    Only for the generator's own snippets (straight-line integer code it wrote itself);
    untrusted code goes through the evals sandbox instead.
    """
    source = "\n".join(line.split(": ", 1)[1] for line in prompt.split("\n")[1:])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<snippet>", "exec"), {"__builtins__": {"print": print}})  # noqa: S102
    return out.getvalue().strip()
