"""Short Python snippets whose printed output is derived by a line-by-line trace.

The prompt numbers the source lines; each trace line starts with the number of the line it
executes, restates it, substitutes the current values, and ends with the whole variable
state (`3: x = y + y = 28 + 28 = 56 | x=56 y=28`). Every value a step needs is then found
by a key (a line number, or a name in the previous line's state) instead of by tracking
which earlier line last wrote it. The reference is confirmed by running the snippet
(`run_snippet`).

Why this format: with plain traces (`x = 28 + 28 = 56`) the testbed LLM reached only 26.4%
on code (SLM 13.0%): 76 of its 167 wrong answers went wrong at a substitution, copying the
wrong variable's name or value. Restating statements alone did not help (LLM 25.8%), nor did
continuing the old LLM 250 steps on this format (24%); trained from scratch on it, the LLM
reaches 88.0% and the SLM 22.4% (500 test problems).
"""
from __future__ import annotations

import contextlib
import io
import random

from testbed.problem import FINAL_MARK, Problem

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


def generate_code(rng: random.Random) -> Problem:
    """A 3-5 statement snippet (assignments, at most one if/else) ending in print(), lines numbered."""
    names = rng.sample(VARS, 3)
    env: dict[str, int] = {}
    code: list[str] = []
    trace: list[str] = []

    def state() -> str:
        return " | " + " ".join(f"{k}={env[k]}" for k in sorted(env))

    first = names[0]
    env[first] = rng.randint(1, 9)
    code.append(f"{first} = {env[first]}")
    trace.append(f"1: {first} = {env[first]}{state()}")
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
            trace.append(f"{head}: if {p} > {q} = {env[p]} > {env[q]} = {cond}")
            line, src, sub, val = (head + 1, then_src, then_sub, then_val) if cond else \
                (head + 3, else_src, else_sub, else_val)
            env[target] = val
            trace.append(f"{line}: {target} = {src} = {sub} = {val}{state()}")
            continue
        src, sub, val = _expr(rng, env)
        code.append(f"{target} = {src}")
        env[target] = val
        trace.append(f"{len(code)}: {target} = {src} = {sub} = {val}{state()}")
    shown = rng.choice(sorted(env))
    code.append(f"print({shown})")
    trace.append(f"{len(code)}: print({shown}) = {env[shown]}")
    trace.append(f"{FINAL_MARK} {env[shown]}")
    numbered = "\n".join(f"{i}: {line}" for i, line in enumerate(code, 1))
    prompt = f"What does this code print?\n{numbered}"
    return Problem("code", prompt, "\n".join(trace), str(env[shown]))


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
